"""Interactive, self-contained HTML (plotly): 3D surface and contour side by side
for 2D surfaces, loss and accuracy curves for 1D ones. Works offline: plotly.js
is embedded, no MathJax, no links to the plotly site."""

from __future__ import annotations

import numpy as np

from .._optional import require
from ..engine.surface_file import Surface
from ._common import axis_label, metric_values, title_of

HOVER_2D = "x=%{x:.4g}<br>y=%{y:.4g}<br>{label}=%{z:.5g}<br>acc=%{customdata:.2f}%<extra></extra>"


def _as_text(a: np.ndarray) -> list:
    """Nested lists of floats, ``None`` where not finite: the data stays readable
    text in the file and missing points are gaps."""
    return np.where(np.isfinite(a), a, None).tolist()


def write_html(surface: Surface, out: str, metric: str = "loss", log: bool = False, vmax: float | None = None,
               title: str | None = None) -> None:
    """Write ``out`` as one HTML file with the data and plotly.js inlined."""
    go = require("plotly.graph_objects", "html", "Interactive HTML output")
    from plotly.subplots import make_subplots

    z, label = metric_values(surface, metric, log=log, vmax=vmax)
    acc = np.where(surface.done, surface.acc, np.nan)
    x = surface.xcoordinates.tolist()
    if surface.ndim == 1:
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        fig.add_trace(go.Scatter(x=x, y=_as_text(z), name=label, mode="lines+markers",
                                 hovertemplate="x=%{x:.4g}<br>" + label + "=%{y:.5g}<extra></extra>"))
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
        fig.add_trace(go.Contour(x=x, y=y, z=zt, customdata=acct, colorscale="Viridis", hovertemplate=hover,
                                 showscale=False, contours={"coloring": "lines", "showlabels": True},
                                 ncontours=30, name=label), row=1, col=2)
        fig.update_layout(scene={"xaxis_title": axis_label(surface.attrs, "x"),
                                 "yaxis_title": axis_label(surface.attrs, "y"), "zaxis_title": label})
        fig.update_xaxes(title_text=axis_label(surface.attrs, "x"), row=1, col=2)
        fig.update_yaxes(title_text=axis_label(surface.attrs, "y"), row=1, col=2)
    fig.update_layout(title={"text": title_of(surface, title, label)}, width=1200, height=600)
    fig.write_html(out, include_plotlyjs=True, full_html=True, include_mathjax=False,
                   config={"displaylogo": False, "showSendToCloud": False})
