"""The gallery: the paper's two comparisons, trained, measured and drawn from scratch.

Li et al. (2018) show that (Figs. 5, 8) a deep residual network without shortcut
connections has a far less convex landscape than its residual twin, while at small
depth the two look alike, and that (Fig. 3) on filter-normalized directions a
large-batch minimum is sharper than a small-batch one. :func:`run_gallery` trains
CIFAR ResNets (:func:`lossgrid.zoo.resnet_cifar`) with and without shortcuts at
two depths, and one ResNet with a small and a large batch, with the paper's recipe
(:func:`lossgrid.train.recipe.train_model`); computes the 2D filter-normalized
surface of each (biases and BatchNorm ignored, on a subset of the training set);
renders side-by-side contours and 3D surfaces on a shared scale
(:mod:`lossgrid.gallery.figures`); and writes every number to ``gallery.json``
and an ``index.html``.

The numbers are measured, never set by hand:

* convexity, from the surface itself: at each interior grid point the 2x2
  Hessian of the loss in the plane (central finite differences, exact for a
  quadratic) with eigenvalues ``lmin <= lmax``. ``nonconvex_share`` is the share
  of points within ``convexity_radius`` of the origin where ``lmin < 0`` (below
  ``-1e-3`` times the median ``|lmax|``, above rounding); ``negative_curvature``
  is the mean of ``max(-lmin, 0) / max(|lmin|, |lmax|)`` there (0 convex, 1 the
  negative curvature as large as the positive; the paper's Fig. 8 maps
  ``|min/max|`` of the full Hessian, of which the slice's is a projection: a
  non-convex slice proves a negative eigenvalue, a convex one proves nothing).
* sharpness: ``loss_rise``, the mean loss on the circle of radius ``radius``
  (bilinear on the grid) minus the loss at the minimum -- scale-free thanks to
  filter normalization, the paper's measure; ``center_curvature``, the mean second
  derivative of the slice at the origin; and ``top_eig``, the largest eigenvalue
  of the full Hessian (Lanczos, :mod:`lossgrid.hessian.operator`), which is NOT
  scale-free: BatchNorm makes the loss invariant to the scale of most weights, and
  smaller weights (more steps of weight decay) raise it.

The verdicts per seed: ``deep_noshort_less_convex`` compares ``nonconvex_share`` of
the deep pair, ``large_batch_sharper`` compares ``loss_rise`` of the batch pair;
both are reported as found, whichever way they go.

Example:
    >>> result = run_gallery("gallery", size="ci")        # doctest: +SKIP
    >>> result["verdicts"]["large_batch_sharper"]          # doctest: +SKIP
    [True]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import __version__
from .._files import atomic_output, output_dir
from .._outdir import StagedDir
from ..config import Axis, DirectionSpec, EvalSpec, GridSpec
from ..data import EvalData, load_data
from ..errors import ConfigError
from ..hessian.operator import hessian_operator, lanczos_eigs
from ..surface.compute import compute_surface
from ..surface.file import Surface
from ..train.recipe import train_model
from ..zoo import resnet_cifar
from . import figures as draw
from .figures import index_html
from .slice_metrics import (  # noqa: F401 - VMAX re-exported: part of the gallery's API
    VMAX,
    convexity,
    loss_rise,
    negative_curvature_ratio,
    shared_scale,
    slice_hessian,
)

log = logging.getLogger(__name__)

SIZES = ("ci", "full")
#: contour levels and 3D z range stop here (the reference's plot_2D default vmax), or at the data's maximum
#: ``progress(stage, done, total)``: ``stage`` names the model and step (``train resnet20, seed 0``)
StageProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class GalleryConfig:
    """What the gallery trains and measures (saved in ``gallery.json``); see :func:`gallery_config`."""

    size: str
    train_data: str
    test_data: str
    in_channels: int
    depths: tuple[int, int]
    epochs: int
    batch_size: int
    batch_depth: int
    small_batch: int
    large_batch: int
    augment: bool
    train_samples: int | None
    grid: int
    span: float
    surface_samples: int
    radius: float
    convexity_radius: float
    hessian_iters: int
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.grid < 5 or self.grid % 2 == 0:
            raise ConfigError(f"Gallery grid of {self.grid} points per axis",
                              "it needs an odd count of at least 5 (the origin on the grid, curvature inside)")
        if not 0 < self.radius <= self.span or not 0 < self.convexity_radius:
            raise ConfigError(f"Gallery radius {self.radius} outside the grid's span {self.span}")
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs} is invalid", hint="pass --epochs 1 or more")

    def models(self) -> list[dict[str, Any]]:
        """The networks: name, depth, shortcuts, batch size and the comparison they belong to."""
        shallow, deep = self.depths
        out = [{"name": f"resnet{d}{'' if s else '_noshort'}", "depth": d, "shortcuts": s,
                "batch_size": self.batch_size, "group": "shortcuts", "role": f"{'deep' if d == deep else 'shallow'}"
                f"{'' if s else '_noshort'}"} for d in (shallow, deep) for s in (True, False)]
        for role, bs in (("small_batch", self.small_batch), ("large_batch", self.large_batch)):
            out.append({"name": f"resnet{self.batch_depth}_bs{bs}", "depth": self.batch_depth, "shortcuts": True,
                        "batch_size": bs, "group": "batch", "role": role})
        return out


def gallery_config(size: str = "full", data_dir: str | os.PathLike | None = None, epochs: int | None = None,
                   device: str = "cpu") -> GalleryConfig:
    """The gallery's settings for ``size`` (``ci``: seconds, for tests; ``full``: the figures) on
    the bundled digits, or on CIFAR-10 in ``data_dir`` (the "python version" batches).

    Digits (8x8, 1,437 training images): ResNet-8 and -20 (``ci``: -8 and -14), the batch
    pair ResNet-20 with batches 16 and 1024 (``ci``: ResNet-8, 32 and 1024), 20 epochs
    (``ci``: 2), 21x21 surfaces on [-1, 1] over 512 training images (``ci``: 7x7, 128).
    Deeper nets without shortcuts do not train on digits in minutes (ResNet-32-noshort
    reaches 72% training accuracy in 20 epochs, ResNet-56-noshort 29%, 60% in 40), so on
    digits ResNet-20 is the deep net.
    CIFAR-10 ``full`` is the paper's setting: ResNet-20/56, batches 128 and 8192, 300 epochs
    with augmentation, 21x21 surfaces over 2,000 training images -- a GPU job of hours
    (``device="cuda"``); ``ci`` trains on 128 images for 1 epoch.
    """
    if size not in SIZES:
        raise ConfigError(f"Unknown gallery size {size!r}", hint=f"use one of {', '.join(SIZES)}")
    ci = size == "ci"
    if data_dir is None:
        base = dict(train_data="digits:train", test_data="digits:test", in_channels=1, augment=False,
                    train_samples=None)
        if ci:
            cfg = dict(depths=(8, 14), epochs=2, batch_size=64, batch_depth=8, small_batch=32, large_batch=1024,
                       grid=7, surface_samples=128, hessian_iters=8)
        else:
            cfg = dict(depths=(8, 20), epochs=20, batch_size=64, batch_depth=20, small_batch=16, large_batch=1024,
                       grid=21, surface_samples=512, hessian_iters=20)
    else:
        path = os.fspath(data_dir)
        if not os.path.isdir(path):
            raise ConfigError(f"CIFAR-10 directory {path} does not exist",
                              hint="pass --data with the folder holding data_batch_1 ... data_batch_5 and test_batch")
        base = dict(train_data=f"cifar10:{path}", test_data=f"cifar10:{path}:test", in_channels=3, augment=True)
        if ci:
            cfg = dict(depths=(8, 14), epochs=1, batch_size=32, batch_depth=8, small_batch=16, large_batch=128,
                       train_samples=128, grid=5, surface_samples=32, hessian_iters=4)
        else:
            cfg = dict(depths=(20, 56), epochs=300, batch_size=128, batch_depth=20, small_batch=128,
                       large_batch=8192, train_samples=None, grid=21, surface_samples=2000, hessian_iters=20)
    if epochs is not None:
        cfg["epochs"] = epochs
    return GalleryConfig(size=size, span=1.0, radius=0.5, convexity_radius=1.0, device=device, **base, **cfg)


def run_gallery(out_dir: str | os.PathLike, *, size: str = "full", data_dir: str | os.PathLike | None = None,
                seeds: int | Sequence[int] = 1, epochs: int | None = None, device: str = "cpu",
                progress: StageProgress | None = None, config: GalleryConfig | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Train, measure and draw the gallery into ``out_dir`` for each seed (``seeds``: a count,
    seeds ``0 ... N-1``, or a list); returns what ``gallery.json`` holds.

    Per seed, in ``out_dir/seed_<s>/``: ``models/<name>/final.pt`` and ``train.json``,
    ``surfaces/<name>.h5``, and the figures ``shortcuts_contour.png``, ``shortcuts_3d.png``,
    ``shortcuts_convexity.png``, ``batch_contour.png``, ``batch_3d.png``, ``batch_1d.png``.
    ``out_dir/index.html`` shows them with the table of numbers. An ``out_dir`` holding an
    earlier gallery is refused unless ``overwrite``; then the earlier gallery stays whole until
    this one is complete, and is replaced then (:class:`~lossgrid._outdir.StagedDir`).
    """
    cfg = config or gallery_config(size, data_dir, epochs, device)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list or any(s < 0 for s in seed_list):
        raise ConfigError(f"Seeds {seeds!r} are invalid", hint="pass --seeds 1 or more")
    out = os.fspath(out_dir)
    t0 = time.perf_counter()
    with StagedDir(out, "gallery", is_gallery_file, overwrite) as staged:
        runs = {str(seed): _run_seed(cfg, seed, os.path.join(staged.work, f"seed_{seed}"), progress)
                for seed in seed_list}
        verdicts = {key: [runs[str(s)]["verdicts"][key]["holds"] for s in seed_list]
                    for key in ("deep_noshort_less_convex", "large_batch_sharper")}
        result = {"lossgrid_version": __version__, "config": dataclasses.asdict(cfg), "seeds": seed_list,
                  "torch_threads": torch.get_num_threads(), "runs": staged.relocated(runs), "verdicts": verdicts,
                  "seconds": round(time.perf_counter() - t0, 2), "out": out,
                  "paths": {"json": os.path.join(out, "gallery.json"), "index": os.path.join(out, "index.html")}}
        _write_index(result, staged.work)
    return result


