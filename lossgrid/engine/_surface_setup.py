"""What a surface run checks and derives before and around its loop: the device, the
output path, fingerprints of model and data, Hessian directions an existing file holds,
the loss error of a reduced precision against fp32, and out-of-memory messages.
:mod:`lossgrid.engine.surface` re-exports the public names."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import check_output_path, same_file
from ..config import DirectionSpec, EvalSpec
from ..data import EvalData
from ..errors import ConfigError, ResourceError, SurfaceFileError
from ..inputs import tensors
from .device import DEVICE_TYPES, resolve_device  # noqa: F401 - re-exported
from .directions import Directions, load_directions, same_selection
from .losses import LossFn
from .params import ParamLayout
from .precision import precision_error
from .runners import TorchRunner
from .surface_file import stored_identity

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


def out_of_memory(e: BaseException, described: dict[str, Any]) -> ResourceError:
    k, batch = described.get("points_per_call"), described.get("batch_size")
    what = f"Out of memory while evaluating {k} grid point(s) per call"
    lower = f"lower --points-per-call (now {k})"
    if batch:
        what += f" in batches of {batch} samples"
        lower += f" or --batch-size (now {batch})"
    reason = str(e).strip().splitlines()[0] if str(e).strip() else "no memory left"
    return ResourceError(what, f"{type(e).__name__}: {reason}",
                         f"{lower}; the points done so far are saved: the same command with a lower setting resumes")


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


def data_fingerprint(data: EvalData) -> str:
    """A hash of an evaluation set's values; for several or named inputs also of their
    structure (which argument is which), so that swapping two inputs is a different set."""
    from ..inputs import is_tensor, named_tensors

    digest = fingerprint([*tensors(data.x), data.y])
    if is_tensor(data.x):  # as before inputs could be tuples or dicts: such files stay resumable
        return digest
    names = [name for name, _ in named_tensors(data.x)]
    return f"{digest}:{hashlib.blake2b(repr(names).encode(), digest_size=4).hexdigest()}"


def fingerprint(tensors: Any) -> str:
    h = hashlib.blake2b(digest_size=8)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
