"""Open lossgrid's HTML pages in headless Chromium, offline, and measure what a reader would see.

Used by the browser tests (tests/plot/test_browser.py) and by `make screenshots`
(scripts/screenshots.py). Needs Playwright's Python package (`pip install playwright`, the dev
extra) and a Chromium program (Debian: `apt-get install chromium`); Playwright's own browser
download is never used. Every request that is not the page's own file is refused and recorded.

    with Browser() as browser:
        for seen in browser.inspect("surface.html", [(1280, 800), (1920, 1080)]):
            assert not seen.problems()
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

#: where Chromium may be, in order; LOSSGRID_CHROMIUM names another
CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: headless, no sandbox (CI runs as root), software WebGL for the 3D panels, no background traffic
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
        "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage"]
#: a page has this long to draw its panels (software WebGL on a loaded 2-core machine is slow)
READY_MS = 60_000

#: a resized page has this long to redraw its panels at their new size
SETTLE_MS = 15_000
SETTLED = """() => [...document.querySelectorAll("figure.panel")].every(p => {
  const svg = p.querySelector("svg.main-svg");
  return !svg || Math.abs(svg.getBoundingClientRect().width - p.clientWidth) < 3;
})"""

MEASURE = """() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const panels = [...document.querySelectorAll("figure.panel")].map(p => ({
    id: p.firstElementChild.id, box: box(p),
    colorbars: [...p.querySelectorAll("g.colorbar")].map(box),
    texts: [...p.querySelectorAll(".gtitle, .g-xtitle, .g-ytitle, .g-x2title, .g-y2title, g.legend")]
           .filter(e => e.getBoundingClientRect().width > 0).map(e => ({cls: e.getAttribute("class"), box: box(e)})),
    canvases: p.querySelectorAll("canvas").length, svgs: p.querySelectorAll("svg.main-svg").length,
  }));
  const h1 = document.querySelector("h1");
  const root = document.scrollingElement || document.documentElement;
  return {panels, heading: h1 ? box(h1) : null, scrollWidth: root.scrollWidth, clientWidth: root.clientWidth,
          ready: document.body.dataset.ready === "1"};
}"""


def find_chromium() -> str | None:
    """The Chromium program to drive, or ``None``."""
    named = os.environ.get("LOSSGRID_CHROMIUM")
    if named:
        return named if os.path.exists(named) else None
    return next((path for path in map(shutil.which, CHROMIUM) if path), None)


def unavailable() -> str | None:
    """Why pages cannot be opened here (to skip with), or ``None`` when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python package is not installed (pip install playwright, or the dev extra)"
    if find_chromium() is None:
        return "no Chromium program (Debian: apt-get install chromium; or set LOSSGRID_CHROMIUM)"
    return None


def overlap(a: list[float], b: list[float], slack: float = 1.0) -> bool:
    """Whether boxes ``[left, top, right, bottom]`` overlap by more than ``slack`` pixels both ways."""
    return min(a[2], b[2]) - max(a[0], b[0]) > slack and min(a[3], b[3]) - max(a[1], b[1]) > slack


def inside(a: list[float], outer: list[float], slack: float = 1.0) -> bool:
    return a[0] >= outer[0] - slack and a[1] >= outer[1] - slack and a[2] <= outer[2] + slack \
        and a[3] <= outer[3] + slack


