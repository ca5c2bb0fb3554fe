"""NumPy float64 reference of the kernel contract (the oracle for every backend)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

EPS = 1e-10
NORMS = ("filter", "layer", "weight", "none")


def normalize_direction(d: np.ndarray, w: np.ndarray, norm: str) -> np.ndarray:
    """Reference of :func:`lossgrid.kernels.cpu.normalize_direction`."""
    d = np.asarray(d, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if norm == "none":
        return d.copy()
    if norm == "weight":
        return d * w
    if norm == "layer":
        return d * (np.linalg.norm(w) / (np.linalg.norm(d) + EPS))
    if norm == "filter":
        if d.ndim == 0:
            return d * (abs(w) / (abs(d) + EPS))
        out = np.empty_like(d)
        for i in range(d.shape[0]):
            out[i] = d[i] * (np.linalg.norm(w[i]) / (np.linalg.norm(d[i]) + EPS))
        return out
    raise ValueError(norm)


def row_offsets(shapes: Sequence[Sequence[int]], norm: str) -> np.ndarray:
    """Boundaries of the rows of a flat vector (tensors of ``shapes`` concatenated)
    that share one scale: row ``r`` is ``[offsets[r], offsets[r + 1])``.

    * ``filter``: one row per slice along dim 0 of each tensor; a 1-D tensor gives
      one row per scalar and a 0-D tensor one row, as :func:`normalize_direction`.
    * ``layer``, ``weight``, ``none``: one row per tensor (``weight`` and ``none``
      do not use rows; the offsets then just mark the tensors).

    Returns an int64 array ``[R + 1]`` starting at 0 and ending at the total size.

    Example:
        >>> row_offsets([(2, 3), (4,), ()], "filter").tolist()
        [0, 3, 6, 7, 8, 9, 10, 11]
    """
    if norm not in NORMS:
        raise ConfigError(f"Unknown normalization {norm!r}", hint="use filter, layer, weight or none")
    sizes: list[np.ndarray] = []
    for shape in shapes:
        numel = int(np.prod(shape, dtype=np.int64))
        if norm == "filter" and len(shape) >= 1:
            rows = int(shape[0])
            sizes.append(np.full(rows, numel // rows if rows else 0, dtype=np.int64))
        else:
            sizes.append(np.array([numel], dtype=np.int64))
    offsets = np.zeros(1 + sum(len(s) for s in sizes), dtype=np.int64)
    if len(offsets) > 1:
        np.cumsum(np.concatenate(sizes), out=offsets[1:])
    return offsets


def normalize_flat(d: np.ndarray, w: np.ndarray, offsets: np.ndarray, norm: str) -> np.ndarray:
    """Reference of :func:`lossgrid.kernels.cpu.normalize_flat`: one row at a time."""
    d = np.asarray(d, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if norm == "none":
        return d.copy()
    if norm == "weight":
        return d * w
    if norm not in ("filter", "layer"):
        raise ValueError(norm)
    out = np.empty_like(d)
    for a, b in zip(offsets[:-1], offsets[1:]):
        out[a:b] = d[a:b] * (np.linalg.norm(w[a:b]) / (np.linalg.norm(d[a:b]) + EPS))
    return out


def fold_conv_bn(weight, bias, gamma, beta, mean, var, eps):  # type: ignore[no-untyped-def]
    """Reference of :func:`lossgrid.kernels.cpu.fold_conv_bn`, one point and one
    output channel at a time."""
    weight = np.asarray(weight, dtype=np.float64)
    k, cout = weight.shape[:2]
    w_out = np.empty_like(weight)
    b_out = np.empty((k, cout))
    for i in range(k):
        for c in range(cout):
            s = gamma[i][c] / np.sqrt(var[i][c] + eps)
            w_out[i, c] = weight[i, c] * s
            b = 0.0 if bias is None else bias[i][c]
            b_out[i, c] = beta[i][c] + (b - mean[i][c]) * s
    return w_out, b_out


def perturb(base: np.ndarray, dirs: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Reference of :func:`lossgrid.kernels.cpu.perturb`, one point at a time."""
    base = np.asarray(base, dtype=np.float64)
    dirs = np.asarray(dirs, dtype=np.float64)
    out = np.empty((len(coeffs), base.size))
    for k, c in enumerate(np.asarray(coeffs, dtype=np.float64)):
        point = base.copy()
        for j in range(dirs.shape[0]):
            point += c[j] * dirs[j]
        out[k] = point
    return out
