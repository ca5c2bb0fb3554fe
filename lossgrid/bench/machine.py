"""Measuring the machine for benchmarks: its GEMM peak at a precision, a model's
FLOPs per sample, peak memory and a description of the device.

Used by :mod:`lossgrid.bench.run` and ``benchmarks/``; the peak is always
measured in the same run as what it is compared with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import inputs as inp
from ..engine.precision import check_precision, precision_mode
from ..errors import ConfigError, LossgridError
from ..exporters.session import make_session


def flops_per_sample(model: nn.Module, x: Any) -> float:
    """Forward FLOPs of ``model`` on the first sample of inputs ``x`` (``torch.utils.flop_counter``:
    convolutions and matmuls, a multiply-add counted as two)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        inp.call_model(model, inp.take(x, slice(0, 1)))
    return float(counter.get_total_flops())


def device_info(device: torch.device) -> dict[str, Any]:
    """The header's description of the machine: device name, torch version, cores, date."""
    import datetime
    import os
    import platform

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        try:
            with open("/proc/cpuinfo") as fh:
                name = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
        except OSError:
            name = ""
        name = name or platform.processor() or "cpu"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"device": str(device), "device_name": name, "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda, "cores": cores, "torch_threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def memory_reset(device: torch.device) -> None:
    """Start a row's peak-memory count (CUDA only: the CPU's peak RSS never goes down)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def memory_peak(device: torch.device) -> tuple[int, str]:
    """Peak memory in bytes and what it counts: this row's CUDA allocations, or the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "row: torch.cuda.max_memory_allocated"
    import resource

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return int(rss_kib) * 1024, "process: peak RSS since start (all rows so far, never decreases)"


def peak_gemm(precision: str, device: torch.device) -> dict[str, Any]:
    """This device's GEMM rate at ``precision``, in TFLOP/s: torch's matmul under
    :func:`precision_mode`, on the CPU in fp32 also ONNX Runtime's; ``tflops`` is the higher."""
    try:
        check_precision(precision, device)
    except ConfigError as e:
        return {"tflops": None, "torch_tflops": None, "onnxruntime_tflops": None, "reason": str(e)}
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(0)
    # square GEMMs, doubled in size until one takes 20 ms (a slow bf16 CPU stops small), then timed
    n, largest = 256, 8192 if device.type == "cuda" else 2048
    while True:
        a, b = (torch.randn(n, n, generator=gen, device=device).to(dtype) for _ in range(2))
        with precision_mode(precision, device):
            if n >= largest or _best_seconds(lambda a=a, b=b: a @ b, sync, budget=0.0) >= 0.02:
                best = _best_seconds(lambda a=a, b=b: a @ b, sync)
                break
        n *= 2
    out: dict[str, Any] = {"shape": [n, n, n], "torch_tflops": 2 * n ** 3 / best / 1e12,
                           "onnxruntime_tflops": None}
    if device.type == "cpu" and precision == "fp32":
        out["onnxruntime_tflops"] = _ort_gemm_tflops(a.numpy(), b.numpy())
    out["tflops"] = max(v for v in (out["torch_tflops"], out["onnxruntime_tflops"]) if v is not None)
    return out


def _ort_gemm_tflops(a: np.ndarray, b: np.ndarray) -> float | None:
    """ONNX Runtime's (MLAS) fp32 GEMM rate; ``None`` without onnx/onnxruntime."""
    try:
        from onnx import TensorProto, helper

    except (ImportError, LossgridError):
        return None
    (m, k), n = a.shape, b.shape[1]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    try:
        session = make_session(onnx_model.SerializeToString())
    except LossgridError:
        return None
    feeds = {"a": a, "b": b}
    return 2 * m * k * n / _best_seconds(lambda: session.run(None, feeds), lambda: None) / 1e12


def _best_seconds(fn: Callable[[], Any], sync: Callable[[], None], budget: float = 0.5, most: int = 20) -> float:
    """Best time of ``fn`` after one warm-up call, over at most ``most`` calls or ``budget`` seconds."""
    fn()
    sync()
    times: list[float] = []
    end = time.perf_counter() + budget
    while not times or (len(times) < most and time.perf_counter() < end):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)
