"""The onnxruntime backend against the torch runner and the per-point reference.

Tolerances: loss within 1e-4 relative through the surface loop, 1e-5 relative for
the runner called directly; accuracy identical except where a sample's top-2
logits tie within 1e-5 at that point.
"""

import numpy as np
import pytest
import torch

from lossgrid.config import DirectionSpec, EvalSpec, GridSpec
from lossgrid.engine.params import perturbed_tensors
from lossgrid.errors import ConfigError, MissingBackendError
from lossgrid.kernels import perturb
from lossgrid.surface.compute import compute_surface
from lossgrid.surface.directions import create_directions


def top2_ties(model, dirs, grid, data, mask):
    """Grid points (of ``mask``) where some sample's top-2 logits tie within 1e-5."""
    from torch.func import functional_call

    base = dirs.layout.flatten(perturbed_tensors(model, dirs.layout.dir_type))
    weights = perturb(base, dirs.flat(), torch.as_tensor(grid.points()))
    ties = np.zeros(mask.size, bool)
    for i in np.flatnonzero(mask.ravel()):
        with torch.no_grad():
            out = functional_call(model, dirs.layout.unflatten(weights[i]), (data.x,))
        top = out.topk(2, dim=1).values
        ties[i] = bool(((top[:, 0] - top[:, 1]).abs() < 1e-5).any())
    return ties.reshape(mask.shape)


@pytest.mark.parametrize("strategy", ["wide", "baked"])
@pytest.mark.parametrize("dir_type", ["weights", "states"])
def test_onnxruntime_surface_equals_torch(trained_cnn, digits_small, strategy, dir_type):
    grid = GridSpec.parse("-1:1:5", "-1:1:3")
    dirs = create_directions(trained_cnn, DirectionSpec(dir_type=dir_type, seed=2), ndim=2)
    ref = compute_surface(trained_cnn, digits_small, grid, directions=dirs,
                          eval_spec=EvalSpec(strategy="loop", batch_size=64))
    got = compute_surface(trained_cnn, digits_small, grid, directions=dirs,
                          eval_spec=EvalSpec(backend="onnxruntime", strategy=strategy, points_per_call=4,
                                             batch_size=64))
    run = got.attrs["last_run"]
    assert run["backend"] == "onnxruntime" and run["strategy"] == strategy
    assert run["onnx_parity_max_abs_diff"] < 1e-4
    np.testing.assert_allclose(got.loss, ref.loss, rtol=1e-4)
    differ = got.acc != ref.acc
    if differ.any():
        assert top2_ties(trained_cnn, dirs, grid, digits_small, differ)[differ].all()


def test_onnxruntime_1d_mlp_with_padding_of_the_last_chunk(digits_small):
    from lossgrid.zoo import mlp_digits

    torch.manual_seed(0)
    model = mlp_digits().eval()
    grid = GridSpec.parse("-2:2:7")  # 7 points, K=4: the last call is padded
    dirs = create_directions(model, DirectionSpec(), ndim=1)
    ref = compute_surface(model, digits_small, grid, directions=dirs, eval_spec=EvalSpec(strategy="loop"))
    got = compute_surface(model, digits_small, grid, directions=dirs,
                          eval_spec=EvalSpec(backend="onnxruntime", strategy="wide", points_per_call=4))
    np.testing.assert_allclose(got.loss, ref.loss, rtol=1e-4)
    np.testing.assert_array_equal(got.acc, ref.acc)


def test_auto_backend_reports_its_choice(trained_cnn, digits_small):
    dirs = create_directions(trained_cnn, DirectionSpec(), ndim=1)
    grid = GridSpec.parse("-1:1:4")
    surf = compute_surface(trained_cnn, digits_small, grid, directions=dirs,
                           eval_spec=EvalSpec(backend="auto", points_per_call=2, batch_size=50, auto_budget=1e6))
    choice = surf.attrs["last_run"]["backend_choice"]
    assert "fastest when timed" in choice and "timing cost" in choice
    for label in ("torch/loop", "torch/vmap", "onnxruntime/wide", "onnxruntime/baked"):
        assert f"{label} " in choice and "ms/point" in choice.split(label)[1][:15]
    ref = compute_surface(trained_cnn, digits_small, grid, directions=dirs, eval_spec=EvalSpec(strategy="loop"))
    np.testing.assert_allclose(surf.loss, ref.loss, rtol=1e-4)


def test_auto_skips_backends_that_cannot_run(trained_cnn, digits_small):
    scripted = torch.jit.script(trained_cnn)
    dirs = create_directions(trained_cnn, DirectionSpec(), ndim=1)
    surf = compute_surface(scripted, digits_small, GridSpec.parse("-1:1:4"), directions=dirs,
                           eval_spec=EvalSpec(backend="auto", points_per_call=2, auto_budget=1e6))
    run = surf.attrs["last_run"]
    assert run["backend"] == "torch" and "onnxruntime/wide unavailable" in run["backend_choice"]


