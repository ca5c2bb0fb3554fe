"""Torch kernels (CPU or any torch device): the engine's default implementation."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from .reference import row_offsets

__all__ = ["EPS", "check_offsets", "fold_conv_bn", "normalize_direction", "normalize_flat", "perturb", "row_offsets"]

EPS = 1e-10  # as in the reference implementation: guards all-zero filters


def normalize_direction(d: torch.Tensor, w: torch.Tensor, norm: str) -> torch.Tensor:
    """Rescale direction ``d`` against weights ``w``; returns a new tensor.

    * ``filter``: each slice along dim 0 (an output filter, a Linear row, or one
      scalar of a 1-D tensor) gets the norm of the matching slice of ``w``.
    * ``layer``: the whole tensor gets the norm of ``w``.
    * ``weight``: ``d * w`` (elementwise).
    * ``none``: ``d`` unchanged.
    """
    if d.shape != w.shape:
        raise ConfigError(f"Direction of shape {tuple(d.shape)} does not match weights {tuple(w.shape)}")
    if norm == "none":
        return d.clone()
    if norm == "weight":
        return d * w
    if norm == "layer":
        return d * (w.norm() / (d.norm() + EPS))
    if norm == "filter":
        if d.dim() == 0:
            return d * (w.abs() / (d.abs() + EPS))
        d2 = d.reshape(d.shape[0], -1)
        w2 = w.reshape(w.shape[0], -1)
        scale = w2.norm(dim=1, keepdim=True) / (d2.norm(dim=1, keepdim=True) + EPS)
        return (d2 * scale).reshape(d.shape)
    raise ConfigError(f"Unknown normalization {norm!r}", hint="use filter, layer, weight or none")


def check_offsets(offsets: np.ndarray, size: int) -> np.ndarray:
    """Validate row boundaries for a flat vector of ``size`` elements (see
    :func:`row_offsets`) and return them as a contiguous int64 array."""
    arr = np.ascontiguousarray(offsets, dtype=np.int64)
    if arr.ndim != 1 or arr.size == 0 or arr[0] != 0 or arr[-1] != size or np.any(np.diff(arr) < 0):
        raise ConfigError(
            "Row offsets do not describe the flat direction",
            f"expected a non-decreasing 1-D sequence from 0 to {size}, got {arr.size} values",
            "build them with lossgrid.kernels.row_offsets(shapes, norm)",
        )
    return arr


def normalize_flat(d: torch.Tensor, w: torch.Tensor, offsets: np.ndarray, norm: str) -> torch.Tensor:
    """:func:`normalize_direction` of every tensor of a flat direction at once.

    ``d`` and ``w`` are flat ``[P]`` (tensors concatenated), ``offsets`` the row
    boundaries from :func:`row_offsets` for the same ``norm``. The result equals
    concatenating :func:`normalize_direction` over the tensors: consecutive rows
    of equal length are scaled together as a ``[rows, length]`` view, as the
    per-tensor code scales one tensor.

    Example:
        >>> shapes = [(4, 3), (4,)]
        >>> d, w = torch.randn(16), torch.randn(16)
        >>> out = normalize_flat(d, w, row_offsets(shapes, "filter"), "filter")
    """
    if d.shape != w.shape or d.dim() != 1:
        raise ConfigError(f"Expected flat direction and weights of one shape [P], got {tuple(d.shape)} "
                          f"and {tuple(w.shape)}")
    if norm == "none":
        return d.clone()
    if norm == "weight":
        return d * w
    if norm not in ("filter", "layer"):
        raise ConfigError(f"Unknown normalization {norm!r}", hint="use filter, layer, weight or none")
    offsets = check_offsets(offsets, d.shape[0])
    out = torch.empty_like(d)
    if norm == "layer":  # one row per tensor: the norm of the whole tensor
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
            out[a:b] = d[a:b] * (w[a:b].norm() / (d[a:b].norm() + EPS))
        return out
    for start, length, rows in _runs(offsets):
        if length:
            stop = start + length * rows
            d2 = d[start:stop].view(rows, length)
            w2 = w[start:stop].view(rows, length)
            scale = w2.norm(dim=1, keepdim=True) / (d2.norm(dim=1, keepdim=True) + EPS)
            out[start:stop] = (d2 * scale).reshape(-1)
    return out


def _runs(offsets: np.ndarray) -> list[tuple[int, int, int]]:
    """``(start, row_length, rows)`` of each run of consecutive rows of equal length."""
    lengths = np.diff(offsets)
    if lengths.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(lengths)) + 1
    firsts = np.concatenate(([0], breaks))
    counts = np.diff(np.concatenate((firsts, [lengths.size])))
    return [(int(offsets[f]), int(lengths[f]), int(n)) for f, n in zip(firsts, counts)]


def fold_conv_bn(weight: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor, beta: torch.Tensor,
                 mean: torch.Tensor, var: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the convolution (or Linear) before it, for
    ``K`` grid points at once.

    ``weight`` is ``[K, Cout, ...]``; ``bias``, ``gamma``, ``beta``, ``mean``, ``var``
    are ``[K, Cout]`` (``bias`` may be ``None``). Returns ``(weight', bias')`` with
    ``weight' = weight * s`` and ``bias' = beta + (bias - mean) * s`` where
    ``s = gamma / sqrt(var + eps)``. A negative perturbed variance gives NaN, as
    the unfolded BatchNorm does.
    """
    scale = gamma / torch.sqrt(var + eps)
    shape = scale.shape + (1,) * (weight.dim() - scale.dim())
    folded_w = weight * scale.reshape(shape)
    b = bias if bias is not None else torch.zeros_like(mean)
    return folded_w, beta + (b - mean) * scale


def perturb(base: torch.Tensor, dirs: torch.Tensor, coeffs: torch.Tensor,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Weights of ``K`` grid points: ``base[None] + coeffs @ dirs``.

    Args:
        base: flat weights ``[P]``.
        dirs: flat directions ``[D, P]`` (``D`` = 1 or 2).
        coeffs: grid coefficients ``[K, D]``.
        out: optional ``[K, P]`` buffer to write into.
    """
    coeffs = coeffs.to(dtype=dirs.dtype, device=dirs.device)
    if out is None:
        return torch.addmm(base.unsqueeze(0), coeffs, dirs)
    return torch.addmm(base.unsqueeze(0), coeffs, dirs, out=out)
