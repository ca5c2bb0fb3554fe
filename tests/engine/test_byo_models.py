"""Models users bring: several or named inputs, outputs that are not a tensor, token-level
language-model losses, regression; every strategy either equals the plain per-point
PyTorch reference or refuses with a typed error, and ``auto`` never crashes."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lossgrid import Axis, GridSpec, compute_surface
from lossgrid.config import DirectionSpec, EvalSpec
from lossgrid.data import EvalData
from lossgrid.engine.losses import resolve_loss
from lossgrid.errors import ConfigError, LossgridError
from lossgrid.inputs import call_model, model_output
from lossgrid.surface.directions import create_directions

TOL = 1e-5  # relative, float32 forward passes summed in float64


@dataclass
class Output:
    """What Hugging Face models return: an object with ``.logits``."""

    logits: torch.Tensor
    hidden: torch.Tensor


class KeywordNet(nn.Module):
    """forward(input_ids, attention_mask) -> Output(logits=...): a masked mean of embeddings."""

    def __init__(self, vocab: int = 20, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Output:
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        pooled = h.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1)
        return Output(self.head(torch.tanh(self.norm(pooled))), h)


class PairNet(nn.Module):
    """forward(image, extra) -> (logits, features): two positional inputs, a tuple out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 + 2, 3)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.relu(self.bn(self.conv(image))).mean(dim=(2, 3))
        return self.fc(torch.cat([f, extra], dim=1)), f


class TinyLM(nn.Module):
    """Token ids [B, T] -> next-token logits [B, T, V]."""

    def __init__(self, vocab: int = 11, dim: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + torch.cumsum(h, dim=1) / torch.arange(1, h.shape[1] + 1).view(1, -1, 1)
        return self.out(F.gelu(self.mix(h)))


def keyword_case() -> tuple[nn.Module, EvalData, str]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 20, (24, 6), generator=g)
    mask = (torch.rand(24, 6, generator=g) > 0.2).float()
    mask[:, 0] = 1
    y = torch.randint(0, 3, (24,), generator=g)
    return KeywordNet(), EvalData({"input_ids": ids, "attention_mask": mask}, y, "keyword"), "cross_entropy"


def pair_case() -> tuple[nn.Module, EvalData, str]:
    g = torch.Generator().manual_seed(2)
    model = PairNet()
    model.bn.running_mean.uniform_(-0.2, 0.2)
    model.bn.running_var.uniform_(0.5, 1.5)
    x = (torch.randn(20, 1, 6, 6, generator=g), torch.randn(20, 2, generator=g))
    return model, EvalData(x, torch.randint(0, 3, (20,), generator=g), "pair"), "cross_entropy"


def lm_case() -> tuple[nn.Module, EvalData, str]:
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 11, (16, 7), generator=g)
    targets = torch.randint(0, 11, (16, 7), generator=g)
    lengths = torch.randint(2, 8, (16,), generator=g)
    targets[torch.arange(7).view(1, -1) >= lengths.view(-1, 1)] = -100  # padding: ignored
    return TinyLM(), EvalData(tokens, targets, "lm"), "token_cross_entropy"


def regression_case() -> tuple[nn.Module, EvalData, str]:
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.randn(40, 5, generator=g)
    return model, EvalData(x, (x[:, :1] * 2 - x[:, 1:2]), "regression"), "mse"


CASES = {"keyword": keyword_case, "pair": pair_case, "lm": lm_case, "regression": regression_case}


def reference(model: nn.Module, data: EvalData, loss: str, directions, coeffs: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per point: a fresh copy of the model with perturbed weights, torch's own reductions."""
    losses, accs = [], []
    names = directions.layout.names
    for (c,) in coeffs:
        m = copy.deepcopy(model).eval()
        params = dict(m.named_parameters())
        with torch.no_grad():
            for name, d in zip(names, directions.x):
                params[name].add_(float(c) * d)
            out = model_output(call_model(m, data.x)).double()
        y = data.y
        if loss == "token_cross_entropy":
            losses.append(float(F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=-100)))
            keep = y != -100
            accs.append(100.0 * float((out.argmax(-1) == y)[keep].double().mean()))
        elif loss == "mse":
            losses.append(float(((out - y.double()) ** 2).mean()))
            accs.append(np.nan)
        else:
            losses.append(float(F.cross_entropy(out, y)))
            accs.append(100.0 * float((out.argmax(-1) == y).double().mean()))
    return np.array(losses), np.array(accs)


def surface(model: nn.Module, data: EvalData, loss: str, spec: EvalSpec, directions=None):
    grid = GridSpec(Axis(-0.8, 0.8, 5))
    return compute_surface(model, data, grid, directions=directions, loss=loss, eval_spec=spec)