@dataclass
class Seen:
    """What one page showed at one window size."""

    path: str
    viewport: tuple[int, int]
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    layout: dict[str, Any] = field(default_factory=dict)
    blank: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Every way the page falls short: console errors, network requests, a page not drawn, overlapping
        or clipped panels, colour bars and titles, a sideways scroll, a blank panel."""
        found = [f"console: {e}" for e in self.errors] + [f"network request: {r}" for r in self.requests]
        lay = self.layout
        if not lay.get("ready"):
            return found + ["the panels were not drawn"]
        if lay["scrollWidth"] > lay["clientWidth"]:
            found.append(f"scrolls sideways: {lay['scrollWidth']} px wide in a {lay['clientWidth']} px window")
        panels = lay["panels"]
        if not panels:
            found.append("no panel")
        for i, p in enumerate(panels):
            found += [f"{p['id']} overlaps {q['id']}" for q in panels[i + 1:] if overlap(p["box"], q["box"])]
            if p["box"][2] > lay["clientWidth"] + 1:
                found.append(f"{p['id']} runs off the window's right edge")
            found += [f"{p['id']}: a colour bar outside its panel" for c in p["colorbars"] if not inside(c, p["box"])]
            found += [f"{p['id']}: {t['cls']} clipped by its panel" for t in p["texts"]
                      if not inside(t["box"], p["box"])]
            texts = p["texts"] + [{"cls": "colorbar", "box": c} for c in p["colorbars"]]
            found += [f"{p['id']}: {t['cls']} overlaps {u['cls']}" for k, t in enumerate(texts)
                      for u in texts[k + 1:] if overlap(t["box"], u["box"], slack=3.0)]
        return found + [f"{name} is blank" for name in self.blank]


class Browser:
    """Headless Chromium through Playwright, for as many pages as needed."""

    def __enter__(self) -> Browser:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=find_chromium(), args=ARGS)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._browser.close()
        self._pw.stop()

    def inspect(self, path: str, windows: list[tuple[int, int]], screenshots: list[str] | None = None
                ) -> list[Seen]:
        """Open ``path`` once, wait for its panels, and measure them at each window size (width, height) in
        turn, resizing the window as a reader would; with ``screenshots`` (one path per window), save the
        whole page there as PNG."""
        url = "file://" + os.path.abspath(path)
        errors: list[str] = []
        requests: list[str] = []
        context = self._browser.new_context(viewport={"width": windows[0][0], "height": windows[0][1]})
        context.route("**/*", lambda route: route.continue_() if route.request.url == url
                      else _refuse(route, requests))
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(url)
            page.wait_for_function("document.body.dataset.ready === '1'", timeout=READY_MS)
        except Exception as e:  # a page that never draws is reported, not raised
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0]}")
        found = []
        for k, window in enumerate(windows):
            page.set_viewport_size({"width": window[0], "height": window[1]})
            try:  # plotly redraws a responsive panel on the resize: wait until every one fits its box again
                page.wait_for_function(SETTLED, timeout=SETTLE_MS)
            except Exception:  # measured as it stands: the checks then say what does not fit
                pass
            page.wait_for_timeout(100)
            seen = Seen(path, window, errors, requests, page.evaluate(MEASURE))
            shot = page.screenshot(full_page=True)  # one picture per window: WebGL in software is slow to draw
            offset = page.evaluate("[window.scrollX, window.scrollY]")
            seen.blank = [p["id"] for p in seen.layout["panels"] if not _has_picture(shot, p["box"], offset)]
            if screenshots:
                with open(screenshots[k], "wb") as f:
                    f.write(shot)
            found.append(seen)
        context.close()
        return found


def _refuse(route: Any, requests: list[str]) -> None:
    requests.append(route.request.url)
    route.abort()


def _has_picture(png: bytes, box: list[float], offset: list[float]) -> bool:
    """Whether a panel's part of a page's screenshot (``box`` in the window, scrolled by ``offset``) shows
    a picture: many colours, not one flat fill with a few labels."""
    import numpy as np
    from PIL import Image

    left, top = int(box[0] + offset[0]), int(box[1] + offset[1])
    right, bottom = max(int(box[2] + offset[0]), left + 1), max(int(box[3] + offset[1]), top + 1)
    image = Image.open(io.BytesIO(png)).convert("RGB").crop((left, top, right, bottom))
    pixels = np.asarray(image).reshape(-1, 3)
    colours = np.unique(pixels[:: max(1, len(pixels) // 200_000)], axis=0)
    coloured = (pixels.max(axis=1).astype(int) - pixels.min(axis=1)) > 40  # saturated: viridis, not grey text
    return len(colours) > 64 and coloured.mean() > 0.002
