"""Every kind of rendering from small generated surfaces, checked by looking at the output."""

import re

import numpy as np
import pytest

from lossgrid.errors import ConfigError
from lossgrid.plot import axis_label, default_levels, metric_values, parse_levels, plot_surface, plot_surfaces
from lossgrid.surface.file import Surface


def fake_surface(ndim, n=21, shift=0.0, directions="abc", path=None):
    x = np.linspace(-1, 1, n)
    attrs = {"xnorm": "filter", "ynorm": "filter", "samples": 10, "data": "digits", "directions": directions}
    if ndim == 1:
        loss = 0.1 + (x - shift) ** 2
        return Surface(x, None, loss, 100 - 20 * loss, np.ones(n, bool), attrs, path)
    X, Y = np.meshgrid(x, np.linspace(-0.5, 0.5, n + 2), indexing="ij")
    loss = 0.05 + (X - shift) ** 2 + 2 * Y**2
    done = np.ones(loss.shape, bool)
    done[0, 0] = False
    return Surface(x, np.linspace(-0.5, 0.5, n + 2), loss, 100 - 10 * loss, done, attrs, path)


def image(path):
    import matplotlib.image

    return matplotlib.image.imread(path)


def assert_non_blank(path, min_w=600, min_h=400):
    img = image(path)
    assert img.shape[0] >= min_h and img.shape[1] >= min_w
    assert img[..., :3].std() > 0.05


@pytest.mark.parametrize("ndim,kind", [(1, "auto"), (1, "curve"), (2, "auto"), (2, "contour"),
                                       (2, "contourf"), (2, "heatmap"), (2, "surface3d")])
def test_every_image_kind_renders_non_blank(tmp_path, ndim, kind):
    out = tmp_path / f"{kind}.png"
    assert plot_surface(fake_surface(ndim), out, kind=kind) == str(out)
    assert_non_blank(out)


