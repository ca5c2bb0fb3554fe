"""Runners evaluate loss and accuracy of many weight sets on one evaluation set.

Every runner has ``evaluate(weights) -> (loss, acc)`` where ``weights`` is
``[K, P]`` (flat, see :class:`lossgrid.engine.params.ParamLayout`) and the results
are float64 arrays of length ``K`` (accuracy in percent, NaN when the task has
no class labels), plus ``points_per_call`` and ``describe()``.

Backends: ``torch`` (strategies ``loop``, ``vmap``, ``wide``, ``auto``), ``onnxruntime``
(``wide``, ``baked``, ``auto``) and ``auto``, which times every available
backend/strategy on the actual model and data and keeps the fastest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError, LossgridError
from ._timing import seconds_per_point, warm_up
from .torch_runner import TorchRunner

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ...config import EvalSpec
    from ...data import EvalData
    from ..losses import LossFn
    from ..params import ParamLayout

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "auto")
STRATEGIES = {"torch": ("auto", "loop", "vmap", "wide"), "onnxruntime": ("auto", "wide", "baked"), "auto": ("auto",)}

ALL_STRATEGIES = tuple(dict.fromkeys(s for names in STRATEGIES.values() for s in names))

__all__ = ["ALL_STRATEGIES", "BACKENDS", "STRATEGIES", "AutoRunner", "TorchRunner", "make_runner"]


class AutoRunner:
    """Times each candidate runner on the first chunk's weights and delegates to the fastest."""

    name = "auto"

    def __init__(self, candidates: list[tuple[str, Callable[[], Any]]], points_per_call: int) -> None:
        self.candidates = candidates
        self.points_per_call = points_per_call
        self.chosen: Any = None
        self.reason = ""

    def evaluate(self, weights: torch.Tensor) -> Any:
        if self.chosen is None:  # the whole first chunk: K-wide runners are timed on full calls
            self._choose(weights)
        return self.chosen.evaluate(weights)

    def _choose(self, sample: torch.Tensor) -> None:
        runners: dict[str, Any] = {}
        skipped = []
        for label, factory in self.candidates:
            try:
                runner = factory()
                warm_up(runner, sample)
                runners[label] = runner
            except LossgridError as e:
                skipped.append(f"{label} unavailable ({e.what})")
                log.info("backend %s skipped: %s", label, e)
        timings = seconds_per_point(runners, sample) if runners else {}
        if not runners:
            raise ConfigError("No backend could run this model", "; ".join(skipped),
                              "use --backend torch --strategy loop")
        best = min(timings, key=timings.__getitem__)
        self.chosen = runners[best]
        parts = [f"{label} {t * 1e3:.1f} ms/point" for label, t in sorted(timings.items(), key=lambda kv: kv[1])]
        self.reason = f"fastest when timed on this model and data: {', '.join(parts)}"
        if skipped:
            self.reason += "; " + "; ".join(skipped)
        log.info("backend auto chose %s (%s)", best, self.reason)

    def describe(self) -> dict[str, object]:
        if self.chosen is None:
            return {"backend": "auto", "strategy": None, "strategy_reason": "not yet chosen"}
        return {**self.chosen.describe(), "backend_choice": f"auto: {self.reason}"}


def make_runner(eval_spec: EvalSpec, model: nn.Module, layout: ParamLayout, data: EvalData, loss_fn: LossFn,
                description: str = "") -> Any:
    """Build the runner named by ``eval_spec.backend`` and ``eval_spec.strategy``."""
    backend, strategy = eval_spec.backend, eval_spec.strategy
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}", hint=f"use one of {', '.join(BACKENDS)}")
    if strategy not in STRATEGIES[backend]:
        raise ConfigError(f"Strategy {strategy!r} does not belong to backend {backend!r}",
                          hint=f"with --backend {backend} use --strategy {', '.join(STRATEGIES[backend])}")
    common = dict(batch_size=eval_spec.batch_size, points_per_call=eval_spec.points_per_call)

    def torch_runner(strat: str) -> TorchRunner:
        return TorchRunner(model, layout, data.x, data.y, loss_fn, strategy=strat, device=eval_spec.device, **common)

    def ort_runner(strat: str) -> Any:
        from .onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(model, layout, data.x, data.y, loss_fn, strategy=strat, device=eval_spec.device,
                                 model_description=description, **common)

    if backend == "torch":
        return torch_runner(strategy)
    if backend == "onnxruntime":
        return ort_runner(strategy)
    candidates = [("torch/loop", lambda: torch_runner("loop")), ("torch/vmap", lambda: torch_runner("vmap")),
                  ("torch/wide", lambda: torch_runner("wide")),
                  ("onnxruntime/wide", lambda: ort_runner("wide")), ("onnxruntime/baked", lambda: ort_runner("baked"))]
    return AutoRunner(candidates, eval_spec.points_per_call or 8)
