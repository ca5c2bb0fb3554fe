"""``--adaptive`` with ``--anchor-stride`` and a subset: the anchors are the coarse grid and the control
variates, refinement weighs surpluses against their standard errors, interpolated points get intervals.

The statistics are checked on a synthetic population of per-sample losses (NumPy only, the same policy and
estimator the surface loop uses, hundreds of subsets); the loop itself on digits: exact on the whole set,
resumable, the same as one uninterrupted run, refused where the options contradict each other.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from lossgrid import Axis, GridSpec, compute_surface, load_surface
from lossgrid.config import AdaptiveSpec, EvalSpec, SurfaceJob
from lossgrid.engine.losses import SampleValues
from lossgrid.errors import ConfigError
from lossgrid.surface.adaptive import AdaptiveGrid
from lossgrid.surface.anchors import AnchorGrid, ControlVariate
from lossgrid.surface.directions import create_directions

Z = 1.96


def _population(n: int = 33, samples: int = 3000, seed: int = 0) -> np.ndarray:
    """Per-sample losses ``[n, n, N]`` of a landscape-like surface: each sample a softplus of its margin,
    which a quadratic basin with a per-sample tilt erodes away from the centre."""
    rng = np.random.default_rng(seed)
    a, b = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n), indexing="ij")
    margin = rng.gamma(3.0, 1.5, samples)
    bowl = rng.uniform(2.0, 8.0, samples) * (a[..., None] ** 2 + 0.5 * b[..., None] ** 2)
    tilt = rng.normal(0, 1.5, (2, samples))
    return np.logaddexp(0.0, bowl + tilt[0] * a[..., None] + tilt[1] * b[..., None] - margin)


def _combined(values: np.ndarray, subset: np.ndarray, stride: int, tol: float, cubic: bool = True
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, AdaptiveGrid]:
    """The anchored adaptive run of the surface loop on ``values`` with ``subset``: anchors exact, every
    other point the policy asks for estimated from them; the filled surface, its standard errors, the done
    and interpolated masks and the policy."""
    shape = values.shape[:2]
    flat = values.reshape(-1, values.shape[-1])
    exact = flat.mean(1)
    grid, policy = AnchorGrid(shape, stride, cubic), AdaptiveGrid(shape, AdaptiveSpec(tol, stride))
    rows = grid.flat()
    control = ControlVariate(grid, exact[rows], np.zeros(len(rows)), SampleValues(flat[rows][:, subset], None),
                             flat.shape[1], float(flat.shape[1]))
    loss, se, done = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, bool)
    while (idx := policy.next_points(loss, done, se)).size:
        anchors = np.isin(idx, rows)
        loss.flat[idx[anchors]], se.flat[idx[anchors]] = exact[idx[anchors]], 0.0
        others = idx[~anchors]
        if others.size:
            est, _, est_se = control.estimate(others, SampleValues(flat[others][:, subset], None))
            loss.flat[others], se.flat[others] = est, est_se
        done.flat[idx] = True
    filled, interpolated = policy.fill(loss, done)
    return filled, policy.fill_se(loss, done, se), done, interpolated, policy


def test_intervals_cover_over_many_subsets_and_errors_stay_small() -> None:
    values = _population()
    exact = values.mean(-1)
    span = np.ptp(exact)
    rng = np.random.default_rng(1)
    inside_est = total_est = inside_fill = total_fill = 0
    worst, shares = [], []
    for _ in range(60):
        subset = np.sort(rng.choice(values.shape[-1], 200, replace=False))
        filled, se, done, interpolated, _ = _combined(values, subset, 8, 0.01)
        err = np.abs(filled - exact)
        estimated = done & (se > 0)
        inside_est += int((err[estimated] <= Z * se[estimated]).sum())
        total_est += int(estimated.sum())
        inside_fill += int((err[interpolated] <= Z * se[interpolated]).sum())
        total_fill += int(interpolated.sum())
        worst.append(err.max() / span)
        shares.append(done.mean())
    assert 0.90 <= inside_est / total_est <= 0.99  # estimated points: at their stated level
    assert inside_fill / total_fill >= 0.95  # interpolated points: conservative intervals
    assert np.median(worst) <= 0.01 and max(worst) <= 0.02
    assert np.mean(shares) < 0.5  # and far from every point


def test_noise_alone_does_not_refine() -> None:
    """A flat-bottomed surface whose estimates are noisier than the tolerance: an exact run needs only
    the first two levels; with the noise flagged by its standard errors, so does the noisy run, and the
    checks it accepted within their noise are counted."""
    shape = (33, 33)
    a, b = np.meshgrid(np.linspace(-1, 1, 33), np.linspace(-1, 1, 33), indexing="ij")
    truth = a ** 2 + b ** 2
    rng = np.random.default_rng(3)
    noisy = truth + rng.normal(0, 0.02, shape)  # about 1% of the range 2 per standard error
    spec = AdaptiveSpec(0.01, 8)
    counts = {}
    for name, se in (("exact", None), ("told", np.full(shape, 0.02)), ("untold", None)):
        policy, loss, done = AdaptiveGrid(shape, spec), np.full(shape, np.nan), np.zeros(shape, bool)
        values = truth if name == "exact" else noisy
        while (idx := policy.next_points(loss, done, se)).size:
            loss.flat[idx], done.flat[idx] = values.flat[idx], True
        counts[name] = (int(done.sum()), policy.report())
    first_two = AdaptiveGrid(shape, spec).first_levels_left(np.zeros(shape, bool))
    assert counts["exact"][0] == first_two
    assert counts["told"][0] < 0.5 * counts["untold"][0]
    assert counts["told"][1]["checks_within_noise"] > 0 and counts["exact"][1]["checks_within_noise"] == 0


def test_exact_values_give_the_same_points_and_an_interval_from_the_interpolation_change() -> None:
    values = _population(n=17, samples=400)
    exact = values.mean(-1)
    whole = np.arange(values.shape[-1])
    filled, se, done, interpolated, _ = _combined(values, whole, 4, 0.01)  # the subset is the set: se = 0
    plain = AdaptiveGrid(exact.shape, AdaptiveSpec(0.01, 4))
    loss, ref_done = np.full(exact.shape, np.nan), np.zeros(exact.shape, bool)
    while (idx := plain.next_points(loss, ref_done)).size:
        loss.flat[idx], ref_done.flat[idx] = exact.flat[idx], True
    np.testing.assert_array_equal(done, ref_done)
    np.testing.assert_allclose(filled, plain.fill(loss, ref_done)[0], rtol=1e-12)
    assert np.all(se[done] == 0) and np.all(se[interpolated] >= 0)
    assert np.all(np.abs(filled - exact)[interpolated] <= Z * se[interpolated] + 1e-12)


# -- the surface loop on a real model -------------------------------------------------------------------
GRID = GridSpec(Axis(-1, 1, 13), Axis(-1, 1, 13))
VMAP = EvalSpec(strategy="vmap")


@pytest.fixture(scope="module")
def population():
    """The set the subsets are drawn from (the anchors are exact on it)."""
    from lossgrid.data import load_data

    return load_data("digits:test")


@pytest.fixture(scope="module")
def dirs(trained_cnn):
    from lossgrid.config import DirectionSpec

    return create_directions(trained_cnn, DirectionSpec(seed=0), ndim=2)


def test_the_whole_set_as_subset_is_the_exact_adaptive_surface(trained_cnn, population, dirs) -> None:
    spec = AdaptiveSpec(0.01, 4)
    plain = compute_surface(trained_cnn, population, GRID, directions=dirs, eval_spec=VMAP, adaptive=spec)
    whole = population.subset(len(population), 5)  # every sample, in another order
    both = compute_surface(trained_cnn, whole, GRID, directions=dirs, eval_spec=VMAP, adaptive=spec,
                           anchor_stride=4, population=population)
    np.testing.assert_array_equal(both.done, plain.done)
    np.testing.assert_allclose(both.loss, plain.loss, rtol=2e-5)
    se = both.extra["train_loss_se"]
    assert np.all(se[both.done.astype(bool)] == 0)
    assert np.isfinite(se).all()  # interpolated points carry their interpolation allowance
    run = both.attrs["last_run"]
    assert run["anchors"]["anchors"] == 16 and run["adaptive"]["coarse"] == 4 and run["adaptive"]["finished"]


def test_an_interrupted_run_resumes_to_one_uninterrupted_run(trained_cnn, population, dirs, tmp_path) -> None:
    subset = population.subset(120, 2)
    options = dict(directions=dirs, eval_spec=EvalSpec(strategy="vmap", points_per_call=8),
                   adaptive=AdaptiveSpec(0.01, 8), anchor_stride=8, population=population)
    whole = compute_surface(trained_cnn, subset, GRID, **options)
    out, seen = tmp_path / "p.h5", []

    def stop(done: int, total: int) -> None:
        seen.append(done)
        if done > 9 + 8:  # the 9 anchors (0, 8, 12 per axis), then part of the refinement
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_surface(trained_cnn, subset, GRID, out, progress=stop, **options)
    assert 9 < load_surface(str(out)).done.sum() < whole.done.sum()
    resumed = compute_surface(trained_cnn, subset, GRID, out, **options)
    stored = load_surface(str(out))
    np.testing.assert_array_equal(stored.done, whole.done)
    np.testing.assert_allclose(stored.loss, whole.loss, rtol=1e-9)
    np.testing.assert_allclose(stored.extra["train_loss_se"], whole.extra["train_loss_se"], rtol=1e-9)
    assert resumed.attrs["last_run"]["anchors"]["evaluated_exactly"] == 0
    interpolated = stored.extra["interpolated"].astype(bool)
    assert interpolated.any() and not (interpolated & stored.done.astype(bool)).any()


def test_a_coarse_stride_other_than_the_anchors_is_refused(trained_cnn, population) -> None:
    with pytest.raises(ConfigError, match="differs from --anchor-stride"):
        compute_surface(trained_cnn, population.subset(60), GRID, adaptive=AdaptiveSpec(0.01, 4), anchor_stride=8,
                        population=population)
    with pytest.raises(ConfigError, match="differs from --anchor-stride"):
        SurfaceJob(out="s.h5", grid=GRID, samples=100, anchor_stride=8, adaptive=AdaptiveSpec(0.01, 4))


def test_cli_combined_mode(tmp_path) -> None:
    import json

    import torch

    from lossgrid.cli.group import cli
    from tests.conftest import trained_small_cnn

    ckpt = tmp_path / "net.pt"
    torch.save(trained_small_cnn(20).state_dict(), ckpt)
    base = ["surface", "--model", "tests.conftest:SmallCNN", "--checkpoint", str(ckpt), "--data", "digits",
            "--x=-1:1:9", "--y=-1:1:9", "--samples", "150", "--anchor-stride", "4", "--adaptive"]
    r = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "s.h5"), "--json", "-q"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["adaptive"]["coarse"] == 4 and summary["anchors"]["stride"] == 4
    r = CliRunner().invoke(cli, [*base, "--adaptive-coarse", "2", "--out", str(tmp_path / "t.h5")])
    assert r.exit_code != 0 and "differs from --anchor-stride" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "t.h5").exists()
