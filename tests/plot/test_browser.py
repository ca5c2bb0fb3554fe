"""Every HTML kind opened in headless Chromium, offline, at the smallest and the largest common window:
no console error, no network request, every panel drawn and not blank, panels, colour bars and titles
neither overlapping nor clipped, no sideways scroll (scripts/browser.py measures; skipped with the
reason where Playwright or Chromium is absent)."""

import os
import sys

import pytest

from lossgrid.plot import plot_surface, plot_surfaces
from lossgrid.plot.animate import render_evolution
from lossgrid.plot.page import read_page
from tests.plot.test_plot import fake_evolution, fake_surface, fake_trajectory

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import browser  # noqa: E402 - from scripts/

pytestmark = [pytest.mark.browser, pytest.mark.skipif(browser.unavailable() is not None,
                                                      reason=str(browser.unavailable()))]

WINDOWS = [(1280, 800), (1920, 1080)]


def deep(surface):
    """A trained model's basin: minimum 0.002 under walls near 40 (log10 on the z scale)."""
    surface.loss = 0.002 + 40 * surface.loss**2
    return surface


def curvature_surface(ndim):
    s = fake_surface(ndim)
    x = s.xcoordinates if ndim == 1 else s.xcoordinates[:, None]
    s.extra = {"max_eig": 5.0 + 0 * s.loss, "min_eig": -2.0 * (x**2) + 0 * s.loss}
    return s


def write_pages(folder):
    """One page of every kind; returns {kind: path}."""
    pages = {k: str(folder / f"{k}.html") for k in ("surface", "curve", "interpolation", "compare", "curvature",
                                                     "curvature-1d", "trajectory", "evolution", "evolution-1d")}
    plot_surface(deep(fake_surface(2)), pages["surface"])
    plot_surfaces([fake_surface(1, path="small_batch.h5"), fake_surface(1, shift=0.3, path="large_batch.h5")],
                  pages["curve"])
    line = fake_surface(1)
    line.attrs["kind"] = "interpolation"
    plot_surface(line, pages["interpolation"])
    plot_surfaces([fake_surface(2, path="a.h5"), fake_surface(2, shift=0.3, path="b.h5")], pages["compare"])
    plot_surface(curvature_surface(2), pages["curvature"], kind="curvature")
    plot_surface(curvature_surface(1), pages["curvature-1d"], kind="curvature")
    traj = fake_trajectory()
    path_loss = 0.05 + traj.coords[:, 0] ** 2 + 2 * traj.coords[:, 1] ** 2
    plot_surface(fake_surface(2, directions=traj.directions.fingerprint()), pages["trajectory"], trajectory=traj,
                 path_loss=path_loss)
    render_evolution(fake_evolution(2), pages["evolution"])
    render_evolution(fake_evolution(1), pages["evolution-1d"])
    return pages


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    return write_pages(tmp_path_factory.mktemp("pages"))


@pytest.fixture(scope="module")
def chromium():
    with browser.Browser() as b:
        yield b


@pytest.mark.parametrize("kind", ["curve", "interpolation", "curvature-1d", "evolution-1d"])
def test_every_one_panel_page_draws_cleanly_offline(chromium, pages, kind):
    """One panel fills the width whatever the window; the smallest common window is the tightest."""
    (seen,) = chromium.inspect(pages[kind], WINDOWS[:1])
    assert seen.problems() == [], kind
    assert len(seen.layout["panels"]) == len(read_page(pages[kind])["panels"])


@pytest.mark.parametrize("kind", ["compare", "curvature", "trajectory", "evolution"])
def test_every_page_of_panels_draws_cleanly_offline_at_common_windows(chromium, pages, kind):
    for seen in chromium.inspect(pages[kind], WINDOWS):
        assert seen.problems() == [], (kind, seen.viewport)
        assert len(seen.layout["panels"]) == len(read_page(pages[kind])["panels"]) > 1


def test_two_panels_side_by_side_on_a_wide_window_stacked_on_a_narrow_one(chromium, pages):
    small, large, narrow = chromium.inspect(pages["surface"], [*WINDOWS, (900, 800)])
    for seen in (small, large, narrow):
        assert seen.problems() == [], seen.viewport
    left, right = small.layout["panels"]
    assert left["box"][1] == right["box"][1] and left["box"][2] < right["box"][0]
    top, below = narrow.layout["panels"]
    assert below["box"][1] >= top["box"][3]


def test_the_checks_catch_a_broken_page(chromium, tmp_path):
    """The harness itself: a page that throws, fetches from the network and overlaps two panels fails."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body data-ready="1"><figure class="panel" style="position:absolute;left:0;top:0;'
                   'width:2000px;height:300px"><div id="a"></div></figure><figure class="panel" style="position:'
                   'absolute;left:100px;top:100px;width:300px;height:300px"><div id="b"></div></figure>'
                   '<img src="https://example.com/x.png"><script>undefinedFunction()</script></body></html>')
    (seen,) = chromium.inspect(str(bad), [(1280, 800)])
    problems = seen.problems()
    text = "\n".join(problems)
    for words in ("console:", "network request: https://example.com/x.png", "a overlaps b", "scrolls sideways",
                  "a is blank"):
        assert words in text, problems
