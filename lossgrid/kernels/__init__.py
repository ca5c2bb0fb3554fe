"""Perturbation and filter-wise normalization kernels.

Every backend module here exposes the same functions with the same contract:

* ``EPS``: the guard of all-zero filters in ``|w| / (|d| + EPS)``.
* ``normalize_direction(d, w, norm)`` -> a new direction tensor, for one tensor
  of two or more dimensions (or a 1-D tensor treated as scalar filters, a 0-D
  tensor as one filter).
* ``row_offsets(shapes, norm)`` -> int64 ``[R + 1]``: the rows of a flat vector
  (tensors of ``shapes`` concatenated) that share one scale: one row per filter
  (slice along dim 0; one per scalar of 1-D and 0-D tensors) for ``filter``,
  one row per tensor otherwise.
* ``normalize_flat(d, w, offsets, norm)`` -> ``[P]``: ``normalize_direction`` of
  every tensor of a flat direction at once; equals concatenating the per-tensor
  results.
* ``fold_conv_bn(w, b, gamma, beta, mean, var, eps)`` -> BatchNorm folded into
  the preceding convolution, for ``K`` grid points (leading ``[K]`` dimension).
* ``perturb(base, dirs, coeffs, out=None)`` -> ``base + coeffs @ dirs`` for many
  grid points: ``base`` is ``[P]``, ``dirs`` ``[D, P]``, ``coeffs`` ``[K, D]``,
  result ``[K, P]`` (written into ``out`` when given).

:mod:`lossgrid.kernels.reference` (NumPy, float64) is the oracle;
:mod:`lossgrid.kernels.cpu` (torch, any device) is what the engine runs by default;
:mod:`lossgrid.kernels.cuda` (CuPy, float32 CUDA tensors) runs the CUDA source
``lossgrid_kernels.cu``. :func:`for_device` picks the backend for a device.
Importing this package never imports CuPy.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from types import ModuleType

import torch

from ..errors import ConfigError
from . import cpu, cuda
from .cpu import EPS, fold_conv_bn, normalize_direction, normalize_flat, perturb, row_offsets

__all__ = ["EPS", "fold_conv_bn", "for_device", "kernel_name", "normalize_direction", "normalize_flat", "perturb",
           "row_offsets"]

logger = logging.getLogger(__name__)


@functools.cache
def _cupy_usable() -> bool:
    """Whether CuPy imports and sees a GPU; probed once, on first need."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        cupy = importlib.import_module("cupy")
        return bool(cupy.cuda.is_available())
    except Exception as e:  # a broken install may raise anything on import
        logger.info("CuPy cannot be used (%s: %s); the torch kernels run instead", type(e).__name__, e)
        return False


def for_device(device: torch.device | str | int) -> ModuleType:
    """The kernel module for tensors on ``device``.

    :mod:`lossgrid.kernels.cuda` when the device is a CUDA device and CuPy with a
    GPU is usable (``pip install "lossgrid[gpu]"``); otherwise
    :mod:`lossgrid.kernels.cpu`, whose torch code runs on CUDA devices too. Note
    that the CuPy module computes in float32 only.

    Example:
        >>> kernels = for_device(weights.device)
        >>> points = kernels.perturb(base, dirs, coeffs)
    """
    device = torch.device(device)
    if device.type == "cuda" and _cupy_usable() and _compiles(device.index):
        return cuda
    return cpu


@functools.cache
def _compiles(index: int | None) -> bool:
    """Whether CuPy can compile the kernels for CUDA device ``index`` (a CuPy without NVRTC,
    or a driver too old for it, fails here once instead of at every launch)."""
    try:
        cuda.ensure_compiled(torch.device("cuda", index) if index is not None else torch.device("cuda"))
        return True
    except Exception as e:
        logger.warning("the CUDA kernels cannot be compiled (%s: %s); the torch kernels run instead",
                       type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return False


def kernel_name(module: ModuleType) -> str:
    """``"cupy"`` for :mod:`lossgrid.kernels.cuda`, ``"torch"`` for
    :mod:`lossgrid.kernels.cpu` (e.g. to record which one computed a surface)."""
    if module is cuda:
        return "cupy"
    if module is cpu:
        return "torch"
    raise ConfigError(f"{getattr(module, '__name__', module)!r} is not a lossgrid kernel backend",
                      hint="pass lossgrid.kernels.cpu or lossgrid.kernels.cuda (see for_device)")
