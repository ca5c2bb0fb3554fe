"""Animations of an evolution file (one surface per checkpoint, shared directions):
an animated GIF (matplotlib + Pillow), an MP4 (matplotlib + the ``ffmpeg``
program) and an interactive HTML slider (plotly frames, one offline file).

Every frame is drawn on ONE color scale (and one axis range) computed over all
checkpoints, so a landscape that sharpens or flattens during training shows as
such; each frame carries its checkpoint's label. 2D evolutions are filled color
maps with contour lines; 1D evolutions are animated curves, earlier checkpoints
kept as faint lines.

Example:
    >>> render_evolution("evo.h5", "evo.gif")    # doctest: +SKIP
    'evo.gif'
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np

from .._files import atomic_output, check_output_path
from .._optional import require
from ..errors import ConfigError, MissingBackendError
from ..evolve.compute import Evolution, load_evolution
from .common import axis_label, default_levels, metric_values, shown_mask, spans_decades, title_of
from .html import Grid, contour_panel, level_index, star_trace, surface3d_panel, value_and_accuracy
from .page import Frames, Panel, as_text, panel_layout, write_page

ANIMATION_EXTENSIONS = (".gif", ".mp4", ".html", ".htm")


def check_mp4_writable() -> None:
    """Raise :class:`MissingBackendError` unless the ``ffmpeg`` program is on ``PATH``."""
    import matplotlib

    program = matplotlib.rcParams["animation.ffmpeg_path"]
    if shutil.which(program) is None:
        raise MissingBackendError(
            "MP4 output needs the ffmpeg program, which is not on PATH",
            f"matplotlib writes MP4 files by piping frames to {program!r} (a program, not a Python package)",
            "install it (Debian/Ubuntu: sudo apt-get install ffmpeg; conda: conda install -c conda-forge ffmpeg; "
            "macOS: brew install ffmpeg), or write the animation as a GIF (--gif) or an HTML slider (--html), "
            "which need nothing more")


def render_evolution(evolution: Evolution | str | os.PathLike, out: str | os.PathLike, metric: str = "loss",
                     log: bool | None = None, vmax: float | None = None, fps: float = 2.0, dpi: int = 100,
                     title: str | None = None) -> str:
    """Write ``out`` (``.gif``, ``.mp4`` or ``.html`` by extension), one frame per checkpoint;
    returns its path. The file is written beside ``out`` and moved into place when whole.

    ``log``: log10 of the metric (``True``), linear (``False``), or ``None``: for 2D evolutions the rule of
    :func:`~lossgrid.plot.common.use_log` over all checkpoints (log where the values span more than two
    decades: early checkpoints' walls of 300 over a trained basin of 0.004), linear for 1D curves."""
    out = os.fspath(out)
    ext = os.path.splitext(out)[1].lower()
    if ext not in ANIMATION_EXTENSIONS:
        raise ConfigError(f"Cannot write an animation to {out}", f"unknown type {ext or '(none)'!r}",
                          "end the path in .gif, .mp4 or .html")
    if fps <= 0:
        raise ConfigError(f"fps={fps} is invalid", "frames per second must be above 0", "pass --fps 2 or so")
    check_output_path(out, "animation")
    if ext == ".mp4":
        check_mp4_writable()  # before any drawing
    evo = evolution if isinstance(evolution, Evolution) else load_evolution(evolution)
    frames = _frames(evo, metric, log, vmax)
    with atomic_output(out, "animation") as tmp:
        if ext in (".html", ".htm"):
            _write_html(evo, frames, tmp, title, fps)
        else:
            _write_movie(evo, frames, tmp, ext, fps, dpi, title)
    return out


def _frames(evo: Evolution, metric: str, log: bool | None, vmax: float | None) -> dict[str, Any]:
    """The values of every frame, their label, and the range shared by all frames."""
    if log is None:
        log = evo.ndim == 2 and spans_decades(np.stack([metric_values(s, metric, vmax=vmax)[0] for s in evo.surfaces]))
    values = []
    label = metric
    for s in evo.surfaces:
        z, label = metric_values(s, metric, log=log, vmax=vmax)
        values.append(z)
    finite = np.concatenate([z[np.isfinite(z)] for z in values])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if not hi > lo:
        hi = lo + 1.0
    levels = default_levels(np.stack(values), 20, vmax=None if log else vmax, even=log) if evo.ndim == 2 else None
    return {"z": values, "label": label, "lo": lo, "hi": hi, "levels": levels}


def _frame_title(evo: Evolution, i: int, title: str | None) -> str:
    head = f"{title} - " if title else ""
    return f"{head}{evo.labels[i]}  ({i + 1}/{len(evo.labels)})"


# -- GIF and MP4 (matplotlib) --------------------------------------------------------------
def _write_movie(evo: Evolution, frames: dict[str, Any], out: str, ext: str, fps: float, dpi: int,
                 title: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import animation, cm, colors

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    first = evo.surfaces[0]
    xs, ys = first.xcoordinates, first.ycoordinates
    lo, hi, label = frames["lo"], frames["hi"], frames["label"]
    norm = colors.Normalize(vmin=lo, vmax=hi)
    if evo.ndim == 2:  # one colorbar for all frames: the shared scale
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label=label)
    pad = 0.05 * (hi - lo)

    def draw(i: int) -> list[Any]:
        ax.clear()
        z = frames["z"][i]
        if evo.ndim == 2:
            ax.pcolormesh(xs, ys, z.T, norm=norm, cmap="viridis", shading="auto")
            if np.isfinite(z).sum() >= 4 and np.nanmax(z) > np.nanmin(z):
                cs = ax.contour(xs, ys, z.T, levels=frames["levels"], colors="white", linewidths=0.6)
                ax.clabel(cs, fontsize=6, fmt="%.3g")
            ax.set_ylabel(axis_label(first.attrs, "y"))
        else:
            for j in range(i):  # the checkpoints before, faint: where the curve came from
                ax.plot(xs, frames["z"][j], color="0.75", lw=0.8)
            ax.plot(xs, z, color="C0", lw=2.0, label=evo.labels[i])
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_ylabel(label)
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xlabel(axis_label(first.attrs, "x"))
        ax.set_title(_frame_title(evo, i, title))
        return []

    anim = animation.FuncAnimation(fig, draw, frames=len(evo.surfaces), blit=False, repeat=False)
    if ext == ".gif":
        writer: Any = animation.PillowWriter(fps=fps)
    else:
        writer = animation.FFMpegWriter(fps=fps, extra_args=["-pix_fmt", "yuv420p"])  # plays in browsers
    try:
        anim.save(out, writer=writer, dpi=dpi)
    finally:
        plt.close(fig)


# -- HTML slider (a page of lossgrid.plot.page) --------------------------------------------
def _write_html(evo: Evolution, frames: dict[str, Any], out: str, title: str | None, fps: float) -> None:
    """The page: the first checkpoint's panels and a slider that restyles them to any other, every frame on
    the scale of all of them."""
    go = require("plotly.graph_objects", "html", "Interactive HTML output")
    labels = [_frame_title(evo, i, None) for i in range(len(evo.surfaces))]
    if evo.ndim == 1:
        panels, updates = _curve_frames(go, evo, frames)
    else:
        panels, updates = _plane_frames(go, evo, frames)
    first = evo.surfaces[0]
    heading = title or title_of(first, None, f"{frames['label']} at {len(labels)} checkpoints")
    write_page(out, heading, ["one colour scale and one z range for every checkpoint"], panels,
               Frames(labels, updates, fps))


def _curve_frames(go: Any, evo: Evolution, frames: dict[str, Any]) -> tuple[list[Panel], list[Any]]:
    """Every checkpoint's curve as a trace; frame i shows curve i bold, those before it faint, none after."""
    x = evo.surfaces[0].xcoordinates.tolist()
    n, label, lo, hi = len(evo.surfaces), frames["label"], frames["lo"], frames["hi"]

    def style(i: int) -> dict[str, Any]:
        return {"visible": [j <= i for j in range(n)],
                "line.color": ["#1f77b4" if j == i else "#c8c8c8" for j in range(n)],
                "line.width": [2.5 if j == i else 1.0 for j in range(n)]}

    start = style(0)
    hover = "{}<br>x=%{{x:.4g}}<br>" + label + "=%{{y:.5g}}<extra></extra>"
    fig = go.Figure([go.Scatter(x=x, y=as_text(z), mode="lines", name=evo.labels[j], visible=start["visible"][j],
                                line={"color": start["line.color"][j], "width": start["line.width"][j]},
                                hovertemplate=hover.format(evo.labels[j])) for j, z in enumerate(frames["z"])])
    fig.update_xaxes(title_text=axis_label(evo.surfaces[0].attrs, "x"))
    fig.update_yaxes(title_text=label, range=[lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)])
    panel_layout(fig, "the curve at each checkpoint, earlier ones faint")
    return [Panel("curve", fig)], [[{"panel": "curve", "update": style(i), "traces": list(range(n))}]
                                   for i in range(n)]


