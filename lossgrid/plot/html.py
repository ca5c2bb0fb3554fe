"""Interactive, self-contained HTML (plotly): 3D surface and contour side by side
for 2D surfaces, loss and accuracy curves for 1D ones. Works offline: plotly.js
is embedded, no MathJax, no links to the plotly site."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._optional import require
from ..surface.file import Surface
from .common import (
    adaptive_note,
    axis_label,
    default_levels,
    evaluated_mask,
    metric_values,
    shown_mask,
    title_of,
    with_note,
)

HOVER_2D = "x=%{x:.4g}<br>y=%{y:.4g}<br>{label}=%{z:.5g}<br>acc=%{customdata:.2f}%<extra></extra>"


def _as_text(a: np.ndarray) -> list:
    """Nested lists of floats, ``None`` where not finite: the data stays readable
    text in the file and missing points are gaps."""
    return np.where(np.isfinite(a), a, None).tolist()


def _mark_evaluated(go: Any, fig: Any, surface: Surface, z: np.ndarray, label: str, evaluated: np.ndarray) -> None:
    """Black dots on the evaluated points of an adaptive 2D surface: on the contour and on the 3D surface."""
    X, Y = np.meshgrid(surface.xcoordinates, surface.ycoordinates, indexing="ij")
    dots = {"size": 2, "color": "black"}
    hover = "x=%{x:.4g}<br>y=%{y:.4g}<br>" + label + "=%{z:.5g} (evaluated)<extra></extra>"
    fig.add_trace(go.Scatter(x=X[evaluated].tolist(), y=Y[evaluated].tolist(), customdata=_as_text(z[evaluated]),
                             mode="markers", marker=dots, name=f"evaluated ({adaptive_note(surface)})",
                             hovertemplate=hover.replace("%{z", "%{customdata")), row=1, col=2)
    keep = evaluated & np.isfinite(z)
    fig.add_trace(go.Scatter3d(x=X[keep].tolist(), y=Y[keep].tolist(), z=z[keep].tolist(), mode="markers",
                               marker=dots, name="evaluated", showlegend=False, hovertemplate=hover), row=1, col=1)


def write_html(surface: Surface, out: str, metric: str = "loss", log: bool = False, vmax: float | None = None,
               title: str | None = None) -> None:
    """Write ``out`` as one HTML file with the data and plotly.js inlined."""
    go = require("plotly.graph_objects", "html", "Interactive HTML output")
    from plotly.subplots import make_subplots

    z, label = metric_values(surface, metric, log=log, vmax=vmax)
    acc = np.where(shown_mask(surface), surface.acc, np.nan)
    x = surface.xcoordinates.tolist()
    evaluated = evaluated_mask(surface)  # adaptive surfaces: markers on the evaluated points only
    note = adaptive_note(surface)
    if surface.ndim == 1:
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        fig.add_trace(go.Scatter(x=x, y=_as_text(z), name=label, mode="lines+markers" if evaluated is None else "lines",
                                 hovertemplate="x=%{x:.4g}<br>" + label + "=%{y:.5g}<extra></extra>"))
        if evaluated is not None:
            fig.add_trace(go.Scatter(x=surface.xcoordinates[evaluated].tolist(), y=_as_text(z[evaluated]),
                                     name=f"evaluated ({note})", mode="markers", marker={"size": 6},
                                     hovertemplate="x=%{x:.4g}<br>" + label + "=%{y:.5g} (evaluated)<extra></extra>"))
        fig.add_trace(go.Scatter(x=x, y=_as_text(acc), name="accuracy (%)", mode="lines",
                                 line={"dash": "dash"}, hovertemplate="x=%{x:.4g}<br>acc=%{y:.2f}%<extra></extra>"),
                      secondary_y=True)
        fig.update_xaxes(title_text=axis_label(surface.attrs, "x"))
        fig.update_yaxes(title_text=label, secondary_y=False)
        fig.update_yaxes(title_text="accuracy (%)", secondary_y=True, range=[0, 100])
    else:
        assert surface.ycoordinates is not None
        y = surface.ycoordinates.tolist()
        zt, acct = _as_text(z.T), _as_text(acc.T)  # plotly: rows are y, columns x
        hover = HOVER_2D.replace("{label}", label)
        fig = make_subplots(rows=1, cols=2, specs=[[{"type": "surface"}, {"type": "xy"}]],
                            subplot_titles=("3D surface", "contour"), column_widths=[0.55, 0.45])
        fig.add_trace(go.Surface(x=x, y=y, z=zt, customdata=acct, colorscale="Viridis", hovertemplate=hover,
                                 colorbar={"title": {"text": label}, "x": 0.5}, name=label), row=1, col=1)
        for trace in _contour(go, surface, z, acc, label):
            fig.add_trace(trace, row=1, col=2)
        if evaluated is not None:
            _mark_evaluated(go, fig, surface, z, label, evaluated)
        fig.update_layout(scene={"xaxis_title": axis_label(surface.attrs, "x"),
                                 "yaxis_title": axis_label(surface.attrs, "y"), "zaxis_title": label})
        fig.update_xaxes(title_text=axis_label(surface.attrs, "x"), row=1, col=2)
        fig.update_yaxes(title_text=axis_label(surface.attrs, "y"), row=1, col=2)
    fig.update_layout(title={"text": with_note(title_of(surface, title, label), surface, "<br>")}, width=1200,
                      height=600)
    fig.write_html(out, include_plotlyjs=True, full_html=True, include_mathjax=False,
                   config={"displaylogo": False, "showSendToCloud": False})


def _contour(go: Any, surface: Surface, z: np.ndarray, acc: np.ndarray, label: str, n: int = 30) -> list[Any]:
    """The contour panel at :func:`default_levels` (dense in the basin, sparse on the walls) and the minimum.

    plotly spaces contour lines evenly, so they are drawn on ``log10`` of the height above the minimum, where
    those levels are evenly spaced; the hover shows the values themselves."""
    x, y = surface.xcoordinates.tolist(), surface.ycoordinates.tolist()
    finite = np.isfinite(z)
    hover = "x=%{x:.4g}<br>y=%{y:.4g}<br>" + label + "=%{customdata[0]:.5g}<br>acc=%{customdata[1]:.2f}%<extra></extra>"
    cells = np.stack([np.where(finite, z, np.nan), acc], axis=-1).transpose(1, 0, 2)  # plotly: rows are y
    custom = np.where(np.isfinite(cells), cells, None).tolist()
    if not finite.any():
        return [go.Contour(x=x, y=y, z=_as_text(z.T), showscale=False, name=label)]
    levels = default_levels(z, n)
    lo = float(z[finite].min())
    first, span = levels[0] - lo, levels[-1] - lo
    height = np.log10(np.maximum(z - lo, first * 1e-3))
    start, end = float(np.log10(first)), float(np.log10(span))
    contour = go.Contour(x=x, y=y, z=_as_text(np.where(finite, height, np.nan).T), customdata=custom,
                         colorscale="Viridis", hovertemplate=hover, showscale=False, name=label,
                         contours={"coloring": "lines", "start": start, "end": end, "size": (end - start) / (n - 1)})
    i, j = np.unravel_index(int(np.argmin(np.where(finite, z, np.inf))), z.shape)
    star = go.Scatter(x=[x[i]], y=[y[j]], mode="markers", marker={"symbol": "star", "size": 13, "color": "red"},
                      name=f"minimum ({z[i, j]:.4g})", hovertemplate=f"minimum {label}={z[i, j]:.5g}<extra></extra>")
    return [contour, star]
