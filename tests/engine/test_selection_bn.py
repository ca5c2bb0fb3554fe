"""``--params``/``--exclude``/``--trainable-only`` (perturb only some tensors) and the
BatchNorm policy (``--bn recompute`` equals a hand-written per-point recalibration)."""

from __future__ import annotations

import copy
import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from lossgrid import Axis, GridSpec, compute_surface
from lossgrid.config import BatchNormSpec, DirectionSpec, EvalSpec
from lossgrid.data import EvalData
from lossgrid.engine.directions import save_directions
from lossgrid.errors import ConfigError, DirectionError
from lossgrid.surface.directions import create_directions
from lossgrid.zoo import resnet_digits


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def data(n: int = 48) -> EvalData:
    g = torch.Generator().manual_seed(1)
    return EvalData(torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g), "random")


# -- selection -----------------------------------------------------------------------------------
def test_params_keep_the_full_directions_on_the_selected_tensors_only() -> None:
    model = resnet_digits()
    full = create_directions(model, DirectionSpec(seed=3), ndim=2)
    part = create_directions(model, DirectionSpec(seed=3, params="fc.*,layers.2.*"), ndim=2)
    assert part.meta["params"] == "fc.*,layers.2.*"
    for name, a, b, c, d in zip(full.layout.names, full.x, part.x, full.y, part.y):
        if name.startswith(("fc.", "layers.2.")):
            assert torch.equal(a, b) and torch.equal(c, d)
        else:
            assert not b.any() and not d.any(), name
    assert any(t.any() for t in part.x)


def test_exclude_and_trainable_only() -> None:
    model = resnet_digits()
    model.conv1.weight.requires_grad_(False)
    dirs = create_directions(model, DirectionSpec(exclude="fc.*", trainable_only=True), ndim=1)
    moved = {n for n, t in zip(dirs.layout.names, dirs.x) if t.any()}
    assert "fc.weight" not in moved and "conv1.weight" not in moved
    assert "layers.0.conv1.weight" in moved
    assert dirs.meta["trainable_only"] is True


def test_a_selection_matching_nothing_names_the_tensors() -> None:
    with pytest.raises(ConfigError, match="--params 'nothing.\\*' matches no tensor") as e:
        create_directions(resnet_digits(), DirectionSpec(params="nothing.*"), ndim=1)
    assert "conv1.weight" in e.value.why
    with pytest.raises(ConfigError, match="No tensor .* left to perturb"):
        create_directions(resnet_digits(), DirectionSpec(params="fc.*", exclude="fc.*"), ndim=1)


def test_surface_on_one_block_equals_moving_that_block_by_hand(tmp_path) -> None:
    model, d = small_cnn(), data()
    grid = GridSpec(Axis(-1, 1, 3))
    surf = compute_surface(model, d, grid, tmp_path / "s.h5", direction_spec=DirectionSpec(params="3.*"),
                           eval_spec=EvalSpec(strategy="loop"))
    dirs = create_directions(model, DirectionSpec(), ndim=1)
    step = dict(zip(dirs.layout.names, dirs.x))["3.weight"]
    for c, got in zip((-1.0, 0.0, 1.0), surf.loss):
        m = copy.deepcopy(model).eval()
        with torch.no_grad():
            m[3].weight.add_(c * step)
            want = float(F.cross_entropy(m(d.x), d.y))
        assert got == pytest.approx(want, rel=1e-5)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert json.loads(f.attrs["identity"])["params"] == "3.*"


def test_a_direction_file_of_another_selection_is_refused(tmp_path) -> None:
    model = small_cnn()
    save_directions(tmp_path / "d.h5", create_directions(model, DirectionSpec(), ndim=1))
    with pytest.raises(DirectionError, match="another selection"):
        compute_surface(model, data(), GridSpec(Axis(-1, 1, 3)), tmp_path / "s.h5", dir_file=tmp_path / "d.h5",
                        direction_spec=DirectionSpec(params="3.*"))


def test_hessian_directions_live_on_the_selected_parameters() -> None:
    model, d = small_cnn(), data(16)
    dirs = create_directions(model, DirectionSpec(kind="hessian", params="8.*", xnorm="none"), ndim=1, data=d)
    moved = {n for n, t in zip(dirs.layout.names, dirs.x) if t.any()}
    assert moved == {"8.weight"}  # 8.bias is 1-D: zeroed by biasbn


