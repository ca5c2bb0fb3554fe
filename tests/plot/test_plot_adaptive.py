"""Adaptive surfaces: interpolated points are drawn differently (dots on the evaluated ones,
markers on 1D curves, a note "adaptive: N of M points evaluated")."""

import json

import numpy as np
import pytest

from lossgrid.errors import SurfaceFileError
from lossgrid.plot import metric_values, plot_surface, plot_surfaces
from lossgrid.plot import mpl as render_mpl
from lossgrid.plot.common import adaptive_note, evaluated_mask, interpolated_mask
from lossgrid.surface.adaptive import AdaptiveGrid, AdaptiveSpec
from lossgrid.surface.file import Surface

from .test_plot import assert_non_blank, fake_surface, image


def adaptive_surface(ndim, n=41, done_everywhere=True, path=None):
    """A surface as an adaptive run leaves it: values everywhere, ``extra["interpolated"]`` marking
    the filled points. ``done_everywhere`` False: ``done`` marks only the evaluated points."""
    xs, ys = np.linspace(-1, 1, n), np.linspace(-1, 1, n + 2)
    if ndim == 1:
        exact = np.log1p(8 * xs**2) + 0.3 * np.sin(3 * xs)
    else:
        x, y = np.meshgrid(xs, ys, indexing="ij")
        exact = np.log1p(8 * x**2 + 3 * y**2) + 0.3 * np.sin(3 * x) * np.cos(2 * y)
    grid = AdaptiveGrid(exact.shape, AdaptiveSpec(0.01, 8))
    loss, done = np.full(exact.shape, np.nan), np.zeros(exact.shape, bool)
    while (idx := grid.next_points(loss, done)).size:
        loss.flat[idx], done.flat[idx] = exact.flat[idx], True
    filled, interpolated = grid.fill(loss, done)
    attrs = {"xnorm": "filter", "ynorm": "filter", "samples": 10, "data": "digits", "directions": "abc"}
    return Surface(xs, None if ndim == 1 else ys, filled, 100 - 10 * filled,
                   np.ones(exact.shape, bool) if done_everywhere else done, attrs, path,
                   extra={"interpolated": interpolated.astype(np.uint8)})


@pytest.fixture
def figures(monkeypatch):
    """Every matplotlib figure the renderers save, inspected just before it is written."""
    seen = []
    save = render_mpl._save

    def keep(fig, out, dpi):
        axes = fig.get_axes()
        seen.append({"titles": [ax.get_title() for ax in axes],
                     "dots": [len(c.get_offsets()) for ax in axes for c in ax.collections
                              if c.get_label() == "evaluated"],
                     "markers": {ln.get_label(): len(ln.get_xdata()) for ax in axes for ln in ax.get_lines()}})
        save(fig, out, dpi)

    monkeypatch.setattr(render_mpl, "_save", keep)
    return seen


def test_masks_and_note():
    s = adaptive_surface(2)
    interpolated = interpolated_mask(s)
    assert interpolated.dtype == bool and 0 < interpolated.sum() < interpolated.size
    evaluated = evaluated_mask(s)
    np.testing.assert_array_equal(evaluated, ~interpolated)
    n, m = int(evaluated.sum()), evaluated.size
    assert adaptive_note(s) == f"adaptive: {n:,} of {m:,} points evaluated" and m == 41 * 43
    plain = fake_surface(2)
    assert interpolated_mask(plain) is None and evaluated_mask(plain) is None and adaptive_note(plain) is None


def test_mask_stored_as_float_with_nan_and_of_the_wrong_shape():
    s = adaptive_surface(1)
    mask = s.extra["interpolated"].astype(float)
    mask[0] = np.nan  # a point the writer never reached: not interpolated
    s.extra["interpolated"] = mask
    assert not interpolated_mask(s)[0] and interpolated_mask(s).sum() == np.nansum(mask)
    s.extra["interpolated"] = np.zeros(3, bool)
    with pytest.raises(SurfaceFileError, match="interpolated mask of shape"):
        interpolated_mask(s)


@pytest.mark.parametrize("done_everywhere", [True, False])
def test_interpolated_points_are_drawn_with_their_values(done_everywhere):
    """Whether the file marks filled points done or not, they are part of the picture."""
    s = adaptive_surface(2, done_everywhere=done_everywhere)
    z, _ = metric_values(s, "loss")
    assert np.isfinite(z).all()
    np.testing.assert_array_equal(z, s.loss)


