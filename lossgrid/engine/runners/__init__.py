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
from typing import TYPE_CHECKING

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
    precision = eval_spec.precision
    check_precision(precision, device)
    check_weight_memory(eval_spec.points_per_call or 8, layout.size, device)
    common = dict(batch_size=eval_spec.batch_size, points_per_call=eval_spec.points_per_call)

    def torch_runner(strat: str) -> Runner:
        if strat == "static":
            return StaticRunner(model, layout, data.x, data.y, loss_fn, device=device, precision=precision,
                                bn_batches=bn_batches, **common)
        return TorchRunner(model, layout, data.x, data.y, loss_fn, strategy=strat, device=device, precision=precision,
                           bn_batches=bn_batches, **common)

    def ort_runner(strat: str) -> Runner:
        if bn_batches:
            refuse_recompute(f"onnxruntime {strat}")
        if precision != "fp32":
            raise ConfigError(f"The onnxruntime backend runs in fp32 only, not {precision}",
                              hint="use --precision fp32, or --backend torch for tf32/bf16")
        return OnnxRuntimeRunner(model, layout, data.x, data.y, loss_fn, strategy=strat, device=str(device),
                                 model_description=description, **common)

    def trt_runner(strat: str) -> Runner:
        if bn_batches:
            refuse_recompute(f"tensorrt {strat}")
        return TensorRTRunner(model, layout, data.x, data.y, loss_fn, strategy=strat, device=str(device),
                              precision=precision, model_description=description, **common)

    cuda = device.type == "cuda"
    torch_order = ("static", "loop", "vmap", "wide") if cuda else ("loop", "static", "vmap", "wide")
    torch_candidates = [(f"torch/{s}", lambda s=s: torch_runner(s)) for s in torch_order]
    points = eval_spec.points_per_call or 8
    if backend == "torch":
        if strategy == "auto":
            return AutoRunner(torch_candidates, points, eval_spec.auto_budget, backend="torch", device=str(device))
        return torch_runner(strategy)
    if backend == "onnxruntime":
        return ort_runner(strategy)
    if backend == "tensorrt":
        return trt_runner(strategy)
    candidates = list(torch_candidates)
    if precision == "fp32" and onnxruntime_installed():  # auto never lowers precision; ONNX Runtime runs fp32 only
        if not cuda:
            candidates += [(f"onnxruntime/{s}", lambda s=s: ort_runner(s)) for s in ("wide", "baked")]
        elif cuda_provider_available():
            candidates.append(("onnxruntime/wide", lambda: ort_runner("wide")))
    if cuda and importlib.util.find_spec("tensorrt") is not None:
        candidates.append(("tensorrt/inputs", lambda: trt_runner("inputs")))
    return AutoRunner(candidates, points, eval_spec.auto_budget, device=str(device))
