"""Runners evaluate loss and accuracy of many weight sets on one evaluation set.

Every runner has ``evaluate(weights) -> (loss, acc)`` where ``weights`` is
``[K, P]`` (flat, see :class:`lossgrid.engine.params.ParamLayout`) and the results
are float64 arrays of length ``K`` (accuracy in percent, NaN when the task has
no class labels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .torch_runner import TorchRunner

if TYPE_CHECKING:
    from torch import nn

    from ...config import EvalSpec
    from ...data import EvalData
    from ..losses import LossFn
    from ..params import ParamLayout

__all__ = ["TorchRunner", "make_runner"]


def make_runner(eval_spec: EvalSpec, model: nn.Module, layout: ParamLayout, data: EvalData,
                loss_fn: LossFn) -> TorchRunner:
    """Build the runner named by ``eval_spec.backend``."""
    from ...errors import ConfigError

    if eval_spec.backend == "torch":
        return TorchRunner(model, layout, data.x, data.y, loss_fn, batch_size=eval_spec.batch_size,
                           strategy=eval_spec.strategy, points_per_call=eval_spec.points_per_call,
                           device=eval_spec.device)
    raise ConfigError(f"Unknown backend {eval_spec.backend!r}", hint="use --backend torch")