def test_surface3d_is_not_blank_inside_the_axes(tmp_path):
    """The reference's 3D plots came out as empty boxes on current matplotlib."""
    plot_surface(fake_surface(2), tmp_path / "s.png", kind="surface3d")
    img = image(tmp_path / "s.png")[..., :3]
    h, w = img.shape[:2]
    centre = img[h // 4: 3 * h // 4, w // 6: 2 * w // 3]
    saturated = (centre.max(axis=2) - centre.min(axis=2)) > 0.25  # coloured (viridis) pixels, not grey/white
    assert saturated.mean() > 0.1


def test_pdf_and_options(tmp_path):
    for metric in ("loss", "acc", "err"):
        plot_surface(fake_surface(2), tmp_path / f"{metric}.pdf", kind="contourf", metric=metric, log=True,
                     levels="10", vmax=3)
        assert (tmp_path / f"{metric}.pdf").read_bytes().startswith(b"%PDF")
    plot_surface(fake_surface(2), tmp_path / "lv.png", levels="0.1:2:0.25")
    plot_surface(fake_surface(1), tmp_path / "log.png", log=True)


def test_kind_dimension_mismatch(tmp_path):
    with pytest.raises(ConfigError, match="does not fit"):
        plot_surface(fake_surface(2), tmp_path / "x.png", kind="curve")
    with pytest.raises(ConfigError, match="does not fit"):
        plot_surface(fake_surface(1), tmp_path / "x.png", kind="surface3d")
    with pytest.raises(ConfigError, match="draws one surface"):
        plot_surfaces([fake_surface(2), fake_surface(2)], tmp_path / "x.png", kind="heatmap")


def test_a_2d_surface_one_point_wide(tmp_path):
    x = np.linspace(-1, 1, 5)
    strip = Surface(x, np.zeros(1), (0.1 + x**2)[:, None], np.full((5, 1), 90.0), np.ones((5, 1), bool),
                    {"samples": 10, "data": "digits"}, None)
    plot_surface(strip, tmp_path / "auto.png")  # auto draws the strip as a heatmap
    assert_non_blank(tmp_path / "auto.png")
    for kind in ("contour", "surface3d"):
        with pytest.raises(ConfigError, match="at least 2 points on each axis"):
            plot_surface(strip, tmp_path / f"{kind}.png", kind=kind)
        assert not (tmp_path / f"{kind}.png").exists()


def test_html_is_self_contained_with_data(tmp_path):
    from lossgrid.plot.page import read_page

    out = tmp_path / "s.html"
    surf = fake_surface(2)
    plot_surface(surf, out)  # auto by extension
    text = out.read_text()
    assert len(re.findall(r"<script[^>]*\ssrc=", text)) == 0 and len(re.findall(r"<link[^>]*\shref=", text)) == 0
    assert "plotly.js" in text and "Plotly.newPlot" in text and text.count("plotly.js v") == 1  # inlined once
    page = read_page(str(out))
    assert [p["id"] for p in page["panels"]] == ["panel-surface3d", "panel-contour"]
    (surface,) = page["panels"][0]["figure"]["data"]
    # the data is there, as text: the values of the rows the plot shows (rows are y), gaps where not computed
    assert surface["z"][0][1] == pytest.approx(float(surf.loss[1, 0])) and surface["z"][0][0] is None
    assert "loss=%{z:.5g}" in surface["hovertemplate"] and "acc=%{customdata:.2f}%" in surface["hovertemplate"]
    assert page["title"] == "loss on digits (10 samples)" and f"<h1>{page['title']}</h1>" in text
    one = tmp_path / "c.html"
    plot_surface(fake_surface(1), one, kind="html")
    assert "accuracy % (dashed)" in one.read_text()


def test_a_large_grid_is_drawn_on_every_kth_point_and_says_so(tmp_path, monkeypatch):
    from lossgrid.plot import html
    from lossgrid.plot.page import read_page

    monkeypatch.setattr(html, "MAX_SIDE", 10)
    s = fake_surface(2, n=41)  # 41 x 43
    plot_surface(s, tmp_path / "s.html")
    page = read_page(str(tmp_path / "s.html"))
    surface = page["panels"][0]["figure"]["data"][0]
    step = 5  # ceil(43 / 10)
    assert surface["x"] == pytest.approx(list(s.xcoordinates[::step]))  # every 5th, the last among them
    assert surface["y"] == pytest.approx(list(s.ycoordinates[::step]) + [0.5])  # every 5th and the last
    assert page["notes"] == ["41 x 43 points drawn as 9 x 10 (one point in 5 along each axis) to stay "
                             "responsive; the file holds them all, and the star marks the minimum over all of them"]
    star = page["panels"][1]["figure"]["data"][-1]
    i, j = np.unravel_index(np.nanargmin(np.where(s.done, s.loss, np.nan)), s.loss.shape)
    assert star["x"] == [s.xcoordinates[i]] and star["y"] == [s.ycoordinates[j]]  # over every point


def test_every_kind_has_a_page(tmp_path):
    """compare, curvature and trajectories write pages too (with .html), each panel a figure of its own."""
    from lossgrid.plot.page import read_page

    a, b = fake_surface(2, path="a.h5"), fake_surface(2, shift=0.3, path="b.h5")
    plot_surfaces([a, b], tmp_path / "cmp.html", kind="compare")
    page = read_page(str(tmp_path / "cmp.html"))
    assert [p["figure"]["layout"]["title"]["text"] for p in page["panels"]] == ["a", "b"]
    bars = [p["figure"]["data"][0]["colorbar"]["ticktext"] for p in page["panels"]]
    assert bars[0] == bars[1]  # one colour scale
    c = fake_surface(2)
    c.extra = {"max_eig": np.full(c.loss.shape, 4.0), "min_eig": np.full(c.loss.shape, -1.0)}
    plot_surface(c, tmp_path / "curv.html", kind="curvature")
    (ratio, _) = read_page(str(tmp_path / "curv.html"))["panels"]
    assert ratio["figure"]["data"][0]["z"][1][1] == pytest.approx(0.25)
    traj = fake_trajectory()
    s = fake_surface(2, directions=traj.directions.fingerprint())
    plot_surface(s, tmp_path / "path.html", trajectory=traj, path_loss=np.linspace(1, 0.1, len(traj.paths)))
    path, losses = read_page(str(tmp_path / "path.html"))["panels"]
    assert path["figure"]["layout"]["xaxis"]["title"]["text"] == "PC1 (90.0%)"
    assert len(path["figure"]["layout"]["annotations"]) == len(traj.paths) - 1  # an arrow per step
    assert losses["figure"]["data"][0]["y"] == pytest.approx(list(np.linspace(1, 0.1, len(traj.paths))))
    with pytest.raises(ConfigError, match="not surface3d"):
        plot_surface(s, tmp_path / "p3.html", kind="surface3d", trajectory=traj)


@pytest.mark.parametrize("ext", [".vts", ".vtp", ".vtk"])
def test_vtk_roundtrip(tmp_path, ext):
    pytest.importorskip("vtkmodules", reason="the VTK library (dev extra) that reads files back is absent")
    from lossgrid.plot.vtk import height_field, read_vtk

    surf = fake_surface(2)
    out = tmp_path / f"s{ext}"
    plot_surface(surf, out, kind="vtk")
    back = read_vtk(str(out))
    z = np.where(surf.done, surf.loss, np.nan)
    nx, ny = z.shape
    np.testing.assert_allclose(back["loss"], z.T.ravel(), equal_nan=True)
    np.testing.assert_allclose(back["acc"], np.where(surf.done, surf.acc, np.nan).T.ravel(), equal_nan=True)
    pts = back["points"].reshape(ny, nx, 3)
    np.testing.assert_allclose(pts[0, :, 0], surf.xcoordinates)
    np.testing.assert_allclose(pts[:, 0, 1], surf.ycoordinates)
    if ext == ".vtp":
        assert int(back["cells"]) == (nx - 1) * (ny - 1)
    # the reference's options: log, zmax clipping, upsampling by interpolation
    out2 = tmp_path / f"opt{ext}"
    plot_surface(surf, out2, kind="vtk", log=True, vmax=1.0, upsample=50)
    back2 = read_vtk(str(out2))
    want = height_field(surf, "loss", log=True, zmax=1.0, upsample=50)["z"]
    assert want.shape == (50, 50) and np.nanmax(want) <= 0.0 + 1e-12  # log10(1.0) clip
    np.testing.assert_allclose(back2["log10_loss"], want.T.ravel(), equal_nan=True)


def test_vtk_needs_2d_and_known_extension(tmp_path):
    with pytest.raises(ConfigError, match="2D"):
        plot_surface(fake_surface(1), tmp_path / "a.vts", kind="vtk")
    with pytest.raises(ConfigError, match="VTK file type"):
        plot_surface(fake_surface(2), tmp_path / "a.xyz", kind="vtk")


def test_compare_shares_scale_and_refuses_mismatch(tmp_path):
    a, b = fake_surface(2, path="a.h5"), fake_surface(2, shift=0.3, path="b.h5")
    out = tmp_path / "cmp.png"
    plot_surfaces([a, b], out, kind="compare")
    assert_non_blank(out, min_w=900)
    other_dirs = fake_surface(2, directions="xyz", path="c.h5")
    with pytest.raises(ConfigError, match="different directions") as e:
        plot_surfaces([a, other_dirs], out, kind="compare")
    assert "--allow-mismatch" in str(e.value)
    other_grid = fake_surface(2, n=11, path="d.h5")
    with pytest.raises(ConfigError, match="different grids"):
        plot_surfaces([a, other_grid], out, kind="compare")
    plot_surfaces([a, other_dirs, other_grid], out, kind="compare", allow_mismatch=True)
    with pytest.raises(ConfigError, match="1D vs 2D|2D vs 1D"):
        plot_surfaces([a, fake_surface(1)], out, kind="compare", allow_mismatch=True)


def test_several_1d_curves_overlay(tmp_path):
    out = tmp_path / "curves.png"
    plot_surfaces([fake_surface(1, path="small_batch.h5"), fake_surface(1, shift=0.4, directions="z",
                                                                         path="large_batch.h5")], out)
    assert_non_blank(out)


def test_labels_levels_values():
    assert axis_label({"xnorm": "filter"}, "x") == "filter-normalized direction 1"
    assert axis_label({"ynorm": "layer"}, "y") == "layer-normalized direction 2"
    assert axis_label({"kind": "interpolation"}, "x").startswith("interpolation")
    lv = default_levels(np.array([[0.1, 1.0], [5.0, np.nan]]), n=10)
    assert lv[0] > 0.1 and np.all(np.diff(lv) > 0) and np.all(np.diff(np.diff(lv)) > 0)
    assert parse_levels("12") == 12 and parse_levels("1,0.5") == [0.5, 1.0]
    assert parse_levels("0:1:0.5") == [0.0, 0.5, 1.0]
    for bad in ("x", "1", "1:0:1", "0:1:0"):
        with pytest.raises(ConfigError):
            parse_levels(bad)
    z, label = metric_values(fake_surface(1), "err")
    assert label == "error (%)" and np.all(z >= 0)


def test_reference_implementation_file_renders(tmp_path):
    """Files of the reference implementation have no done mask, accuracy or attributes."""
    import h5py

    path = tmp_path / "ref_surf.h5"
    x = np.linspace(-1, 1, 11)
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = x
        f["ycoordinates"] = x
        f["train_loss"] = np.add.outer(x**2, x**2) + 0.1
    plot_surface(path, tmp_path / "c.png")
    assert_non_blank(tmp_path / "c.png")
    plot_surface(path, tmp_path / "s.html")
    assert "train_loss" not in (tmp_path / "s.html").read_text()[:100]


def fake_trajectory(n=9):
    import torch

    from lossgrid.engine.directions import Directions
    from lossgrid.engine.params import ParamLayout
    from lossgrid.trajectory.compute import Trajectory

    layout = ParamLayout(("w", "b"), ((2, 3), (2,)), "weights")
    x = [torch.ones(2, 3) / 6 ** 0.5, torch.zeros(2)]
    y = [torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]) / 2 ** 0.5, torch.zeros(2)]
    t = np.linspace(0.0, 1.0, n)
    coords = np.stack([-0.9 * (1 - t), 0.4 * np.sin(3 * t) * (1 - t)], axis=1)
    ratio = np.array([0.9, 0.07])
    meta = {"kind": "pca", "xnorm": "none", "ynorm": "none", "explained_variance_ratio": list(ratio)}
    return Trajectory(Directions(layout, x, y, meta), [f"run/epoch_{i + 1}.pt" for i in range(n)], coords,
                      np.zeros(n), ratio, f"run/epoch_{n}.pt")