# -- BatchNorm policy ----------------------------------------------------------------------------
def hand_recalibrated(model: nn.Module, d: EvalData, dirs, coeffs, spec: BatchNormSpec) -> np.ndarray:
    """torch's own update_bn at every point on the same seeded batches, then an eval pass."""
    order = torch.randperm(len(d), generator=torch.Generator().manual_seed(spec.seed))
    order = order[:spec.batches * spec.batch_size]
    loader = [d.x[order[i:i + spec.batch_size]] for i in range(0, len(order), spec.batch_size)]
    out = []
    for c in coeffs:
        m = copy.deepcopy(model)
        params = dict(m.named_parameters())
        with torch.no_grad():
            for name, t in zip(dirs.layout.names, dirs.x):
                params[name].add_(float(c) * t)
        update_bn(loader, m)  # resets, momentum None, train mode, forwards (no dropout in this model)
        m.eval()
        with torch.no_grad():
            out.append(float(F.cross_entropy(m(d.x), d.y)))
    return np.array(out)


@pytest.mark.parametrize("strategy", ["loop", "static"])
def test_bn_recompute_equals_a_hand_written_per_point_recalibration(strategy: str) -> None:
    model, d = small_cnn(), data()
    model.train()
    with torch.no_grad():  # stored statistics far from those of the data
        for _ in range(3):
            model(d.x * 3 + 1)
    model.eval()
    spec = BatchNormSpec("recompute", batches=2, batch_size=16, seed=4)
    dirs = create_directions(model, DirectionSpec(seed=2), ndim=1)
    coeffs = np.linspace(-1, 1, 5)
    surf = compute_surface(model, d, GridSpec(Axis(-1, 1, 5)), directions=dirs, batchnorm=spec,
                           eval_spec=EvalSpec(strategy=strategy, points_per_call=2))
    want = hand_recalibrated(model, d, dirs, coeffs, spec)
    np.testing.assert_allclose(surf.loss, want, rtol=1e-5)
    stale = compute_surface(model, d, GridSpec(Axis(-1, 1, 5)), directions=dirs, eval_spec=EvalSpec(strategy="loop"))
    assert np.abs(stale.loss - want).max() > 1e-2  # the policy matters on this model
    assert surf.attrs["last_run"]["bn"] == "recompute"


def test_recalibration_is_fp32_inside_a_reduced_precision_region() -> None:
    """Statistics are estimated in IEEE fp32 whatever precision encloses them (every runner calls
    recalibrate inside its own precision's region: autocast here, TF32 tensor cores on a GPU)."""
    from lossgrid.engine.batchnorm import recalibrate

    model, d = small_cnn(), data()
    batches = [d.x[:24], d.x[24:]]
    plain, reduced = copy.deepcopy(model), copy.deepcopy(model)
    recalibrate(plain, batches)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recalibrate(reduced, batches)
        assert torch.is_autocast_enabled("cpu")  # the enclosing region is restored after
    for a, b in zip(plain.modules(), reduced.modules()):
        if isinstance(a, nn.BatchNorm2d):
            assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
    bf16 = copy.deepcopy(model)  # the same forwards in bf16 give other statistics: the test can tell
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        bf16.train()
        for m in bf16.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        for xb in batches:
            bf16(xb)
    assert not torch.equal(bf16[4].running_var, plain[4].running_var)


@pytest.mark.parametrize("backend,strategy", [("torch", "vmap"), ("torch", "wide"), ("onnxruntime", "baked")])
def test_bn_recompute_refused_by_strategies_that_cannot(backend: str, strategy: str) -> None:
    spec = BatchNormSpec("recompute", batches=1, batch_size=8)
    with pytest.raises(ConfigError, match="cannot re-estimate BatchNorm") as e:
        compute_surface(small_cnn(), data(), GridSpec(Axis(-1, 1, 3)), batchnorm=spec,
                        eval_spec=EvalSpec(backend=backend, strategy=strategy))
    assert "torch/loop" in e.value.hint


def test_bn_recompute_with_auto_keeps_a_strategy_that_can(tmp_path) -> None:
    spec = BatchNormSpec("recompute", batches=1, batch_size=8)
    surf = compute_surface(small_cnn(), data(), GridSpec(Axis(-1, 1, 3)), tmp_path / "s.h5", batchnorm=spec,
                           eval_spec=EvalSpec(backend="auto", auto_budget=1000.0))
    assert surf.attrs["last_run"]["strategy"] in ("loop", "static")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["bn"] == "recompute"
        assert json.loads(f.attrs["identity"])["bn"]["batches"] == 1