def is_gallery_file(name: str) -> bool:
    """Whether an entry of a gallery's directory is one of its results."""
    return name in ("gallery.json", "index.html") or name.startswith("seed_")


def _write_index(result: dict[str, Any], folder: str) -> None:
    """``gallery.json`` and ``index.html`` into ``folder`` (the gallery's directory, or its staging)."""

    with atomic_output(os.path.join(folder, "gallery.json"), "gallery numbers") as tmp, open(tmp, "w") as fh:
        json.dump(result, fh, indent=2, sort_keys=True)
        fh.write("\n")
    with atomic_output(os.path.join(folder, "index.html"), "gallery page") as tmp, open(tmp, "w") as fh:
        fh.write(index_html(result))


def _run_seed(cfg: GalleryConfig, seed: int, out: str, progress: StageProgress | None) -> dict[str, Any]:

    train = load_data(cfg.train_data, cfg.train_samples, sample_seed=0)
    test = load_data(cfg.test_data)
    subset = _subset(train, cfg.surface_samples)
    models, surfaces = {}, {}
    for spec in cfg.models():
        entry, surface = _one_model(cfg, spec, seed, train, test, subset, out, progress)
        models[spec["name"]], surfaces[spec["name"]] = entry, surface
    figures, scales = _figures(cfg, models, surfaces, out)
    return {"models": models, "figures": figures, "scales": scales, "verdicts": _verdicts(cfg, models)}


