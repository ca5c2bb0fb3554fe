"""Convexity maps: extreme Hessian eigenvalues per grid point, against the exact Hessian.

Tolerances: with as many Lanczos steps as parameters the extremes equal
``eigvalsh`` of the exact (float64) Hessian to 1e-6 relative; with 30 steps the
largest eigenvalue is within 1e-3 relative (it converges first).
"""

import json

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from lossgrid.config import CurvatureSpec, DirectionSpec, EvalSpec, GridSpec
from lossgrid.engine.params import perturbed_tensors
from lossgrid.errors import ConfigError, SurfaceFileError
from lossgrid.hessian.curvature import convexity_ratio, extreme_eigenvalues
from lossgrid.surface.compute import compute_surface
from lossgrid.surface.directions import create_directions
from lossgrid.surface.file import load_surface


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))


def exact_eigenvalues(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    model = model.double()

    def loss(w):
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            n = int(torch.Size(shape).numel())
            params[name] = w[offset:offset + n].view(shape)
            offset += n
        out = torch.func.functional_call(model, params, (x.double(),))
        return nn.functional.cross_entropy(out, y)

    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat)).numpy()


@pytest.fixture(scope="module")
def digits100():
    from lossgrid.data import load_data

    return load_data("digits", samples=100)


def test_extremes_match_the_exact_hessian(digits100):
    model = tiny_mlp()
    exact = exact_eigenvalues(tiny_mlp(), digits100.x, digits100.y)
    size = sum(p.numel() for p in model.parameters())
    lo, hi = extreme_eigenvalues(model.double(), (digits100.x.double(), digits100.y),
                                 CurvatureSpec(iters=size, tol=1e-12))
    np.testing.assert_allclose([lo, hi], [exact[0], exact[-1]], rtol=1e-6, atol=1e-9)
    lo30, hi30 = extreme_eigenvalues(tiny_mlp(), digits100, CurvatureSpec(iters=30))
    assert hi30 == pytest.approx(exact[-1], rel=1e-3)
    assert exact[0] - 1e-6 <= lo30 <= hi30  # a Ritz value lies inside the spectrum
    assert exact[0] < 0  # the check is not vacuous: there is negative curvature to find


def test_surface_with_curvature_stores_resumes_and_refuses_other_settings(tmp_path, trained_cnn, digits_small):
    path = tmp_path / "c.h5"
    grid = GridSpec.parse("-0.5:0.5:3", "-0.5:0.5:2")
    spec = CurvatureSpec(iters=8)
    dirs = create_directions(trained_cnn, DirectionSpec(seed=2), 2)
    loop = EvalSpec(strategy="loop", points_per_call=2, batch_size=64)
    whole = compute_surface(trained_cnn, digits_small, grid, path, directions=dirs, eval_spec=loop, curvature=spec)
    assert set(whole.extra) == {"max_eig", "min_eig", "train_loss_se"} and np.isfinite(whole.extra["max_eig"]).all()
    assert (whole.extra["min_eig"] <= whole.extra["max_eig"]).all()
    # the point (0, y) of the grid: the eigenvalues at those weights, computed directly
    base = dirs.layout.flatten(perturbed_tensors(trained_cnn, "weights"))
    point = base + 0.5 * dirs.flat()[1]
    lo, hi = extreme_eigenvalues(trained_cnn, digits_small, spec, weights=dirs.layout.unflatten(point))
    np.testing.assert_allclose([whole.extra["min_eig"][1, 1], whole.extra["max_eig"][1, 1]], [lo, hi], rtol=1e-5)
    # resume after losing some points: the same values again
    with h5py.File(path, "r+") as f:
        f["done"][1:] = 0
        f["max_eig"][1:] = np.nan
    again = compute_surface(trained_cnn, digits_small, grid, path, directions=dirs, eval_spec=loop, curvature=spec)
    np.testing.assert_allclose(again.extra["max_eig"], whole.extra["max_eig"], rtol=1e-6)
    stored = load_surface(str(path))
    np.testing.assert_allclose(stored.extra["min_eig"], whole.extra["min_eig"], rtol=1e-6)
    with h5py.File(path) as f:
        assert json.loads(f.attrs["identity"])["curvature"]["iters"] == 8
    for other in (None, CurvatureSpec(iters=9)):
        with h5py.File(path, "r+") as f:
            f["done"][0, 0] = 0
        with pytest.raises(SurfaceFileError, match="differing: curvature"):
            compute_surface(trained_cnn, digits_small, grid, path, directions=dirs, eval_spec=loop, curvature=other)


