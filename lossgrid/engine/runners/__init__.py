"""Runners evaluate loss and accuracy of many weight sets on one evaluation set.

Every runner has ``evaluate(weights) -> (loss, acc)`` where ``weights`` is
``[K, P]`` (flat, see :class:`lossgrid.engine.params.ParamLayout`) and the results
are float64 arrays of length ``K`` (accuracy in percent, NaN when the task has
no class labels), plus ``points_per_call`` and ``describe()``.

Backends: ``torch`` (strategies ``loop``, ``vmap``, ``wide``, and ``auto``, which
times them), ``onnxruntime`` (``wide``, ``baked``, ``auto``: a rule) and ``auto``,
which times every available backend/strategy on the actual model and data and
keeps the fastest (:class:`~lossgrid.engine.runners.auto.AutoRunner`: timing is
skipped when the job is too small to repay it). Runners may also have
``expect(points)``, told how many points they will evaluate.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError
from .auto import AutoRunner
from .torch_runner import TorchRunner

if TYPE_CHECKING:
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

    torch_candidates = [(f"torch/{s}", lambda s=s: torch_runner(s)) for s in ("loop", "vmap", "wide")]
    if backend == "torch":
        if strategy == "auto":
            return AutoRunner(torch_candidates, eval_spec.points_per_call or 8, eval_spec.auto_budget, backend="torch")
        return torch_runner(strategy)
    if backend == "onnxruntime":
        return ort_runner(strategy)
    ort_candidates = [(f"onnxruntime/{s}", lambda s=s: ort_runner(s)) for s in ("wide", "baked")]
    return AutoRunner(torch_candidates + ort_candidates, eval_spec.points_per_call or 8, eval_spec.auto_budget)
