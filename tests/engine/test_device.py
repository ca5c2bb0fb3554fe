"""Devices: a caller's model is never moved, and the device rules.

``on_device`` is checked on the CPU with torch's ``meta`` device as the target (tensors
there have shapes but no storage, so a move is visible without a GPU); the ``gpu`` twin
checks ``compute_surface`` on CUDA with a shared fixture.
"""

import numpy as np
import pytest
import torch
from torch import nn

from lossgrid.config import DirectionSpec, EvalSpec, GridSpec
from lossgrid.engine.device import on_device, resolve_device, same_device
from lossgrid.surface.compute import compute_surface
from lossgrid.surface.directions import create_directions
from tests.conftest import small_cnn


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight
        self.norm = nn.BatchNorm1d(3)


def test_a_model_on_the_device_is_used_as_it_is():
    model = small_cnn()
    assert on_device(model, torch.device("cpu")) is model


def test_a_model_elsewhere_is_copied_and_the_original_never_moves():
    model = Tied()
    model.head.weight.requires_grad_(False)
    before = {n: (t.device, t.data_ptr()) for n, t in model.state_dict(keep_vars=True).items()}
    moved = on_device(model, torch.device("meta"))
    assert moved is not model
    assert all(t.device.type == "meta" for t in [*moved.parameters(), *moved.buffers()])
    assert {n: (t.device, t.data_ptr()) for n, t in model.state_dict(keep_vars=True).items()} == before
    assert moved.head.weight is moved.embed.weight  # tied tensors stay tied in the copy
    assert isinstance(moved.head.weight, nn.Parameter) and not moved.head.weight.requires_grad
    assert isinstance(moved.norm.running_mean, torch.Tensor) and "running_mean" in moved.norm._buffers


def test_same_device_reads_cpu_and_meta():
    assert same_device(torch.device("cpu"), torch.device("cpu"))
    assert not same_device(torch.device("cpu"), torch.device("meta"))


def test_compute_surface_leaves_the_callers_model_untouched(monkeypatch, trained_cnn, digits_small):
    state = {n: t.clone() for n, t in trained_cnn.state_dict().items()}
    tensors = {n: t for n, t in trained_cnn.state_dict(keep_vars=True).items()}
    moved = []
    original_apply = nn.Module._apply

    def spy(module, fn, *args, **kwargs):  # every .to/.cuda/.half of a module goes through _apply
        if any(module is m for m in trained_cnn.modules()):
            moved.append(type(module).__name__)
        return original_apply(module, fn, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "_apply", spy)
    trained_cnn.train()  # a mode the surface must not change either
    try:
        compute_surface(trained_cnn, digits_small, GridSpec.parse("-1:1:3"), eval_spec=EvalSpec(strategy="static"))
        assert trained_cnn.training and all(m.training for m in trained_cnn.modules())
    finally:
        trained_cnn.eval()
    assert moved == []
    now = trained_cnn.state_dict(keep_vars=True)
    assert all(now[n] is t for n, t in tensors.items())
    assert all(torch.equal(now[n], t) for n, t in state.items())


def test_unknown_devices_are_refused():
    from lossgrid.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot evaluate"):
        resolve_device("meta")


@pytest.mark.gpu
def test_compute_surface_on_cuda_leaves_the_shared_fixture_on_the_cpu(trained_cnn, digits_small):
    dirs = create_directions(trained_cnn, DirectionSpec(seed=1), 1)
    grid = GridSpec.parse("-1:1:3")
    gpu = compute_surface(trained_cnn, digits_small, grid, directions=dirs, eval_spec=EvalSpec(device="cuda"))
    assert all(t.device.type == "cpu" for t in trained_cnn.state_dict().values())
    cpu = compute_surface(trained_cnn, digits_small, grid, directions=dirs, eval_spec=EvalSpec(strategy="loop"))
    np.testing.assert_allclose(gpu.loss, cpu.loss, rtol=1e-5)


@pytest.mark.gpu
def test_a_seed_draws_the_same_directions_on_cuda_as_on_the_cpu(trained_cnn):
    spec = DirectionSpec(seed=7)
    cpu = create_directions(trained_cnn, spec, 2)
    cuda = create_directions(on_device(trained_cnn, resolve_device("cuda")), spec, 2)
    assert cuda.flat().device.type == "cuda"
    assert torch.equal(cuda.flat().cpu(), cpu.flat())  # bit for bit
    assert cuda.fingerprint() == cpu.fingerprint()
