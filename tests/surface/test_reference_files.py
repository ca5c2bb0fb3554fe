"""Surface files written exactly as the reference implementation writes them are read [ix, iy], whatever
their shape: its plot_surface.py allocates (nx, ny) arrays of -1 and fills them in np.meshgrid(x, y).ravel()
order (the point (x[j], y[i]) at flat index i * nx + j)."""

import h5py
import numpy as np
import pytest

from lossgrid.errors import SurfaceFileError
from lossgrid.plot import plot_surfaces
from lossgrid.plot.page import read_page
from lossgrid.surface.file import SCHEMA_VERSION, load_surface


def loss_of(x, y):
    return 1.0 + x + 10.0 * y  # asymmetric: a transpose cannot hide


def write_reference(path, x, y, skip=()):
    """The reference's crunch(): -1 everywhere, then losses.ravel()[ind] = loss for each index it computes
    (``skip``: flat indices left at -1, a run that stopped early); max_eig/min_eig as its Hessian script."""
    losses, accs, max_eig = (-np.ones((len(x), len(y))) for _ in range(3))
    min_eig = np.ones((len(x), len(y)))  # its Hessian script starts min_eig at 1
    X, Y = np.meshgrid(x, y)
    for ind in range(losses.size):
        if ind in skip:
            continue
        xv, yv = X.ravel()[ind], Y.ravel()[ind]
        losses.ravel()[ind] = loss_of(xv, yv)
        accs.ravel()[ind] = 50.0 + xv
        max_eig.ravel()[ind] = 2.0 + yv
        min_eig.ravel()[ind] = -xv
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, y
        f["train_loss"], f["train_acc"], f["max_eig"], f["min_eig"] = losses, accs, max_eig, min_eig


def write_lossgrid(path, x, y):
    """The same surface as lossgrid writes it: [ix, iy], a done mask, the schema version."""
    X, Y = np.meshgrid(x, y, indexing="ij")
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, y
        f["train_loss"], f["train_acc"] = loss_of(X, Y), 50.0 + X
        f["done"] = np.ones(X.shape, np.uint8)
        f.attrs["schema_version"] = SCHEMA_VERSION


@pytest.mark.parametrize("nx,ny", [(5, 3), (3, 5), (4, 4)])
def test_a_reference_file_is_read_ix_iy_whatever_its_shape(tmp_path, nx, ny):
    x, y = np.linspace(0, 1, nx), np.linspace(0.1, 0.3, ny)
    write_reference(tmp_path / "ref.h5", x, y)
    s = load_surface(tmp_path / "ref.h5")
    X, Y = np.meshgrid(x, y, indexing="ij")
    assert s.loss.shape == (nx, ny)
    np.testing.assert_allclose(s.loss, loss_of(X, Y))
    np.testing.assert_allclose(s.acc, 50.0 + X)
    np.testing.assert_allclose(s.extra["max_eig"], 2.0 + Y)
    np.testing.assert_allclose(s.extra["min_eig"], -X)
    assert s.done.all()
    write_lossgrid(tmp_path / "ours.h5", x, y)
    np.testing.assert_array_equal(load_surface(tmp_path / "ours.h5").loss, s.loss)  # the two layouts agree


def test_points_a_reference_run_left_at_minus_one_are_not_done(tmp_path):
    x, y = np.linspace(0, 1, 5), np.linspace(0.1, 0.3, 3)
    write_reference(tmp_path / "ref.h5", x, y, skip={7, 14})  # (x[2], y[1]) and (x[4], y[2])
    s = load_surface(tmp_path / "ref.h5")
    assert not s.done[2, 1] and not s.done[4, 2] and s.done.sum() == 13
    assert np.isnan(s.extra["max_eig"][2, 1])  # no eigenvalues there either (max -1, min 1 is unset)


def test_compare_with_a_lossgrid_file_shows_the_same_values(tmp_path):
    x, y = np.linspace(0, 1, 5), np.linspace(0.1, 0.3, 3)
    write_reference(tmp_path / "ref.h5", x, y)
    write_lossgrid(tmp_path / "ours.h5", x, y)
    out = tmp_path / "cmp.html"
    plot_surfaces([tmp_path / "ref.h5", tmp_path / "ours.h5"], out, kind="compare", allow_mismatch=True)
    ref, ours = (p["figure"]["data"][0]["customdata"] for p in read_page(str(out))["panels"])
    assert ref == ours  # each point's value (and accuracy) where the other file has it
    plot_surfaces([tmp_path / "ref.h5"], tmp_path / "ref.png")  # lossgrid plot draws a non-square one


def test_a_file_whose_order_cannot_be_decided_is_refused(tmp_path):
    """lossgrid's done mask without its schema version: neither a whole lossgrid file nor the reference's."""
    x, y = np.linspace(0, 1, 5), np.linspace(0.1, 0.3, 3)
    write_lossgrid(tmp_path / "odd.h5", x, y)
    with h5py.File(tmp_path / "odd.h5", "a") as f:
        del f.attrs["schema_version"]
    with pytest.raises(SurfaceFileError, match="Cannot tell how .* orders its points") as e:
        load_surface(tmp_path / "odd.h5")
    assert "meshgrid" in str(e.value) and "recompute" in str(e.value)
