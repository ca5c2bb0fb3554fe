"""Shape measures of a 2D loss surface slice, computed from its grid values alone.

* :func:`slice_hessian`: at each interior grid point the 2x2 Hessian of the slice by
  central finite differences, and its eigenvalues ``lmin <= lmax``;
* :func:`convexity`: the share of points within a radius of the origin where the
  slice curves down in some direction (``lmin < 0``: it proves the surface is not
  convex there; ``lmin >= 0`` does not prove it is) and the mean negative-curvature ratio;
* :func:`loss_rise`: the mean loss on a circle of a filter-normalized radius around the
  origin minus the loss at the origin (a sharpness measure that is scale-free across
  models with filter-normalized directions);
* :func:`shared_scale`: contour levels and a z range shared by surfaces drawn side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..surface.file import Surface

VMAX = 10.0


def slice_hessian(surface: Surface) -> tuple[np.ndarray, np.ndarray]:
    """``(lmin, lmax)``: eigenvalues of the 2x2 Hessian of the loss in the plane at every grid
    point, by central differences (NaN on the border and where a neighbour is missing)."""
    xs, ys = surface.xcoordinates, surface.ycoordinates
    if ys is None or len(xs) < 3 or len(ys) < 3:
        raise ConfigError("Curvature of a slice needs a 2D surface of at least 3x3 points")
    z = np.where(surface.done, surface.loss, np.nan).astype(np.float64)
    hx, hy = float(xs[1] - xs[0]), float(ys[1] - ys[0])
    c = z[1:-1, 1:-1]
    lxx = (z[2:, 1:-1] - 2 * c + z[:-2, 1:-1]) / hx ** 2
    lyy = (z[1:-1, 2:] - 2 * c + z[1:-1, :-2]) / hy ** 2
    lxy = (z[2:, 2:] - z[2:, :-2] - z[:-2, 2:] + z[:-2, :-2]) / (4 * hx * hy)
    mean, half = (lxx + lyy) / 2, np.sqrt(((lxx - lyy) / 2) ** 2 + lxy ** 2)
    lmin, lmax = np.full(z.shape, np.nan), np.full(z.shape, np.nan)
    lmin[1:-1, 1:-1], lmax[1:-1, 1:-1] = mean - half, mean + half
    return lmin, lmax


def negative_curvature_ratio(lmin: np.ndarray, lmax: np.ndarray) -> np.ndarray:
    """``max(-lmin, 0) / max(|lmin|, |lmax|)`` in [0, 1] (NaN where undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(-lmin, 0.0) / np.maximum(np.abs(lmin), np.abs(lmax))
    return np.where(np.isfinite(ratio), ratio, np.nan)


def convexity(surface: Surface, radius: float) -> dict[str, Any]:
    """``nonconvex_share``, ``negative_curvature`` (mean ratio) and ``points`` within ``radius``."""
    lmin, lmax = slice_hessian(surface)
    X, Y = np.meshgrid(surface.xcoordinates, surface.ycoordinates, indexing="ij")
    inside = (X ** 2 + Y ** 2 <= radius ** 2 * (1 + 1e-9)) & np.isfinite(lmin) & np.isfinite(lmax)
    if not inside.any():
        return {"nonconvex_share": None, "negative_curvature": None, "points": 0}
    tol = 1e-3 * float(np.median(np.abs(lmax[inside])))
    ratio = negative_curvature_ratio(lmin, lmax)
    return {"nonconvex_share": float(np.mean(lmin[inside] < -tol)),
            "negative_curvature": float(np.nanmean(ratio[inside])), "points": int(inside.sum())}


def loss_rise(surface: Surface, radius: float, angles: int = 72) -> float:
    """Mean loss on the circle of ``radius`` around the origin (bilinear) minus the loss at the origin."""
    xs, ys = surface.xcoordinates, surface.ycoordinates
    z = np.where(surface.done, surface.loss, np.nan).astype(np.float64)
    t = np.linspace(0.0, 2 * np.pi, angles, endpoint=False)
    ring = [_bilinear(xs, ys, z, radius * np.cos(a), radius * np.sin(a)) for a in t]
    return float(np.mean(ring) - _bilinear(xs, ys, z, 0.0, 0.0))


def _bilinear(xs: np.ndarray, ys: np.ndarray, z: np.ndarray, x: float, y: float) -> float:
    i = int(np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2))
    j = int(np.clip(np.searchsorted(ys, y) - 1, 0, len(ys) - 2))
    tx, ty = (x - xs[i]) / (xs[i + 1] - xs[i]), (y - ys[j]) / (ys[j + 1] - ys[j])
    return float((1 - tx) * (1 - ty) * z[i, j] + tx * (1 - ty) * z[i + 1, j] + (1 - tx) * ty * z[i, j + 1]
                 + tx * ty * z[i + 1, j + 1])


def shared_scale(surfaces: Sequence[Surface], vmax: float = VMAX, count: int = 30) -> dict[str, Any]:
    """One scale for compared panels: ``zlim``, the joint minimum to ``min(vmax, joint maximum)``
    (the 3D z range), and ``count`` contour ``levels`` spaced geometrically from the joint minimum
    (or ``zlim[1] / 1000`` if that is more) to ``zlim[1]``, so that basins get fine lines."""
    joint = np.concatenate([np.where(s.done, s.loss, np.nan).ravel() for s in surfaces])
    joint = joint[np.isfinite(joint)]
    lo = float(joint.min()) if joint.size else 0.0
    hi = min(vmax, float(joint.max())) if joint.size else 1.0
    hi = hi if hi > lo else lo + 1.0
    if hi > 0:
        levels = np.geomspace(max(lo, hi / 1000), hi, count)
    else:  # a loss that is negative everywhere (a custom loss): evenly spaced
        levels = np.linspace(lo, hi, count)
    return {"levels": [float(v) for v in levels], "zlim": [lo, hi]}