def _subset(data: Any, samples: int) -> Any:
    """A seeded subset of the training samples, drawn as :func:`lossgrid.data.load_data` draws."""

    if samples >= len(data):
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:samples].sort().values
    return EvalData(data.x[idx].contiguous(), data.y[idx].contiguous(),
                    f"{data.description} ({samples} of {len(data)} samples, seed 0)")


def _one_model(cfg: GalleryConfig, spec: dict[str, Any], seed: int, train: Any, test: Any, subset: Any, out: str,
               progress: StageProgress | None) -> tuple[dict[str, Any], Surface]:

    name = spec["name"]
    torch.manual_seed(seed)  # the initial weights
    model = resnet_cifar(spec["depth"], spec["shortcuts"], in_channels=cfg.in_channels)
    stage = f"{name}, seed {seed}"
    bar = (lambda done, total: progress(f"train {stage}", done, total)) if progress else None
    result = train_model(model, train, epochs=cfg.epochs, batch_size=min(spec["batch_size"], len(train)),
                         lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, milestones=cfg.milestones,
                         gamma=cfg.gamma, seed=seed, test_data=test, progress=bar, augment=cfg.augment,
                         device=cfg.device)
    model_dir = os.path.join(out, "models", name)
    output_dir(model_dir, "gallery")
    with atomic_output(os.path.join(model_dir, "final.pt"), "checkpoint") as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    record = {"model": f"lossgrid.zoo.resnet_cifar({spec['depth']}, shortcuts={spec['shortcuts']}, "
                       f"in_channels={cfg.in_channels})", "data": train.description, **result.as_dict()}
    with atomic_output(os.path.join(model_dir, "train.json"), "training record") as tmp, open(tmp, "w") as fh:
        json.dump(record, fh, indent=2, sort_keys=True)
    output_dir(os.path.join(out, "surfaces"), "gallery")
    axis = Axis(-cfg.span, cfg.span, cfg.grid)
    t = time.perf_counter()
    surface = compute_surface(model, subset, GridSpec(axis, axis), os.path.join(out, "surfaces", f"{name}.h5"),
                              direction_spec=DirectionSpec(seed=seed), eval_spec=EvalSpec(device=cfg.device),
                              overwrite=True, model_description=f"{name} ({record['model']}), seed {seed}",
                              progress=(lambda d, n: progress(f"surface {stage}", d, n)) if progress else None)
    surface_seconds = time.perf_counter() - t
    last = result.history[-1]
    entry = {**spec, "seed": seed, "parameters": sum(p.numel() for p in model.parameters()),
             "train_loss": last["train_loss"], "train_acc": last["train_acc"], "test_loss": last["test_loss"],
             "test_acc": last["test_acc"], "train_seconds": round(result.seconds, 2),
             "surface_seconds": round(surface_seconds, 2), "center_loss": surface.summary()["center_loss"],
             "center_acc": surface.summary()["center_acc"], "min_loss": surface.summary()["min_loss"],
             **convexity(surface, cfg.convexity_radius), "loss_rise": loss_rise(surface, cfg.radius)}
    lmin, lmax = slice_hessian(surface)
    mid = (cfg.grid // 2, cfg.grid // 2)
    entry["center_curvature"] = float((lmin[mid] + lmax[mid]) / 2)
    entry["top_eig"] = None
    if spec["group"] == "batch":

        if progress:
            progress(f"hessian {stage}", 0, 1)
        t = time.perf_counter()
        op = hessian_operator(model, subset, device=cfg.device)
        entry["top_eig"] = float(lanczos_eigs(op, k=1, iters=cfg.hessian_iters, seed=seed).values[0])
        entry["hessian_seconds"] = round(time.perf_counter() - t, 2)
        if progress:
            progress(f"hessian {stage}", 1, 1)
    return entry, surface


def _verdicts(cfg: GalleryConfig, models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_role = {m["role"]: m for m in models.values()}
    short, noshort = by_role["deep"], by_role["deep_noshort"]
    small, large = by_role["small_batch"], by_role["large_batch"]

    def gt(a: Any, b: Any) -> bool | None:
        return None if a is None or b is None else bool(a > b)

    return {
        "deep_noshort_less_convex": {
            "holds": gt(noshort["nonconvex_share"], short["nonconvex_share"]),
            "measure": f"nonconvex_share within radius {cfg.convexity_radius}",
            "values": {noshort["name"]: noshort["nonconvex_share"], short["name"]: short["nonconvex_share"]},
            "also": {"negative_curvature": gt(noshort["negative_curvature"], short["negative_curvature"])}},
        "large_batch_sharper": {
            "holds": gt(large["loss_rise"], small["loss_rise"]),
            "measure": f"loss_rise at filter-normalized radius {cfg.radius}",
            "values": {large["name"]: large["loss_rise"], small["name"]: small["loss_rise"]},
            "also": {"center_curvature": gt(large["center_curvature"], small["center_curvature"]),
                     "top_eig": gt(large["top_eig"], small["top_eig"])}},
    }


def _figures(cfg: GalleryConfig, models: dict[str, dict[str, Any]], surfaces: dict[str, Surface],
             out: str) -> tuple[dict[str, str], dict[str, Any]]:

    shallow, deep = cfg.depths
    pair = [f"resnet{d}{suffix}" for d in (shallow, deep) for suffix in ("", "_noshort")]
    batch = [m["name"] for m in models.values() if m["group"] == "batch"]
    titles = {n: f"{n}\nloss {models[n]['center_loss']:.3g} (train subset), test acc {models[n]['test_acc']:.1f}%"
              for n in models}
    scales = {"shortcuts": shared_scale([surfaces[n] for n in pair]),
              "batch": shared_scale([surfaces[n] for n in batch])}
    p = {k: os.path.join(out, f"{k}.png") for k in ("shortcuts_contour", "shortcuts_3d", "shortcuts_convexity",
                                                    "batch_contour", "batch_3d", "batch_1d")}
    sc, bt = scales["shortcuts"], scales["batch"]
    draw.contour_panels([surfaces[n] for n in pair], [titles[n] for n in pair], p["shortcuts_contour"], sc["levels"],
                        (2, 2), "with (left) and without (right) shortcuts, shared contour levels")
    draw.surface_panels([surfaces[n] for n in pair], pair, p["shortcuts_3d"], tuple(sc["zlim"]), (2, 2),
                        "with (left) and without (right) shortcuts, shared z range")
    maps = []
    for n in pair:
        lmin, lmax = slice_hessian(surfaces[n])
        maps.append((surfaces[n].xcoordinates, surfaces[n].ycoordinates, negative_curvature_ratio(lmin, lmax)))
    draw.curvature_panels(maps, [f"{n}: {100 * (models[n]['nonconvex_share'] or 0):.0f}% non-convex" for n in pair],
                          p["shortcuts_convexity"], (2, 2), "negative curvature of the 2D slices")
    draw.contour_panels([surfaces[n] for n in batch], [titles[n] for n in batch], p["batch_contour"], bt["levels"],
                        (1, 2), "small (left) and large (right) batch, shared contour levels")
    draw.surface_panels([surfaces[n] for n in batch], batch, p["batch_3d"], tuple(bt["zlim"]), (1, 2),
                        "small (left) and large (right) batch, shared z range")
    draw.slice_curves([surfaces[n] for n in batch], batch, p["batch_1d"], bt["zlim"][1],
                      "loss through the minimum along both filter-normalized directions")
    return p, scales

