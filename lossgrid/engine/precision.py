"""Numeric precision of an evaluation: ``fp32`` (IEEE), ``tf32`` or ``bf16``.

* ``fp32`` means IEEE single precision everywhere: TF32 tensor cores are turned
  off for cuBLAS matmuls and cuDNN convolutions while lossgrid evaluates (torch
  leaves cuDNN convolutions on TF32 by default, which on Ampere and later GPUs
  rounds inputs to 10 mantissa bits).
* ``tf32`` allows TF32 tensor cores for fp32 matmuls and convolutions (NVIDIA
  GPUs only; there is no TF32 on CPUs, so asking for it there is an error).
* ``bf16`` runs matmuls and convolutions in bfloat16 under ``torch.autocast``
  (weights and data stay fp32; losses are reduced in fp32). On a CPU only where it
  is native (AVX-512 BF16, AMX, ARM BF16: :func:`cpu_bf16`); elsewhere torch
  emulates it far slower than fp32, so it is refused with the reason.
* ``fp16`` runs matmuls and convolutions in float16 under ``torch.autocast`` on
  NVIDIA GPUs (refused on CPUs); losses are reduced in fp32.

Precision never changes on its own: ``--backend auto`` chooses among runners of
the requested precision only. A non-fp32 surface stores its measured loss error
against fp32 at a few points (see :func:`precision_error`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from ..config import PRECISIONS
from ..errors import ConfigError

__all__ = ["PRECISIONS", "check_precision", "cpu_bf16", "precision_error", "precision_mode"]


def check_precision(precision: str, device: torch.device | str) -> None:
    """Refuse a precision the device cannot run, before any work."""
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if precision == "tf32" and torch.device(device).type != "cuda":
        raise ConfigError(f"Precision tf32 cannot run on {device}",
                          "TF32 is a mode of NVIDIA tensor cores (Ampere and later); CPUs have no TF32",
                          "use --precision fp32 (or bf16) on the CPU, or --device cuda")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ConfigError(f"Precision fp16 cannot run fast on {device}",
                          "CPUs have no fast fp16 matrix units that torch uses (it would be emulated)",
                          "use --precision fp32, or bf16 on a CPU with native bf16, or --device cuda")
    if precision == "bf16" and torch.device(device).type == "cpu":
        fast, why = cpu_bf16()
        if not fast:
            raise ConfigError("Precision bf16 would be far slower than fp32 on this CPU", why,
                              "use --precision fp32 here; bf16 pays on CPUs with AVX-512 BF16 or AMX (Intel Cooper "
                              "Lake/Sapphire Rapids and later, AMD Zen 4 and later), ARM CPUs with BF16, and GPUs")


#: a CPU counts as fast in bf16 when a bf16 matmul runs at least this share of the fp32 speed
BF16_MIN_SPEED = 0.8
_CPU_BF16: tuple[bool, str] | None = None


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 matmuls natively (``(fast, why)``), decided once per process.

    The CPU's feature flags decide where Linux reports them (``avx512_bf16`` or
    ``amx_bf16`` on x86, ``bf16`` on ARM); elsewhere a 512x512 matmul is timed in both
    precisions (a few milliseconds). Without native bf16 torch emulates it, measured
    10-100x slower than fp32 on an AVX2-only AMD EPYC.
    """
    global _CPU_BF16
    if _CPU_BF16 is None:
        flags = _cpu_flags()
        if flags is not None:
            native = sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})
            _CPU_BF16 = (bool(native), f"the CPU reports {', '.join(native)}" if native
                         else "the CPU reports neither avx512_bf16 nor amx_bf16 (nor ARM bf16) in /proc/cpuinfo: "
                              "torch would emulate bf16 in software")
        else:
            ratio = _bf16_speed()
            _CPU_BF16 = (ratio >= BF16_MIN_SPEED, f"a bf16 matmul ran at {ratio:.2f}x the fp32 speed here")
    return _CPU_BF16


def _cpu_flags() -> set[str] | None:
    """The CPU feature flags Linux reports, or ``None`` where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        return None
    return None


def _bf16_speed(n: int = 512, repeats: int = 3) -> float:
    """bf16 matmul throughput over fp32's on this CPU (best of ``repeats``)."""
    import time

    a = torch.randn(n, n)

    def best(x: torch.Tensor) -> float:
        x @ x  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            x @ x
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(a) / max(best(a.bfloat16()), 1e-9)


def _tf32_settings() -> tuple[list[tuple[object, str]], bool]:
    """The (object, attribute) pairs that decide TF32 use for fp32 matmuls and convolutions, and
    whether they are torch's newer ``fp32_precision`` strings (else the ``allow_tf32`` booleans).

    The boolean flags are used where they can be read: every torch since 1.7 honours them, and
    setting them keeps cuDNN's convolution and RNN settings consistent (with the newer API a
    conv-only setting makes any later read of ``torch.backends.cudnn.allow_tf32`` raise). Where
    the process already mixed both APIs, reading the booleans raises; then the newer settings
    are used."""
    backends = torch.backends
    try:
        _ = backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32
        return [(backends.cuda.matmul, "allow_tf32"), (backends.cudnn, "allow_tf32")], False
    except RuntimeError:
        return [(backends.cuda.matmul, "fp32_precision"), (backends.cudnn.conv, "fp32_precision")], True


@contextlib.contextmanager
def precision_mode(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the enclosed torch code at ``precision`` on ``device``; restores the
    global TF32 settings afterwards.

    Example:
        >>> with precision_mode("fp32", "cpu"):
        ...     y = torch.ones(2, 2) @ torch.ones(2, 2)
    """
    check_precision(precision, device)
    device = torch.device(device)
    settings, modern = _tf32_settings()
    saved = [getattr(obj, attr) for obj, attr in settings]
    tf32 = precision == "tf32"
    try:
        if device.type == "cuda":
            for obj, attr in settings:
                setattr(obj, attr, ("tf32" if tf32 else "ieee") if modern else tf32)
        # fp32/tf32 also switch off an enclosing autocast: fp32 means fp32 inside a bf16 region too
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        with (torch.autocast(device.type, dtype=half, cache_enabled=False) if half is not None
              else torch.autocast(device.type, enabled=False)):
            yield
    finally:
        for (obj, attr), value in zip(settings, saved):
            setattr(obj, attr, value)


def precision_error(loss: np.ndarray, loss_fp32: np.ndarray) -> dict[str, float]:
    """Error of losses at ``precision`` against fp32 at the same points."""
    loss, ref = np.asarray(loss, dtype=np.float64), np.asarray(loss_fp32, dtype=np.float64)
    diff = np.abs(loss - ref)
    rel = diff / np.maximum(np.abs(ref), 1e-12)
    return {"points": int(len(ref)), "max_abs_loss_error": float(np.max(diff)) if len(ref) else 0.0,
            "max_rel_loss_error": float(np.max(rel)) if len(ref) else 0.0}
