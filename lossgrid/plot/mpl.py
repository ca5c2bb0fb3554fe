"""matplotlib renderers: 1D curves, contour/filled contour/heatmap, 3D surface,
side-by-side comparison. matplotlib is imported inside the functions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..surface.file import Surface
from .common import (
    axis_label,
    curvature_values,
    evaluated_mask,
    metric_values,
    minimum_index,
    name_of,
    plane_label,
    resolve_levels,
    title_of,
    with_note,
)
from .path import draw_path, path_values

if TYPE_CHECKING:
    from ..trajectory.compute import Trajectory


def load_pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (imported on first use: it is heavy)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def image_formats() -> dict[str, str]:
    """File extensions matplotlib can write (``{"png": "Portable Network Graphics", ...}``)."""
    plt = load_pyplot()
    fig = plt.figure()
    try:
        return dict(fig.canvas.get_supported_filetypes())
    finally:
        plt.close(fig)


def _save(fig: Any, out: str, dpi: int) -> None:
    """Save and close ``fig``; ``OSError`` propagates to the caller that owns the path."""
    plt = load_pyplot()
    try:
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)


def curve(surfaces: list[Surface], out: str, log: bool = False, vmax: float | None = None,
          title: str | None = None, dpi: int = 150) -> None:
    """Loss (solid, left axis) and accuracy (dashed, right axis) of one or more 1D surfaces."""
    plt = load_pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax2 = None
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(surfaces):
        color = colors[i % len(colors)]
        loss, _ = metric_values(s, "loss", vmax=vmax)
        label = name_of(s) if len(surfaces) > 1 else "loss"
        ax.plot(s.xcoordinates, loss, "-", color=color, lw=1.5, label=f"{label} loss" if len(surfaces) > 1 else label)
        evaluated = evaluated_mask(s)
        if evaluated is not None:  # adaptive: the line runs through interpolated points, dots where evaluated
            ax.plot(s.xcoordinates[evaluated], loss[evaluated], "o", color=color, ms=3.5, mec="k", mew=0.4,
                    label=f"{label + ' ' if len(surfaces) > 1 else ''}evaluated ({int(evaluated.sum())} of "
                          f"{evaluated.size})")
        acc, _ = metric_values(s, "acc")
        if np.isfinite(acc).any():
            ax2 = ax2 or ax.twinx()
            ax2.plot(s.xcoordinates, acc, "--", color=color, lw=1.2,
                     label=f"{label} accuracy" if len(surfaces) > 1 else "accuracy")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(axis_label(surfaces[0].attrs, "x"))
    ax.set_ylabel("loss (solid)")
    handles, labels = ax.get_legend_handles_labels()
    if ax2 is not None:
        ax2.set_ylabel("accuracy % (dashed)")
        ax2.set_ylim(0, 100)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize=8)
    heading = title_of(surfaces[0], title, "loss and accuracy")
    ax.set_title(with_note(heading, surfaces[0]) if len(surfaces) == 1 else heading)
    fig.tight_layout()
    _save(fig, out, dpi)


def plane(surface: Surface, out: str, kind: str = "contour", metric: str = "loss", log: bool = False,
          levels: int | list[float] | None = None, vmax: float | None = None, title: str | None = None,
          dpi: int = 150, trajectory: Trajectory | None = None, path_loss: np.ndarray | None = None) -> None:
    """2D ``contour`` (labelled lines), ``contourf`` (filled) or ``heatmap``, minimum marked;
    with ``trajectory``, the training path over it (:func:`lossgrid.plot.path.draw_path`),
    its points colored by ``path_loss`` on the plane's color scale (metric ``loss`` only)."""
    plt = load_pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    z, label = metric_values(surface, metric, log=log, vmax=vmax)
    artist = _draw_plane(ax, surface, z, kind, resolve_levels(z, levels, log), None, None)
    if kind != "contour":
        fig.colorbar(artist, ax=ax, label=label, format="%.3g")
    if trajectory is not None:

        values = path_values(path_loss, log=log, vmax=vmax) if metric == "loss" else None
        points = draw_path(ax, trajectory, values, cmap=artist.get_cmap(), norm=artist.norm)
        if values is not None and kind == "contour":
            fig.colorbar(points, ax=ax, label=f"{label} (path)")
    ax.set_title(_heading(surface, title_of(surface, title, label)))
    fig.tight_layout()
    _save(fig, out, dpi)


