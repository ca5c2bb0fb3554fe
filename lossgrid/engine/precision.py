"""Numeric precision of an evaluation: ``fp32`` (IEEE), ``tf32`` or ``bf16``.

* ``fp32`` means IEEE single precision everywhere: TF32 tensor cores are turned
  off for cuBLAS matmuls and cuDNN convolutions while lossgrid evaluates (torch
  leaves cuDNN convolutions on TF32 by default, which on Ampere and later GPUs
  rounds inputs to 10 mantissa bits).
* ``tf32`` allows TF32 tensor cores for fp32 matmuls and convolutions (NVIDIA
  GPUs only; there is no TF32 on CPUs, so asking for it there is an error).
* ``bf16`` runs matmuls and convolutions in bfloat16 under ``torch.autocast``
  (weights and data stay fp32; losses are reduced in fp32).

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

__all__ = ["PRECISIONS", "check_precision", "precision_error", "precision_mode"]


def check_precision(precision: str, device: torch.device | str) -> None:
    """Refuse a precision the device cannot run, before any work."""
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if precision == "tf32" and torch.device(device).type != "cuda":
        raise ConfigError(f"Precision tf32 cannot run on {device}",
                          "TF32 is a mode of NVIDIA tensor cores (Ampere and later); CPUs have no TF32",
                          "use --precision fp32 (or bf16) on the CPU, or --device cuda")


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
        with (torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
              if precision == "bf16" else contextlib.nullcontext()):
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
