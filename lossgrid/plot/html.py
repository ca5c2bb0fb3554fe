"""Interactive pages (plotly, one offline file each, laid out by :mod:`lossgrid.plot.page`) for every kind
a PNG exists for: a 2D surface (3D panel and contour), 1D curves and interpolations (several overlaid),
comparisons (one panel per surface on one scale), convexity maps, and training paths over their plane.
Evolution animations are in :mod:`lossgrid.plot.animate`.

Contour lines sit at the PNG's levels (:func:`~lossgrid.plot.common.default_levels`: dense in the basin,
sparse on the walls, or ``--levels``). plotly draws lines only at evenly spaced values, so the panels draw
:func:`level_index` (each point's position among the levels) and the colour bar names the levels'
values; the hover shows the values themselves.

Grids larger than :data:`MAX_SIDE` points on a side are drawn on every k-th point (the page says so), which
keeps a 501x501 file responsive; the star marks the minimum over all points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._optional import require
from ..surface.file import Surface
from .common import (
    adaptive_note,
    anchor_note,
    axis_label,
    curvature_values,
    evaluated_mask,
    metric_values,
    minimum_index,
    name_of,
    plane_label,
    resolve_levels,
    shown_mask,
    title_of,
)
from .page import COLORSCALE, Panel, as_text, panel_layout, write_page
from .path import epoch_labels, path_values, pc_label, spread

if TYPE_CHECKING:
    from ..trajectory.compute import Trajectory

#: the most points per axis a 2D panel draws: above it, every k-th point. Measured in headless Chromium
#: (software WebGL, 2 cores): see docs/plot.md
MAX_SIDE = 201
#: at most this many labelled ticks on a colour bar of levels
TICKS = 7
HOVER_XY = "x=%{x:.4g}<br>y=%{y:.4g}<br>"


def write_html(kind: str, surfaces: list[Surface], out: str, metric: str = "loss", log: bool = False,
               levels: Any = None, vmax: float | None = None, title: str | None = None,
               trajectory: Trajectory | None = None, path_loss: Any = None) -> None:
    """The page of a picture ``kind`` (``curve``, ``compare``, ``curvature``, or a 2D kind: the 3D panel and
    the contour; with ``trajectory``, the path over its plane)."""
    first = surfaces[0]
    if kind == "compare":
        compare_page(surfaces, out, metric, log, levels, vmax, title)
    elif kind == "curvature":
        curvature_page(first, out, vmax, title)
    elif trajectory is not None:
        trajectory_page(first, trajectory, path_loss, out, metric, log, levels, vmax, title)
    elif kind == "curve" or first.ndim == 1:
        curves_page(surfaces, out, log, vmax, title)
    else:
        surface_page(first, out, metric, log, levels, vmax, title)


def level_index(z: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Each value's position among increasing ``levels`` (``levels[k]`` -> ``k``, linear between two of
    them, clipped at both ends; NaN stays NaN): contour lines drawn at the integers of this are the
    lines at ``levels``."""
    z = np.asarray(z, dtype=np.float64)
    index = np.interp(np.where(np.isfinite(z), z, levels[0]), levels, np.arange(len(levels), dtype=np.float64))
    return np.where(np.isfinite(z), index, np.nan)


def level_colorbar(levels: np.ndarray, label: str) -> dict[str, Any]:
    """A colour bar over :func:`level_index` that names the levels' values."""
    ticks = np.unique(np.linspace(0, len(levels) - 1, TICKS).round().astype(int))
    return {"title": {"text": label, "side": "right"}, "tickvals": ticks.tolist(),
            "ticktext": [f"{levels[k]:.3g}" for k in ticks], "len": 0.9}


@dataclass
class Grid:
    """The points a 2D panel draws: every ``step``-th index of each axis (and the last)."""

    ix: np.ndarray
    iy: np.ndarray
    note: str | None

    @classmethod
    def of(cls, surface: Surface) -> Grid:
        nx, ny = surface.loss.shape
        ix, iy = _every(nx), _every(ny)
        if len(ix) == nx and len(iy) == ny:
            return cls(ix, iy, None)
        step = math.ceil(max(nx, ny) / MAX_SIDE)
        note = (f"{nx:,} x {ny:,} points drawn as {len(ix):,} x {len(iy):,} (one point in {step} along each axis) "
                "to stay responsive; the file holds them all, and the star marks the minimum over all of them")
        return cls(ix, iy, note)

    def take(self, a: np.ndarray) -> np.ndarray:
        return a[np.ix_(self.ix, self.iy)]


