"""Shared pieces of every renderer: values, labels, levels, checks."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..errors import ConfigError, SurfaceFileError
from ..hessian.curvature import convexity_ratio
from ..surface.file import Surface, load_surface

METRICS = ("loss", "acc", "err")


def as_surface(surface: Surface | str | os.PathLike) -> Surface:
    return surface if isinstance(surface, Surface) else load_surface(os.fspath(surface))


def axis_label(attrs: dict[str, Any], axis: str) -> str:
    """What an axis means, e.g. ``filter-normalized direction 1``."""
    if axis == "x" and attrs.get("kind") == "interpolation":
        return "interpolation coefficient (0 = model 1, 1 = model 2)"
    norm = attrs.get(f"{axis}norm", "")
    number = 1 if axis == "x" else 2
    prefix = {"filter": "filter-normalized", "layer": "layer-normalized", "weight": "weight-scaled",
              "none": "unnormalized"}.get(str(norm), "")
    return f"{prefix} direction {number}".strip()


def plane_label(attrs: dict[str, Any], axis: str) -> str:
    """``PC1 (93.1%)`` on a trajectory's PCA plane, else :func:`axis_label`."""
    ratio = np.ravel(np.asarray(attrs.get("explained_variance_ratio", []), dtype=float))
    if attrs.get("kind") == "pca" and ratio.size == 2:
        k = 0 if axis == "x" else 1
        return f"PC{k + 1} ({100 * ratio[k]:.1f}%)"
    return axis_label(attrs, axis)


def metric_values(surface: Surface, metric: str, log: bool = False, vmax: float | None = None
                  ) -> tuple[np.ndarray, str]:
    """The array to draw and its label. Points not computed are NaN; ``vmax``
    clips from above (before the log); ``log`` takes log10 (non-positive -> NaN)."""
    if metric == "loss":
        values, label = surface.loss, "loss"
    elif metric == "acc":
        values, label = surface.acc, "accuracy (%)"
    elif metric == "err":
        values, label = 100.0 - surface.acc, "error (%)"
    else:
        raise ConfigError(f"Unknown metric {metric!r}", hint=f"use one of {', '.join(METRICS)}")
    z = np.where(shown_mask(surface), values, np.nan).astype(np.float64)
    if vmax is not None:
        z = np.minimum(z, vmax)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)
        label = f"log10 {label}"
    return z, label


#: a metric spanning more decades than this (largest / smallest positive value) is drawn on a log scale by default
LOG_DECADES = 2.0
#: the image kinds whose z (height or colour) scale follows :func:`use_log` when neither --log nor --linear is
#: given; so do the pages (HTML) of every 2D kind, which show the 3D panel beside the contour
AUTO_LOG_KINDS = ("surface3d",)


def use_log(surface: Surface, metric: str, log: bool | None, vmax: float | None = None) -> bool:
    """The z scale of a 3D or HTML picture: ``log`` when given (``--log``/``--linear``); else log10 when the
    shown values are positive and span more than :data:`LOG_DECADES` decades (a trained model's loss, 0.002
    at the minimum and 40 on the walls), linear otherwise (accuracy, error, a flat surface). The axis and
    colour-bar titles say ``log10`` when it is."""
    if log is not None:
        return bool(log)
    return spans_decades(metric_values(surface, metric, vmax=vmax)[0])


def spans_decades(z: np.ndarray) -> bool:
    """The rule of :func:`use_log` on values: positive and spanning more than :data:`LOG_DECADES` decades."""
    finite = z[np.isfinite(z)]
    if finite.size == 0 or finite.min() <= 0:
        return False
    return bool(np.log10(finite.max() / finite.min()) > LOG_DECADES)


