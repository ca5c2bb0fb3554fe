"""Devices: which ones can evaluate, and a caller's model on one without moving it.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 2)
    >>> on_device(model, resolve_device("cpu")) is model
    True
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, MissingBackendError, ResourceError, is_out_of_memory

DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """A torch device that exists on this machine, or a :class:`ConfigError`."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"Unknown device {name!r}", str(e), "pass --device cpu, cuda or cuda:N") from None
    if device.type not in DEVICE_TYPES:
        raise ConfigError(f"Device {name!r} cannot evaluate a surface",
                          f"lossgrid runs on {', '.join(DEVICE_TYPES)} devices; {device.type} holds no data",
                          "pass --device cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None
               else "torch.cuda.is_available() is False: no GPU or no NVIDIA driver is visible")
        raise MissingBackendError(f"Device {name} was requested but no CUDA GPU is usable here", why,
                                  "pass --device cpu, or run on a machine with an NVIDIA GPU and driver, a CUDA "
                                  'build of torch (see pytorch.org) and, for the CUDA kernels, pip install '
                                  '"lossgrid[gpu-cuda13]" (CUDA 13) or "lossgrid[gpu]" (CUDA 12)')
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"Device {name} does not exist", f"{torch.cuda.device_count()} GPU(s) visible",
                          "pick an index below the GPU count")
    return device


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same one (``cuda`` without an index is the current CUDA device)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.index == b.index:
        return True
    if a.type != "cuda":
        return None in (a.index, b.index)
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def on_device(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` itself where all its tensors are on ``device``; otherwise a copy there.

    The caller's module never moves (``nn.Module.to`` would move it in place). The copy is
    made tensor by tensor straight onto ``device``, so a large model is not duplicated in
    host memory on its way to a GPU; tied tensors stay tied.
    """
    tensors = [*module.parameters(), *module.buffers()]
    if all(same_device(t.device, device) for t in tensors):
        return module
    if isinstance(module, torch.jit.ScriptModule):  # copied in C++: the memo below does not reach its tensors
        return copy.deepcopy(module).to(device)
    memo: dict[int, Any] = {}
    for t in tensors:
        moved = t.detach().to(device)
        memo[id(t)] = nn.Parameter(moved, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else moved
    return copy.deepcopy(module, memo)


def out_of_memory(e: BaseException, described: dict[str, Any]) -> ResourceError:
    """The error for a device out of memory while a runner evaluated points (``described``: its settings)."""
    k, batch = described.get("points_per_call"), described.get("batch_size")
    what = f"Out of memory while evaluating {k} grid point(s) per call"
    lower = f"lower --points-per-call (now {k})"
    if batch:
        what += f" in batches of {batch} samples"
        lower += f" or --batch-size (now {batch})"
    reason = str(e).strip().splitlines()[0] if str(e).strip() else "no memory left"
    return ResourceError(what, f"{type(e).__name__}: {reason}",
                         f"{lower}; the points done so far are saved: the same command with a lower setting resumes")


@contextlib.contextmanager
def memory_errors_explained(runner: Any) -> Iterator[None]:
    """Inside the block, a device out of memory becomes :func:`out_of_memory`'s message naming ``runner``'s
    settings to lower; other errors pass as they are."""
    try:
        yield
    except Exception as e:
        if is_out_of_memory(e):
            raise out_of_memory(e, runner.describe()) from None
        raise