def _plane_frames(go: Any, evo: Evolution, frames: dict[str, Any]) -> tuple[list[Panel], list[Any]]:
    """The 3D panel and the filled contour of the first checkpoint; each frame restyles both (values,
    hover, the minimum's star) on the range and levels of all checkpoints."""
    first = evo.surfaces[0]
    grid = Grid.of(first)
    label, levels = frames["label"], frames["levels"]
    accs = [np.where(shown_mask(s), s.acc, np.nan) for s in evo.surfaces]
    surface = surface3d_panel(go, first, frames["z"][0], accs[0], label, grid)
    surface.figure.update_traces(cmin=frames["lo"], cmax=frames["hi"], selector={"type": "surface"})
    surface.figure.update_layout(scene_zaxis_range=[frames["lo"], frames["hi"]])
    contour = contour_panel(go, first, frames["z"][0], accs[0], label, levels, grid, filled=True)
    updates = []
    for z, acc in zip(frames["z"], accs):
        star = star_trace(go, first, z, label)
        updates.append([
            {"panel": surface.name, "update": {"z": [as_text(grid.take(z).T)],
                                               "customdata": [as_text(grid.take(acc).T)]}, "traces": [0]},
            {"panel": contour.name, "update": {"z": [as_text(grid.take(level_index(z, levels)).T)],
                                               "customdata": [value_and_accuracy(grid.take(z), grid.take(acc))]},
             "traces": [0]}])
        if star:
            updates[-1].append({"panel": contour.name, "update": {"x": [star[0].x], "y": [star[0].y],
                                                                  "name": star[0].name},
                                "traces": [len(contour.figure.data) - 1]})
    return [surface, contour], updates