def curvature_values(surface: Surface) -> np.ndarray:
    """``|min_eig / max_eig|`` at the points done (NaN elsewhere), or a :class:`ConfigError`
    naming the command that computes it."""
    if "max_eig" not in surface.extra or "min_eig" not in surface.extra:
        raise ConfigError(f"{name_of(surface)} holds no curvature (datasets max_eig and min_eig)",
                          "it was computed without --curvature",
                          "compute it with lossgrid surface ... --curvature, into another --out (or with "
                          "--overwrite: curvature is a different setting, so the file is not resumed)")

    ratio = convexity_ratio(surface.extra["min_eig"], surface.extra["max_eig"])
    return np.where(surface.done, ratio, np.nan)


def default_levels(z: np.ndarray, n: int = 30, vmax: float | None = None, even: bool = False) -> np.ndarray:
    """Contour levels from just above the minimum to the top (``vmax``, or the 98th percentile),
    geometrically spaced in the height above the minimum: the basin around the minimum gets
    many fine levels and the walls a few coarse ones. ``even``: evenly spaced instead, for values
    already on a log10 scale, where even steps are the metric's equal ratios (geometric spacing on
    top of the log would crowd every level into the bottom of the basin).

    The first level sits at the minimum plus the smaller of the minimum itself (for a loss near
    zero) and a thousandth of the range, so a deep basin (minimum 0.002 under walls of 40) still
    gets about half of the levels, where equal ratios of the range would leave it one empty disc.

    Example:
        >>> lv = default_levels(np.array([0.002, 0.01, 0.1, 1.0, 40.0]), n=30)
        >>> int((lv < 0.4).sum()) >= 5
        True
    """
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        return np.linspace(0, 1, n)
    lo = float(finite.min())
    hi = float(vmax if vmax is not None else np.percentile(finite, 98))
    if not hi > lo:
        hi = lo + 1.0
    span = hi - lo
    if even:
        return lo + np.linspace(span / n, span, n)
    first = min(span * 1e-3, lo) if lo > 0 else span * 1e-3
    return lo + np.geomspace(max(first, span * 1e-9), span, n)


#: contour levels of one plot: far more than any picture can show
MAX_LEVELS = 1000


def parse_levels(text: str | int | None) -> int | list[float] | None:
    """``30`` (a count), ``0.1,0.5,1`` (values) or ``MIN:MAX:STEP`` (as the reference's vmin/vmax/vlevel)."""
    if text is None or isinstance(text, int):
        return text
    try:
        if ":" in text:
            lo, hi, step = (float(p) for p in text.split(":"))
            if not all(map(math.isfinite, (lo, hi, step))) or step <= 0 or hi <= lo or (hi - lo) / step > MAX_LEVELS:
                raise ValueError
            return [float(v) for v in np.arange(lo, hi + step / 2, step)]
        if "," in text:
            values = sorted(float(p) for p in text.split(","))
            if not 2 <= len(values) <= MAX_LEVELS or not all(map(math.isfinite, values)):
                raise ValueError
            return values
        count = int(text)
        if not 2 <= count <= MAX_LEVELS:
            raise ValueError
        return count
    except ValueError:
        raise ConfigError(f"Cannot read levels {text!r}", f"levels are a count, a comma list, or MIN:MAX:STEP, of "
                          f"finite numbers, 2 to {MAX_LEVELS} levels",
                          "for example --levels 30, --levels 0.1,0.5,1,2 or --levels 0.1:10:0.5") from None


def resolve_levels(z: np.ndarray, levels: int | list[float] | None, log: bool = False) -> np.ndarray:
    """The levels given (values), or :func:`default_levels` (a count given, else 30) of ``z``, evenly
    spaced where ``z`` is log10 of the metric (``log``)."""
    if levels is not None and not isinstance(levels, int):
        return np.asarray(levels, dtype=float)
    return default_levels(z, levels or 30, even=log)


def title_of(surface: Surface, title: str | None, label: str) -> str:
    if title:
        return title
    samples = surface.attrs.get("samples")
    data = str(surface.attrs.get("data", ""))
    if "samples" in data:  # a subset says so itself: "digits:train (500 of 1437 samples, seed 0)"
        return f"{label} on {data}"
    return f"{label} on {data} ({samples} samples)" if samples else label


