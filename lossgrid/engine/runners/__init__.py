"""Runners evaluate loss and accuracy of many weight sets on one evaluation set.

Every runner keeps the contract of :class:`~lossgrid.engine.runners.base.Runner`:
``evaluate(weights[K, P]) -> (loss, acc)`` (float64 arrays of length ``K``,
accuracy in percent, NaN without class labels), ``set_directions`` and
``evaluate_points(coeffs)``, ``points_per_call``, ``describe()``, ``expect`` and
``close``.

Backends: ``torch`` (strategies ``loop``, ``vmap``, ``wide``, ``static`` (weights
in one flat buffer rewritten in place, CUDA-graph replay on a GPU), and ``auto``,
which times them), ``onnxruntime`` (``wide``, ``baked``, ``auto``: a rule),
``tensorrt`` (``inputs``: weights as engine inputs, ``refit``: opt-in) and ``auto``,
which times every available backend/strategy on the actual model and data and
keeps the fastest (:class:`~lossgrid.engine.runners.auto.AutoRunner`: timing is
skipped when the job is too small to repay it). Runners may also have
``expect(points)``, told how many points they will evaluate.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from ..._memory import memory_problem
from ...errors import ConfigError
from ...exporters.session import cuda_provider_available, onnxruntime_installed
from ..batchnorm import refuse_recompute
from ..precision import check_precision
from .auto import AutoRunner
from .base import Runner
from .onnxruntime_runner import OnnxRuntimeRunner
from .static_runner import StaticRunner
from .tensorrt_runner import TensorRTRunner
from .torch_runner import TorchRunner

if TYPE_CHECKING:
    from torch import nn

    from ...config import EvalSpec
    from ...data import EvalData
    from ...inputs import Inputs
    from ..losses import LossFn
    from ..params import ParamLayout

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt", "auto")
STRATEGIES = {"torch": ("auto", "loop", "vmap", "wide", "static"), "onnxruntime": ("auto", "wide", "baked"),
              "tensorrt": ("inputs", "refit"), "auto": ("auto",)}

ALL_STRATEGIES = tuple(dict.fromkeys(s for names in STRATEGIES.values() for s in names))

__all__ = ["ALL_STRATEGIES", "BACKENDS", "STRATEGIES", "AutoRunner", "Runner", "StaticRunner", "TorchRunner",
           "check_weight_memory", "make_runner"]


def check_weight_memory(points: int, size: int, device: torch.device) -> None:
    """Refuse, before allocating, ``points`` weight sets of ``size`` values per call (and their perturbed
    copies) where the device has not the memory for them."""
    need = 2 * points * size * 4
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        problem = None if need <= free else f"they need {need:,} bytes and the GPU has {free:,} free"
    else:
        problem = memory_problem(need)
    if problem:
        raise ConfigError(f"{points} grid points per call of {size:,} weights each do not fit in memory", problem,
                          "lower --points-per-call")


@dataclass(frozen=True)
class _Build:
    """What every runner of one job is built from (the factories' common arguments)."""

    model: nn.Module
    layout: ParamLayout
    data: EvalData
    loss_fn: LossFn
    device: torch.device
    precision: str
    description: str
    bn_batches: list[Inputs] | None
    common: dict[str, Any]


def _torch(b: _Build, strategy: str) -> Runner:
    if strategy == "static":
        return StaticRunner(b.model, b.layout, b.data.x, b.data.y, b.loss_fn, device=b.device, precision=b.precision,
                            bn_batches=b.bn_batches, **b.common)
    return TorchRunner(b.model, b.layout, b.data.x, b.data.y, b.loss_fn, strategy=strategy, device=b.device,
                       precision=b.precision, bn_batches=b.bn_batches, **b.common)


def _onnxruntime(b: _Build, strategy: str) -> Runner:
    if b.bn_batches:
        refuse_recompute(f"onnxruntime {strategy}")
    if b.precision != "fp32":
        raise ConfigError(f"The onnxruntime backend runs in fp32 only, not {b.precision}",
                          hint="use --precision fp32, or --backend torch for tf32/bf16")
    return OnnxRuntimeRunner(b.model, b.layout, b.data.x, b.data.y, b.loss_fn, strategy=strategy, device=str(b.device),
                             model_description=b.description, **b.common)


def _tensorrt(b: _Build, strategy: str) -> Runner:
    if b.bn_batches:
        refuse_recompute(f"tensorrt {strategy}")
    return TensorRTRunner(b.model, b.layout, b.data.x, b.data.y, b.loss_fn, strategy=strategy, device=str(b.device),
                          precision=b.precision, model_description=b.description, **b.common)


#: backend -> the factory of its runners (``auto`` times candidates of these)
FACTORIES: dict[str, Callable[[_Build, str], Runner]] = {"torch": _torch, "onnxruntime": _onnxruntime,
                                                         "tensorrt": _tensorrt}


def make_runner(eval_spec: EvalSpec, model: nn.Module, layout: ParamLayout, data: EvalData, loss_fn: LossFn,
                description: str = "", bn_batches: list[Inputs] | None = None) -> Runner:
    """Build the runner named by ``eval_spec.backend`` and ``eval_spec.strategy``.

    ``auto`` (as a backend, or as the torch backend's strategy) times the candidates
    that can run on the device at the requested precision; the first candidate is
    the default for jobs too small to repay timing: on a GPU the ``static`` torch
    runner (CUDA graphs), on the CPU the per-point ``loop``.

    ``bn_batches`` (``--bn recompute``): inputs that re-estimate BatchNorm statistics at every
    point; strategies that cannot (:data:`~lossgrid.engine.batchnorm.RECOMPUTE_STRATEGIES`)
    refuse, and ``auto`` drops them with that reason.
    """
    backend, strategy = eval_spec.backend, eval_spec.strategy
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}", hint=f"use one of {', '.join(BACKENDS)}")
    if backend == "tensorrt" and strategy == "auto":
        strategy = "inputs"
    if strategy not in STRATEGIES[backend]:
        raise ConfigError(f"Strategy {strategy!r} does not belong to backend {backend!r}",
                          hint=f"with --backend {backend} use --strategy {', '.join(STRATEGIES[backend])}")
    device = torch.device(eval_spec.device)
    check_precision(eval_spec.precision, device)
    check_weight_memory(eval_spec.points_per_call or 8, layout.size, device)
    build = _Build(model, layout, data, loss_fn, device, eval_spec.precision, description, bn_batches,
                   dict(batch_size=eval_spec.batch_size, points_per_call=eval_spec.points_per_call))
    points = eval_spec.points_per_call or 8
    if backend == "auto":
        return AutoRunner(_candidates(build), points, eval_spec.auto_budget, device=str(device))
    if backend == "torch" and strategy == "auto":
        return AutoRunner(_candidates(build, torch_only=True), points, eval_spec.auto_budget, backend="torch",
                          device=str(device))
    return FACTORIES[backend](build, strategy)


def _candidates(b: _Build, torch_only: bool = False) -> list[tuple[str, Callable[[], Runner]]]:
    """What ``auto`` times, the default first: every torch strategy, then (fp32 only: auto never lowers the
    precision) ONNX Runtime's where it can run and TensorRT where it is installed on a GPU."""
    cuda = b.device.type == "cuda"
    torch_order = ("static", "loop", "vmap", "wide") if cuda else ("loop", "static", "vmap", "wide")
    candidates = [(f"torch/{s}", partial(_torch, b, s)) for s in torch_order]
    if torch_only:
        return candidates
    if b.precision == "fp32" and onnxruntime_installed():  # ONNX Runtime runs fp32 only
        if not cuda:
            candidates += [(f"onnxruntime/{s}", partial(_onnxruntime, b, s)) for s in ("wide", "baked")]
        elif cuda_provider_available():
            candidates.append(("onnxruntime/wide", partial(_onnxruntime, b, "wide")))
    if cuda and importlib.util.find_spec("tensorrt") is not None:
        candidates.append(("tensorrt/inputs", partial(_tensorrt, b, "inputs")))
    return candidates
