"""The embedded demo: train a small residual CNN on the bundled digits in
seconds, then compute and render its filter-normalized 2D loss surface.

Example:
    >>> from lossgrid.demo import run_demo
    >>> paths = run_demo("demo_out")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch
from torch import nn

from ._files import atomic_output, os_reason
from .config import DirectionSpec, EvalSpec, GridSpec
from .data import EvalData, load_data
from .errors import ConfigError, MissingBackendError

log = logging.getLogger(__name__)

DEMO_MODEL = "lossgrid.zoo:resnet_digits"


def train_demo_model(data: EvalData, epochs: int = 12, seed: int = 0, batch_size: int = 64) -> nn.Module:
    """Train :func:`lossgrid.zoo.resnet_digits` on ``data`` with SGD + momentum."""
    from .zoo import resnet_digits

    torch.manual_seed(seed)
    model = resnet_digits()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=epochs * -(-len(data) // batch_size))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        for start in range(0, len(data), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(data.x[idx]), data.y[idx])
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def run_demo(out_dir: str | os.PathLike, grid: str = "-1:1:31", epochs: int = 12, seed: int = 0,
             progress: Any = None, overwrite: bool = True, eval_spec: EvalSpec = EvalSpec()) -> dict[str, Any]:
    """Train, save the model's state_dict to ``out_dir/model.pt`` (a checkpoint for
    ``lossgrid hessian``/``audit --model lossgrid.zoo:resnet_digits``), compute the
    surface into ``out_dir/surface.h5``, render ``contour.png``, ``surface3d.png``
    (log scale) and ``surface.html`` (if plotly is installed).

    Returns a dict with the written paths, timings and the surface summary.
    """
    from .engine.surface import compute_surface
    from .render import plot_surface

    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"Demo output {out_dir} is a file", "the demo writes several files into a directory",
                          "pass --out with a new or existing directory")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Cannot create the demo directory {out_dir}", os_reason(e),
                          "choose a writable --out directory") from None
    t0 = time.perf_counter()
    train = load_data("digits:train")
    model = train_demo_model(train, epochs=epochs, seed=seed)
    t_train = time.perf_counter() - t0
    model_path = os.path.join(out_dir, "model.pt")
    with atomic_output(model_path, "demo checkpoint") as tmp:  # for lossgrid hessian/audit on the same model
        torch.save(model.state_dict(), tmp)
    surface_path = os.path.join(out_dir, "surface.h5")
    surface = compute_surface(model, train, GridSpec.parse(grid, grid), surface_path,
                              direction_spec=DirectionSpec(seed=seed), eval_spec=eval_spec,
                              overwrite=overwrite, progress=progress,
                              model_description=f"{DEMO_MODEL} trained {epochs} epochs (seed {seed})")
    t_surface = time.perf_counter() - t0 - t_train
    paths = {"model": model_path, "surface": surface_path,
             "contour": plot_surface(surface, os.path.join(out_dir, "contour.png")),
             "surface3d": plot_surface(surface, os.path.join(out_dir, "surface3d.png"), kind="surface3d", log=True)}
    skipped = {}
    try:
        paths["html"] = plot_surface(surface, os.path.join(out_dir, "surface.html"), kind="html")
    except MissingBackendError as e:  # plotly is an optional extra
        skipped["html"] = str(e)
    return {"paths": paths, "skipped": skipped, "train_seconds": round(t_train, 2),
            "surface_seconds": round(t_surface, 2),
            "total_seconds": round(time.perf_counter() - t0, 2), "summary": surface.summary(),
            "run": surface.attrs.get("last_run")}
