"""The gallery's comparison figures (Li et al. 2018, Figs. 3, 5 and 8): 2D surfaces side by
side as contours and as 3D surfaces on ONE color scale and z range, 1D cuts through the
minimum, and maps of the slices' negative curvature. matplotlib is imported inside
the functions; every image is written atomically.

Each function takes panels laid out in ``rows x cols`` (``shape``), one title per panel,
and the shared scale chosen by the caller (:mod:`lossgrid.gallery.build`), so that the
numbers in ``gallery.json`` and the figures agree.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._files import atomic_output
from ..plot.common import axis_label, metric_values, minimum_index
from ..plot.mpl import load_pyplot as pyplot
from ..surface.file import Surface


def load_pyplot() -> Any:

    return pyplot()


def _grid(plt: Any, shape: tuple[int, int], size: float, projection: str | None = None) -> tuple[Any, list[Any]]:
    rows, cols = shape
    fig = plt.figure(figsize=(size * cols + 1.4, size * rows + 0.6))
    kw = {"projection": projection} if projection else {}
    axes = [fig.add_subplot(rows, cols, i + 1, **kw) for i in range(rows * cols)]
    return fig, axes


def _save(fig: Any, out: str | os.PathLike, dpi: int) -> str:
    plt = load_pyplot()
    try:
        with atomic_output(out, "gallery figure") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return os.fspath(out)


def contour_panels(surfaces: Sequence[Surface], titles: Sequence[str], out: str | os.PathLike,
                   levels: Sequence[float], shape: tuple[int, int], title: str = "", dpi: int = 110) -> str:
    """Contour lines of each surface's loss on the same ``levels`` (one color bar), minimum starred."""
    plt = load_pyplot()
    import matplotlib as mpl

    lv = np.asarray(levels, dtype=float)
    # geometric levels get evenly spread colors on a log norm
    norm = (mpl.colors.LogNorm if lv[0] > 0 else mpl.colors.Normalize)(vmin=float(lv[0]), vmax=float(lv[-1]))
    fig, axes = _grid(plt, shape, 3.6)
    for ax, s, name in zip(axes, surfaces, titles):
        z, _ = metric_values(s, "loss")
        X, Y = np.meshgrid(s.xcoordinates, s.ycoordinates, indexing="ij")
        ax.contour(X, Y, np.minimum(z, lv[-1] * 1.0001), levels=lv, cmap="viridis", norm=norm, linewidths=0.8)
        idx = minimum_index(z)
        if idx is not None:
            ax.plot(s.xcoordinates[idx[0]], s.ycoordinates[idx[1]], "r*", ms=8)
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.set_xlabel(axis_label(s.attrs, "x"), fontsize=7)
        ax.set_ylabel(axis_label(s.attrs, "y"), fontsize=7)
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes, shrink=0.8,
                 label=f"loss (shared levels {lv[0]:.3g} to {lv[-1]:.3g})")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out, dpi)


def surface_panels(surfaces: Sequence[Surface], titles: Sequence[str], out: str | os.PathLike,
                   zlim: tuple[float, float], shape: tuple[int, int], title: str = "", dpi: int = 110) -> str:
    """Shaded 3D surfaces on the same z range and colors; values above ``zlim[1]`` are clipped to it."""
    plt = load_pyplot()
    fig, axes = _grid(plt, shape, 3.8, projection="3d")
    lo, hi = zlim
    for ax, s, name in zip(axes, surfaces, titles):
        z, _ = metric_values(s, "loss")
        X, Y = np.meshgrid(s.xcoordinates, s.ycoordinates, indexing="ij")
        ax.plot_surface(X, Y, np.ma.masked_invalid(np.clip(z, lo, hi)), cmap="viridis", vmin=lo, vmax=hi,
                        linewidth=0, antialiased=True)
        ax.set_zlim(lo, hi)
        ax.view_init(elev=35, azim=-60)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(f"{title} (z clipped at {hi:.3g})", fontsize=10)
    return _save(fig, out, dpi)


def slice_curves(surfaces: Sequence[Surface], labels: Sequence[str], out: str | os.PathLike,
                 vmax: float, title: str = "", dpi: int = 110) -> str:
    """The loss along each surface's two axes through its origin (the 2D grid's middle row and
    column), the paper's 1D small- vs large-batch comparison on filter-normalized directions."""
    plt = load_pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.8), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (s, label) in enumerate(zip(surfaces, labels)):
        z, _ = metric_values(s, "loss")
        i0, j0 = int(np.argmin(np.abs(s.xcoordinates))), int(np.argmin(np.abs(s.ycoordinates)))
        axes[0].plot(s.xcoordinates, z[:, j0], "-", color=colors[k % len(colors)], label=label)
        axes[1].plot(s.ycoordinates, z[i0, :], "-", color=colors[k % len(colors)], label=label)
    for ax, axis in zip(axes, ("x", "y")):
        ax.set_xlabel(axis_label(surfaces[0].attrs, axis))
        ax.set_ylim(top=vmax)
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out, dpi)