def _every(n: int) -> np.ndarray:
    step = math.ceil(n / MAX_SIDE)
    return np.unique(np.r_[np.arange(0, n, step), n - 1])


def _notes(surface: Surface, grid: Grid | None = None) -> list[str]:
    notes = [adaptive_note(surface), anchor_note(surface), grid.note if grid is not None else None]
    return [n for n in notes if n]


def _axes(surface: Surface, grid: Grid) -> tuple[list[float], list[float]]:
    assert surface.ycoordinates is not None  # 2D surfaces only
    return surface.xcoordinates[grid.ix].tolist(), surface.ycoordinates[grid.iy].tolist()


def value_and_accuracy(z: np.ndarray, acc: np.ndarray) -> list[Any]:
    """Per point ``[value, accuracy]`` for the hover, rows along y as plotly wants them."""
    return as_text(np.stack([z, acc], axis=-1).transpose(1, 0, 2))


def _evaluated_dots(go: Any, surface: Surface, z: np.ndarray, label: str, three_d: bool) -> list[Any]:
    """Black dots on the evaluated points of an adaptive 2D surface (none for a plain one)."""
    evaluated = evaluated_mask(surface)
    if evaluated is None:
        return []
    X, Y = np.meshgrid(surface.xcoordinates, surface.ycoordinates, indexing="ij")
    keep = evaluated & np.isfinite(z) if three_d else evaluated
    dots = {"size": 2, "color": "black"}
    hover = HOVER_XY + label + "=%{customdata:.5g} (evaluated)<extra></extra>"
    if three_d:
        return [go.Scatter3d(x=X[keep].tolist(), y=Y[keep].tolist(), z=z[keep].tolist(), mode="markers",
                             marker=dots, name="evaluated", showlegend=False, customdata=z[keep].tolist(),
                             hovertemplate=hover)]
    return [go.Scatter(x=X[keep].tolist(), y=Y[keep].tolist(), customdata=as_text(z[keep]), mode="markers",
                       marker=dots, name=f"evaluated ({adaptive_note(surface)})", hovertemplate=hover)]


def star_trace(go: Any, surface: Surface, z: np.ndarray, label: str) -> list[Any]:
    """A red star at the minimum over all points (not only the drawn ones)."""
    idx = minimum_index(z)
    if idx is None or surface.ycoordinates is None:
        return []
    i, j = idx
    x, y = float(surface.xcoordinates[i]), float(surface.ycoordinates[j])
    return [go.Scatter(x=[x], y=[y], mode="markers", marker={"symbol": "star", "size": 14, "color": "red",
                                                             "line": {"width": 1, "color": "white"}},
                       name=f"minimum ({label} {z[i, j]:.4g})",
                       hovertemplate=f"minimum {label}={z[i, j]:.5g}<br>x={x:.4g}<br>y={y:.4g}<extra></extra>")]


def surface3d_panel(go: Any, surface: Surface, z: np.ndarray, acc: np.ndarray, label: str, grid: Grid) -> Panel:
    """The 3D panel: height and colour are the metric on one scale (log10 when the label says so)."""
    x, y = _axes(surface, grid)
    hover = HOVER_XY + label + "=%{z:.5g}<br>acc=%{customdata:.2f}%<extra></extra>"
    fig = go.Figure([go.Surface(x=x, y=y, z=as_text(grid.take(z).T), customdata=as_text(grid.take(acc).T),
                                colorscale=COLORSCALE, hovertemplate=hover, name=label,
                                colorbar={"title": {"text": label, "side": "right"}, "len": 0.8}),
                     *_evaluated_dots(go, surface, z, label, three_d=True)])
    small = {"size": 11}
    fig.update_layout(scene={"xaxis": {"title": {"text": axis_label(surface.attrs, "x"), "font": small}},
                             "yaxis": {"title": {"text": axis_label(surface.attrs, "y"), "font": small}},
                             "zaxis": {"title": {"text": label, "font": small}},
                             "aspectmode": "manual", "aspectratio": {"x": 1, "y": 1, "z": 0.7},
                             "camera": {"eye": {"x": 1.5, "y": -1.5, "z": 0.9}},
                             "domain": {"x": [0, 1], "y": [0, 1]}})
    panel_layout(fig, "3D surface")
    fig.update_layout(margin={"l": 0, "r": 0, "t": 40, "b": 0})
    return Panel("surface3d", fig)


