"""Engine results against the plain per-point PyTorch loop.

Tolerances: loss within 1e-5 relative; accuracy exactly equal, unless a sample's
top-2 logits tie within 1e-5 at that point (checked and reported).
"""

import numpy as np
import pytest
import torch

from lossgrid.config import DirectionSpec, EvalSpec, GridSpec
from lossgrid.engine.losses import cross_entropy, mse
from lossgrid.engine.params import ParamLayout, perturbed_tensors
from lossgrid.engine.reference import evaluate_points_reference
from lossgrid.engine.runners import TorchRunner
from lossgrid.kernels import perturb
from lossgrid.surface.compute import compute_surface
from lossgrid.surface.directions import create_directions

RTOL = 1e-5


def reference_surface(model, data, dirs, grid):
    layout = dirs.layout
    base = layout.flatten(perturbed_tensors(model, layout.dir_type))
    weights = perturb(base, dirs.flat(), torch.as_tensor(grid.points()))
    loss, acc = evaluate_points_reference(model, layout, weights, data.x, data.y, batch_size=50)
    return loss.reshape(grid.shape), acc.reshape(grid.shape)


@pytest.mark.parametrize("dir_type", ["weights", "states"])
@pytest.mark.parametrize("strategy", ["loop", "vmap", "wide", "static"])
@pytest.mark.parametrize("grid", [GridSpec.parse("-1:1:5"), GridSpec.parse("-1:1:4", "-0.5:0.5:3")], ids=["1d", "2d"])
def test_surface_matches_per_point_reference(trained_cnn, digits_small, dir_type, strategy, grid):
    dirs = create_directions(trained_cnn, DirectionSpec(dir_type=dir_type, seed=1), ndim=grid.ndim)
    surf = compute_surface(trained_cnn, digits_small, grid, directions=dirs,
                           eval_spec=EvalSpec(strategy=strategy, points_per_call=3, batch_size=64))
    ref_loss, ref_acc = reference_surface(trained_cnn, digits_small, dirs, grid)
    assert surf.done.all()
    np.testing.assert_allclose(surf.loss, ref_loss, rtol=RTOL)
    np.testing.assert_array_equal(surf.acc, ref_acc)
    # the surface is not flat: the check is not vacuous
    assert np.ptp(ref_loss) > 0.1


@pytest.mark.parametrize("chunk", [3, 8, 11])
def test_wide_strategy_pads_partial_chunks(trained_cnn, digits_small, chunk):
    layout = ParamLayout.from_model(trained_cnn)
    base = layout.flatten(dict(trained_cnn.named_parameters()))
    weights = base[None] + 0.01 * torch.randn(chunk, layout.size, generator=torch.Generator().manual_seed(chunk))
    runner = TorchRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy, batch_size=64,
                         strategy="wide", points_per_call=4)
    loss, acc, _ = runner.evaluate(weights)
    ref, ref_acc = evaluate_points_reference(trained_cnn, layout, weights, digits_small.x, digits_small.y)
    assert loss.shape == (chunk,)
    np.testing.assert_allclose(loss, ref, rtol=RTOL)
    np.testing.assert_array_equal(acc, ref_acc)


@pytest.mark.gpu
@pytest.mark.parametrize("dir_type", ["weights", "states"])
@pytest.mark.parametrize("strategy", ["wide", "vmap", "loop"])
def test_wide_on_cuda_and_the_other_torch_strategies_match_the_cpu_reference(trained_cnn, digits_small, dir_type,
                                                                             strategy):
    grid = GridSpec.parse("-1:1:4", "-0.5:0.5:3")
    dirs = create_directions(trained_cnn, DirectionSpec(dir_type=dir_type, seed=1), ndim=2)
    surf = compute_surface(trained_cnn, digits_small, grid, directions=dirs,
                           eval_spec=EvalSpec(strategy=strategy, points_per_call=5, device="cuda"))
    ref_loss, ref_acc = reference_surface(trained_cnn, digits_small, dirs, grid)
    assert surf.attrs["last_run"]["device"].startswith("cuda") and surf.attrs["last_run"]["strategy"] == strategy
    np.testing.assert_allclose(surf.loss, ref_loss, rtol=RTOL)
    np.testing.assert_allclose(surf.acc, ref_acc, atol=100.0 / len(digits_small) + 1e-9)  # at most one top-2 tie