def curvature_panels(maps: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], titles: Sequence[str],
                     out: str | os.PathLike, shape: tuple[int, int], title: str = "", dpi: int = 110) -> str:
    """Heatmaps of each slice's negative-curvature ratio (0: convex, blue; 1: the most negative
    curvature as large as the largest, red) on the fixed scale [0, 1] (cf. the paper's Fig. 8)."""
    plt = load_pyplot()
    fig, axes = _grid(plt, shape, 3.4)
    artist = None
    for ax, (xs, ys, ratio), name in zip(axes, maps, titles):
        dx, dy = (xs[1] - xs[0]) / 2, (ys[1] - ys[0]) / 2
        artist = ax.imshow(ratio.T, origin="lower", extent=(xs[0] - dx, xs[-1] + dx, ys[0] - dy, ys[-1] + dy),
                           cmap="coolwarm", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    if artist is not None:
        fig.colorbar(artist, ax=axes, shrink=0.8, label="max(-lambda_min, 0) / max |lambda| of the 2D slice")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out, dpi)


COLUMNS = ("name", "depth", "shortcuts", "batch_size", "train_loss", "train_acc", "test_acc", "center_loss",
           "nonconvex_share", "negative_curvature", "loss_rise", "center_curvature", "top_eig", "train_seconds",
           "surface_seconds")


def index_html(result: dict[str, Any]) -> str:
    """The gallery page: verdicts per seed, then per seed the figures and the table of numbers."""
    esc = html.escape
    cfg = result["config"]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lossgrid gallery</title><style>"
             "body{font-family:sans-serif;max-width:1200px;margin:auto}td,th{padding:2px 8px;text-align:right}"
             "img{max-width:100%}table{border-collapse:collapse}tr:nth-child(even){background:#f3f3f3}"
             "</style></head><body><h1>lossgrid gallery</h1>",
             f"<p>{esc(cfg['train_data'])}, size {esc(cfg['size'])}, seeds {esc(str(result['seeds']))}, "
             f"{cfg['epochs']} epochs (SGD lr {cfg['lr']}, momentum {cfg['momentum']}, weight decay "
             f"{cfg['weight_decay']}, decay x{cfg['gamma']} at {cfg['milestones']} of the run); 2D surfaces "
             f"{cfg['grid']}x{cfg['grid']} on [-{cfg['span']}, {cfg['span']}] over {cfg['surface_samples']} training "
             f"samples, filter-normalized random directions, biases and BatchNorm ignored. {result['seconds']} s "
             f"with {result['torch_threads']} torch thread(s).</p><h2>The paper's orderings</h2><table><tr>"
             "<th>seed</th><th>deep net without shortcuts less convex</th><th>large batch sharper</th></tr>"]
    for seed in result["seeds"]:
        v = result["runs"][str(seed)]["verdicts"]
        cells = "".join(f"<td>{_verdict_text(v[k])}</td>" for k in ("deep_noshort_less_convex",
                                                                       "large_batch_sharper"))
        parts.append(f"<tr><td>{seed}</td>{cells}</tr>")
    parts.append("</table><p>Convexity: share of grid points within the radius where the slice's 2x2 Hessian "
                 "has a negative eigenvalue. Sharpness: mean loss rise on the circle of the radius. "
                 "See gallery.json for every number.</p>")
    for seed in result["seeds"]:
        run = result["runs"][str(seed)]
        parts.append(f"<h2>Seed {seed}</h2><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in COLUMNS) + "</tr>")
        for m in run["models"].values():
            parts.append("<tr>" + "".join(f"<td>{esc(_fmt(m.get(c)))}</td>" for c in COLUMNS) + "</tr>")
        parts.append("</table>")
        for key, path in run["figures"].items():
            rel = os.path.relpath(path, result["out"])
            parts.append(f"<h3>{esc(key)}</h3><img src='{esc(rel)}' alt='{esc(key)}'>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _verdict_text(v: dict[str, Any]) -> str:
    holds = {True: "yes", False: "no", None: "n/a"}[v["holds"]]
    values = ", ".join(f"{k} {_fmt(x)}" for k, x in v["values"].items())
    return html.escape(f"{holds} ({v['measure']}: {values})")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