def test_bn_recompute_refusals() -> None:
    spec = BatchNormSpec("recompute")
    no_bn = nn.Sequential(nn.Flatten(), nn.Linear(36, 4))
    with pytest.raises(ConfigError, match="no BatchNorm"):
        compute_surface(no_bn, data(), GridSpec(Axis(-1, 1, 3)), batchnorm=spec)
    with pytest.raises(ConfigError, match="states"):
        compute_surface(small_cnn(), data(), GridSpec(Axis(-1, 1, 3)), batchnorm=spec,
                        direction_spec=DirectionSpec(dir_type="states"))
    with pytest.raises(ConfigError, match="policy"):
        BatchNormSpec("train")


# -- edge cases ------------------------------------------------------------------------------------
def test_globs_that_match_nothing_are_refused_and_tied_names_count() -> None:
    with pytest.raises(ConfigError, match="--exclude 'fcc.\\*' matches no tensor"):
        create_directions(resnet_digits(), DirectionSpec(exclude="fcc.*"), ndim=1)

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(7, 4)
            self.mix = nn.Linear(4, 4)
            self.head = nn.Linear(4, 7, bias=False)
            self.head.weight = self.embed.weight  # tied, as language models do

    dirs = create_directions(Tied(), DirectionSpec(exclude="head.*"), ndim=1)  # the alias names the tied tensor
    moved = {n for n, t in zip(dirs.layout.names, dirs.x) if t.any()}
    assert moved == {"mix.weight"}


def test_a_selection_of_biases_only_would_be_flat_and_is_refused() -> None:
    with pytest.raises(DirectionError, match="zero directions"):
        create_directions(small_cnn(), DirectionSpec(params="*.bias"), ndim=1)
    create_directions(small_cnn(), DirectionSpec(params="*.bias", xignore="none"), ndim=1)


def test_equivalent_selections_share_a_direction_file(tmp_path) -> None:
    model = small_cnn()
    save_directions(tmp_path / "d.h5", create_directions(model, DirectionSpec(params="8.*"), ndim=1))
    compute_surface(model, data(), GridSpec(Axis(-1, 1, 3)), dir_file=tmp_path / "d.h5",
                    direction_spec=DirectionSpec(params="8.weight,8.bias"))


def test_stored_hessian_directions_are_not_reused_for_another_selection(tmp_path) -> None:
    model, d = small_cnn(), data(16)
    grid = GridSpec(Axis(-1, 1, 3))
    a = compute_surface(model, d, grid, tmp_path / "s.h5", direction_spec=DirectionSpec(kind="hessian", params="8.*"))
    b = compute_surface(model, d, grid, tmp_path / "s.h5", overwrite=True,
                        direction_spec=DirectionSpec(kind="hessian", params="3.*"))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert json.loads(f.attrs["identity"])["params"] == "3.*"
    assert not np.allclose(a.loss, b.loss)


def test_bn_recompute_takes_a_last_batch_of_one_sample() -> None:
    spec = BatchNormSpec("recompute", batches=3, batch_size=8, seed=0)
    surf = compute_surface(small_cnn(), data(17), GridSpec(Axis(-1, 1, 3)), batchnorm=spec,
                           eval_spec=EvalSpec(strategy="loop"))
    assert np.isfinite(surf.loss).all()


def test_bn_recompute_identity_follows_the_data_not_its_spelling(tmp_path) -> None:
    spec = BatchNormSpec("recompute", batches=1, batch_size=8)
    model, grid = small_cnn(), GridSpec(Axis(-1, 1, 3))
    compute_surface(model, data(), grid, tmp_path / "s.h5", batchnorm=spec, bn_data=data(32))
    renamed = EvalData(data(32).x, data(32).y, "spelled another way")
    again = compute_surface(model, data(), grid, tmp_path / "s.h5", batchnorm=spec, bn_data=renamed)
    assert again.attrs["last_run"]["points"] == 0  # resumed: nothing to do


@pytest.mark.cpu_bf16
def test_bn_recompute_is_the_same_in_loop_and_static_under_bf16() -> None:
    spec = BatchNormSpec("recompute", batches=2, batch_size=16)
    results = [compute_surface(small_cnn(), data(), GridSpec(Axis(-1, 1, 3)), batchnorm=spec,
                               eval_spec=EvalSpec(strategy=s, precision="bf16")).loss for s in ("loop", "static")]
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)


def test_a_selection_cannot_cut_an_interpolation() -> None:
    with pytest.raises(DirectionError, match="interpolation"):
        create_directions(small_cnn(), DirectionSpec(params="8.*"), ndim=1, model2=small_cnn())