@pytest.mark.parametrize("kind", ["contour", "contourf", "heatmap", "surface3d"])
def test_2d_plots_dot_the_evaluated_points_and_say_how_many(tmp_path, figures, kind):
    s = adaptive_surface(2)
    n = int(evaluated_mask(s).sum())
    out = tmp_path / f"{kind}.png"
    plot_surface(s, out, kind=kind)
    assert_non_blank(out)
    (fig,) = figures
    assert any(f"adaptive: {n:,} of {41 * 43:,} points evaluated (dots)" in t for t in fig["titles"])
    assert fig["dots"] == [n]


def test_plain_surfaces_get_no_dots_and_no_note(tmp_path, figures):
    plot_surface(fake_surface(2), tmp_path / "plain.png", kind="contourf")
    plot_surface(fake_surface(1), tmp_path / "plain1d.png")
    assert figures[0]["dots"] == [] and not any("adaptive" in t for f in figures for t in f["titles"])
    assert not any("evaluated" in label for f in figures for label in f["markers"])


def test_dots_change_the_picture_and_only_where_points_were_evaluated(tmp_path):
    s = adaptive_surface(2)
    bare = Surface(s.xcoordinates, s.ycoordinates, s.loss, s.acc, s.done, s.attrs)
    plot_surface(s, tmp_path / "a.png", kind="heatmap", title="t")
    plot_surface(bare, tmp_path / "b.png", kind="heatmap", title="t")
    a, b = image(tmp_path / "a.png")[..., :3], image(tmp_path / "b.png")[..., :3]
    assert a.shape == b.shape
    changed = np.abs(a - b).max(axis=2) > 0.1
    assert 0.001 < changed.mean() < 0.2  # small dots, not a second layer over everything


def test_1d_curve_marks_evaluated_points(tmp_path, figures):
    s = adaptive_surface(1)
    n = int(evaluated_mask(s).sum())
    out = tmp_path / "curve.png"
    plot_surface(s, out)
    assert_non_blank(out)
    (fig,) = figures
    assert fig["markers"][f"evaluated ({n} of 41)"] == n
    assert fig["markers"]["loss"] == 41  # the line runs through every point, interpolated ones too
    assert any(f"adaptive: {n:,} of 41 points evaluated" in t for t in fig["titles"])


def test_compare_and_overlay_name_each_adaptive_surface(tmp_path, figures):
    a = adaptive_surface(2, path="a.h5")
    b = Surface(a.xcoordinates, a.ycoordinates, a.loss + 0.1, a.acc, a.done, a.attrs, "b.h5")  # a plain one
    plot_surfaces([a, b], tmp_path / "cmp.png", kind="compare")
    titles = figures[0]["titles"]
    assert any(t.startswith("a\nadaptive:") for t in titles) and "b" in titles
    assert figures[0]["dots"] == [int(evaluated_mask(a).sum())]
    c, d = adaptive_surface(1, path="c.h5"), adaptive_surface(1, path="d.h5")
    plot_surfaces([c, d], tmp_path / "over.png", kind="curve")
    labels = figures[1]["markers"]
    assert any(k.startswith("c evaluated (") for k in labels) and any(k.startswith("d evaluated (") for k in labels)


def _traces(path):
    """The page's data block as text, and every trace of every panel."""
    from lossgrid.plot.page import read_page

    page = read_page(str(path))
    return json.dumps(page), [t for panel in page["panels"] for t in panel["figure"]["data"]]


def test_html_marks_evaluated_points(tmp_path):
    pytest.importorskip("plotly", reason="plotly (the html extra) is not installed")
    s = adaptive_surface(2)
    n = int(evaluated_mask(s).sum())
    out = tmp_path / "s.html"
    plot_surface(s, out)
    payload, traces = _traces(out)
    note = f"adaptive: {n:,} of {41 * 43:,} points evaluated"
    assert note in payload  # the title
    dots = [t for t in traces if t.get("mode") == "markers" and not t.get("name", "").startswith("minimum")]
    assert {t["type"] for t in dots} == {"scatter", "scatter3d"}
    assert all(len(t["x"]) == n for t in dots) and any(note in t.get("name", "") for t in dots)
    one = tmp_path / "c.html"
    s1 = adaptive_surface(1)
    plot_surface(s1, one)
    _, traces1 = _traces(one)
    modes = {t.get("name"): t.get("mode") for t in traces1}
    assert modes["loss"] == "lines"
    (marked,) = [t for t in traces1 if t.get("mode") == "markers"]
    assert len(marked["x"]) == int(evaluated_mask(s1).sum())


def test_html_of_a_plain_surface_is_unchanged(tmp_path):
    pytest.importorskip("plotly", reason="plotly (the html extra) is not installed")
    plot_surface(fake_surface(1), tmp_path / "c.html")
    _, traces = _traces(tmp_path / "c.html")
    assert [t.get("mode") for t in traces] == ["lines+markers", "lines"]  # loss with its points, accuracy