def _draw_plane(ax: Any, surface: Surface, z: np.ndarray, kind: str, levels: np.ndarray,
                vmin: float | None, vmax: float | None) -> Any:
    assert surface.ycoordinates is not None  # callers pass 2D surfaces only
    xs, ys = surface.xcoordinates, surface.ycoordinates
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    if kind == "heatmap":
        dx = (xs[-1] - xs[0]) / max(len(xs) - 1, 1) / 2 or 0.5
        dy = (ys[-1] - ys[0]) / max(len(ys) - 1, 1) / 2 or 0.5
        artist = ax.imshow(z.T, origin="lower", extent=(xs[0] - dx, xs[-1] + dx, ys[0] - dy, ys[-1] + dy),
                           aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    elif kind == "contourf":
        artist = ax.contourf(X, Y, z, levels=levels, cmap="viridis", extend="both", norm=_by_level(levels, "both"))
    else:
        artist = ax.contour(X, Y, z, levels=levels, cmap="viridis", linewidths=1.0, norm=_by_level(levels))
        ax.clabel(artist, artist.levels[::3], inline=True, fontsize=7, fmt="%.3g")
    _mark_evaluated(ax, surface)
    idx = minimum_index(z)
    if idx is not None:
        ax.plot(xs[idx[0]], ys[idx[1]], "r*", ms=11, label="minimum")
    ax.set_xlabel(plane_label(surface.attrs, "x"))
    ax.set_ylabel(plane_label(surface.attrs, "y"))
    return artist


def _by_level(levels: np.ndarray, extend: str = "neither") -> Any:
    """Colours by a level's rank, not its value: the basin's fine levels get colours of their own, as the
    colour bar of an HTML contour (a linear norm gives every level near the minimum the same dark colour)."""
    from matplotlib import colors

    return colors.BoundaryNorm(np.asarray(levels, dtype=float), ncolors=256, extend=extend)


def _heading(surface: Surface, text: str) -> str:
    """``text``, and for an adaptive surface a line saying how many points the dots mark."""
    return with_note(text, surface) + (" (dots)" if evaluated_mask(surface) is not None else "")


def _mark_evaluated(ax: Any, surface: Surface, z: np.ndarray | None = None) -> None:
    """Small dots on the evaluated points of an adaptive surface (interpolated areas stay bare);
    with ``z``, on a 3D axis at those heights."""
    evaluated = evaluated_mask(surface)
    if evaluated is None or not evaluated.any():
        return
    X, Y = np.meshgrid(surface.xcoordinates, surface.ycoordinates, indexing="ij")
    size = float(np.clip(6000.0 / evaluated.size, 0.8, 8.0))  # points^2: fewer, larger dots on small grids
    style = {"s": size, "c": "white", "edgecolors": "black", "linewidths": 0.3, "zorder": 3}
    if z is None:
        ax.scatter(X[evaluated], Y[evaluated], label="evaluated", **style)
    else:
        keep = evaluated & np.isfinite(z)
        ax.scatter(X[keep], Y[keep], z[keep], depthshade=False, label="evaluated", **style)


def surface3d(surface: Surface, out: str, metric: str = "loss", log: bool = False, vmax: float | None = None,
              title: str | None = None, dpi: int = 150) -> None:
    """A shaded 3D surface (``projection="3d"`` subplot, as current matplotlib requires)."""
    plt = load_pyplot()
    fig = plt.figure(figsize=(7.2, 5.6))
    ax = fig.add_subplot(projection="3d")
    z, label = metric_values(surface, metric, log=log, vmax=vmax)
    X, Y = np.meshgrid(surface.xcoordinates, surface.ycoordinates, indexing="ij")
    finite = z[np.isfinite(z)]
    zmasked = np.ma.masked_invalid(z)
    surf = ax.plot_surface(X, Y, zmasked, cmap="viridis", linewidth=0, antialiased=True,
                           rstride=max(1, len(X) // 60), cstride=max(1, X.shape[1] // 60),
                           vmin=finite.min() if finite.size else None, vmax=finite.max() if finite.size else None)
    fig.colorbar(surf, ax=ax, shrink=0.6, pad=0.1, label=label)
    ax.set_xlabel(axis_label(surface.attrs, "x"), fontsize=8)
    ax.set_ylabel(axis_label(surface.attrs, "y"), fontsize=8)
    ax.set_zlabel(label, fontsize=8)
    _mark_evaluated(ax, surface, z)
    ax.view_init(elev=35, azim=-60)
    ax.set_title(_heading(surface, title_of(surface, title, label)))
    _save(fig, out, dpi)


def compare(surfaces: list[Surface], out: str, kind: str = "contourf", metric: str = "loss", log: bool = False,
            levels: int | list[float] | None = None, vmax: float | None = None, title: str | None = None,
            dpi: int = 150) -> None:
    """2D surfaces side by side on one shared color scale (1D ones are overlaid)."""
    if surfaces[0].ndim == 1:
        curve(surfaces, out, log=log, vmax=vmax, title=title, dpi=dpi)
        return
    plt = load_pyplot()
    values = [metric_values(s, metric, log=log, vmax=vmax) for s in surfaces]
    label = values[0][1]
    joint = np.concatenate([z[np.isfinite(z)] for z, _ in values]) if values else np.array([])
    lv = resolve_levels(joint.reshape(1, -1) if joint.size else np.array([[0.0]]), levels, log)
    vmin_all, vmax_all = float(lv[0]), float(lv[-1])
    n = len(surfaces)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 1.2, 4.2), squeeze=False, sharex=True, sharey=True)
    artist = None
    for ax, s, (z, _) in zip(axes[0], surfaces, values):
        artist = _draw_plane(ax, s, z, "heatmap" if kind == "heatmap" else "contourf", lv, vmin_all, vmax_all)
        ax.set_title(with_note(name_of(s), s), fontsize=9)
    fig.colorbar(artist, ax=list(axes[0]), label=label, shrink=0.9, format="%.3g")
    fig.suptitle(title_of(surfaces[0], title, f"{label}, shared scale"), fontsize=10)
    _save(fig, out, dpi)


