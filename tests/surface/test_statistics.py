"""Standard errors of every point's loss: equal to the per-sample standard deviation over
sqrt(n) in every runner, the ratio estimator for token-level losses, the finite population
correction for subsets, and intervals that cover the whole set's loss at their level."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossgrid import Axis, GridSpec, compute_surface, load_surface
from lossgrid.config import DirectionSpec, EvalSpec
from lossgrid.data import EvalData
from lossgrid.engine.losses import TokenCrossEntropy, finite_population
from lossgrid.engine.params import ParamLayout
from lossgrid.engine.runners import make_runner
from lossgrid.surface.directions import create_directions


def per_sample_losses(model, data: EvalData, dirs, c: float) -> np.ndarray:
    m = copy.deepcopy(model).eval()
    params = dict(m.named_parameters())
    with torch.no_grad():
        for name, d in zip(dirs.layout.names, dirs.x):
            params[name].add_(c * d)
        return F.cross_entropy(m(data.x), data.y, reduction="none").double().numpy()


@pytest.mark.parametrize("backend,strategy", [("torch", "loop"), ("torch", "vmap"), ("torch", "wide"),
                                              ("torch", "static"), ("onnxruntime", "wide"),
                                              ("onnxruntime", "baked")])
def test_every_runner_reports_std_over_sqrt_n(trained_cnn, digits_small, backend, strategy) -> None:
    dirs = create_directions(trained_cnn, DirectionSpec(seed=1), ndim=1)
    coeffs = torch.tensor([[-0.5], [0.0], [0.7]])
    runner = make_runner(EvalSpec(backend=backend, strategy=strategy, points_per_call=2, batch_size=50),
                         trained_cnn, dirs.layout, digits_small, lambda o, t: F.cross_entropy(o, t, reduction="none"))
    base = dirs.layout.flatten(dict(trained_cnn.named_parameters()))
    runner.set_directions(base, dirs.flat())
    stats = runner.evaluate_points(coeffs)
    for c, se, loss in zip(coeffs[:, 0].tolist(), stats.loss_se, stats.loss):
        values = per_sample_losses(trained_cnn, digits_small, dirs, c)
        assert loss == pytest.approx(values.mean(), rel=1e-5)
        assert se == pytest.approx(values.std(ddof=1) / np.sqrt(len(values)), rel=1e-4)


def test_token_loss_standard_error_is_the_ratio_estimators() -> None:
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(7, 5), torch.nn.Linear(5, 7))
    tokens = torch.randint(0, 7, (30, 6), generator=g)
    targets = torch.randint(0, 7, (30, 6), generator=g)
    targets[torch.rand(30, 6, generator=g) < 0.3] = -100
    layout = ParamLayout.from_model(model)
    runner = make_runner(EvalSpec(strategy="loop", batch_size=8), model, layout, EvalData(tokens, targets, "t"),
                         TokenCrossEntropy())
    stats = runner.evaluate(layout.flatten(dict(model.named_parameters()))[None])
    with torch.no_grad():
        flat = F.cross_entropy(model(tokens).reshape(-1, 7), targets.reshape(-1), ignore_index=-100,
                               reduction="none").reshape(30, 6).double()
    sums, c = flat.sum(1).numpy(), (targets != -100).sum(1).double().numpy()
    ratio = sums.sum() / c.sum()
    want = np.sqrt(len(sums) / (len(sums) - 1) * ((sums - ratio * c) ** 2).sum()) / c.sum()
    assert stats.loss[0] == pytest.approx(ratio, rel=1e-6)
    assert stats.loss_se[0] == pytest.approx(want, rel=1e-6)


def test_a_loss_returning_batch_means_has_no_standard_error(trained_cnn, digits_small) -> None:
    layout = ParamLayout.from_model(trained_cnn)
    runner = make_runner(EvalSpec(strategy="loop", batch_size=50), trained_cnn, layout, digits_small,
                         lambda o, t: F.cross_entropy(o, t))
    stats = runner.evaluate(layout.flatten(dict(trained_cnn.named_parameters()))[None])
    assert np.isfinite(stats.loss).all() and np.isnan(stats.loss_se).all()


def test_subset_intervals_cover_the_whole_sets_loss(trained_cnn, digits_small) -> None:
    """Common random numbers: one subset for every point. Over many subsets, the stated 95%
    interval (finite population corrected) contains the whole set's loss about 95% of the time."""
    full = digits_small
    values = per_sample_losses(trained_cnn, full, create_directions(trained_cnn, DirectionSpec(), ndim=1), 0.4)
    truth, n, big_n = values.mean(), 60, len(values)
    hits = []
    rng = np.random.default_rng(0)
    for _ in range(400):
        pick = values[rng.choice(big_n, n, replace=False)]
        se = finite_population(np.array([pick.std(ddof=1) / np.sqrt(n)]), n, big_n)[0]
        hits.append(abs(pick.mean() - truth) <= 1.96 * se)
    assert 0.90 <= np.mean(hits) <= 0.99
    assert finite_population(np.array([1.0]), big_n, big_n)[0] == 0.0  # the whole set: no sampling error


def test_surface_files_store_standard_errors_and_old_files_resume(tmp_path, trained_cnn, digits_small) -> None:
    path = tmp_path / "s.h5"
    sub = digits_small.subset(80, seed=3)
    surf = compute_surface(trained_cnn, sub, GridSpec(Axis(-1, 1, 4)), path, eval_spec=EvalSpec(strategy="loop"))
    se = surf.extra["train_loss_se"]
    assert np.isfinite(se).all() and (se > 0).all()
    stored = load_surface(str(path))
    np.testing.assert_array_equal(stored.extra["train_loss_se"], se)
    assert stored.attrs["se_population"] == len(digits_small)
    with h5py.File(path, "r+") as f:  # a file of an earlier version: no standard errors, two points to do
        del f["train_loss_se"]
        f["done"][2:] = 0
    again = compute_surface(trained_cnn, sub, GridSpec(Axis(-1, 1, 4)), path, eval_spec=EvalSpec(strategy="loop"))
    assert again.complete and "train_loss_se" not in load_surface(str(path)).extra
