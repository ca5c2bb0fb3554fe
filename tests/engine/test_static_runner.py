"""The ``static`` torch runner (weights as views of one flat buffer, written in place).

Checked on the CPU against the plain per-point PyTorch loop: loss within 1e-5
relative, accuracy equal. The CUDA-graph path has twin tests marked ``gpu``.
"""

import numpy as np
import pytest
import torch
from torch import nn

from lossgrid.config import DirectionSpec, EvalSpec, GridSpec
from lossgrid.engine.losses import cross_entropy, mse
from lossgrid.engine.params import ParamLayout, perturbed_tensors
from lossgrid.engine.reference import evaluate_points_reference
from lossgrid.engine.runners import StaticRunner, make_runner
from lossgrid.errors import ConfigError
from lossgrid.kernels import perturb
from lossgrid.surface.compute import compute_surface
from lossgrid.surface.directions import create_directions

RTOL = 1e-5
COEFFS = torch.tensor([[0.0, 0.0], [0.4, -0.3], [-0.8, 0.6], [1.0, 1.0]])


def _setup(model, dir_type="weights"):
    dirs = create_directions(model, DirectionSpec(dir_type=dir_type, seed=3), 2)
    base = dirs.layout.flatten(perturbed_tensors(model, dir_type))
    return dirs.layout, base, dirs.flat()


@pytest.mark.parametrize("dir_type", ["weights", "states"])
def test_points_match_the_per_point_reference(trained_cnn, digits_small, dir_type):
    layout, base, dirs = _setup(trained_cnn, dir_type)
    runner = StaticRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy, batch_size=64)
    runner.set_directions(base, dirs)
    loss, acc, _ = runner.evaluate_points(COEFFS)
    ref, ref_acc = evaluate_points_reference(trained_cnn, layout, perturb(base, dirs, COEFFS), digits_small.x,
                                             digits_small.y)
    np.testing.assert_allclose(loss, ref, rtol=RTOL)
    np.testing.assert_array_equal(acc, ref_acc)
    assert np.ptp(ref) > 0.1  # the points differ: the check is not vacuous
    # ready-made weights (the auto runner's timing path) give the same
    again, _, _ = runner.evaluate(perturb(base, dirs, COEFFS))
    np.testing.assert_allclose(again, loss, rtol=1e-6)


def test_conv_weights_are_channels_last_views_of_one_buffer(trained_cnn, digits_small):
    layout, base, dirs = _setup(trained_cnn)
    runner = StaticRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy)
    conv = runner.model.conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert conv.untyped_storage().data_ptr() == runner.flat.untyped_storage().data_ptr()
    assert runner.perm is not None and sorted(runner.perm.tolist()) == list(range(layout.size))
    runner.set_directions(base, dirs)
    runner.evaluate_points(COEFFS[1:2])
    # the buffer now holds that point's weights, in place, seen through the model's tensors
    want = layout.unflatten(perturb(base, dirs, COEFFS[1:2])[0])
    for name, tensor in perturbed_tensors(runner.model, "weights").items():
        torch.testing.assert_close(tensor, want[name], rtol=0, atol=1e-6)


def test_the_callers_model_is_not_modified(trained_cnn, digits_small):
    before = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    layout, base, dirs = _setup(trained_cnn, "states")
    runner = StaticRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy)
    runner.set_directions(base, dirs)
    runner.evaluate_points(COEFFS)
    for k, v in trained_cnn.state_dict().items():
        assert torch.equal(v, before[k]), k


