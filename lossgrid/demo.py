"""The embedded demo: train a small residual CNN on the bundled digits in
seconds, then compute and render its filter-normalized 2D loss surface
(:func:`run_demo`) or its optimization path on the PCA plane of its checkpoints
(:func:`run_trajectory_demo`).

Example:
    >>> from lossgrid.demo import run_demo, run_trajectory_demo
    >>> paths = run_demo("demo_out")             # doctest: +SKIP
    >>> paths = run_trajectory_demo("demo_out")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._files import atomic_output
from ._outdir import StagedDir
from .config import DirectionSpec, EvalSpec, GridSpec
from .data import EvalData, load_data
from .errors import MissingBackendError
from .plot import plot_surface
from .surface.compute import compute_surface
from .train.track import Tracker
from .trajectory.compute import compute_trajectory, path_grid, path_losses, save_trajectory
from .zoo import resnet_digits

DEMO_MODEL = "lossgrid.zoo:resnet_digits"
#: what a demo writes into its directory (an earlier demo's results, which a new one replaces only with overwrite)
DEMO_FILES = ("model.pt", "surface.h5", "contour.png", "surface3d.png", "surface.html", "checkpoints",
              "trajectory.h5", "trajectory_surface.h5", "trajectory.png")


def is_demo_file(name: str) -> bool:
    return name in DEMO_FILES


def train_demo_model(data: EvalData, epochs: int = 12, seed: int = 0, batch_size: int = 64,
                     on_epoch: Callable[[int, nn.Module], Any] | None = None) -> nn.Module:
    """Train :func:`lossgrid.zoo.resnet_digits` on ``data`` with SGD + momentum.

    ``on_epoch(epoch, model)`` is called with epoch 0 before training (the initial
    weights) and after each epoch ``1 ... epochs``, the model in train mode
    (a :meth:`lossgrid.train.track.Tracker.step`, say).
    """

    torch.manual_seed(seed)
    model = resnet_digits()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=epochs * -(-len(data) // batch_size))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    if on_epoch is not None:
        on_epoch(0, model)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(data), generator=gen)
        for start in range(0, len(data), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(data.x[idx]), data.y[idx])
            loss.backward()
            opt.step()
            sched.step()
        if on_epoch is not None:
            on_epoch(epoch, model)
    return model.eval()


def run_demo(out_dir: str | os.PathLike, grid: str = "-1:1:31", epochs: int = 12, seed: int = 0,
             progress: Any = None, overwrite: bool = False, eval_spec: EvalSpec = EvalSpec()) -> dict[str, Any]:
    """Train, save the model's state_dict to ``out_dir/model.pt`` (a checkpoint for
    ``lossgrid hessian``/``audit --model lossgrid.zoo:resnet_digits``), compute the
    surface into ``out_dir/surface.h5``, render ``contour.png``, ``surface3d.png``
    (log scale) and ``surface.html`` (if plotly is installed).

    ``out_dir`` holding an earlier demo's files is refused unless ``overwrite``; then they
    are replaced once this demo has written all of its own (:class:`~lossgrid._outdir.StagedDir`).

    Returns a dict with the written paths, timings and the surface summary.
    """
    with StagedDir(out_dir, "demo", is_demo_file, overwrite) as out:
        result = _surface_demo(out.work, grid, epochs, seed, progress, eval_spec)
    return out.relocated(result)


def _surface_demo(out_dir: str, grid: str, epochs: int, seed: int, progress: Any,
                  eval_spec: EvalSpec) -> dict[str, Any]:

    t0 = time.perf_counter()
    train = load_data("digits:train")
    model = train_demo_model(train, epochs=epochs, seed=seed)
    t_train = time.perf_counter() - t0
    model_path = os.path.join(out_dir, "model.pt")
    with atomic_output(model_path, "demo checkpoint") as tmp:  # for lossgrid hessian/audit on the same model
        torch.save(model.state_dict(), tmp)
    surface_path = os.path.join(out_dir, "surface.h5")
    surface = compute_surface(model, train, GridSpec.parse(grid, grid), surface_path,
                              direction_spec=DirectionSpec(seed=seed), eval_spec=eval_spec, progress=progress,
                              model_description=f"{DEMO_MODEL} trained {epochs} epochs (seed {seed})")
    t_surface = time.perf_counter() - t0 - t_train
    paths = {"model": model_path, "surface": surface_path,
             "contour": plot_surface(surface, os.path.join(out_dir, "contour.png")),
             "surface3d": plot_surface(surface, os.path.join(out_dir, "surface3d.png"), kind="surface3d")}
    skipped = {}
    try:
        paths["html"] = plot_surface(surface, os.path.join(out_dir, "surface.html"), kind="html")
    except MissingBackendError as e:  # plotly is an optional extra
        skipped["html"] = str(e)
    return {"paths": paths, "skipped": skipped, "train_seconds": round(t_train, 2),
            "surface_seconds": round(t_surface, 2),
            "total_seconds": round(time.perf_counter() - t0, 2), "summary": surface.summary(),
            "run": surface.attrs.get("last_run")}


def run_trajectory_demo(out_dir: str | os.PathLike, num: int = 31, grid: str | None = None, epochs: int = 12,
                        seed: int = 0, progress: Any = None, overwrite: bool = False,
                        eval_spec: EvalSpec = EvalSpec()) -> dict[str, Any]:
    """Train the demo model under a :class:`~lossgrid.train.track.Tracker` (a checkpoint of
    the initial weights and of every epoch in ``out_dir/checkpoints``, a 1D landscape
    per epoch in memory), find the PCA plane of that path
    (:func:`~lossgrid.trajectory.compute.compute_trajectory`, into
    ``out_dir/trajectory.h5``), compute the surface on that plane around the final
    model (``out_dir/trajectory_surface.h5``; the PCA directions used as they are,
    unnormalized, as ``--xnorm none``) and render its contour with the path
    overlaid (``out_dir/trajectory.png``).

    Args:
        num: points per axis; the axes span the path and the origin plus a 20% margin
            (:func:`~lossgrid.trajectory.compute.path_grid`).
        grid: ``MIN:MAX:NUM`` for both axes instead of the fitted span.

    ``out_dir`` holding an earlier demo's files is refused unless ``overwrite``, as in :func:`run_demo`.

    Returns a dict with the written paths, timings (``train_seconds`` includes
    ``tracking_seconds``), the explained variance ratio of the plane, the loss at
    each checkpoint's projection (``path_losses``; ``final_loss`` at the origin),
    the surface summary and the tracker's numbers per epoch (``tracked``).
    """
    with StagedDir(out_dir, "demo", is_demo_file, overwrite) as out:
        result = _trajectory_demo(out, num, grid, epochs, seed, progress, eval_spec)
    return out.relocated(result)


def _trajectory_demo(out: StagedDir, num: int, grid: str | None, epochs: int, seed: int, progress: Any,
                     eval_spec: EvalSpec) -> dict[str, Any]:
    """The trajectory demo, written into ``out.work`` (the trajectory file names its checkpoints where
    they will be once the demo is published)."""
    out_dir = out.work

    t0 = time.perf_counter()
    train = load_data("digits:train")
    trackers: list[Tracker] = []
    t_track = 0.0

    def track(epoch: int, model: nn.Module) -> None:
        nonlocal t_track
        t = time.perf_counter()
        if not trackers:  # the model exists only once training starts
            trackers.append(Tracker(model, train, out_dir, seed=seed))
        trackers[0].step(epoch)
        t_track += time.perf_counter() - t

    model = train_demo_model(train, epochs=epochs, seed=seed, on_epoch=track)
    tracker = trackers[0]
    checkpoints = tracker.checkpoints
    t_train = time.perf_counter() - t0

    # a fresh copy of the architecture: compute_trajectory loads every checkpoint into it
    traj = compute_trajectory(resnet_digits(), checkpoints)
    trajectory_path = os.path.join(out_dir, "trajectory.h5")
    save_trajectory(trajectory_path, dataclasses.replace(traj, paths=out.relocated(traj.paths),
                                                         final=out.final_path(traj.final)))
    t_trajectory = time.perf_counter() - t0 - t_train

    x_text, y_text = (grid, grid) if grid is not None else path_grid(traj, margin=0.2, num=num)
    surface_path = os.path.join(out_dir, "trajectory_surface.h5")
    # the trained model is the last checkpoint, the trajectory's final point (0, 0)
    surface = compute_surface(model, train, GridSpec.parse(x_text, y_text), surface_path,
                              directions=traj.directions, eval_spec=eval_spec, progress=progress,
                              model_description=f"{DEMO_MODEL} trained {epochs} epochs (seed {seed})")
    # the loss at each checkpoint's projection, by the same engine: colors the path on the contour's scale
    along = path_losses(model, train, traj, eval_spec=eval_spec, surface=surface)
    t_surface = time.perf_counter() - t0 - t_train - t_trajectory
    plot_path = plot_surface(surface, os.path.join(out_dir, "trajectory.png"), trajectory=traj, path_loss=along)
    return {"paths": {"checkpoints": os.path.join(tracker.checkpoint_dir or out_dir, "epoch_*.pt"),
                      "trajectory": trajectory_path, "surface": surface_path, "plot": plot_path},
            "checkpoints": len(checkpoints), "explained_variance_ratio": [float(v) for v in
                                                                          traj.explained_variance_ratio],
            "grid": [x_text, y_text], "final_loss": float(along[traj.paths.index(traj.final)]),
            "path_losses": [float(v) for v in along], "train_seconds": round(t_train, 2),
            "tracking_seconds": round(t_track, 2),
            "trajectory_seconds": round(t_trajectory, 2), "surface_seconds": round(t_surface, 2),
            "total_seconds": round(time.perf_counter() - t0, 2), "summary": surface.summary(),
            "run": surface.attrs.get("last_run"), "tracked": tracker.history}