def test_auto_keeps_the_default_on_a_job_too_small_to_time(trained_cnn, digits_small):
    surf = compute_surface(trained_cnn, digits_small, GridSpec.parse("-1:1:4"),
                           eval_spec=EvalSpec(backend="auto", points_per_call=2))
    run = surf.attrs["last_run"]
    assert run["backend"] == "torch" and run["strategy"] == "loop" and run["calibration_seconds"] == 0
    assert "too small to repay timing" in run["backend_choice"]


def test_auto_releases_the_candidates_it_did_not_choose(trained_cnn, digits_small):
    import gc

    from lossgrid.engine.losses import cross_entropy
    from lossgrid.engine.params import ParamLayout
    from lossgrid.engine.runners import make_runner

    built = []
    layout = ParamLayout.from_model(trained_cnn)
    runner = make_runner(EvalSpec(backend="auto", points_per_call=2, auto_budget=1e6), trained_cnn, layout,
                         digits_small, cross_entropy)
    runner.candidates = [(label, lambda f=factory: _track(f(), built)) for label, factory in runner.candidates]
    base = layout.flatten(dict(trained_cnn.named_parameters()))
    runner.evaluate(base[None].repeat(2, 1))
    gc.collect()
    alive = [r() for r in built if r() is not None]
    assert len(built) == len(runner.candidates) and alive == [runner.chosen]
    assert "onnxruntime" not in runner.chosen.name or runner.chosen.describe()["strategy"] in runner.reason


def _track(obj, refs):
    import weakref

    refs.append(weakref.ref(obj))
    return obj


def test_strategy_must_belong_to_backend(trained_cnn, digits_small):
    with pytest.raises(ConfigError, match="does not belong"):
        compute_surface(trained_cnn, digits_small, GridSpec.parse("-1:1:2"),
                        eval_spec=EvalSpec(backend="onnxruntime", strategy="vmap"))
    with pytest.raises(ConfigError, match="Unknown backend"):
        compute_surface(trained_cnn, digits_small, GridSpec.parse("-1:1:2"), eval_spec=EvalSpec(backend="tvm"))


def test_cuda_provider_missing_is_a_typed_error():
    import onnxruntime as ort

    from lossgrid.exporters.onnx import export_onnx
    from lossgrid.exporters.session import make_session
    from lossgrid.zoo import mlp_digits

    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        pytest.skip("a CUDA provider and GPU exist here; covered by the gpu-marked test")
    result = export_onnx(mlp_digits(), torch.randn(2, 1, 8, 8), k=1, check=False)
    with pytest.raises(MissingBackendError) as e:
        make_session(result.model_bytes, "cuda")
    assert 'lossgrid[gpu]' in str(e.value) or "fell back" in str(e.value)


@pytest.mark.gpu
@pytest.mark.ort_cuda
def test_cuda_provider_runs_on_gpu():
    from lossgrid.exporters.onnx import export_onnx
    from lossgrid.exporters.session import make_session
    from lossgrid.zoo import mlp_digits

    result = export_onnx(mlp_digits(), torch.randn(2, 1, 8, 8), k=1, check=False)
    session = make_session(result.model_bytes, "cuda")
    assert session.get_providers()[0] == "CUDAExecutionProvider"


# -- IOBinding (the wide strategy on every device) ---------------------------------------------
def _per_point_reference(model, layout, weights, data):
    """Plain PyTorch, one weight set at a time: mean cross-entropy and accuracy in percent."""
    from torch.func import functional_call

    loss, acc = [], []
    with torch.no_grad():
        for w in weights:
            out = functional_call(model, layout.unflatten(w), (data.x,))
            loss.append(float(torch.nn.functional.cross_entropy(out, data.y)))
            acc.append(100.0 * float((out.argmax(1) == data.y).double().mean()))
    return np.array(loss), np.array(acc)


def _cnn_and_mlp(trained_cnn):
    from lossgrid.zoo import mlp_digits

    torch.manual_seed(0)
    return {"cnn": trained_cnn, "mlp": mlp_digits().eval()}


def _runner_case(model, data, k=6, seed=3):
    from lossgrid.engine.params import ParamLayout

    layout = ParamLayout.from_model(model)
    base = layout.flatten(dict(model.named_parameters()))
    gen = torch.Generator().manual_seed(seed)
    weights = base[None] + 0.05 * base.abs().mean() * torch.randn(k, base.numel(), generator=gen)
    return layout, weights


