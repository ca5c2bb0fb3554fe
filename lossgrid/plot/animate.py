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
from .common import axis_label, default_levels, metric_values

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
                     log: bool = False, vmax: float | None = None, fps: float = 2.0, dpi: int = 100,
                     title: str | None = None) -> str:
    """Write ``out`` (``.gif``, ``.mp4`` or ``.html`` by extension), one frame per checkpoint;
    returns its path. The file is written beside ``out`` and moved into place when whole."""
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


def _frames(evo: Evolution, metric: str, log: bool, vmax: float | None) -> dict[str, Any]:
    """The values of every frame, their label, and the range shared by all frames."""
    values = []
    label = metric
    for s in evo.surfaces:
        z, label = metric_values(s, metric, log=log, vmax=vmax)
        values.append(z)
    finite = np.concatenate([z[np.isfinite(z)] for z in values])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if not hi > lo:
        hi = lo + 1.0
    levels = default_levels(np.stack(values), 20, vmax=None if log else vmax) if evo.ndim == 2 else None
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


# -- HTML slider (plotly) -------------------------------------------------------------------
def _as_text(a: np.ndarray) -> list[Any]:
    """Nested lists of floats, ``None`` (a gap) where not finite."""
    return np.where(np.isfinite(a), a, None).tolist()


def _write_html(evo: Evolution, frames: dict[str, Any], out: str, title: str | None, fps: float) -> None:
    go = require("plotly.graph_objects", "html", "Interactive HTML output")
    from plotly.subplots import make_subplots

    first = evo.surfaces[0]
    x = first.xcoordinates.tolist()
    lo, hi, label = frames["lo"], frames["hi"], frames["label"]
    # frame names must be unique (two runs may both have an epoch_10)
    names = [lab if evo.labels.count(lab) == 1 else f"{lab} ({i + 1})" for i, lab in enumerate(evo.labels)]

    def traces(i: int) -> list[Any]:
        z = frames["z"][i]
        if evo.ndim == 1:
            return [go.Scatter(x=x, y=_as_text(z), mode="lines+markers", name=label,
                               hovertemplate="x=%{x:.4g}<br>" + label + "=%{y:.5g}<extra></extra>")]
        zt = _as_text(z.T)  # plotly: rows are y, columns x
        y = first.ycoordinates.tolist() if first.ycoordinates is not None else []
        return [go.Surface(x=x, y=y, z=zt, cmin=lo, cmax=hi, colorscale="Viridis", name=label,
                           colorbar={"title": {"text": label}, "x": 0.5}),
                go.Contour(x=x, y=y, z=zt, zmin=lo, zmax=hi, colorscale="Viridis", showscale=False, name=label,
                           contours={"coloring": "heatmap", "showlabels": True}, ncontours=20)]

    if evo.ndim == 1:
        fig = go.Figure(data=traces(0))
        fig.update_xaxes(title_text=axis_label(first.attrs, "x"))
        fig.update_yaxes(title_text=label, range=[lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)])
    else:
        fig = make_subplots(rows=1, cols=2, specs=[[{"type": "surface"}, {"type": "xy"}]],
                            subplot_titles=("3D surface", "contour"), column_widths=[0.55, 0.45])
        surface, contour = traces(0)
        fig.add_trace(surface, row=1, col=1)
        fig.add_trace(contour, row=1, col=2)
        fig.update_layout(scene={"xaxis_title": axis_label(first.attrs, "x"),
                                 "yaxis_title": axis_label(first.attrs, "y"), "zaxis_title": label,
                                 "zaxis": {"range": [lo, hi]}})
        fig.update_xaxes(title_text=axis_label(first.attrs, "x"), row=1, col=2)
        fig.update_yaxes(title_text=axis_label(first.attrs, "y"), row=1, col=2)
    trace_ids = list(range(len(fig.data)))
    fig.frames = [go.Frame(data=traces(i), name=names[i], traces=trace_ids,
                           layout={"title": {"text": _frame_title(evo, i, title)}}) for i in range(len(names))]
    step_args = {"mode": "immediate", "frame": {"duration": int(1000 / fps), "redraw": True},
                 "transition": {"duration": 0}}
    fig.update_layout(
        title={"text": _frame_title(evo, 0, title)}, width=1200, height=650,
        sliders=[{"active": 0, "currentvalue": {"prefix": "checkpoint: "}, "pad": {"t": 40},
                  "steps": [{"label": name, "method": "animate", "args": [[name], step_args]} for name in names]}],
        updatemenus=[{"type": "buttons", "showactive": False, "x": 0.0, "y": -0.05, "xanchor": "right",
                      "buttons": [{"label": "play", "method": "animate", "args": [None, {**step_args,
                                                                                          "fromcurrent": True}]},
                                  {"label": "pause", "method": "animate",
                                   "args": [[None], {"mode": "immediate", "frame": {"duration": 0}}]}]}])
    fig.write_html(out, include_plotlyjs=True, full_html=True, include_mathjax=False, auto_play=False,
                   config={"displaylogo": False, "showSendToCloud": False})
