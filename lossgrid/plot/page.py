"""One self-contained HTML page of plotly panels, laid out for a screen.

Every panel is its own plotly figure in its own box of a CSS grid: two boxes side by side on
a wide window, one above the other on a narrow one, so panels never overlap, each colour bar
stays beside its own panel, and the page never scrolls sideways. The title and the notes are
HTML text above the grid (they wrap; nothing clips them). plotly.js is inlined once and the
data sits in one JSON block (``<script type="application/json" id="lossgrid-page">``), read
back by :func:`read_page`: the file works offline and its numbers stay readable text.

An animated page (an evolution) carries its frames in the same block and a slider of our
own that restyles every panel to the chosen frame.

Example:
    >>> write_page("p.html", "loss", ["a note"], [Panel("contour", fig)])   # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: the narrowest a panel gets before the grid puts the next one below it (px): two panels side by side
#: from a window of about 1130 px, one per row below that
PANEL_MIN_WIDTH = 540
#: a panel's height (px): two rows of title, the panel and the slider fit a 1280x800 window
PANEL_HEIGHT = 560
CONFIG = {"displaylogo": False, "responsive": True, "showSendToCloud": False, "showLink": False}
COLORSCALE = "Viridis"

STYLE = f"""
*{{box-sizing:border-box}}
body{{margin:0;padding:12px 16px;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;
background:#fff}}
h1{{font-size:18px;font-weight:600;margin:0 0 4px;overflow-wrap:anywhere}}
p.note{{margin:0 0 4px;color:#555;overflow-wrap:anywhere}}
main{{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,{PANEL_MIN_WIDTH}px),1fr));gap:12px;
margin-top:8px}}
figure.panel{{margin:0;min-width:0;height:{PANEL_HEIGHT}px;border:1px solid #e4e4e4;border-radius:4px}}
figure.panel>div{{width:100%;height:100%}}
nav.frames{{display:flex;gap:8px;align-items:center;margin:8px 0}}
nav.frames input{{flex:1;min-width:0}}
nav.frames output{{min-width:12em}}
"""

SCRIPT = """
const page = JSON.parse(document.getElementById("lossgrid-page").textContent);
const config = page.config;
const drawn = page.panels.map(p => Plotly.newPlot(p.id, p.figure.data, p.figure.layout, config));
const slider = document.getElementById("frame");
if (slider) {
  const label = document.getElementById("frame-label");
  const play = document.getElementById("play");
  let timer = null;
  const show = i => {
    slider.value = i;
    label.textContent = page.frames.labels[i];
    page.frames.updates[i].forEach(u => Plotly.restyle("panel-" + u.panel, u.update, u.traces));
  };
  slider.addEventListener("input", () => show(Number(slider.value)));
  play.addEventListener("click", () => {
    if (timer !== null) { clearInterval(timer); timer = null; play.textContent = "play"; return; }
    play.textContent = "pause";
    timer = setInterval(() => {
      const next = (Number(slider.value) + 1) % page.frames.labels.length;
      show(next);
      if (next === page.frames.labels.length - 1) { clearInterval(timer); timer = null; play.textContent = "play"; }
    }, 1000 / page.frames.fps);
  });
}
Promise.all(drawn).then(() => { document.body.dataset.ready = "1"; });
"""


@dataclass
class Panel:
    """One box of the page: ``name`` (its id on the page) and a plotly figure, drawn at the box's size."""

    name: str
    figure: Any


@dataclass
class Frames:
    """The frames of an animated page: a label per frame and, per frame, the restyles that show it
    (``{"panel": name, "update": {"z": [...]}, "traces": [0]}``: plotly's ``restyle`` of those traces of
    that panel)."""

    labels: list[str]
    updates: list[list[dict[str, Any]]]
    fps: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)


def panel_layout(figure: Any, title: str) -> None:
    """The layout every panel shares: sized by its box, a short title inside, room for axis titles."""
    figure.update_layout(autosize=True, width=None, height=None, title={"text": title, "x": 0.02, "font": {"size": 14}},
                         margin={"l": 64, "r": 24, "t": 48, "b": 56}, template="plotly_white",
                         legend={"orientation": "h", "y": -0.18, "x": 0, "font": {"size": 11}})


def as_text(a: np.ndarray) -> list[Any]:
    """Nested lists of floats, ``None`` where not finite: the data stays readable text in the file and
    missing points are gaps."""
    return np.where(np.isfinite(a), a, None).tolist()


def write_page(out: str, title: str, notes: list[str], panels: list[Panel], frames: Frames | None = None) -> None:
    """Write ``out``: the title and notes, the panels in a grid, plotly.js and the data inlined."""
    from plotly.offline import get_plotlyjs

    data = {"title": title, "notes": notes, "config": CONFIG,
            "panels": [{"id": f"panel-{p.name}", "figure": json.loads(p.figure.to_json())} for p in panels]}
    if frames is not None:
        data["frames"] = {"labels": frames.labels, "updates": frames.updates, "fps": frames.fps, **frames.extra}
    block = json.dumps(data, allow_nan=False).replace("</", "<\\/")
    boxes = "\n".join(f'<figure class="panel"><div id="panel-{html.escape(p.name)}"></div></figure>' for p in panels)
    lines = "\n".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    with open(out, "w", encoding="utf-8") as f:
        f.write(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head><body>\n"
                f"<h1>{html.escape(title)}</h1>\n{lines}\n{_slider(frames)}<main>\n{boxes}\n</main>\n"
                f'<script type="application/json" id="lossgrid-page">{block}</script>\n'
                f'<script type="text/javascript">{get_plotlyjs()}</script>\n<script>{SCRIPT}</script>\n'
                f"</body></html>\n")


def _slider(frames: Frames | None) -> str:
    if frames is None:
        return ""
    last = len(frames.labels) - 1
    return (f'<nav class="frames"><button id="play" type="button">play</button>'
            f'<input id="frame" type="range" min="0" max="{last}" step="1" value="0" aria-label="checkpoint">'
            f'<output id="frame-label">{html.escape(frames.labels[0])}</output></nav>\n')


def read_page(path: str) -> dict[str, Any]:
    """The data block of a page written by :func:`write_page`: title, notes, panels (``id``, ``figure``
    with ``data`` and ``layout``) and, for an animated page, its frames."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start = text.index('id="lossgrid-page">') + len('id="lossgrid-page">')
    return json.loads(text[start:text.index("</script>", start)])