def name_of(surface: Surface) -> str:
    """A short legend label for a surface."""
    if surface.path:
        return os.path.splitext(os.path.basename(surface.path))[0]
    return str(surface.attrs.get("model", "surface"))


def minimum_index(z: np.ndarray) -> tuple[int, ...] | None:
    if not np.isfinite(z).any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmin(np.where(np.isfinite(z), z, np.inf))), z.shape))


def check_same_axes(surfaces: list[Surface], allow_mismatch: bool) -> None:
    """Refuse to compare surfaces on different directions or grids."""
    first = surfaces[0]
    for other in surfaces[1:]:
        problems = []
        if other.ndim != first.ndim:
            problems.append(f"{first.ndim}D vs {other.ndim}D")
        elif not (np.array_equal(other.xcoordinates, first.xcoordinates)
                  and (first.ycoordinates is None or np.array_equal(other.ycoordinates, first.ycoordinates))):
            problems.append("different grids")
        a, b = first.attrs.get("directions"), other.attrs.get("directions")
        if a != b:
            problems.append("different directions" if a and b else "directions unknown")
        if problems and (not allow_mismatch or other.ndim != first.ndim):
            raise ConfigError(f"Cannot compare {name_of(first)} and {name_of(other)}: {', '.join(problems)}",
                              "surfaces are comparable only on the same directions and grid",
                              "compute them with the same --dir-file and --x/--y, or pass --allow-mismatch")


def interpolated_mask(surface: Surface) -> np.ndarray | None:
    """The points an adaptive run filled by interpolation (``extra["interpolated"]``), or
    ``None`` for a surface evaluated point by point."""
    mask = surface.extra.get("interpolated")
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != surface.loss.shape:
        raise SurfaceFileError(f"{name_of(surface)} has an interpolated mask of shape {mask.shape}",
                               f"its loss has shape {surface.loss.shape}",
                               "recompute the file; it was not written by lossgrid or was damaged")
    if mask.dtype.kind == "f":
        mask = np.nan_to_num(mask, nan=0.0)
    return mask.astype(bool)


def shown_mask(surface: Surface) -> np.ndarray:
    """Points that have a value to draw: evaluated (``done``) or filled by interpolation."""
    interpolated = interpolated_mask(surface)
    done = surface.done.astype(bool)
    return done if interpolated is None else done | interpolated


def evaluated_mask(surface: Surface) -> np.ndarray | None:
    """Points of an adaptive surface that were evaluated, not interpolated; ``None`` for a plain one."""
    interpolated = interpolated_mask(surface)
    return None if interpolated is None else surface.done.astype(bool) & ~interpolated


def adaptive_note(surface: Surface) -> str | None:
    """``adaptive: 731 of 2,601 points evaluated`` for an adaptive surface, else ``None``."""
    evaluated = evaluated_mask(surface)
    if evaluated is None:
        return None
    return f"adaptive: {int(evaluated.sum()):,} of {evaluated.size:,} points evaluated"


def anchor_note(surface: Surface) -> str | None:
    """``anchors every 3 exact: 250 of 2,000 samples elsewhere`` for a surface estimated with
    anchors (``--anchor-stride``), else ``None``."""
    stride = surface.attrs.get("anchor_stride")
    if not stride:
        return None
    samples, population = surface.attrs.get("samples"), surface.attrs.get("se_population")
    rest = f": {int(samples):,} of {int(population):,} samples elsewhere" if samples and population else ""
    return f"anchors every {int(stride)} exact{rest}"


def with_note(text: str, surface: Surface, sep: str = "\n") -> str:
    """``text`` with :func:`adaptive_note` and :func:`anchor_note` appended (unchanged for a
    plain surface)."""
    notes = [n for n in (adaptive_note(surface), anchor_note(surface)) if n]
    return sep.join([text, *notes])