def curvature(surface: Surface, out: str, vmax: float | None = None, title: str | None = None,
              dpi: int = 150) -> None:
    """The paper's convexity map: ``|min_eig / max_eig|`` as a heatmap (2D; near 0 means
    convex in every direction of weight space), or as a curve with both eigenvalues (1D)."""
    plt = load_pyplot()
    ratio = curvature_values(surface)
    label = "|min eig / max eig|"
    if surface.ndim == 1:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        done = surface.done.astype(bool)
        for name, style in (("max_eig", "-"), ("min_eig", "--")):
            ax.plot(surface.xcoordinates, np.where(done, surface.extra[name], np.nan), style, lw=1.5, label=name)
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_ylabel("Hessian eigenvalue")
        ax2 = ax.twinx()
        ax2.plot(surface.xcoordinates, ratio, ":", color="C3", lw=1.5, label=label)
        ax2.set_ylabel(label)
        handles, labels = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(handles + h2, labels + l2, loc="best", fontsize=8)
        ax.set_xlabel(axis_label(surface.attrs, "x"))
    else:
        fig, ax = plt.subplots(figsize=(6.4, 5.2))
        finite = ratio[np.isfinite(ratio)]
        # the 98th percentile: one point with max_eig near 0 would wash out the whole map (--vmax overrides)
        top = vmax if vmax is not None else (float(np.percentile(finite, 98)) if finite.size else 1.0)
        artist = _draw_plane(ax, surface, ratio, "heatmap", np.linspace(0.0, max(top, 1e-12), 30), 0.0, top)
        artist.set_cmap("coolwarm")
        fig.colorbar(artist, ax=ax, label=label)
        for line in list(ax.lines):  # the "minimum" marker belongs to loss maps
            line.remove()
    ax.set_title(title_of(surface, title, label))
    fig.tight_layout()
    _save(fig, out, dpi)
