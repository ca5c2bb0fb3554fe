"""``--adaptive`` in the surface loop: within the stated tolerance of the full grid on a real
model, fewer points evaluated, interpolated points marked (never done), resumable after an
interruption to the same result, refused with ``--curvature``."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from lossgrid import Axis, GridSpec, compute_surface, load_surface
from lossgrid.cli.group import cli
from lossgrid.config import AdaptiveSpec, CurvatureSpec, EvalSpec
from lossgrid.errors import ConfigError

GRID = GridSpec(Axis(-1, 1, 25), Axis(-1, 1, 25))
LOOP = EvalSpec(strategy="loop", points_per_call=8)


@pytest.fixture(scope="module")
def full(trained_cnn, digits_small):
    return compute_surface(trained_cnn, digits_small, GRID, eval_spec=LOOP)


@pytest.mark.parametrize("coarse", [4, 8])
def test_adaptive_surface_is_within_tolerance_of_the_full_grid(tmp_path, trained_cnn, digits_small, full, coarse):
    spec = AdaptiveSpec(tol=0.01, coarse=coarse)
    surf = compute_surface(trained_cnn, digits_small, GRID, tmp_path / "a.h5", eval_spec=LOOP, adaptive=spec)
    span = np.nanmax(full.loss) - np.nanmin(full.loss)
    assert np.nanmax(np.abs(surf.loss - full.loss)) <= 2 * spec.tol * span  # the stated bound
    done = surf.done.astype(bool)
    np.testing.assert_allclose(surf.loss[done], full.loss[done], rtol=1e-6)  # evaluated points are exact
    assert done.sum() < 0.6 * done.size
    stored = load_surface(str(tmp_path / "a.h5"))
    interpolated = stored.extra["interpolated"].astype(bool)
    assert not (interpolated & done).any() and (interpolated | done).all()
    report = surf.attrs["last_run"]["adaptive"]
    assert report["points_evaluated"] == int(done.sum()) and report["finished"]
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert json.loads(f.attrs["identity"])["adaptive"] == {"tol": 0.01, "coarse": coarse}


def test_an_interrupted_adaptive_run_resumes_to_the_same_surface(tmp_path, trained_cnn, digits_small):
    spec = AdaptiveSpec(tol=0.01, coarse=4)
    whole = compute_surface(trained_cnn, digits_small, GRID, tmp_path / "w.h5", eval_spec=LOOP, adaptive=spec)
    calls = []

    def stop(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 12:  # mid-run, after a few chunks of the refinement
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_surface(trained_cnn, digits_small, GRID, tmp_path / "p.h5", eval_spec=LOOP, adaptive=spec,
                        progress=stop)
    part = load_surface(str(tmp_path / "p.h5"))
    assert 0 < part.done.sum() < whole.done.sum()
    resumed = compute_surface(trained_cnn, digits_small, GRID, tmp_path / "p.h5", eval_spec=LOOP, adaptive=spec)
    np.testing.assert_array_equal(resumed.done, whole.done)
    np.testing.assert_allclose(resumed.loss, whole.loss, rtol=1e-9)


def test_adaptive_with_curvature_is_refused(trained_cnn, digits_small):
    with pytest.raises(ConfigError, match="--adaptive cannot be combined with --curvature"):
        compute_surface(trained_cnn, digits_small, GridSpec(Axis(-1, 1, 5)), adaptive=AdaptiveSpec(),
                        curvature=CurvatureSpec(iters=2))


def test_adaptive_options_need_the_flag(tmp_path):
    r = CliRunner().invoke(cli, ["surface", "--model", "lossgrid.zoo:mlp_digits", "--adaptive-coarse", "8",
                                 "--out", str(tmp_path / "s.h5")])
    assert r.exit_code == 2 and "it applies to --adaptive" in r.output