def test_auto_strategy_reports_choice(trained_cnn, digits_small):
    dirs = create_directions(trained_cnn, DirectionSpec(), ndim=1)
    surf = compute_surface(trained_cnn, digits_small, GridSpec.parse("-0.5:0.5:3"), directions=dirs,
                           eval_spec=EvalSpec(auto_budget=1e6, points_per_call=1))
    run = surf.attrs["last_run"]
    assert run["strategy"] in ("loop", "static", "vmap", "wide") and "fastest when timed" in run["strategy_reason"]
    for label in ("torch/loop", "torch/static", "torch/vmap", "torch/wide"):
        assert label in run["strategy_reason"]
    ref_loss, _ = reference_surface(trained_cnn, digits_small, dirs, GridSpec.parse("-0.5:0.5:3"))
    np.testing.assert_allclose(surf.loss, ref_loss, rtol=RTOL)


def test_caller_model_is_not_modified(trained_cnn, digits_small):
    before = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    compute_surface(trained_cnn, digits_small, GridSpec.parse("-1:1:3"), eval_spec=EvalSpec(strategy="loop"))
    for k, v in trained_cnn.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_mse_loss_on_float_targets_gives_nan_accuracy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x, y = torch.randn(40, 3), torch.randn(40, 2)
    layout = ParamLayout.from_model(model)
    base = layout.flatten(dict(model.named_parameters()))
    weights = base[None] + 0.1 * torch.randn(4, layout.size)
    for strategy in ("loop", "vmap"):
        loss, acc, _ = TorchRunner(model, layout, x, y, mse, batch_size=16, strategy=strategy).evaluate(weights)
        ref, _ = evaluate_points_reference(model, layout, weights, x, y, mse, batch_size=16)
        np.testing.assert_allclose(loss, ref, rtol=RTOL)
        assert np.isnan(acc).all()


def test_scalar_user_loss_is_taken_as_batch_mean(trained_cnn, digits_small):
    layout = ParamLayout.from_model(trained_cnn)
    w = layout.flatten(dict(trained_cnn.named_parameters()))[None]

    def mean_ce(out, y):
        return torch.nn.functional.cross_entropy(out, y)

    a, _, _ = TorchRunner(trained_cnn, layout, digits_small.x, digits_small.y, mean_ce, batch_size=64).evaluate(w)
    b, _, _ = TorchRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy, batch_size=64).evaluate(w)
    np.testing.assert_allclose(a, b, rtol=RTOL)


def test_nonfinite_losses_are_recorded(trained_cnn, digits_small):
    # 'states' directions move BN running variances; far out they turn negative -> NaN
    dirs = create_directions(trained_cnn, DirectionSpec(dir_type="states", xignore="none"), ndim=1)
    surf = compute_surface(trained_cnn, digits_small, GridSpec.parse("-40:40:5"), directions=dirs,
                           eval_spec=EvalSpec(strategy="loop"))
    assert surf.done.all()
    assert not np.isfinite(surf.loss).all() and np.isfinite(surf.loss[2])
    assert surf.summary()["nonfinite_points"] >= 1


def test_torchscript_model_runs_point_by_point(trained_cnn, digits_small):
    scripted = torch.jit.script(trained_cnn)
    dirs = create_directions(trained_cnn, DirectionSpec(), ndim=1)
    grid = GridSpec.parse("-1:1:3")
    surf = compute_surface(scripted, digits_small, grid, directions=dirs)
    assert surf.attrs["last_run"]["strategy"] == "loop"
    ref, _ = reference_surface(trained_cnn, digits_small, dirs, grid)
    np.testing.assert_allclose(surf.loss, ref, rtol=RTOL)