def test_in_memory_states_surface_and_parameter_subset(trained_cnn, digits_small):
    grid = GridSpec.parse("-0.5:0.5:2")
    surf = compute_surface(trained_cnn, digits_small, grid, direction_spec=DirectionSpec(dir_type="states"),
                           curvature=CurvatureSpec(iters=6, params="fc.*"))
    assert surf.done.all() and np.isfinite(surf.extra["max_eig"]).all()
    with pytest.raises(ConfigError, match="matches no parameter"):
        compute_surface(trained_cnn, digits_small, grid, curvature=CurvatureSpec(iters=6, params="nope.*"))


def test_curvature_settings_and_ratio():
    with pytest.raises(ConfigError, match="at least 2 steps"):
        CurvatureSpec(iters=1)
    ratio = convexity_ratio(np.array([-1.0, 0.0, 1.0]), np.array([4.0, 2.0, 0.0]))
    np.testing.assert_allclose(ratio[:2], [0.25, 0.0])
    assert np.isnan(ratio[2])


def test_a_diverged_point_gets_nan_curvature_and_the_run_completes(digits100):
    spec = CurvatureSpec(iters=4)
    surf = compute_surface(tiny_mlp(), digits100, GridSpec.parse("0:1e39:3"),  # inf weights: NaN loss
                           direction_spec=DirectionSpec(xnorm="none"), curvature=spec)
    assert surf.done.all() and np.isfinite(surf.extra["max_eig"][0])
    assert np.isnan(surf.extra["max_eig"][1:]).all() and np.isnan(surf.extra["min_eig"][1:]).all()


def test_reference_files_with_other_eigenvalue_layouts_still_load(tmp_path):
    path = tmp_path / "ref.h5"
    with h5py.File(path, "w") as f:  # the reference's layout: no done mask, unset points as -1/1
        f["xcoordinates"], f["ycoordinates"] = np.linspace(-1, 1, 5), np.linspace(-1, 1, 3)
        f["train_loss"] = np.ones((5, 3))
        max_eig, min_eig = np.full((5, 3), 2.0), np.full((5, 3), -0.5)
        max_eig[0, 0], min_eig[0, 0] = -1, 1
        f["max_eig"], f["min_eig"] = max_eig, min_eig
    surf = load_surface(str(path))
    assert np.isnan(surf.extra["max_eig"][0, 0]) and surf.extra["max_eig"][1, 1] == 2.0
    with h5py.File(path, "r+") as f:
        del f["max_eig"]
        f["max_eig"] = np.arange(15.0).reshape(3, 5)  # shaped [iy, ix]: the same meshgrid order, read as such
    surf = load_surface(str(path))
    assert surf.extra["max_eig"][4, 0] == 4.0 and surf.extra["max_eig"][0, 2] == 10.0  # (x[4], y[0]), (x[0], y[2])
    with h5py.File(path, "r+") as f:
        del f["max_eig"]
        f["max_eig"] = np.full((4, 4), 2.0)  # no order of this grid: skipped, the losses still load
    surf = load_surface(str(path))
    assert "max_eig" not in surf.extra and surf.loss.shape == (5, 3)


def test_hessian_direction_surfaces_resume_on_the_stored_directions(tmp_path, digits100, monkeypatch):
    from lossgrid.surface import directions as surface_module

    path = tmp_path / "h.h5"
    spec = DirectionSpec(kind="hessian", seed=1)
    grid = GridSpec.parse("-0.1:0.1:3", "-0.1:0.1:3")
    first = compute_surface(tiny_mlp(), digits100, grid, path, direction_spec=spec)
    with h5py.File(path, "r+") as f:
        f["done"][1:] = 0

    def recompute(*args, **kwargs):
        raise AssertionError("the stored Hessian directions should be reused")

    monkeypatch.setattr(surface_module, "create_directions", recompute)
    again = compute_surface(tiny_mlp(), digits100, grid, path, direction_spec=spec)
    np.testing.assert_allclose(again.loss, first.loss, rtol=1e-6)
    with pytest.raises(AssertionError, match="should be reused"):  # other settings: not reused
        compute_surface(tiny_mlp(), digits100, grid, path, direction_spec=DirectionSpec(kind="hessian", seed=2),
                        overwrite=True)