@pytest.mark.parametrize("which", ["cnn", "mlp"])
def test_wide_iobinding_matches_the_per_point_reference(trained_cnn, digits_small, which):
    from lossgrid.engine.losses import cross_entropy
    from lossgrid.engine.runners.onnxruntime_runner import OnnxRuntimeRunner

    model = _cnn_and_mlp(trained_cnn)[which]
    layout, weights = _runner_case(model, digits_small)
    # 150 samples in batches of 64: a partial last batch; 6 points with K=4: a padded last call
    with OnnxRuntimeRunner(model, layout, digits_small.x, digits_small.y, cross_entropy, batch_size=64,
                           strategy="wide", points_per_call=4) as runner:
        loss, acc, _ = runner.evaluate(weights)
        info = runner.describe()
    ref_loss, ref_acc = _per_point_reference(model, layout, weights, digits_small)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(acc, ref_acc, atol=100.0 / len(digits_small) + 1e-9)  # at most one top-2 tie
    assert info["io_binding"] is True and info["execution"] == "no CUDA graph (CPU)"


def test_fixed_buffers_with_a_padded_last_batch(trained_cnn, digits_small):
    """The CUDA-graph binding scheme (fixed data/weight/output buffers bound once, the
    last batch padded to the full size) run on the CPU: the copying and padding logic,
    not CUDA graphs themselves (those need a GPU with onnxruntime-gpu)."""
    from lossgrid.engine.losses import cross_entropy
    from lossgrid.engine.runners.onnxruntime_runner import OnnxRuntimeRunner

    layout, weights = _runner_case(trained_cnn, digits_small, k=5)
    runner = OnnxRuntimeRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy, batch_size=64,
                               strategy="wide", points_per_call=2)
    runner.cuda_graph = True
    runner._bind_wide()
    runner.batches = runner._place_batches(digits_small.x, digits_small.y)
    assert [b[0][0].shape[0] for b in runner.batches] == [64, 64, 64]
    assert [b[0][1] for b in runner.batches] == [64, 64, 22]
    loss, acc, _ = runner.evaluate(weights)
    again = runner.evaluate(weights[:1])  # stale buffers from the previous call must not leak into this one
    ref_loss, ref_acc = _per_point_reference(trained_cnn, layout, weights, digits_small)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(again[0], ref_loss[:1], rtol=1e-5)
    np.testing.assert_allclose(acc, ref_acc, atol=100.0 / len(digits_small) + 1e-9)


def test_an_onnxruntime_failure_at_run_time_is_an_evaluation_error(trained_cnn, digits_small):
    """ONNX Runtime's exceptions derive from Exception only: the runner's guard names them too."""
    from lossgrid.engine.losses import cross_entropy
    from lossgrid.engine.runners.onnxruntime_runner import OnnxRuntimeRunner
    from lossgrid.errors import EvaluationError

    layout, weights = _runner_case(trained_cnn, digits_small, k=2)
    # the baked strategy calls session.run, which raises ONNX Runtime's own InvalidArgument here
    with OnnxRuntimeRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy, batch_size=64,
                           strategy="baked") as runner:
        runner.batches = [(torch.zeros(4, 1, 7, 7), digits_small.y[:4])]  # a batch the graph cannot take
        with pytest.raises(EvaluationError, match="ONNX Runtime failed") as e:
            runner.evaluate(weights)
    cause = e.value.__cause__
    assert not isinstance(cause, RuntimeError) and type(cause).__module__.startswith("onnxruntime")
    assert type(cause).__name__ in str(e.value)  # the message names ONNX Runtime's own error


def test_baked_is_refused_on_cuda(trained_cnn, digits_small):
    from lossgrid.engine.losses import cross_entropy
    from lossgrid.engine.params import ParamLayout
    from lossgrid.engine.runners.onnxruntime_runner import OnnxRuntimeRunner

    layout = ParamLayout.from_model(trained_cnn)
    with pytest.raises(ConfigError, match="baked cannot run on a GPU") as e:
        OnnxRuntimeRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy, strategy="baked",
                          device="cuda")
    assert "--strategy wide" in str(e.value)


@pytest.mark.gpu
@pytest.mark.ort_cuda
def test_wide_on_cuda_matches_the_torch_runner(trained_cnn, digits_small):
    """Needs onnxruntime-gpu as well as a GPU (without it: MissingBackendError, as above)."""
    from lossgrid.engine.losses import cross_entropy
    from lossgrid.engine.runners.onnxruntime_runner import OnnxRuntimeRunner

    layout, weights = _runner_case(trained_cnn, digits_small)
    with OnnxRuntimeRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy, batch_size=64,
                           strategy="auto", points_per_call=4, device="cuda") as runner:
        loss, _, _ = runner.evaluate(weights.cuda())
        again, _, _ = runner.evaluate(weights.flip(0).cuda())  # new weights through the same (captured) buffers
        info = runner.describe()
    ref_loss, _ = _per_point_reference(trained_cnn, layout, weights, digits_small)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)  # also fails if the CUDA provider ran TF32
    np.testing.assert_allclose(again, ref_loss[::-1], rtol=1e-5)
    assert info["strategy"] == "wide" and info["io_binding"] is True
    assert info["execution"] == "CUDA graph" or info["execution"].startswith("no CUDA graph: ONNX Runtime refused")
