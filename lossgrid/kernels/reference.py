"""NumPy float64 reference of the kernel contract (the oracle for every backend)."""

from __future__ import annotations

import numpy as np

EPS = 1e-10


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
