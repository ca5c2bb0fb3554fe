"""The torch runner: per-point loop or K-wide ``torch.func.vmap`` on any torch device."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from ... import inputs as inp
from ...errors import ConfigError
from ...exporters.onnx import float_state
from ...exporters.wide import WideModel
from ...inputs import Inputs
from ..batchnorm import recalibrate, refuse_recompute
from ..losses import LossFn, Stats, concat_stats, evaluate_batches, unit_counts
from ..params import ParamLayout, full_states, perturbed_tensors
from ..precision import check_precision, precision_mode
from .base import Runner
from .batching import default_batch_size

STRATEGIES = ("loop", "vmap", "wide")


class TorchRunner(Runner):
    """Evaluate ``K`` weight sets per call with plain PyTorch.

    Args:
        model: the model (copied; the caller's model is never modified).
        layout: which tensors the flat weights hold.
        x, y: the whole evaluation set (moved to ``device`` once): inputs ``x`` as a tensor, a
            tuple or a dict of tensors (:mod:`lossgrid.inputs`), targets ``y`` as a tensor.
        loss_fn: per-sample loss, see :mod:`lossgrid.engine.losses`.
        batch_size: samples per forward pass; ``None`` picks one from the input size and
            the device (:func:`~lossgrid.engine.runners.batching.default_batch_size`).
        strategy: ``loop`` (copy weights into the model, one point at a time),
            ``vmap`` (``torch.func.vmap`` over stacked weights), ``wide`` (the
            explicit K-wide model of :mod:`lossgrid.exporters.wide`: grouped
            convolutions, BatchNorm folded per point). ``make_runner`` with
            strategy ``auto`` times the three (:mod:`lossgrid.engine.runners.auto`).
        points_per_call: grid points per ``evaluate`` call the engine should use.
        device: torch device.
        precision: ``fp32`` (IEEE), ``tf32`` (CUDA only) or ``bf16`` (autocast).
        bn_batches: inputs of the batches that re-estimate BatchNorm running statistics at
            every point (``--bn recompute``, :mod:`lossgrid.engine.batchnorm`; ``loop`` only).
    """

    name = "torch"

    def __init__(self, model: nn.Module, layout: ParamLayout, x: Inputs, y: torch.Tensor,
                 loss_fn: LossFn, batch_size: int | None = None, strategy: str = "loop",
                 points_per_call: int | None = None, device: str | torch.device = "cpu",
                 precision: str = "fp32", bn_batches: list[Inputs] | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"Unknown torch strategy {strategy!r}", hint=f"use one of {', '.join(STRATEGIES)}")
        if bn_batches and strategy != "loop":
            refuse_recompute(f"torch {strategy}")
        self.device = torch.device(device)
        check_precision(precision, self.device)
        self.precision = precision
        self.layout = layout
        self.loss_fn = loss_fn
        self.model = copy.deepcopy(model).to(self.device).eval()
        if strategy == "wide":
            inp.require_tensor(x, "The torch wide strategy")
        x, y = inp.to_device(x, self.device), y.to(self.device)
        self.channels_last = (inp.is_tensor(x) and x.dim() == 4
                              and any(isinstance(m, nn.Conv2d) for m in self.model.modules()))
        if self.channels_last:  # measured 1.1-1.4x faster for CNNs on CPU (benchmarks/)
            self.model = self.model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.points_per_call = points_per_call or 8
        self.batch_size = batch_size or default_batch_size(x, self.device,
                                                           1 if strategy == "loop" else self.points_per_call)
        self.batches = inp.batches(x, y, self.batch_size)
        self.counts = unit_counts(loss_fn, [yb for _, yb in self.batches])
        self.bn_batches = [inp.to_device(b, self.device) for b in bn_batches or []]
        self.bn_note = {"bn": "recompute", "bn_batches": len(self.bn_batches)} if self.bn_batches else {}
        self._targets = list(perturbed_tensors(self.model, layout.dir_type).values())
        scripted = isinstance(self.model, torch.jit.ScriptModule)
        if scripted and strategy in ("vmap", "wide"):
            raise ConfigError(f"The {strategy} strategy cannot run a TorchScript model",
                              hint="use --strategy loop, or load the model from its Python factory")
        self.strategy = "loop" if scripted else strategy
        self.reason = "TorchScript models run point by point" if scripted else f"{strategy} requested"
        self.wide: Any = None
        if self.strategy == "wide":
            self._make_wide()

    def _make_wide(self) -> None:

        self.wide = WideModel(self.model, k=self.points_per_call)
        self.fixed = float_state(self.model)

    # -- public -----------------------------------------------------------------
    def evaluate(self, weights: torch.Tensor) -> Stats:
        """Loss (mean over samples), accuracy (percent) and the loss's standard error for ``weights[K, P]``."""
        weights = weights.to(self.device)
        with torch.inference_mode(), warnings.catch_warnings(), precision_mode(self.precision, self.device), \
                self.guard("The model failed on the evaluation data"):
            # functorch warns about ops without a batching rule; the timing decides anyway
            warnings.filterwarnings("ignore", message="There is a performance drop")
            if self.strategy == "vmap":
                return self._vmap(weights)
            if self.strategy == "wide":
                return self._wide(weights)
            return self._loop(weights)

    def close(self) -> None:
        self.batches, self._targets, self.wide, self.bn_batches = [], [], None, []

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "strategy": self.strategy, "device": str(self.device),
                "strategy_reason": self.reason, "points_per_call": self.points_per_call,
                "batch_size": self.batch_size, "channels_last": self.channels_last, "precision": self.precision,
                **self.bn_note}

    # -- strategies -------------------------------------------------------------
    def _loop(self, weights: torch.Tensor) -> Stats:
        parts = []
        for i in range(weights.shape[0]):
            torch._foreach_copy_(self._targets, list(self.layout.unflatten(weights[i]).values()))
            if self.bn_batches:  # in IEEE fp32 whatever the run's precision (recalibrate's own rule)
                recalibrate(self.model, self.bn_batches)
            parts.append(evaluate_batches(self.batches, lambda xb: inp.forward(self.model, xb).unsqueeze(0),
                                          self.loss_fn, 1, self.counts, self.device, self._keep))
        return concat_stats(parts)

    def _vmap(self, weights: torch.Tensor) -> Stats:
        from torch.func import vmap

        params = self.layout.unflatten(weights)
        model = self.model

        def forward(xb: Inputs) -> torch.Tensor:
            return vmap(lambda p: inp.model_output(inp.call_functional(model, p, xb)))(params)

        return evaluate_batches(self.batches, forward, self.loss_fn, weights.shape[0], self.counts, self.device,
                                self._keep)

    def _wide(self, weights: torch.Tensor) -> Stats:
        assert self.wide is not None
        k, kk = weights.shape[0], self.wide.k
        if k % kk:  # pad to a multiple of K with copies of the last point
            weights = torch.cat([weights, weights[-1:].expand(kk - k % kk, -1)])
        parts = []
        for start in range(0, weights.shape[0], kk):
            params = self.wide.prepare(full_states(self.layout, weights[start:start + kk], self.fixed))
            parts.append(evaluate_batches(self.batches, lambda xb, p=params: self.wide.run(xb, p), self.loss_fn,
                                          kk, self.counts, self.device, self._keep))
        return Stats(*(values[:k] for values in concat_stats(parts)))
