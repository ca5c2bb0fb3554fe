"""What a surface run checks before and around its loop: the output path, its identity (what a file
must match to be resumed), Hessian directions an existing file holds, and the loss error of a reduced
precision against fp32."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from .._files import check_output_path, same_file
from ..config import AdaptiveSpec, BatchNormSpec, CurvatureSpec, DirectionSpec, EvalSpec, GridSpec
from ..data import EvalData
from ..engine.batchnorm import identity as bn_identity
from ..engine.directions import SELECTION_KEYS, Directions, load_directions, same_selection
from ..engine.fingerprint import data_fingerprint
from ..engine.losses import LossFn
from ..engine.params import ParamLayout
from ..engine.precision import precision_error
from ..engine.runners import TorchRunner
from ..errors import ConfigError, SurfaceFileError
from .file import stored_identity

log = logging.getLogger(__name__)


def check_precision_error(model: nn.Module, layout: ParamLayout, base: torch.Tensor, dirs: torch.Tensor, data: EvalData,
                     loss_fn: LossFn, eval_spec: EvalSpec, coeffs: torch.Tensor, loss_k: np.ndarray,
                     bn_batches: list[Any] | None = None) -> dict[str, Any]:
    """Loss error of the run's precision against IEEE fp32 (the per-point torch loop)
    at the first points of a run: stored with the run, never hidden."""
    reference = None
    try:
        reference = TorchRunner(model, layout, data.x, data.y, loss_fn, batch_size=eval_spec.batch_size,
                                strategy="loop", device=base.device, precision="fp32", bn_batches=bn_batches)
        reference.set_directions(base, dirs)
        want = reference.evaluate_points(coeffs).loss
    except Exception as e:  # a check must not end a run whose points are fine (e.g. no memory for a 2nd copy)
        log.warning("could not measure the %s loss error against fp32: %s", eval_spec.precision, e)
        return {"precision": eval_spec.precision, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    finally:
        if reference is not None:
            reference.close()
    check = {"precision": eval_spec.precision, **precision_error(loss_k[:len(want)], want)}
    log.info("precision %s: max relative loss error %.3g against fp32 at %d point(s)", eval_spec.precision,
             check["max_rel_loss_error"], check["points"])
    return check


def check_writable(path: str, dir_file: str | os.PathLike | None = None, what: str = "surface file") -> None:
    """Fail early (before any work) if ``path`` cannot be written, or is the ``dir_file`` it
    would be computed on."""
    check_output_path(path, what, SurfaceFileError)
    if dir_file is not None and same_file(path, dir_file):
        raise ConfigError(f"--out {path} is the same file as --dir-file {os.fspath(dir_file)}",
                          f"the {what} would replace the directions it is computed on",
                          f"choose another --out (the {what} stores its directions anyway)")


def stored_hessian_directions(path: str, model: nn.Module, spec: DirectionSpec, ndim: int, model_fp: str,
                               data_fp: str, loss_desc: str) -> Directions | None:
    """The Hessian directions an existing surface file of the same model, data and direction
    settings holds, or ``None`` (no such file: the caller computes them)."""
    stored = stored_identity(path)
    if not stored:
        return None
    try:
        wanted = {"model_fingerprint": model_fp, "data_fingerprint": data_fp, "loss": loss_desc, "kind": "hessian",
                  "dir_type": spec.dir_type, "xnorm": spec.xnorm, "xignore": spec.xignore,
                  "ynorm": spec.y_norm if ndim == 2 else None, "yignore": spec.y_ignore if ndim == 2 else None}
        if any(stored.get(k) != v for k, v in wanted.items()):
            return None
        dirs = load_directions(path, model, spec.dir_type, ndim)
    except Exception as e:  # unreadable or foreign: the surface writer reports it properly
        log.info("not reusing the directions of %s: %s", path, e)
        return None
    if dirs.meta.get("kind") != "hessian" or int(dirs.meta.get("seed", -1)) != spec.seed:
        return None
    if not same_selection(model, dirs, spec):  # made for other tensors: this run computes its own
        return None
    log.info("resuming on the Hessian directions stored in %s", path)
    return dirs


def surface_identity(model: nn.Module, data: EvalData, grid: GridSpec, directions: Directions, eval_spec: EvalSpec,
                     fingerprints: tuple[str, str], loss_desc: str, model_description: str | None,
                     direction_spec: DirectionSpec, dir_file: str | os.PathLike | None, *,
                     curvature: CurvatureSpec | None = None, adaptive: AdaptiveSpec | None = None,
                     anchors: Any = None, population: EvalData | None = None,
                     batchnorm: BatchNormSpec = BatchNormSpec(), bn_batches: list[Any] | None = None,
                     bn_data: EvalData | None = None, tags: dict[str, Any] | None = None
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's identity (what decides its values: a file of another identity is not resumed) and the file's
    attributes (the identity's entries that are set, and descriptions that do not decide values)."""
    identity = {
        "model": model_description or type(model).__name__,
        "model_fingerprint": fingerprints[0],
        "data": data.description,
        "data_fingerprint": fingerprints[1],
        "samples": len(data),
        "loss": loss_desc,
        "directions": directions.fingerprint(),
        "x": str(grid.x),
        "y": str(grid.y) if grid.y is not None else None,
        **{k: directions.meta.get(k) for k in ("dir_type", "kind", "xnorm", "xignore", "ynorm", "yignore")},
        # only when set: files written before the selection existed stay resumable
        **{k: directions.meta[k] for k in SELECTION_KEYS if directions.meta.get(k) is not None},
    }
    if eval_spec.precision != "fp32":  # fp32 files written before precisions existed stay resumable
        identity["precision"] = eval_spec.precision
    if curvature is not None:
        identity["curvature"] = dataclasses.asdict(curvature)
    if adaptive is not None:
        identity["adaptive"] = dataclasses.asdict(adaptive)
    if anchors is not None and population is not None:  # the anchors' values are of the whole set
        identity["anchor_stride"] = anchors.stride
        if anchors.cubic:
            identity["anchor_interpolation"] = "cubic"
        identity["population_fingerprint"] = data_fingerprint(population)
    if bn_batches is not None:  # eval files (also those of older versions) stay resumable
        identity["bn"] = bn_identity(batchnorm, bn_batches)
    identity.update(tags or {})
    attrs = {k: v for k, v in identity.items() if v is not None}
    if data.population is not None:  # the standard errors are against this set (files of other runs differ)
        identity["se_population"] = int(data.population)
        attrs["se_population"] = int(data.population)
    # train_loss_se estimates the error against this set's mean (0: an infinite population)
    attrs.setdefault("se_population", 0)
    if bn_data is not None and bn_batches is not None:
        attrs.update(bn_data=bn_data.description)
    attrs.update(precision=eval_spec.precision, bn=batchnorm.policy, lossgrid_version=__version__,
                 seed=int(directions.meta.get("seed", direction_spec.seed)),
                 dir_file=os.fspath(dir_file) if dir_file else "")
    return identity, attrs