@pytest.mark.parametrize("kind,losses", [("contour", True), ("contourf", False), ("heatmap", True)])
def test_trajectory_overlay_renders_with_pca_labels(tmp_path, kind, losses):
    from lossgrid.plot.path import epoch_labels, pc_label

    traj = fake_trajectory()
    surf = fake_surface(2, directions=traj.directions.fingerprint())
    out = tmp_path / f"{kind}.png"
    path_loss = 0.05 + traj.coords[:, 0] ** 2 + 2 * traj.coords[:, 1] ** 2 if losses else None
    plot_surface(surf, out, kind=kind, trajectory=traj, path_loss=path_loss, log=kind == "heatmap")
    assert_non_blank(out)
    assert pc_label(traj, 0) == "PC1 (90.0%)" and pc_label(traj, 1) == "PC2 (7.0%)"
    assert epoch_labels(["a/epoch_3.pt", "final.pt"]) == ["3", "#2"]


def test_trajectory_overlay_refusals(tmp_path):
    traj = fake_trajectory()
    with pytest.raises(ConfigError, match="different directions"):
        plot_surface(fake_surface(2, directions="other"), tmp_path / "x.png", trajectory=traj)
    surf = fake_surface(2, directions=traj.directions.fingerprint())
    with pytest.raises(ConfigError, match="not surface3d"):
        plot_surface(surf, tmp_path / "x.png", kind="surface3d", trajectory=traj)
    with pytest.raises(ConfigError, match="path_loss has shape"):
        plot_surface(surf, tmp_path / "x.png", trajectory=traj, path_loss=np.zeros(3))
    assert not (tmp_path / "x.png").exists()