class Tied(nn.Module):
    """An encoder and decoder sharing one weight matrix, plus a 0-D scale."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(64, 16)
        self.dec = nn.Linear(16, 64)
        self.dec.weight = nn.Parameter(self.enc.weight.t().contiguous())
        self.enc2 = nn.Linear(64, 16, bias=False)
        self.enc2.weight = self.enc.weight  # tied
        self.scale = nn.Parameter(torch.tensor(0.7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.dec(torch.tanh(self.enc(x) + self.enc2(x))) * self.scale


def test_tied_weights_and_mse_without_labels(digits_small):
    torch.manual_seed(0)
    model = Tied()
    x, y = digits_small.x, digits_small.x.flatten(1)
    layout, base, dirs = _setup(model)
    assert len(layout.names) == len(list(model.parameters()))  # the tied weight appears once
    runner = StaticRunner(model, layout, x, y, mse, batch_size=40)
    runner.set_directions(base, dirs)
    loss, acc, _ = runner.evaluate_points(COEFFS)
    assert runner.model.enc2.weight is runner.model.enc.weight
    ref, _ = evaluate_points_reference(model, layout, perturb(base, dirs, COEFFS), x, y, loss_fn=mse)
    np.testing.assert_allclose(loss, ref, rtol=RTOL)
    assert np.isnan(acc).all()


@pytest.mark.cpu_bf16
def test_bf16_is_close_to_fp32_and_tf32_is_refused_on_the_cpu(trained_cnn, digits_small):
    layout, base, dirs = _setup(trained_cnn)
    results = {}
    for precision in ("fp32", "bf16"):
        runner = StaticRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy, precision=precision)
        runner.set_directions(base, dirs)
        results[precision] = runner.evaluate_points(COEFFS)[0]
        assert runner.describe()["precision"] == precision
    np.testing.assert_allclose(results["bf16"], results["fp32"], rtol=5e-2)
    assert not np.array_equal(results["bf16"], results["fp32"])  # bf16 did run in bf16
    with pytest.raises(ConfigError, match="tf32"):
        StaticRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy, precision="tf32")


def test_torchscript_and_graphs_on_cpu_are_refused(trained_cnn, digits_small):
    layout = ParamLayout.from_model(trained_cnn)
    with pytest.raises(ConfigError, match="TorchScript"):
        StaticRunner(torch.jit.script(trained_cnn), layout, digits_small.x, digits_small.y, cross_entropy)
    with pytest.raises(ConfigError, match="CUDA graphs need a CUDA device"):
        StaticRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy, cuda_graphs=True)


def test_auto_considers_the_static_strategy(trained_cnn, digits_small):
    dirs = create_directions(trained_cnn, DirectionSpec(seed=1), 2)
    runner = make_runner(EvalSpec(strategy="auto", auto_budget=1e6, points_per_call=2), trained_cnn, dirs.layout,
                         digits_small, cross_entropy)
    runner.expect(1000)
    base = dirs.layout.flatten(perturbed_tensors(trained_cnn, "weights"))
    runner.set_directions(base, dirs.flat())
    loss, _, _ = runner.evaluate_points(COEFFS[:2])
    assert "torch/static" in runner.reason
    ref, _ = evaluate_points_reference(trained_cnn, dirs.layout, perturb(base, dirs.flat(), COEFFS[:2]),
                                       digits_small.x, digits_small.y)
    np.testing.assert_allclose(loss, ref, rtol=RTOL)
    # after the choice, points go to the chosen runner through the same call
    np.testing.assert_allclose(runner.evaluate_points(COEFFS[:2])[0], ref, rtol=RTOL)


# -- GPU twins (skipped without CUDA; conftest decides) -------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dir_type", ["weights", "states"])
def test_cuda_graph_replay_matches_the_cpu_reference(monkeypatch, trained_cnn, digits_small, dir_type):
    replays = []
    replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda graph: (replays.append(graph), replay(graph))[1])
    layout, base, dirs = _setup(trained_cnn, dir_type)
    runner = StaticRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy, batch_size=64,
                          device="cuda")
    runner.set_directions(base, dirs)
    loss, acc, _ = runner.evaluate_points(COEFFS)
    assert runner.describe()["execution"] == "CUDA graphs"
    assert len(replays) == len(COEFFS) and len(runner._graphs) == 1  # captured once, replayed per point
    ref, ref_acc = evaluate_points_reference(trained_cnn, layout, perturb(base, dirs, COEFFS), digits_small.x,
                                             digits_small.y)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    np.testing.assert_array_equal(acc, ref_acc)
    again, _, _ = runner.evaluate_points(COEFFS.flip(0))  # replays with new weights, not stale results
    np.testing.assert_allclose(again, ref[::-1], rtol=1e-5)
    assert len(replays) == 2 * len(COEFFS)


def _wide_mlp():
    """Wide enough that cuBLAS takes tensor-core kernels: reduced precisions must show in the losses."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
    gen = torch.Generator().manual_seed(1)
    return model, torch.randn(1024, 256, generator=gen), torch.randint(0, 10, (1024,), generator=gen)