def contour_traces(go: Any, surface: Surface, z: np.ndarray, acc: np.ndarray, label: str, levels: np.ndarray,
                   grid: Grid, filled: bool = False, showscale: bool = True) -> list[Any]:
    """Contour lines (or filled bands) at ``levels`` with a colour bar naming them, the hover's values."""
    x, y = _axes(surface, grid)
    hover = HOVER_XY + label + "=%{customdata[0]:.5g}<br>acc=%{customdata[1]:.2f}%<extra></extra>"
    n = len(levels)
    return [go.Contour(x=x, y=y, z=as_text(grid.take(level_index(z, levels)).T), customdata=value_and_accuracy(
        grid.take(z), grid.take(acc)), colorscale=COLORSCALE, zmin=0, zmax=n - 1, hovertemplate=hover, name=label,
        contours={"coloring": "heatmap" if filled else "lines", "start": 0, "end": n - 1, "size": 1},
        line={"width": 0.5 if filled else 1.2}, showscale=showscale, colorbar=level_colorbar(levels, label))]


def contour_panel(go: Any, surface: Surface, z: np.ndarray, acc: np.ndarray, label: str, levels: np.ndarray,
                  grid: Grid, name: str = "contour", heading: str = "contour", filled: bool = False) -> Panel:
    """A contour panel: the lines, the evaluated points of an adaptive surface, the minimum starred."""
    fig = go.Figure([*contour_traces(go, surface, z, acc, label, levels, grid, filled),
                     *_evaluated_dots(go, surface, z, label, three_d=False), *star_trace(go, surface, z, label)])
    fig.update_xaxes(title_text=plane_label(surface.attrs, "x"))
    fig.update_yaxes(title_text=plane_label(surface.attrs, "y"))
    panel_layout(fig, heading)
    return Panel(name, fig)


def surface_page(surface: Surface, out: str, metric: str, log: bool, levels: Any, vmax: float | None,
                 title: str | None) -> None:
    """A 2D surface: the 3D panel and the contour (a 1D one: :func:`curves_page`)."""
    go = require("plotly.graph_objects", "html", "Interactive HTML output")
    z, label = metric_values(surface, metric, log=log, vmax=vmax)
    acc = np.where(shown_mask(surface), surface.acc, np.nan)
    grid = Grid.of(surface)
    panels = [surface3d_panel(go, surface, z, acc, label, grid),
              contour_panel(go, surface, z, acc, label, resolve_levels(z, levels, log), grid)]
    write_page(out, title_of(surface, title, label), _notes(surface, grid), panels)


def curves_page(surfaces: list[Surface], out: str, log: bool, vmax: float | None, title: str | None) -> None:
    """1D surfaces (loss on the left axis, accuracy dashed on the right), several overlaid by name."""
    go = require("plotly.graph_objects", "html", "Interactive HTML output")
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    many = len(surfaces) > 1
    for i, s in enumerate(surfaces):
        for trace, secondary in _curve_traces(go, s, name_of(s) + " " if many else "", i, vmax):
            fig.add_trace(trace, secondary_y=secondary)
    fig.update_xaxes(title_text=axis_label(surfaces[0].attrs, "x"))
    fig.update_yaxes(title_text="loss (solid)", type="log" if log else "linear", secondary_y=False)
    fig.update_yaxes(title_text="accuracy % (dashed)", range=[0, 100], secondary_y=True, showgrid=False)
    panel_layout(fig, "loss and accuracy")
    notes = [] if many else _notes(surfaces[0])
    write_page(out, title_of(surfaces[0], title, "loss and accuracy"), notes, [Panel("curve", fig)])


def _curve_traces(go: Any, s: Surface, prefix: str, i: int, vmax: float | None) -> list[tuple[Any, bool]]:
    color = _color(i)
    loss, _ = metric_values(s, "loss", vmax=vmax)
    acc, _ = metric_values(s, "acc")
    evaluated = evaluated_mask(s)
    x = s.xcoordinates.tolist()
    traces = [(go.Scatter(x=x, y=as_text(loss), name=f"{prefix}loss", line={"color": color, "width": 2},
                          mode="lines+markers" if evaluated is None and len(x) <= 101 else "lines",
                          hovertemplate="x=%{x:.4g}<br>loss=%{y:.5g}<extra></extra>"), False)]
    if evaluated is not None:
        traces.append((go.Scatter(x=s.xcoordinates[evaluated].tolist(), y=as_text(loss[evaluated]), mode="markers",
                                  name=f"{prefix}evaluated ({adaptive_note(s)})", marker={"size": 6, "color": color},
                                  hovertemplate="x=%{x:.4g}<br>loss=%{y:.5g} (evaluated)<extra></extra>"), False))
    if np.isfinite(acc).any():
        traces.append((go.Scatter(x=x, y=as_text(acc), name=f"{prefix}accuracy (%)", mode="lines",
                                  line={"color": color, "dash": "dash", "width": 1.5},
                                  hovertemplate="x=%{x:.4g}<br>acc=%{y:.2f}%<extra></extra>"), True))
    return traces