# -- our VTK writer: read back by the VTK library, no VTK library needed to write ---------------
@pytest.mark.parametrize("ext", [".vts", ".vtp"])
def test_vtk_ascii_encoding_reads_back(tmp_path, ext):
    pytest.importorskip("vtkmodules", reason="the VTK library (dev extra) that reads files back is absent")
    from lossgrid.plot.vtk import read_vtk, write_vtk

    surf = fake_surface(2, n=6)
    out = str(tmp_path / f"a{ext}")
    write_vtk(surf, out, metric="acc", encoding="ascii")
    assert 'format="ascii"' in open(out).read()
    back = read_vtk(out)
    np.testing.assert_allclose(back["acc"], np.where(surf.done, surf.acc, np.nan).T.ravel(), equal_nan=True)
    nx, ny = surf.loss.shape
    assert back["points"].shape == (nx * ny, 3)
    if ext == ".vtp":  # quads: four corners each, the first cell at the origin corner
        assert back["connectivity"][:4].tolist() == [0, 1, nx + 1, nx]


def test_vtk_files_are_written_without_the_vtk_library(tmp_path):
    import subprocess
    import sys

    code = ("import sys, numpy as np; sys.modules['vtkmodules'] = None; sys.modules['vtk'] = None\n"
            "from lossgrid.surface.file import Surface\nfrom lossgrid.plot.vtk import write_vtk\n"
            "x = np.linspace(-1, 1, 4); s = Surface(x, x, np.add.outer(x, x), np.ones((4, 4)), np.ones((4, 4), bool))\n"
            f"for ext in ('vts', 'vtp', 'vtk'): write_vtk(s, {str(tmp_path)!r} + '/s.' + ext)\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    text = (tmp_path / "s.vts").read_text()
    assert text.startswith('<?xml version="1.0"?>') and 'type="StructuredGrid"' in text
    assert 'WholeExtent="0 3 0 3 0 0"' in text and 'format="binary"' in text
    assert (tmp_path / "s.vtk").read_text().splitlines()[:5] == [
        "# vtk DataFile Version 3.0", "lossgrid loss surface", "ASCII", "DATASET STRUCTURED_GRID", "DIMENSIONS 4 4 1"]


def test_upsampling_without_scipy_is_bilinear(monkeypatch):
    import sys

    from lossgrid.plot.vtk import _bilinear, height_field

    surf = fake_surface(2, n=7)
    z = np.where(surf.done, surf.loss, np.nan)
    xs, ys = surf.xcoordinates, surf.ycoordinates
    nx, ny = np.linspace(xs[0], xs[-1], 25), np.linspace(ys[0], ys[-1], 25)
    mine = _bilinear(xs, ys, z, nx, ny)
    scipy_interp = pytest.importorskip("scipy.interpolate", reason="scipy not installed: nothing to compare with")
    X, Y = np.meshgrid(nx, ny, indexing="ij")
    want = scipy_interp.RegularGridInterpolator((xs, ys), z, method="linear")(
        np.stack([X.ravel(), Y.ravel()], axis=1)).reshape(25, 25)
    np.testing.assert_allclose(mine, want, rtol=1e-12, equal_nan=True)
    assert np.isnan(mine[0, 0]) and np.isfinite(mine[-1, -1])  # the point not computed stays a gap
    monkeypatch.setitem(sys.modules, "scipy.interpolate", None)  # as if scipy were not installed
    field = height_field(surf, upsample=25)
    np.testing.assert_allclose(field["z"], mine, rtol=1e-12, equal_nan=True)


# -- animations of evolutions ------------------------------------------------------------------
def fake_evolution(ndim, n=4):
    from lossgrid.evolve.compute import Evolution

    surfaces = [fake_surface(ndim, shift=0.2 * i) for i in range(n)]
    for i, s in enumerate(surfaces):
        s.loss = s.loss * (1 + i)  # the scale changes over training
    labels = [f"epoch_{2 ** i}" for i in range(n)]
    return Evolution(surfaces, labels, [f"{label}.pt" for label in labels])


@pytest.mark.parametrize("ndim", [1, 2])
def test_gif_has_one_frame_per_checkpoint(tmp_path, ndim):
    from PIL import Image

    from lossgrid.plot.animate import render_evolution

    out = tmp_path / "evo.gif"
    assert render_evolution(fake_evolution(ndim), out, fps=4) == str(out)
    with Image.open(out) as im:
        assert im.n_frames == 4 and im.size == (640, 480)
        im.seek(3)
        assert np.asarray(im.convert("RGB")).std() > 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_frames_share_one_scale():
    from lossgrid.plot.animate import _frames

    evo = fake_evolution(2)
    frames = _frames(evo, "loss", False, None)
    finite = np.concatenate([s.loss[s.done] for s in evo.surfaces])
    assert frames["lo"] == finite.min() and frames["hi"] == finite.max()
    assert len(frames["z"]) == 4


@pytest.mark.parametrize("ndim", [1, 2])
def test_html_slider_has_one_frame_per_checkpoint(tmp_path, ndim):
    from lossgrid.plot.animate import render_evolution
    from lossgrid.plot.page import read_page

    out = tmp_path / "evo.html"
    evo = fake_evolution(ndim)
    render_evolution(evo, out)
    text = out.read_text()
    frames = read_page(str(out))["frames"]
    assert frames["labels"] == ["epoch_1  (1/4)", "epoch_2  (2/4)", "epoch_4  (3/4)", "epoch_8  (4/4)"]
    assert 'id="frame"' in text and 'id="play"' in text  # the slider and its button
    assert not re.findall(r"<script[^>]*\ssrc=", text)
    last = frames["updates"][3]
    if ndim == 2:  # the 3D panel's values of the last checkpoint, rows along y: log10 (0.05 .. 14 spans 2.4 decades)
        assert last[0]["panel"] == "surface3d" and last[0]["update"]["z"][0][1][1] == pytest.approx(
            np.log10(evo.surfaces[3].loss[1, 1]))
    else:  # every curve up to the last shown, the last one bold
        assert last[0]["update"]["visible"] == [True] * 4 and last[0]["update"]["line.width"][3] > 2


def test_mp4_exists_or_names_ffmpeg(tmp_path, monkeypatch):
    import shutil

    from lossgrid.errors import MissingBackendError
    from lossgrid.plot.animate import render_evolution

    out = tmp_path / "evo.mp4"
    if shutil.which("ffmpeg"):
        render_evolution(fake_evolution(2), out)
        assert out.read_bytes()[4:8] == b"ftyp"
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    with pytest.raises(MissingBackendError, match="ffmpeg") as e:
        render_evolution(fake_evolution(2), tmp_path / "b.mp4")
    assert "apt-get install ffmpeg" in str(e.value) and "conda" in str(e.value) and "GIF" in str(e.value)
    assert not (tmp_path / "b.mp4").exists()
    with pytest.raises(ConfigError, match="gif, .mp4 or .html"):
        render_evolution(fake_evolution(2), tmp_path / "a.avi")


def test_default_levels_show_a_deep_basin():
    """A demo-like surface: minimum 0.0017 under walls near 40. Levels evenly spaced in ratios of the range
    would start at 0.39 (the basin one empty disc); these put many levels below that, none below the minimum."""
    x = np.linspace(-1, 1, 51)
    X, Y = np.meshgrid(x, x, indexing="ij")
    z = 0.0017 + 40 * (X**2 + Y**2) ** 2
    lv = default_levels(z, 30)
    assert lv[0] > z.min() and np.all(np.diff(lv) > 0) and lv[-1] == pytest.approx(np.percentile(z, 98))
    assert (lv < 0.39).sum() >= 10
    basin = z < 0.39  # about the central disc the old levels left empty
    assert len({int(np.searchsorted(lv, v)) for v in z[basin]}) >= 5  # at least five bands inside it
    untrained = 2.3 + (X**2 + Y**2)  # a high minimum: levels still from just above it
    lv = default_levels(untrained, 30)
    assert 2.3 < lv[0] < 2.31 and (lv < 2.5).sum() >= 10


def test_html_contour_uses_the_basin_levels_and_marks_the_minimum(tmp_path):
    """The HTML contour draws the lines of default_levels (plotly spaces lines evenly: on each point's
    position among the levels they are), names them on its colour bar, and stars the minimum; the hover
    carries the values themselves."""
    from lossgrid.plot.html import level_index
    from tests.plot.test_plot_adaptive import _traces

    s = fake_surface(2, shift=0.3)
    out = tmp_path / "s.html"
    plot_surface(s, out)
    _, traces = _traces(out)
    (contour,) = [t for t in traces if t["type"] == "contour"]
    (star,) = [t for t in traces if t.get("name", "").startswith("minimum")]
    z, _ = metric_values(s, "loss")  # what the page shows
    levels = default_levels(z, 30)
    assert contour["contours"] == {"coloring": "lines", "start": 0, "end": 29, "size": 1}
    assert contour["z"][2][3] == pytest.approx(level_index(z, levels)[3, 2])
    assert contour["colorbar"]["ticktext"][0] == f"{levels[0]:.3g}" and contour["colorbar"]["tickvals"][-1] == 29
    i, j = np.unravel_index(np.argmin(s.loss), s.loss.shape)
    assert star["x"] == [s.xcoordinates[i]] and star["y"] == [s.ycoordinates[j]]
    assert contour["customdata"][j][i][0] == pytest.approx(s.loss[i, j])  # rows are y: the value, then accuracy
    plot_surface(s, tmp_path / "given.html", levels="0.1,0.2,0.5,1,2")
    _, traces = _traces(tmp_path / "given.html")
    assert traces[1]["colorbar"]["ticktext"] == ["0.1", "0.2", "0.5", "1", "2"]  # --levels as given


def test_level_index_puts_the_levels_on_the_integers():
    from lossgrid.plot.html import level_index

    levels = np.array([0.01, 0.1, 1.0, 10.0])
    got = level_index(np.array([0.01, 0.055, 1.0, 10.0, 99.0, 0.0, np.nan]), levels)
    np.testing.assert_allclose(got[:6], [0, 0.5, 2, 3, 3, 0])
    assert np.isnan(got[6])


def test_reference_vmin_vmax_vlevel_spelling(tmp_path, monkeypatch):
    """--vmin/--vmax/--vlevel give the reference's levels, arange(vmin, vmax, vlevel); half of them is refused."""
    import h5py
    from click.testing import CliRunner

    import lossgrid.plot as plot_module
    from lossgrid.cli.group import cli

    path, s = tmp_path / "s.h5", fake_surface(2)
    with h5py.File(path, "w") as f:  # the plainest surface file: coordinates and values
        f["xcoordinates"], f["ycoordinates"] = s.xcoordinates, s.ycoordinates
        f["train_loss"], f["train_acc"] = s.loss, s.acc
    seen, real = [], plot_module.mpl.plane

    def spy(surface, out, **kw):
        seen.append(kw["levels"])
        return real(surface, out, **kw)

    monkeypatch.setattr(plot_module.mpl, "plane", spy)
    runner = CliRunner()
    r = runner.invoke(cli, ["plot", str(path), "--out", str(tmp_path / "c.png"), "--vmin", "0.1", "--vmax", "1",
                            "--vlevel", "0.25"])
    assert r.exit_code == 0, r.output
    assert seen == [pytest.approx([0.1, 0.35, 0.6, 0.85])]
    for args in (["--vmin", "0.1"], ["--vmin", "1", "--vmax", "0.5", "--vlevel", "0.1"],
                 ["--vmin", "0.1", "--vmax", "1", "--vlevel", "0.1", "--levels", "5"]):
        r = runner.invoke(cli, ["plot", str(path), "--out", str(tmp_path / "d.png"), *args])
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output


def test_3d_and_html_share_one_z_scale_rule(tmp_path, monkeypatch):
    """A loss spanning more than two decades is drawn on log10 by the PNG 3D and the HTML page alike (titles say
    so); accuracy and narrow ranges stay linear; --log/--linear (log=True/False) override."""
    pytest.importorskip("plotly", reason="plotly (the html extra) is not installed")
    from lossgrid.plot.common import use_log
    from tests.plot.test_plot_adaptive import _traces

    deep = fake_surface(2)
    deep.loss = 0.002 + 40 * deep.loss**2  # 0.002 .. about 60: more than four decades
    assert use_log(deep, "loss", None) and not use_log(deep, "acc", None) and not use_log(deep, "loss", False)
    assert not use_log(fake_surface(2), "loss", None) and use_log(fake_surface(2), "loss", True)  # 0.05..3.6
    out = tmp_path / "s.html"
    plot_surface(deep, out)
    payload, traces = _traces(out)
    (surf,) = [t for t in traces if t["type"] == "surface"]
    assert surf["colorbar"]["title"]["text"] == "log10 loss" and payload.count("log10 loss") >= 4  # bars, z, title
    assert np.nanmax(np.array(surf["z"], dtype=float)) < 2  # log10 of about 60
    import lossgrid.plot as plot_module

    recorded, real = {}, plot_module.mpl.surface3d

    def spy(surface, out, **kw):
        recorded.update(kw)
        return real(surface, out, **kw)

    monkeypatch.setattr(plot_module.mpl, "surface3d", spy)
    plot_surface(deep, tmp_path / "a.png", kind="surface3d")
    assert recorded["log"] is True
    plot_surface(deep, tmp_path / "b.png", kind="surface3d", log=False)
    assert recorded["log"] is False