@pytest.mark.parametrize("case", list(CASES))
def test_loop_equals_the_per_point_reference(case: str) -> None:
    model, data, loss = CASES[case]()
    dirs = create_directions(model, DirectionSpec(seed=5), ndim=1)
    surf = surface(model, data, loss, EvalSpec(strategy="loop", batch_size=7), dirs)
    want_loss, want_acc = reference(model, data, loss, dirs, GridSpec(Axis(-0.8, 0.8, 5)).points())
    np.testing.assert_allclose(surf.loss, want_loss, rtol=TOL)
    np.testing.assert_allclose(surf.acc, want_acc, rtol=TOL, atol=1e-9)
    if loss == "mse":
        assert np.isnan(surf.acc).all()  # regression: no accuracy


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend,strategy", [("torch", "vmap"), ("torch", "wide"), ("torch", "static"),
                                              ("onnxruntime", "wide"), ("onnxruntime", "baked")])
def test_every_strategy_equals_the_reference_or_refuses(case: str, backend: str, strategy: str) -> None:
    model, data, loss = CASES[case]()
    dirs = create_directions(model, DirectionSpec(seed=5), ndim=1)
    want_loss, _ = reference(model, data, loss, dirs, GridSpec(Axis(-0.8, 0.8, 5)).points())
    try:
        surf = surface(model, data, loss, EvalSpec(backend=backend, strategy=strategy, points_per_call=2), dirs)
    except LossgridError as e:  # refused: with a reason a user can act on
        assert e.why or e.hint, str(e)
        if case in ("keyword", "pair"):  # several inputs: the exported and wide paths say so
            assert backend == "onnxruntime" or strategy == "wide"
        return
    np.testing.assert_allclose(surf.loss, want_loss, rtol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_auto_never_crashes_where_the_loop_runs(case: str) -> None:
    model, data, loss = CASES[case]()
    dirs = create_directions(model, DirectionSpec(seed=5), ndim=1)
    want_loss, _ = reference(model, data, loss, dirs, GridSpec(Axis(-0.8, 0.8, 5)).points())
    surf = surface(model, data, loss, EvalSpec(backend="auto", strategy="auto", auto_budget=1000.0,
                                               points_per_call=2), dirs)
    np.testing.assert_allclose(surf.loss, want_loss, rtol=1e-4)
    run = surf.attrs["last_run"]
    if case in ("keyword", "pair"):
        assert "unavailable" in run["backend_choice"]  # the refused candidates are named with a reason


def test_several_inputs_refused_by_the_exported_backends_with_the_reason() -> None:
    model, data, loss = keyword_case()
    with pytest.raises(ConfigError, match="one tensor input") as e:
        surface(model, data, loss, EvalSpec(backend="onnxruntime", strategy="wide"))
    assert "--strategy loop" in e.value.hint


def test_token_loss_counts_tokens_not_sequences() -> None:
    fn, desc = resolve_loss("token_cross_entropy")
    assert desc == "token_cross_entropy"
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 2, -100], [4, -100, -100]])
    assert fn.units(targets) == 3
    per_sample = fn(logits, targets)
    assert per_sample.shape == (2,)
    torch.testing.assert_close(per_sample.sum() / 3, F.cross_entropy(logits.reshape(-1, 5), targets.reshape(-1)))
    other, desc = resolve_loss("token_cross_entropy:ignore=0")
    assert other.units(torch.tensor([[0, 1, 2]])) == 2 and desc == "token_cross_entropy:ignore=0"
    with pytest.raises(ConfigError, match="ignore=N"):
        resolve_loss("token_cross_entropy:skip=3")


def test_token_accuracy_never_counts_ignored_positions_even_a_real_token_id() -> None:
    class Zeros(nn.Module):  # always predicts token 0, which is also the padding id
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([5.0, 0.0, 0.0]))

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.bias.expand(*tokens.shape, 3) + 0 * tokens.unsqueeze(-1)

    tokens = torch.zeros(4, 3, dtype=torch.long)
    targets = torch.tensor([[1, 2, 0], [1, 0, 0], [2, 1, 0], [1, 1, 1]])
    surf = surface(Zeros(), EvalData(tokens, targets, "pad0"), "token_cross_entropy:ignore=0",
                   EvalSpec(strategy="loop"), create_directions(Zeros(), DirectionSpec(xignore="none"), ndim=1))
    assert (surf.acc == 0).all()  # no counted token is 0


def test_sequence_targets_without_a_correct_rule_have_no_accuracy() -> None:
    model, data, _ = lm_case()
    plain = torch.where(data.y < 0, 0, data.y)

    def summed(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.transpose(1, 2), targets, reduction="none").mean(1)

    surf = surface(model, EvalData(data.x, plain, "lm"), summed, EvalSpec(strategy="loop"))
    assert np.isnan(surf.acc).all() and np.isfinite(surf.loss).all()


def test_targets_the_loss_does_not_count_are_refused_before_any_file(tmp_path) -> None:
    model, data, _ = lm_case()
    ignored = EvalData(data.x, torch.full_like(data.y, -100), "all padding")
    with pytest.raises(LossgridError, match="no unit the loss counts"):
        compute_surface(model, ignored, GridSpec(Axis(-1, 1, 3)), tmp_path / "s.h5", loss="token_cross_entropy")
    assert not (tmp_path / "s.h5").exists()
