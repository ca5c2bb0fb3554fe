"""Render surface files to images (matplotlib; imported only when rendering).

Example:
    >>> plot_surface("surface.h5", "contour.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..engine.surface_file import Surface, load_surface
from ..errors import ConfigError

KINDS_1D = ("curve",)
KINDS_2D = ("contour", "contourf", "heatmap")
KINDS = ("auto",) + KINDS_1D + KINDS_2D
METRICS = ("loss", "acc", "err")


def axis_label(attrs: dict[str, Any], axis: str) -> str:
    """What an axis means, e.g. ``filter-normalized direction 1``."""
    if axis == "x" and attrs.get("kind") == "interpolation":
        return "interpolation coefficient (0 = model 1, 1 = model 2)"
    norm = attrs.get(f"{axis}norm", "")
    number = 1 if axis == "x" else 2
    prefix = {"filter": "filter-normalized", "layer": "layer-normalized", "weight": "weight-scaled",
              "none": "unnormalized"}.get(str(norm), "")
    return f"{prefix} direction {number}".strip()


def metric_values(surface: Surface, metric: str) -> tuple[np.ndarray, str]:
    """The array to draw and its label; points not computed are NaN."""
    if metric == "loss":
        values, label = surface.loss, "loss"
    elif metric == "acc":
        values, label = surface.acc, "accuracy (%)"
    elif metric == "err":
        values, label = 100.0 - surface.acc, "error (%)"
    else:
        raise ConfigError(f"Unknown metric {metric!r}", hint=f"use one of {', '.join(METRICS)}")
    return np.where(surface.done, values, np.nan), label


def default_levels(z: np.ndarray, n: int = 30, vmax: float | None = None) -> np.ndarray:
    """Contour levels, log-spaced above the minimum so the basin shows detail."""
    finite = z[np.isfinite(z)]
    if finite.size == 0:
        return np.linspace(0, 1, n)
    lo = float(finite.min())
    hi = float(vmax if vmax is not None else np.percentile(finite, 98))
    if not hi > lo:
        hi = lo + 1.0
    return lo + (hi - lo) * np.geomspace(0.01, 1.0, n)


def _title(surface: Surface, title: str | None, label: str) -> str:
    if title:
        return title
    samples = surface.attrs.get("samples")
    data = surface.attrs.get("data", "")
    return f"{label} on {data} ({samples} samples)" if samples else label


def plot_surface(surface: Surface | str | os.PathLike, out: str | os.PathLike, kind: str = "auto",
                 metric: str = "loss", log: bool = False, levels: int | list[float] | None = None,
                 vmax: float | None = None, title: str | None = None, dpi: int = 150) -> str:
    """Render a surface to ``out`` (PNG, PDF or SVG by its extension); returns the path.

    1D surfaces draw loss and accuracy on twin axes; 2D ones a contour plot
    (``contour``), filled contour (``contourf``) or ``heatmap`` of ``metric``.
    """
    if not isinstance(surface, Surface):
        surface = load_surface(os.fspath(surface))
    if kind not in KINDS:
        raise ConfigError(f"Unknown plot kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    if kind == "auto":
        kind = "curve" if surface.ndim == 1 else "contour"
    if (kind in KINDS_1D) != (surface.ndim == 1):
        raise ConfigError(f"Plot kind {kind} does not fit a {surface.ndim}D surface",
                          hint=f"use {'curve' if surface.ndim == 1 else 'contour, contourf or heatmap'}")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    try:
        if kind == "curve":
            _curve(ax, surface, log)
            ax.set_title(_title(surface, title, "loss and accuracy"))
        else:
            _plane(fig, ax, surface, kind, metric, log, levels, vmax)
            ax.set_title(_title(surface, title, metric_values(surface, metric)[1]))
        fig.tight_layout()
        fig.savefig(out, dpi=dpi)
    except OSError as e:
        from ..errors import LossgridError

        raise LossgridError(f"Cannot write plot {out}", str(e), "choose a writable --out path") from None
    finally:
        plt.close(fig)
    return os.fspath(out)


def _curve(ax: Any, surface: Surface, log: bool) -> None:
    x = surface.xcoordinates
    loss, _ = metric_values(surface, "loss")
    acc, _ = metric_values(surface, "acc")
    ax.plot(x, loss, "b-", lw=1.5, label="loss")
    ax.set_xlabel(axis_label(surface.attrs, "x"))
    ax.set_ylabel("loss", color="b")
    if log:
        ax.set_yscale("log")
    if np.isfinite(acc).any():
        ax2 = ax.twinx()
        ax2.plot(x, acc, "r--", lw=1.2, label="accuracy")
        ax2.set_ylabel("accuracy (%)", color="r")
        ax2.set_ylim(0, 100)


def _plane(fig: Any, ax: Any, surface: Surface, kind: str, metric: str, log: bool,
           levels: int | list[float] | None, vmax: float | None) -> None:
    z, label = metric_values(surface, metric)
    if log:
        z = np.log10(np.where(z > 0, z, np.nan))
        label = f"log10 {label}"
        vmax = np.log10(vmax) if vmax else None
    assert surface.ycoordinates is not None
    X, Y = np.meshgrid(surface.xcoordinates, surface.ycoordinates, indexing="ij")
    zc = np.clip(z, None, vmax) if vmax is not None else z
    if isinstance(levels, int):
        lv = default_levels(zc, levels, vmax)
    else:
        lv = np.asarray(levels) if levels is not None else default_levels(zc, 30, vmax)
    if kind == "heatmap":
        dx = np.diff(surface.xcoordinates).mean() / 2 if len(surface.xcoordinates) > 1 else 0.5
        dy = np.diff(surface.ycoordinates).mean() / 2 if len(surface.ycoordinates) > 1 else 0.5
        extent = (surface.xcoordinates[0] - dx, surface.xcoordinates[-1] + dx,
                  surface.ycoordinates[0] - dy, surface.ycoordinates[-1] + dy)
        im = ax.imshow(zc.T, origin="lower", extent=extent, aspect="auto", cmap="viridis", vmax=vmax)
        fig.colorbar(im, ax=ax, label=label)
    elif kind == "contourf":
        cs = ax.contourf(X, Y, zc, levels=lv, cmap="viridis", extend="max")
        fig.colorbar(cs, ax=ax, label=label)
    else:
        cs = ax.contour(X, Y, zc, levels=lv, cmap="viridis", linewidths=1.0)
        ax.clabel(cs, cs.levels[::4], inline=True, fontsize=7, fmt="%.3g")
    if np.isfinite(z).any():
        i, j = np.unravel_index(int(np.nanargmin(np.where(np.isfinite(z), z, np.inf))), z.shape)
        ax.plot(surface.xcoordinates[i], surface.ycoordinates[j], "r*", ms=10, label="minimum")
    ax.set_xlabel(axis_label(surface.attrs, "x"))
    ax.set_ylabel(axis_label(surface.attrs, "y"))
