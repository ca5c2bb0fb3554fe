"""Every kind of rendering from small generated surfaces, checked by looking at the output."""

import json
import re

import numpy as np
import pytest

from lossgrid.engine.surface_file import Surface
from lossgrid.errors import ConfigError
from lossgrid.render import axis_label, default_levels, metric_values, parse_levels, plot_surface, plot_surfaces


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


def test_html_is_self_contained_with_data(tmp_path):
    out = tmp_path / "s.html"
    surf = fake_surface(2)
    plot_surface(surf, out)  # auto by extension
    text = out.read_text()
    assert len(re.findall(r"<script[^>]*\ssrc=\"https?:", text)) == 0
    assert len(re.findall(r"<link[^>]*\shref=\"https?:", text)) == 0
    assert "plotly.js" in text and "Plotly.newPlot" in text
    # the data is there, as text: every computed loss value of the first row of the figure
    payload = text[text.index("Plotly.newPlot"):]
    assert json.dumps(float(surf.loss[1, 0])) in payload
    assert "loss=%{z:.5g}" in payload and "acc=%{customdata:.2f}%" in payload  # hover: x, y, loss, acc
    assert "null" in payload  # the point not computed is a gap, not a value
    one = tmp_path / "c.html"
    plot_surface(fake_surface(1), one, kind="html")
    assert "accuracy (%)" in one.read_text()


@pytest.mark.parametrize("ext", [".vts", ".vtp", ".vtk"])
def test_vtk_roundtrip(tmp_path, ext):
    pytest.importorskip("vtkmodules", reason="vtk extra not installed")
    from lossgrid.render.vtk import height_field, read_vtk

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
    pytest.importorskip("vtkmodules", reason="vtk extra not installed")
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