def _color(i: int) -> str:
    from plotly.colors import qualitative

    return qualitative.D3[i % len(qualitative.D3)]


def compare_page(surfaces: list[Surface], out: str, metric: str, log: bool, levels: Any, vmax: float | None,
                 title: str | None) -> None:
    """2D surfaces side by side, filled at the levels of all of them together: one colour scale."""
    if surfaces[0].ndim == 1:
        curves_page(surfaces, out, log, vmax, title)
        return
    go = require("plotly.graph_objects", "html", "Interactive HTML output")
    shown = [metric_values(s, metric, log=log, vmax=vmax) for s in surfaces]
    values, label = [z for z, _ in shown], shown[0][1]
    joint = np.concatenate([z[np.isfinite(z)] for z in values])
    lv = resolve_levels(joint.reshape(1, -1) if joint.size else np.zeros((1, 1)), levels, log)
    panels, notes = [], []
    for k, (s, z) in enumerate(zip(surfaces, values)):
        grid = Grid.of(s)
        acc = np.where(shown_mask(s), s.acc, np.nan)
        panels.append(contour_panel(go, s, z, acc, label, lv, grid, name=f"surface-{k + 1}", heading=name_of(s),
                                    filled=True))
        notes += [f"{name_of(s)}: {n}" for n in _notes(s, grid)]
    write_page(out, title_of(surfaces[0], title, f"{label}, one colour scale"), notes, panels)


def curvature_page(surface: Surface, out: str, vmax: float | None, title: str | None) -> None:
    """The convexity map ``|min_eig / max_eig|`` beside the loss contour (2D), or the two eigenvalues
    and their ratio along the line (1D)."""
    go = require("plotly.graph_objects", "html", "Interactive HTML output")
    ratio = curvature_values(surface)
    label = "|min eig / max eig|"
    if surface.ndim == 1:
        panels = [Panel("curvature", _curvature_curve(go, surface, ratio, label))]
        write_page(out, title_of(surface, title, label), _notes(surface), panels)
        return
    grid = Grid.of(surface)
    finite = ratio[np.isfinite(ratio)]
    top = vmax if vmax is not None else (float(np.percentile(finite, 98)) if finite.size else 1.0)
    x, y = _axes(surface, grid)
    hover = HOVER_XY + label + "=%{z:.4g}<extra></extra>"
    fig = go.Figure([go.Heatmap(x=x, y=y, z=as_text(grid.take(ratio).T), zmin=0.0, zmax=max(top, 1e-12),
                                colorscale="RdBu", reversescale=True, hovertemplate=hover, name=label,
                                colorbar={"title": {"text": label, "side": "right"}, "len": 0.9})])
    fig.update_xaxes(title_text=plane_label(surface.attrs, "x"))
    fig.update_yaxes(title_text=plane_label(surface.attrs, "y"))
    panel_layout(fig, "convexity: near 0 convex in every direction")
    z, zlabel = metric_values(surface, "loss")
    acc = np.where(shown_mask(surface), surface.acc, np.nan)
    panels = [Panel("curvature", fig), contour_panel(go, surface, z, acc, zlabel, resolve_levels(z, None), grid)]
    write_page(out, title_of(surface, title, label), _notes(surface, grid), panels)


def _curvature_curve(go: Any, surface: Surface, ratio: np.ndarray, label: str) -> Any:
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    done = surface.done.astype(bool)
    x = surface.xcoordinates.tolist()
    for name, dash in (("max_eig", "solid"), ("min_eig", "dash")):
        fig.add_trace(go.Scatter(x=x, y=as_text(np.where(done, surface.extra[name], np.nan)), name=name,
                                 line={"dash": dash}), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=as_text(ratio), name=label, line={"dash": "dot"}), secondary_y=True)
    fig.update_xaxes(title_text=axis_label(surface.attrs, "x"))
    fig.update_yaxes(title_text="Hessian eigenvalue", secondary_y=False)
    fig.update_yaxes(title_text=label, secondary_y=True, showgrid=False)
    panel_layout(fig, "Hessian eigenvalues along the line")
    return fig


