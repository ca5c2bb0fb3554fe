"""Anchor points as control variates (``--anchor-stride``): the anchor grid and its weights,
the estimator against a direct computation, exactness on the whole set, per-sample values
from every runner, the surface loop (anchors exact against a per-point PyTorch reference,
resume, errors far below the plain subset's) and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from lossgrid import Axis, GridSpec, compute_surface, load_surface
from lossgrid.cli.group import cli
from lossgrid.config import DirectionSpec, EvalSpec, SurfaceJob
from lossgrid.engine.losses import SampleValues
from lossgrid.engine.runners import make_runner
from lossgrid.errors import ConfigError
from lossgrid.surface.anchors import AnchorGrid, ControlVariate, axis_anchors
from lossgrid.surface.directions import create_directions
from tests.surface.test_statistics import per_sample_losses


def test_axis_anchors_include_both_ends() -> None:
    assert axis_anchors(21, 4).tolist() == [0, 4, 8, 12, 16, 20]
    assert axis_anchors(10, 4).tolist() == [0, 4, 8, 9]
    assert axis_anchors(2, 5).tolist() == [0, 1]


def test_weights_interpolate_coordinates_exactly() -> None:
    grid = AnchorGrid((10, 7), 3)
    flat = np.arange(70)
    rows, w = grid.weights(flat)
    assert np.allclose(w.sum(1), 1) and (w >= 0).all()
    anchors = np.stack(np.unravel_index(grid.flat(), grid.shape), 1).astype(float)  # [A, 2] grid indices
    # bilinear weights reproduce any linear function of the indices, so the point's own indices
    got = np.einsum("mc,mcd->md", w, anchors[rows])
    assert np.allclose(got, np.stack(np.unravel_index(flat, grid.shape), 1))
    own_rows, own_w = grid.weights(grid.flat())
    assert np.allclose(own_w.max(1), 1)
    assert (own_rows[np.arange(len(own_rows)), own_w.argmax(1)] == np.arange(len(grid.flat()))).all()
    rows1, w1 = AnchorGrid((9,), 4).weights(np.array([0, 2, 5, 8]))
    assert rows1.tolist() == [[0, 0], [0, 1], [1, 2], [2, 2]]
    assert np.allclose(w1[:, 1], [0, 0.5, 0.25, 0])


def test_stride_below_two_is_refused() -> None:
    with pytest.raises(ConfigError, match="anchor-stride"):
        AnchorGrid((5, 5), 1)


def _synthetic(points: int = 25, samples: int = 400, seed: int = 0) -> np.ndarray:
    """Per-sample losses ``[5, 5, N]`` that vary smoothly over the grid and widely over samples."""
    rng = np.random.default_rng(seed)
    a, b = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5), indexing="ij")
    scale = rng.gamma(2.0, 1.0, samples)
    tilt = rng.normal(0, 1, samples)
    return (a[..., None] ** 2 + b[..., None] ** 2) * scale + 0.3 * a[..., None] * tilt + 0.05 * rng.normal(
        0, 1, (5, 5, samples))


def _control(values: np.ndarray, subset: np.ndarray, stride: int, units: float | None = None,
             correct: np.ndarray | None = None) -> ControlVariate:
    grid = AnchorGrid(values.shape[:2], stride)
    flat = values.reshape(-1, values.shape[-1])
    rows = grid.flat()
    n_units = float(values.shape[-1]) if units is None else units
    exact_loss = flat[rows].sum(1) / n_units
    exact_acc = np.full(len(rows), np.nan) if correct is None else 100 * correct[rows].sum(1) / n_units
    kept = SampleValues(flat[rows][:, subset], None if correct is None else correct[rows][:, subset])
    return ControlVariate(grid, exact_loss, exact_acc, kept, values.shape[-1], n_units)


def test_estimate_is_the_difference_estimator() -> None:
    values = _synthetic()
    n_all = values.shape[-1]
    subset = np.sort(np.random.default_rng(1).choice(n_all, 60, replace=False))
    control = _control(values, subset, 2)
    flat = values.reshape(25, -1)
    points = np.arange(25)
    loss, acc, se = control.estimate(points, SampleValues(flat[:, subset], None))
    assert np.isnan(acc).all()
    rows, w = control.grid.weights(points)
    for p in points:
        c = (w[p][:, None] * flat[control.grid.flat()][rows[p]]).sum(0)  # the interpolated anchors, every sample
        r = flat[p, subset] - c[subset]
        assert loss[p] == pytest.approx(c.mean() + r.mean(), abs=1e-12)
        assert se[p] == pytest.approx(np.sqrt((1 - 60 / n_all) * r.var(ddof=1) / 60), abs=1e-12)
    anchors = control.grid.flat()
    assert np.allclose(loss[anchors], flat[anchors].mean(1)) and np.allclose(se[anchors], 0)


def test_whole_set_gives_the_exact_surface_and_no_error() -> None:
    values = _synthetic()
    n_all = values.shape[-1]
    flat = values.reshape(25, -1)
    correct = (np.random.default_rng(2).random(flat.shape) < 0.7).astype(float)
    everything = np.arange(n_all)
    control = _control(values, everything, 3, correct=correct)
    loss, acc, se = control.estimate(np.arange(25), SampleValues(flat, correct))
    assert np.allclose(loss, flat.mean(1)) and np.allclose(acc, 100 * correct.mean(1)) and np.allclose(se, 0)


def test_token_units_estimate_the_loss_per_unit() -> None:
    values = _synthetic()
    n_all = values.shape[-1]
    units_per_sample = np.random.default_rng(3).integers(1, 9, n_all).astype(float)
    units = float(units_per_sample.sum())
    sums = values * units_per_sample  # a token loss: each sample's sum over its tokens
    flat = sums.reshape(25, -1)
    control = _control(sums, np.arange(n_all), 2, units=units)
    loss, _, se = control.estimate(np.arange(25), SampleValues(flat, None))
    assert np.allclose(loss, flat.sum(1) / units) and np.allclose(se, 0)
    subset = np.sort(np.random.default_rng(5).choice(n_all, 80, replace=False))
    control = _control(sums, subset, 2, units=units)
    loss, _, se = control.estimate(np.arange(25), SampleValues(flat[:, subset], None))
    rows, w = control.grid.weights(np.arange(25))
    anchor_values = flat[control.grid.flat()]
    for p in (1, 7, 12):  # off the anchors: the estimated total over the units
        c = (w[p][:, None] * anchor_values[rows[p]]).sum(0)
        r = flat[p, subset] - c[subset]
        assert loss[p] == pytest.approx((c.sum() + n_all * r.mean()) / units, rel=1e-12)
        assert se[p] == pytest.approx(n_all / units * np.sqrt((1 - 80 / n_all) * r.var(ddof=1) / 80), rel=1e-12)


def test_residual_std_is_what_the_standard_errors_are_made_of() -> None:
    from lossgrid.surface.anchors import residual_std
    from lossgrid.surface.sampling import per_sample_std

    values = _synthetic()
    n_all = values.shape[-1]
    units_per_sample = np.random.default_rng(6).integers(1, 9, n_all).astype(float)
    for scale in (np.ones(n_all), units_per_sample):  # one unit per sample; token sums
        sums = (values * scale).reshape(25, -1)
        subset = np.sort(np.random.default_rng(7).choice(n_all, 90, replace=False))
        control = _control(sums.reshape(5, 5, -1), subset, 2, units=float(scale.sum()))
        points = np.array([1, 6, 12, 18])
        _, _, se = control.estimate(points, SampleValues(sums[points][:, subset], None))
        got = residual_std(control.grid, points, SampleValues(sums[points][:, subset], None), control.subset,
                           float(scale.sum()) / n_all)
        np.testing.assert_allclose(got, per_sample_std(se, 90, n_all), rtol=1e-12)


def test_intervals_cover_at_their_level_over_many_subsets() -> None:
    values = _synthetic(samples=2000)
    flat = values.reshape(25, -1)
    rng = np.random.default_rng(4)
    inside, total, errors_cv, errors_raw = 0, 0, [], []
    exact = flat.mean(1)
    for _ in range(300):
        subset = np.sort(rng.choice(2000, 100, replace=False))
        control = _control(values, subset, 2)
        loss, _, se = control.estimate(np.arange(25), SampleValues(flat[:, subset], None))
        free = se > 0
        inside += int((np.abs(loss - exact)[free] <= 1.96 * se[free]).sum())
        total += int(free.sum())
        errors_cv.append(np.abs(loss - exact).max())
        errors_raw.append(np.abs(flat[:, subset].mean(1) - exact).max())
    assert 0.92 <= inside / total <= 0.975
    assert np.mean(errors_cv) < 0.3 * np.mean(errors_raw)


@pytest.mark.parametrize("backend,strategy", [("torch", "loop"), ("torch", "vmap"), ("torch", "wide"),
                                              ("torch", "static"), ("onnxruntime", "wide"),
                                              ("onnxruntime", "baked"), ("auto", "auto")])
def test_every_runner_keeps_per_sample_values(trained_cnn, digits_small, backend, strategy) -> None:
    dirs = create_directions(trained_cnn, DirectionSpec(seed=1), ndim=1)
    coeffs = torch.tensor([[-0.5], [0.0], [0.7]])
    runner = make_runner(EvalSpec(backend=backend, strategy=strategy, points_per_call=2, batch_size=50,
                                  auto_budget=1000.0), trained_cnn, dirs.layout, digits_small,
                         lambda o, t: F.cross_entropy(o, t, reduction="none"))
    runner.set_directions(dirs.layout.flatten(dict(trained_cnn.named_parameters())), dirs.flat())
    stats, kept = runner.evaluate_point_samples(coeffs)
    assert kept.loss.shape == kept.correct.shape == (3, len(digits_small))
    for i, c in enumerate(coeffs[:, 0].tolist()):
        want = per_sample_losses(trained_cnn, digits_small, dirs, c)
        assert np.allclose(kept.loss[i], want, rtol=1e-4, atol=1e-5)
        assert stats.loss[i] == pytest.approx(want.mean(), rel=1e-5)
        assert 100 * kept.correct[i].mean() == pytest.approx(stats.acc[i])
    assert getattr(runner, "chosen", runner)._keep is None  # plain evaluations after it keep nothing
    runner.close()


def test_batch_mean_losses_are_refused(trained_cnn, digits_small) -> None:
    dirs = create_directions(trained_cnn, DirectionSpec(seed=1), ndim=1)
    runner = make_runner(EvalSpec(strategy="loop"), trained_cnn, dirs.layout, digits_small, F.cross_entropy)
    runner.set_directions(dirs.layout.flatten(dict(trained_cnn.named_parameters())), dirs.flat())
    with pytest.raises(ConfigError, match="one value per batch"):
        runner.evaluate_point_samples(torch.tensor([[0.0]]))
    assert runner._keep is None


@pytest.fixture(scope="module")
def digits_all():
    from lossgrid.data import load_data

    return load_data("digits")


def test_surface_with_anchors(trained_cnn, digits_all, tmp_path) -> None:
    grid = GridSpec(Axis(-1, 1, 7), Axis(-1, 1, 7))
    dirs = create_directions(trained_cnn, DirectionSpec(seed=0), ndim=2)
    subset = digits_all.subset(150, 3)
    exact = compute_surface(trained_cnn, digits_all, grid, directions=dirs, eval_spec=EvalSpec(strategy="vmap"))
    raw = compute_surface(trained_cnn, subset, grid, directions=dirs)
    out = tmp_path / "a.h5"

    def stop_after_anchors(done: int, total: int) -> None:
        if done >= 16 + 8:  # the 16 anchors (stride 2 on 7 points: 0, 2, 4, 6), then one chunk
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_surface(trained_cnn, subset, grid, out, directions=dirs, anchor_stride=2, population=digits_all,
                        progress=stop_after_anchors)
    partial = load_surface(str(out))
    anchors = AnchorGrid(grid.shape, 2)
    assert partial.done.ravel()[anchors.flat()].all() and 16 < partial.done.sum() < 49
    surf = compute_surface(trained_cnn, subset, grid, out, directions=dirs, anchor_stride=2, population=digits_all)
    stored = load_surface(str(out))
    assert stored.done.all() and surf.attrs["last_run"]["anchors"]["evaluated_exactly"] == 0
    whole = compute_surface(trained_cnn, subset, grid, directions=dirs, anchor_stride=2, population=digits_all)
    assert np.allclose(stored.loss, whole.loss, rtol=1e-9, atol=1e-12)  # the resumed file = one uninterrupted run
    se = surf.extra["train_loss_se"].ravel()
    a = anchors.flat()
    # anchors: exact, against a plain per-point PyTorch reference
    for index in a[[0, 5, 15]]:
        i, j = np.unravel_index(index, grid.shape)
        ca, cb = grid.x.coordinates()[i], grid.y.coordinates()[j]
        model = _moved(trained_cnn, dirs, ca, cb)
        with torch.no_grad():
            want = float(F.cross_entropy(model(digits_all.x), digits_all.y))
        assert surf.loss.ravel()[index] == pytest.approx(want, rel=1e-5)
    assert np.allclose(se[a], 0)
    others = np.setdiff1d(np.arange(49), a)
    err = np.abs(surf.loss - exact.loss).ravel()
    raw_err = np.abs(raw.loss - exact.loss).ravel()
    assert err[others].max() < 0.5 * raw_err.max()
    assert (err[others] <= 4 * se[others]).all()  # a few standard errors at most
    assert (se[others] > 0).all() and (se[others] < raw.extra["train_loss_se"].ravel()[others]).mean() > 0.8
    assert np.abs(surf.acc - exact.acc).max() < np.abs(raw.acc - exact.acc).max()


def _moved(model, dirs, a: float, b: float):
    import copy

    m = copy.deepcopy(model).eval()
    params = dict(m.named_parameters())
    with torch.no_grad():
        for name, dx, dy in zip(dirs.layout.names, dirs.x, dirs.y):
            params[name].add_(a * dx + b * dy)
    return m


def test_one_dimensional_surface_with_a_ragged_end(trained_cnn, digits_all) -> None:
    grid = GridSpec(Axis(-1, 1, 12))  # anchors at 0, 5, 10 and 11
    dirs = create_directions(trained_cnn, DirectionSpec(seed=2), ndim=1)
    exact = compute_surface(trained_cnn, digits_all, grid, directions=dirs, eval_spec=EvalSpec(strategy="vmap"))
    surf = compute_surface(trained_cnn, digits_all.subset(200, 1), grid, directions=dirs, anchor_stride=5,
                           population=digits_all, eval_spec=EvalSpec(strategy="vmap"))
    se = surf.extra["train_loss_se"]
    anchors = [0, 5, 10, 11]
    assert np.allclose(surf.loss[anchors], exact.loss[anchors], rtol=1e-6) and np.allclose(se[anchors], 0)
    others = np.setdiff1d(np.arange(12), anchors)
    assert (se[others] > 0).all() and (np.abs(surf.loss - exact.loss)[others] <= 4 * se[others]).all()


def test_batch_mean_loss_is_refused_before_any_work(trained_cnn, digits_all, tmp_path) -> None:
    out = tmp_path / "s.h5"
    with pytest.raises(ConfigError, match="batch mean"):
        compute_surface(trained_cnn, digits_all.subset(100), GridSpec(Axis(-1, 1, 5)), out, loss=F.cross_entropy,
                        anchor_stride=2, population=digits_all)
    assert not out.exists()


def test_anchor_stride_needs_a_population(trained_cnn, digits_all) -> None:
    grid = GridSpec(Axis(-1, 1, 5))

    class TotalUnits:  # counts its units only in total: no per-sample units to estimate with
        __qualname__ = "total_units"

        def __call__(self, outputs, targets):
            return F.cross_entropy(outputs, targets, reduction="none")

        def units(self, targets):
            return int(targets.numel())

    with pytest.raises(ConfigError, match="per-sample units"):
        compute_surface(trained_cnn, digits_all.subset(100), grid, anchor_stride=2, population=digits_all,
                        loss=TotalUnits())
    with pytest.raises(ConfigError, match="whole set"):
        compute_surface(trained_cnn, digits_all.subset(100), grid, anchor_stride=2)
    with pytest.raises(ConfigError, match="whole set"):
        compute_surface(trained_cnn, digits_all.subset(100), grid, anchor_stride=2,
                        population=digits_all.subset(500))


@pytest.mark.parametrize("options,message", [
    (dict(), "needs --samples"),
    (dict(samples=100, anchor_stride=1), "invalid"),
    (dict(samples=100, curvature=True), "--curvature"),
])
def test_job_refuses_what_anchors_cannot_do(options, message) -> None:
    from lossgrid.config import CurvatureSpec

    options = {"anchor_stride": 2, **options}
    if options.pop("curvature", False):
        options["curvature"] = CurvatureSpec()
    with pytest.raises(ConfigError, match=message):
        SurfaceJob(out="s.h5", grid=GridSpec.parse("-1:1:5"), **options)


def test_cli_anchor_stride(tmp_path) -> None:
    from tests.conftest import trained_small_cnn

    ckpt = tmp_path / "net.pt"
    torch.save(trained_small_cnn(20).state_dict(), ckpt)
    base = ["surface", "--model", "tests.conftest:SmallCNN", "--checkpoint", str(ckpt), "--data", "digits",
            "--x=-1:1:5", "--y=-1:1:5", "--strategy", "vmap", "-q"]
    runner = CliRunner()
    result = runner.invoke(cli, [*base, "--out", str(tmp_path / "a.h5"), "--samples", "200", "--anchor-stride", "2",
                                  "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["points_computed"] == 25 and summary["loss_se_max"] > 0
    stored = load_surface(str(tmp_path / "a.h5"))
    assert stored.attrs["anchor_stride"] == 2 and summary["anchors"]["anchors"] == 9
    from lossgrid.plot.common import with_note

    assert with_note("t", stored) == "t\nanchors every 2 exact: 200 of 1,797 samples elsewhere"
    plotted = runner.invoke(cli, ["plot", str(tmp_path / "a.h5"), "--out", str(tmp_path / "a.png")])
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "a.png").stat().st_size > 1000
    bad = runner.invoke(cli, [*base, "--out", str(tmp_path / "b.h5"), "--anchor-stride", "2"])
    assert bad.exit_code != 0 and "needs --samples" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "b.h5").exists()


def test_pilot_points_lie_between_anchors() -> None:
    grid = AnchorGrid((21, 21), 3)
    pilot = grid.pilot_points()
    assert len(pilot) == 9 and not np.isin(pilot, grid.flat()).any()
    assert sorted({int(i) for i in np.unravel_index(pilot, grid.shape)[0]}) == [1, 10, 19]
    assert AnchorGrid((12,), 5).pilot_points().tolist() == [2, 7]  # cells (0,5), (5,10), (10,11): 10 is an anchor
    assert AnchorGrid((1, 5), 2).pilot_points().tolist() == [1, 3]


def test_target_se_with_anchors_needs_fewer_samples_and_meets_it(tmp_path, caplog) -> None:
    from lossgrid.surface.job import run_surface_job
    from tests.conftest import trained_small_cnn

    ckpt = tmp_path / "net.pt"
    torch.save(trained_small_cnn(20).state_dict(), ckpt)
    base = dict(grid=GridSpec.parse("-1:1:7", "-1:1:7"), model="tests.conftest:SmallCNN", checkpoint=str(ckpt),
                data="digits", evaluation=EvalSpec(strategy="vmap"), target_se=0.02)
    plain = run_surface_job(SurfaceJob(out=str(tmp_path / "p.h5"), **base))
    job = SurfaceJob(out=str(tmp_path / "a.h5"), anchor_stride=3, **base)
    with caplog.at_level("INFO", logger="lossgrid.surface.job"):
        anchored = run_surface_job(job)
    assert "computing again" not in caplog.text  # the pilot's size held: it measured the residuals
    n_plain, n_anchored = plain["target_se"]["samples"], anchored["target_se"]["samples"]
    assert n_anchored < 0.7 * n_plain, (n_plain, n_anchored)
    surf = load_surface(job.out)
    assert surf.done.all() and np.nanmax(surf.extra["train_loss_se"]) <= 0.02
    assert surf.attrs["anchor_stride"] == 3 and surf.attrs["samples"] == n_anchored
    again = run_surface_job(job)  # resumes the stored subset: nothing to compute
    assert again["points_computed"] == 0 and again["target_se"]["samples"] == n_anchored
    import dataclasses

    # a plain target-se file rerun with anchors (and --overwrite) sizes the subset for the anchors
    over = run_surface_job(dataclasses.replace(job, out=str(tmp_path / "p.h5"), overwrite=True))
    assert over["target_se"]["samples"] == n_anchored


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["loop", "vmap", "static"])
def test_anchored_surface_on_a_gpu_matches_the_cpu(trained_cnn, digits_all, strategy) -> None:
    grid = GridSpec(Axis(-1, 1, 5), Axis(-1, 1, 5))
    dirs = create_directions(trained_cnn, DirectionSpec(seed=0), ndim=2)
    subset = digits_all.subset(300, 2)
    cpu = compute_surface(trained_cnn, subset, grid, directions=dirs, anchor_stride=2, population=digits_all,
                          eval_spec=EvalSpec(strategy="vmap"))
    gpu = compute_surface(trained_cnn, subset, grid, directions=dirs, anchor_stride=2, population=digits_all,
                          eval_spec=EvalSpec(strategy=strategy, device="cuda"))
    np.testing.assert_allclose(gpu.loss, cpu.loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gpu.extra["train_loss_se"], cpu.extra["train_loss_se"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(gpu.acc, cpu.acc, atol=0.2)  # a near-tie argmax may flip: 0.056% a sample


def test_a_changed_whole_set_is_not_resumed(trained_cnn, digits_all, tmp_path) -> None:
    from lossgrid.data import EvalData
    from lossgrid.errors import SurfaceFileError

    grid = GridSpec(Axis(-1, 1, 5))
    subset = digits_all.subset(100, 0)
    out = tmp_path / "s.h5"
    compute_surface(trained_cnn, subset, grid, out, anchor_stride=2, population=digits_all)
    # the same subset (its rows unchanged) drawn from a whole set changed elsewhere: the anchors differ
    picked = torch.randperm(len(digits_all), generator=torch.Generator().manual_seed(0))[:100]
    outside = int(np.setdiff1d(np.arange(len(digits_all)), picked.numpy())[0])
    x = digits_all.x.clone()
    x[outside] = 1 - x[outside]
    changed = EvalData(x, digits_all.y, digits_all.description)
    again = changed.subset(100, 0)
    assert torch.equal(again.x, subset.x)
    with pytest.raises(SurfaceFileError, match="overwrite"):
        compute_surface(trained_cnn, again, grid, out, anchor_stride=2, population=changed)
