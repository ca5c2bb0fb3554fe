"""The TensorRT runner: an engine built from our exported ONNX graph, on one CUDA GPU.

Written against TensorRT's documented Python API (10.x and 11.x) and NOT yet run
on a machine with TensorRT (see tests/engine/test_tensorrt_runner.py, whose GPU
tests are the check to run where TensorRT exists).

Strategies:

* ``inputs`` (default): the engine is built from the K-wide graph of
  :func:`lossgrid.exporters.onnx.export_onnx` (weights as graph inputs,
  Conv+BatchNorm folded per point by our kernel, since TensorRT cannot fuse
  BatchNorm into weights it only sees at run time). Each call copies the weights
  of K points (``points_per_call``, default 1: on a GPU one point with thousands
  of samples already fills it) into fixed device buffers bound as input tensors.
* ``refit`` (opt-in): the K=1 graph with the weights as initializers, built
  refittable (``BuilderFlag.REFIT``); per point every weight is replaced from
  device memory with ``Refitter.set_named_weights`` and the engine is refitted on
  the runner's stream. TensorRT can then fold constants as it likes, but
  refittable engines may be slower, and TensorRT 11.3's documentation warned
  that ``kREFIT`` may drop a GEMM bias (treated as zero): this strategy is
  trustworthy only where its parity test against the torch runner passes.

Execution: the evaluation set stays on the GPU as torch tensors in batches; the
optimization profile covers batch sizes 1 to ``batch_size`` (opt = max =
``batch_size``); every batch is ``set_input_shape`` (when its size changes),
``set_tensor_address`` on the batch (checked: TensorRT refuses addresses not aligned
to 256 bytes, so a batch view at an odd offset, as a user's ``--batch-size`` can give,
is first copied into an aligned staging buffer) and ``execute_async_v3`` on the runner's own
CUDA stream, writing a preallocated logits buffer; losses and accuracy are
computed from the logits on the device with the runner's ``loss_fn``; results
are read back once per call (one synchronisation per point at K=1).

Precision: ``fp32`` clears ``BuilderFlag.TF32`` (TensorRT enables TF32 by
default), ``tf32`` sets it, ``bf16`` sets ``BuilderFlag.BF16`` where it exists
(TensorRT 10); TensorRT 11 removed precision flags (precision comes from tensor
types, i.e. a bf16 graph), which lossgrid does not export yet: a ConfigError.

Engines are cached on disk (:mod:`lossgrid.engine.runners._trt_cache`).
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError, ExportError, MissingBackendError
from ...exporters.onnx import export_onnx, float_state, full_state
from ...inputs import require_tensor
from ..losses import LossFn, Stats, concat_stats, evaluate_batches, unit_counts
from ..params import ParamLayout, full_states
from ..precision import check_precision
from ._trt_cache import EngineCache, cache_key, default_cache_dir
from .base import Runner
from .batching import default_batch_size
from .onnxruntime_runner import _bake, _baked_template

log = logging.getLogger(__name__)
STRATEGIES = ("inputs", "refit")
DEFAULT_POINTS = 1
#: bytes to which TensorRT needs every I/O tensor's address aligned
TRT_ALIGNMENT = 256
INSTALL_HINT = ("TensorRT's libraries come from NVIDIA and are not on PyPI: install with "
                'pip install "lossgrid[tensorrt]" --extra-index-url https://pypi.nvidia.com, '
                "or run inside NVIDIA's PyTorch or TensorRT container")
REFIT_WARNING = ("tensorrt/refit: TensorRT 11.3's documentation warned that BuilderFlag.REFIT may drop a GEMM "
                 "bias; trust this strategy only where tests/engine/test_tensorrt_runner.py passes on this "
                 "TensorRT version, and prefer --strategy inputs")
_LOGGER: Any = None


def tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or :class:`MissingBackendError` saying where TensorRT comes from."""
    try:
        return importlib.import_module("tensorrt")
    except Exception as e:  # ImportError, or a broken install (libnvinfer missing) raising anything
        raise MissingBackendError("The tensorrt backend needs NVIDIA TensorRT's Python package 'tensorrt', "
                                  "which cannot be imported", f"{type(e).__name__}: {e}", INSTALL_HINT) from None