def trajectory_page(surface: Surface, traj: Trajectory, path_loss: Any, out: str, metric: str, log: bool,
                    levels: Any, vmax: float | None, title: str | None) -> None:
    """The training path over the contour of its plane (points coloured by their loss on the contour's
    scale when given), and the loss along the path."""
    go = require("plotly.graph_objects", "html", "Interactive HTML output")
    z, label = metric_values(surface, metric, log=log, vmax=vmax)
    acc = np.where(shown_mask(surface), surface.acc, np.nan)
    grid = Grid.of(surface)
    lv = resolve_levels(z, levels, log)
    panel = contour_panel(go, surface, z, acc, label, lv, grid, name="path", heading="training path", filled=True)
    values = path_values(path_loss, log=log, vmax=vmax) if metric == "loss" else None
    for trace in _path_traces(go, traj, values, lv, path_loss):
        panel.figure.add_trace(trace)
    panel.figure.update_layout(annotations=_arrows(traj))
    panel.figure.update_xaxes(title_text=pc_label(traj, 0))
    panel.figure.update_yaxes(title_text=pc_label(traj, 1))
    panels = [panel]
    if path_loss is not None:
        panels.append(_path_loss_panel(go, traj, np.asarray(path_loss, dtype=float)))
    write_page(out, title_of(surface, title, label), _notes(surface, grid), panels)


def _path_traces(go: Any, traj: Trajectory, values: np.ndarray | None, levels: np.ndarray,
                 losses: Any = None) -> list[Any]:
    """The path: its points (coloured by ``values`` on the contour's ``levels``; ``losses`` in the hover),
    epochs labelled along it, the start and the end marked."""
    xy = np.asarray(traj.coords, dtype=np.float64)
    labels = epoch_labels(traj.paths)
    shown = set(spread(len(xy), 12).tolist())
    text = [lab if i in shown else "" for i, lab in enumerate(labels)]
    marker: dict[str, Any] = {"size": 9, "line": {"width": 1, "color": "black"}, "color": "white"}
    if values is not None:  # coloured on the contour's scale
        marker.update(color=as_text(level_index(values, levels)), colorscale=COLORSCALE, cmin=0,
                      cmax=len(levels) - 1)
    end = next((i for i, p in enumerate(traj.paths) if p == traj.final), len(xy) - 1)
    hover = [f"checkpoint {lab}" + (f"<br>loss {v:.5g}" if losses is not None else "")
             for lab, v in zip(labels, losses if losses is not None else labels)]
    return [go.Scatter(x=xy[:, 0].tolist(), y=xy[:, 1].tolist(), mode="lines+markers+text", text=text,
                       textposition="top right", line={"color": "black", "width": 1}, marker=marker,
                       name="checkpoints" + (" (colour: loss)" if values is not None else ""), hovertext=hover,
                       hovertemplate="%{hovertext}<br>x=%{x:.4g}<br>y=%{y:.4g}<extra></extra>"),
            go.Scatter(x=[xy[0, 0]], y=[xy[0, 1]], mode="markers", name=f"start ({labels[0]})",
                       marker={"symbol": "circle-open", "size": 16, "color": "green", "line": {"width": 3}}),
            go.Scatter(x=[xy[end, 0]], y=[xy[end, 1]], mode="markers", name=f"end ({labels[end]})",
                       marker={"symbol": "square-open", "size": 15, "color": "red", "line": {"width": 3}})]


def _arrows(traj: Trajectory) -> list[dict[str, Any]]:
    """Arrows along training, on evenly spread segments of a long path."""
    xy = np.asarray(traj.coords, dtype=np.float64)
    if len(xy) < 2:
        return []
    return [{"x": float(xy[k + 1, 0]), "y": float(xy[k + 1, 1]), "ax": float(xy[k, 0]), "ay": float(xy[k, 1]),
             "xref": "x", "yref": "y", "axref": "x", "ayref": "y", "showarrow": True, "arrowhead": 2,
             "arrowsize": 1.2, "arrowwidth": 1.2, "arrowcolor": "black", "text": ""}
            for k in spread(len(xy) - 1, 40)]


def _path_loss_panel(go: Any, traj: Trajectory, losses: np.ndarray) -> Panel:
    labels = epoch_labels(traj.paths)
    fig = go.Figure([go.Scatter(x=labels, y=as_text(losses), mode="lines+markers", name="loss at the checkpoint's "
                                "coordinates", hovertemplate="checkpoint %{x}<br>loss=%{y:.5g}<extra></extra>")])
    fig.update_xaxes(title_text="checkpoint (epoch)", type="category")
    fig.update_yaxes(title_text="loss on the plane", type="log" if np.all(losses > 0) else "linear")
    panel_layout(fig, "loss along the path")
    return Panel("path-loss", fig)