#: stated error of each precision against the CPU's IEEE fp32 (relative, on the loss)
PRECISION_RTOL = {"fp32": 1e-5, "tf32": 5e-3, "bf16": 5e-2, "fp16": 1e-2}


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
def test_reduced_precisions_on_cuda_take_effect_stay_close_and_restore_settings(precision):
    model, x, y = _wide_mlp()
    layout, base, dirs = _setup(model)
    conv_before, matmul_before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    losses = {}
    for p in ("fp32", precision):
        runner = StaticRunner(model, layout, x, y, cross_entropy, device="cuda", precision=p)
        runner.set_directions(base, dirs)
        losses[p] = runner.evaluate_points(COEFFS)[0]
        assert runner.describe()["precision"] == p
        runner.close()
    ref, _ = evaluate_points_reference(model, layout, perturb(base, dirs, COEFFS), x, y)
    np.testing.assert_allclose(losses["fp32"], ref, rtol=PRECISION_RTOL["fp32"])  # fp32 on a GPU is IEEE
    np.testing.assert_allclose(losses[precision], ref, rtol=PRECISION_RTOL[precision])
    moved = np.max(np.abs(losses[precision] - losses["fp32"]) / np.abs(losses["fp32"]))
    assert moved > 1e-6, f"{precision} gave the fp32 losses: the precision did not take effect"
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (conv_before, matmul_before)


@pytest.mark.gpu
def test_surface_on_cuda_equals_the_cpu_surface(trained_cnn, digits_small):
    grid = GridSpec.parse("-1:1:3", "-1:1:3")
    dirs = create_directions(trained_cnn, DirectionSpec(seed=1), 2)
    cpu = compute_surface(trained_cnn, digits_small, grid, directions=dirs, eval_spec=EvalSpec(strategy="loop"))
    gpu = compute_surface(trained_cnn, digits_small, grid, directions=dirs,
                          eval_spec=EvalSpec(strategy="static", device="cuda"))
    np.testing.assert_allclose(gpu.loss, cpu.loss, rtol=1e-5)
    assert all(t.device.type == "cpu" for t in trained_cnn.state_dict().values())


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["static", "loop"])
def test_bn_recompute_on_cuda_matches_the_cpu(strategy):
    """Statistics re-estimated per point on the GPU in IEEE fp32 (not TF32) equal the CPU's."""
    from lossgrid.config import BatchNormSpec
    from lossgrid.zoo import resnet_digits

    torch.manual_seed(0)
    model = resnet_digits().eval()
    gen = torch.Generator().manual_seed(2)
    data = (torch.rand(256, 1, 8, 8, generator=gen), torch.randint(0, 10, (256,), generator=gen))
    grid = GridSpec.parse("-1:1:5")
    dirs = create_directions(model, DirectionSpec(seed=3), 1)
    spec = BatchNormSpec("recompute", batches=2, batch_size=64, seed=1)
    cpu = compute_surface(model, data, grid, directions=dirs, batchnorm=spec, eval_spec=EvalSpec(strategy="loop"))
    gpu = compute_surface(model, data, grid, directions=dirs, batchnorm=spec,
                          eval_spec=EvalSpec(strategy=strategy, device="cuda"))
    np.testing.assert_allclose(gpu.loss, cpu.loss, rtol=1e-5)