def _logger(trt: ModuleType) -> Any:
    """One TensorRT logger per process (TensorRT keeps the first one it is given)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def onnx_for_tensorrt(model: nn.Module, example: torch.Tensor, strategy: str, k: int = 1,
                      description: str = "") -> tuple[bytes, Any]:
    """The ONNX bytes an engine of ``strategy`` is built from, and the export result.

    ``inputs``: the K-wide graph with weights as inputs. ``refit``: the K=1 graph
    whose weight inputs are initializers of the same names (holding the model's
    own weights, BatchNorm folded), which the refitter replaces by name.
    """

    export = export_onnx(model, example, k=1 if strategy == "refit" else k, description=description)
    if strategy != "refit":
        return export.model_bytes, export
    with torch.no_grad():
        prepared = export.wide.prepare(full_state(model, 1))
    values = {n: prepared[n].float().contiguous().numpy() for n in export.manifest.input_names}
    return _bake(_baked_template(export.model_bytes, export.manifest), values), export


def apply_precision(trt: ModuleType, config: Any, precision: str) -> None:
    """Set the builder flags of ``precision`` on a TensorRT builder config."""
    flags = trt.BuilderFlag
    if not hasattr(flags, "TF32"):
        raise ConfigError(f"TensorRT {getattr(trt, '__version__', '?')} has no TF32 builder flag",
                          "lossgrid cannot tell whether fp32 layers would run in TF32",
                          "use --backend torch or onnxruntime")
    if precision == "tf32":
        config.set_flag(flags.TF32)
        return
    config.clear_flag(flags.TF32)  # strict IEEE fp32 (TF32 is on by default); bf16 keeps fp32 layers IEEE too
    half = {"bf16": "BF16", "fp16": "FP16"}.get(precision)
    if half is not None:
        if not hasattr(flags, half):
            raise ConfigError(f"TensorRT {getattr(trt, '__version__', '?')} has no {half} builder flag",
                              f"TensorRT 11 takes precision from tensor types: a {precision} engine needs a "
                              f"{precision} (strongly typed) graph, which lossgrid does not export yet",
                              f"use --precision fp32 or tf32 with TensorRT 11, or --backend torch --precision "
                              f"{precision}")
        config.set_flag(getattr(flags, half))


def build_engine(trt: ModuleType, onnx_bytes: bytes, data_input: str, sample_shape: tuple[int, ...],
                 batch_size: int, precision: str, refit: bool) -> bytes:
    """A serialized engine of ``onnx_bytes`` for batch sizes 1..``batch_size``."""
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network()  # explicit batch is the only mode in 10.x; strongly typed always in 11.x
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        raise ExportError("TensorRT's ONNX parser rejected the exported graph", errors or None,
                          "use --backend onnxruntime or torch for this model")
    config = builder.create_builder_config()
    apply_precision(trt, config, precision)
    if refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    profile = builder.create_optimization_profile()
    full = (batch_size, *sample_shape)
    profile.set_shape(data_input, (1, *sample_shape), full, full)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError("TensorRT could not build an engine for the exported graph",
                          "see TensorRT's messages logged above", "use --backend onnxruntime or torch")
    return bytes(plan)


class TensorRTRunner(Runner):
    """Evaluate grid points with a TensorRT engine (see module docs).

    Args:
        model, layout, x, y, loss_fn: as for :class:`~lossgrid.engine.runners.torch_runner.TorchRunner`.
        batch_size: samples per execution (the profile's max); ``None``: thousands on a GPU.
        strategy: ``inputs`` (weights as engine inputs) or ``refit`` (refittable engine).
        points_per_call: grid points per call; with ``inputs`` also the engine's K (default 1).
        device: a CUDA device (``cuda``, ``cuda:N``).
        precision: ``fp32`` (IEEE: TF32 off), ``tf32`` or ``bf16`` (TensorRT 10 only).
        model_description: stored in the exported graph's manifest.
        cache_dir: engine cache directory (default ``$XDG_CACHE_HOME/lossgrid/tensorrt``
            or ``~/.cache/lossgrid/tensorrt``).

    Example:
        >>> runner = TensorRTRunner(model, layout, x, y, cross_entropy)  # doctest: +SKIP
        >>> loss, acc, se = runner.evaluate(weights)                       # doctest: +SKIP
    """

    name = "tensorrt"

    def __init__(self, model: nn.Module, layout: ParamLayout, x: Any, y: torch.Tensor, loss_fn: LossFn,
                 batch_size: int | None = None, strategy: str = "inputs", points_per_call: int | None = None,
                 device: str | torch.device = "cuda", precision: str = "fp32", model_description: str = "",
                 cache_dir: str | os.PathLike | None = None) -> None:

        if strategy not in STRATEGIES:
            raise ConfigError(f"Unknown tensorrt strategy {strategy!r}", hint=f"use one of {', '.join(STRATEGIES)}")
        for what, value in (("points_per_call", points_per_call), ("batch_size", batch_size)):
            if value is not None and int(value) < 1:
                raise ConfigError(f"{what} must be at least 1, not {value}")
        self.device = torch.device(device)
        self.trt = tensorrt()  # first: without TensorRT, say where it comes from whatever the device
        if self.device.type != "cuda":
            raise ConfigError(f"The tensorrt backend cannot run on {device}", "TensorRT runs on NVIDIA GPUs only",
                              "use --device cuda, or --backend torch or onnxruntime on the CPU")
        check_precision(precision, self.device)

        x = require_tensor(x, "The tensorrt backend")
        if isinstance(model, torch.jit.ScriptModule):
            raise ConfigError("The tensorrt backend cannot export a TorchScript model",
                              hint="load the model from its Python factory, or use --backend torch")
        if not torch.cuda.is_available():
            raise ConfigError("The tensorrt backend needs a CUDA GPU, but torch sees none",
                              "torch.cuda.is_available() is False (no GPU, no driver, or a CPU build of torch)",
                              "run on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu "
                              "with --backend torch")
        if strategy == "refit":
            log.warning(REFIT_WARNING)
        self.strategy, self.precision, self.layout, self.loss_fn = strategy, precision, layout, loss_fn
        self.model = copy.deepcopy(model).cpu().eval()
        if x.is_floating_point():
            x = x.float()  # TensorRT engines take fp32 data
        self.counts = unit_counts(loss_fn, [y])
        self.points_per_call = points_per_call or DEFAULT_POINTS
        self.k = 1 if strategy == "refit" else self.points_per_call
        self.batch_size = int(batch_size or default_batch_size(x, self.device, self.k))
        onnx_bytes, self.export = onnx_for_tensorrt(self.model, x[:2].cpu(), strategy, self.k, model_description)
        self.manifest, self.wide = self.export.manifest, self.export.wide
        self.refitter: Any = None
        with torch.cuda.device(self.device):
            self.stream = torch.cuda.Stream(self.device)
            self.fixed = {n: t.to(self.device) for n, t in float_state(self.model).items()}
            self.batches = list(zip(x.to(self.device).contiguous().split(self.batch_size),
                                    y.to(self.device).split(self.batch_size)))
            self.engine, self.cache_hit, self.cache_path = self._load_engine(onnx_bytes, tuple(x.shape[1:]), cache_dir)
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise ExportError("TensorRT could not create an execution context",
                                  "see TensorRT's messages logged above (often: out of GPU memory)",
                                  "lower --batch-size, or use --backend torch")
            self._prepare_buffers()
            torch.cuda.synchronize(self.device)  # data and buffers in place before the runner's stream uses them

    # -- set-up ---------------------------------------------------------------------------
    def _load_engine(self, onnx_bytes: bytes, sample_shape: tuple[int, ...], cache_dir: Any) -> tuple[Any, bool, str]:
        trt = self.trt
        props = torch.cuda.get_device_properties(self.device)
        key = cache_key(onnx_bytes, strategy=self.strategy, precision=self.precision,
                        batch_profile=(1, self.batch_size, self.batch_size), gpu_name=props.name,
                        capability=(props.major, props.minor), trt_version=str(trt.__version__))
        cache = EngineCache(default_cache_dir(cache_dir))
        self.runtime = trt.Runtime(_logger(trt))

        def build() -> bytes:
            log.info("building a TensorRT engine (%s, %s, batch <= %d)", self.strategy, self.precision,
                     self.batch_size)
            return build_engine(trt, onnx_bytes, self.manifest.data_input, sample_shape, self.batch_size,
                                self.precision, refit=self.strategy == "refit")

        return cache.get_or_build(key, build, self.runtime.deserialize_cuda_engine)

    def _prepare_buffers(self) -> None:
        """Fixed weight buffers bound as inputs (``inputs``) or the refitter (``refit``), and the logits buffer."""
        trt, ctx, m = self.trt, self.context, self.manifest
        self._weights: dict[str, torch.Tensor] = {}
        if self.strategy == "inputs":
            for entry in m.inputs:
                buf = torch.zeros([self.k, *entry["shape"]], dtype=torch.float32, device=self.device)
                self._weights[entry["name"]] = buf
                bind_address(ctx, entry["name"], buf)  # the address never changes
        else:
            self.refitter = trt.Refitter(self.engine, _logger(trt))
            refittable = set(self.refitter.get_all_weights())
            lost = [n for n in m.input_names if n not in refittable]
            if lost:
                raise ExportError(f"TensorRT cannot refit {len(lost)} weight(s) of the engine, e.g. {lost[0]!r}",
                                  "the builder folded them into other constants", "use --strategy inputs")
        self._rows = self.batch_size
        self._set_shape(self.batch_size)
        out_shape = tuple(int(d) for d in ctx.get_tensor_shape(m.output))
        out_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(m.output))
        out = torch.empty(out_shape, dtype=out_dtype, device=self.device)
        bind_address(ctx, m.output, out)  # partial batches fill its start (see _execute)
        self._out: torch.Tensor | None = out
        self._staging: torch.Tensor | None = None  # an aligned copy of batches whose views are not aligned

    def _set_shape(self, rows: int) -> None:
        shape = (rows, *(int(d) for d in self.manifest.data_shape[1:]))
        if not self.context.set_input_shape(self.manifest.data_input, shape):
            raise RuntimeError(f"TensorRT rejected the input shape {shape} (profile 1..{self.batch_size})")
        self._rows = rows

    # -- the contract ---------------------------------------------------------------------
    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "strategy": self.strategy, "device": str(self.device),
                "strategy_reason": f"{self.strategy} requested", "points_per_call": self.points_per_call,
                "batch_size": self.batch_size, "precision": self.precision, "engine_k": self.k,
                "engine_cache": self.cache_path, "engine_cache_hit": bool(self.cache_hit),
                "tensorrt_version": str(self.trt.__version__),
                "onnx_parity_max_abs_diff": self.export.max_abs_diff}

    def evaluate(self, weights: torch.Tensor) -> Stats:
        """Loss (mean over samples), accuracy (percent) and the loss's standard error for ``weights[K, P]``."""
        k = weights.shape[0]
        with torch.cuda.device(self.device), torch.inference_mode(), \
                self.guard("TensorRT failed on the evaluation data"):
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the caller's weights are ready
            with torch.cuda.stream(self.stream):
                prepared = self.wide.prepare(full_states(self.layout, weights.to(self.device), self.fixed))
                inputs = {n: prepared[n].float() for n in self.manifest.input_names}
                parts = []
                for start in range(0, k, self.k):
                    count = min(self.k, k - start)
                    part = {n: v[start:start + count] for n, v in inputs.items()}
                    parts.append(self._points(part, count))
            return concat_stats(parts)

    def close(self) -> None:
        """Release the execution context, the refitter, the engine and every device buffer."""
        self.context = None  # the context goes before its engine
        self.refitter = None
        self.engine = None
        self.runtime = None
        self._weights, self._out, self._staging, self.batches, self.fixed = {}, None, None, [], {}

    # -- evaluation -----------------------------------------------------------------------
    def _points(self, part: dict[str, torch.Tensor], count: int) -> Stats:
        """Loss, accuracy and standard error of ``count`` points (at most the engine's K) whose inputs are ``part``."""
        held: list[torch.Tensor] = []  # device weights the refit reads: alive until the point's results are read back
        if self.strategy == "inputs":
            for name, buf in self._weights.items():
                v = part[name]
                buf[:count].copy_(v)
                if count < self.k:  # unused slots repeat the last point; their outputs are dropped
                    buf[count:].copy_(v[-1:].expand(self.k - count, *v.shape[1:]))
        else:
            trt = self.trt
            for name, v in part.items():
                t = v.contiguous()
                held.append(t)
                w = trt.Weights(trt.DataType.FLOAT, t.data_ptr(), t.numel())
                if not self.refitter.set_named_weights(name, w, trt.TensorLocation.DEVICE):
                    raise RuntimeError(f"TensorRT rejected the refit weights {name!r}")
            missing = list(self.refitter.get_missing_weights())
            if missing:
                raise RuntimeError(f"TensorRT refit is missing weights {missing[:5]}")
            if not self.refitter.refit_cuda_engine_async(self.stream.cuda_stream):
                raise RuntimeError("TensorRT could not refit the engine")
        result = evaluate_batches(self.batches, lambda xb: self._execute(xb)[:count], self.loss_fn, count,
                                  self.counts, self.device, self._keep)
        del held  # evaluate_batches has synchronised: the refit is done
        return result

    def _execute(self, xb: torch.Tensor) -> torch.Tensor:
        """Logits ``[K, rows, ...]`` of one batch (a view of the reused output buffer)."""
        rows = int(xb.shape[0])
        if rows != self._rows:
            self._set_shape(rows)
        if xb.data_ptr() % TRT_ALIGNMENT:  # a batch view at an odd offset: staged (one device copy)
            if self._staging is None:
                self._staging = aligned_empty((self.batch_size, *xb.shape[1:]), xb.dtype, self.device)
            xb = self._staging[:rows].copy_(xb)
        bind_address(self.context, self.manifest.data_input, xb)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see TensorRT's messages logged above)")
        out = self._out
        assert out is not None, "a closed runner is not used again"
        return out.view(-1)[:self.k * rows * int(np.prod(out.shape[2:]))].view(self.k, rows, *out.shape[2:])


def bind_address(context: Any, name: str, tensor: torch.Tensor) -> None:
    """Give ``context`` the device address of ``tensor`` for the I/O tensor ``name``; TensorRT's
    refusal (a misaligned address, an unknown name), which it signals only by returning False,
    becomes an error rather than a run on a stale address."""
    if not context.set_tensor_address(name, tensor.data_ptr()):
        aligned = tensor.data_ptr() % TRT_ALIGNMENT == 0
        raise RuntimeError(f"TensorRT refused the address of tensor {name!r}"
                           + ("" if aligned else f" (not aligned to {TRT_ALIGNMENT} bytes)"))


def aligned_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str,
                  alignment: int = TRT_ALIGNMENT) -> torch.Tensor:
    """An uninitialised contiguous tensor whose address is a multiple of ``alignment`` bytes."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = int(np.prod(shape))
    raw = torch.empty(numel + alignment // itemsize, dtype=dtype, device=device)
    skip = (-raw.data_ptr() % alignment) // itemsize
    return raw[skip:skip + numel].view(shape)


def _torch_dtype(trt: ModuleType, dtype: Any) -> torch.dtype:
    """The torch dtype of a TensorRT ``DataType`` (the engine's output)."""
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64}
    for name, torch_dtype in table.items():
        if hasattr(trt.DataType, name) and dtype == getattr(trt.DataType, name):
            return torch_dtype
    raise ConfigError(f"The TensorRT engine's output has type {dtype}, which lossgrid cannot read",
                      hint="use --backend onnxruntime or torch")
