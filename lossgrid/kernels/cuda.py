"""CuPy kernels for CUDA tensors: the functions and contract of :mod:`lossgrid.kernels.cpu`.

Arguments and results are torch CUDA tensors (float32, one device). They are handed
to CuPy without copies through DLPack, and every kernel is launched on torch's
current CUDA stream of that device, so the work is ordered with the surrounding
torch operations and no synchronisation is needed. The kernels are those of
``lossgrid_kernels.cu`` (next to this file), compiled by NVRTC through
:class:`cupy.RawModule` on first use and cached per device.

CUDA graphs: :func:`perturb` with ``out=`` given (and ``coeffs`` already a float32
contiguous tensor on the device) allocates nothing and never synchronises: it is
one kernel launch, so it can be captured with :class:`torch.cuda.CUDAGraph` and
replayed after writing new coefficients into the same ``coeffs`` buffer. Call it
once before capturing (the first call compiles and loads the module, which a
capture does not allow).

CuPy is imported inside the functions (``pip install "lossgrid[gpu]"``); importing
this module needs only torch and NumPy.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import numpy as np
import torch

from .._optional import require
from ..errors import ConfigError
from .cpu import EPS, check_offsets, row_offsets

__all__ = ["EPS", "fold_conv_bn", "kernel_source", "normalize_direction", "normalize_flat", "perturb",
           "row_offsets"]

SOURCE_FILE = "lossgrid_kernels.cu"
KERNEL_NAMES = ("perturb", "normalize_rows", "fold_conv_bn")
COMPILE_OPTIONS = ("-std=c++17",)
ELEMENTWISE_BLOCK = 256  # threads per block of the grid-stride kernels
BLOCKS_PER_SM = 8  # grid-stride kernels get this many blocks per multiprocessor at most
MAX_ROW_BLOCK = 256  # threads per block (one row) of normalize_rows, at most
MIN_ROW_BLOCK = 32  # ... and at least (one warp)

_lock = threading.Lock()
_compiled: dict[int, tuple[dict[str, Any], int]] = {}  # device index -> (kernels by name, SM count)


def kernel_source() -> str:
    """The CUDA C++ source of the kernels (shipped as package data)."""
    return resources.files(__package__).joinpath(SOURCE_FILE).read_text(encoding="utf-8")


def elementwise_grid(n: int, sm_count: int, block: int = ELEMENTWISE_BLOCK) -> int:
    """Blocks for a grid-stride kernel over ``n`` elements: enough for one element
    per thread, but at most ``BLOCKS_PER_SM`` per multiprocessor (then each thread
    loops)."""
    return max(1, min(-(-n // block), BLOCKS_PER_SM * max(1, sm_count)))


def row_block(max_row_length: int) -> int:
    """Threads per block of ``normalize_rows`` (a power of two, as its reduction
    needs): the longest row rounded up to a power of two, within
    ``[MIN_ROW_BLOCK, MAX_ROW_BLOCK]``."""
    block = MIN_ROW_BLOCK
    while block < max_row_length and block < MAX_ROW_BLOCK:
        block *= 2
    return block


def normalize_direction(d: torch.Tensor, w: torch.Tensor, norm: str) -> torch.Tensor:
    """:func:`lossgrid.kernels.cpu.normalize_direction` for one CUDA tensor (float32);
    returns a new tensor."""
    if d.shape != w.shape:
        raise ConfigError(f"Direction of shape {tuple(d.shape)} does not match weights {tuple(w.shape)}")
    flat = normalize_flat(d.reshape(-1), w.reshape(-1), row_offsets([tuple(d.shape)], norm), norm)
    return flat.view(d.shape)


def normalize_flat(d: torch.Tensor, w: torch.Tensor, offsets: np.ndarray, norm: str) -> torch.Tensor:
    """:func:`lossgrid.kernels.cpu.normalize_flat` on the GPU: all rows (filters or
    tensors) in one launch of ``normalize_rows``, one block per row.

    Args:
        d: flat direction ``[P]``, float32 on a CUDA device.
        w: flat weights ``[P]``, same device and dtype.
        offsets: row boundaries from :func:`row_offsets` for ``norm``.
        norm: ``filter``, ``layer``, ``weight`` or ``none``.
    """
    if d.shape != w.shape or d.dim() != 1:
        raise ConfigError(f"Expected flat direction and weights of one shape [P], got {tuple(d.shape)} "
                          f"and {tuple(w.shape)}")
    device = _check_tensors(d=d, w=w)
    if norm == "none":
        return d.clone()
    if norm == "weight":
        return d * w
    if norm not in ("filter", "layer"):
        raise ConfigError(f"Unknown normalization {norm!r}", hint="use filter, layer, weight or none")
    offsets = check_offsets(offsets, d.shape[0])
    d, w = d.contiguous(), w.contiguous()  # the kernel indexes densely (no copy when already so)
    out = torch.empty_like(d)
    rows = offsets.size - 1
    if rows == 0 or d.numel() == 0:
        return out
    block = row_block(int(np.diff(offsets).max()))
    cp = _cupy()
    with _launch(cp, device) as (kernels, _):
        offsets_dev = torch.from_numpy(offsets).to(device)
        args = (_view(cp, d), _view(cp, w), _view(cp, offsets_dev), np.float32(EPS), _view(cp, out))
        kernels["normalize_rows"]((rows,), (block,), args, shared_mem=2 * block * 4)
    return out


def fold_conv_bn(weight: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor, beta: torch.Tensor,
                 mean: torch.Tensor, var: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lossgrid.kernels.cpu.fold_conv_bn` on the GPU in one launch.

    ``weight`` is ``[K, Cout, ...]``; ``bias`` (or ``None``), ``gamma``, ``beta``,
    ``mean``, ``var`` are ``[K, Cout]``; all float32 on one CUDA device. Returns new
    ``(weight', bias')``; a negative variance gives NaN.
    """
    tensors = {"gamma": gamma, "beta": beta, "mean": mean, "var": var}
    if bias is not None:
        tensors["bias"] = bias
    device = _check_tensors(weight=weight, **tensors)
    if weight.dim() < 2:
        raise ConfigError(f"Expected weights [K, Cout, ...], got shape {tuple(weight.shape)}")
    k, c = weight.shape[:2]
    for name, t in tensors.items():
        if t.shape != (k, c):
            raise ConfigError(f"Expected {name} of shape {(k, c)} to match the weights, got {tuple(t.shape)}")
    weight = weight.contiguous()
    w_out = torch.empty_like(weight)
    b_out = torch.empty((k, c), dtype=torch.float32, device=device)
    channels = k * c
    if channels == 0:
        return w_out, b_out
    inner = weight.numel() // channels
    cp = _cupy()
    with _launch(cp, device) as (kernels, sm_count):
        grid = elementwise_grid(max(weight.numel(), channels), sm_count)
        views = {name: _view(cp, t.contiguous()) for name, t in tensors.items()}
        args = (_view(cp, weight), views.get("bias", views["mean"]), np.int32(bias is not None), views["gamma"],
                views["beta"], views["mean"], views["var"], np.float32(eps), np.int64(channels),
                np.int64(inner), _view(cp, w_out), _view(cp, b_out))
        kernels["fold_conv_bn"]((grid,), (ELEMENTWISE_BLOCK,), args)
    return w_out, b_out


def perturb(base: torch.Tensor, dirs: torch.Tensor, coeffs: torch.Tensor,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Weights of ``K`` grid points, ``base[None] + coeffs @ dirs``, in one launch.

    Args:
        base: flat weights ``[P]``, float32 on a CUDA device.
        dirs: flat directions ``[D, P]``, same device and dtype.
        coeffs: grid coefficients ``[K, D]``; converted to float32 on the device
            (no copy when it already is one, contiguous).
        out: optional float32 contiguous ``[K, P]`` buffer on the device to write
            into. With ``out`` given nothing is allocated and nothing synchronises,
            so the call can be captured in a CUDA graph (see the module docstring).

    Example:
        >>> out = torch.empty(k, p, device="cuda")
        >>> perturb(base, dirs, coeffs, out=out)  # warm-up, then capture
    """
    device = _check_tensors(base=base, dirs=dirs)
    if base.dim() != 1 or dirs.dim() != 2 or dirs.shape[1] != base.shape[0]:
        raise ConfigError(f"Expected base [P] and dirs [D, P], got {tuple(base.shape)} and {tuple(dirs.shape)}")
    num_dirs = dirs.shape[0]
    if coeffs.dim() != 2 or coeffs.shape[1] != num_dirs:
        raise ConfigError(f"Expected coeffs [K, {num_dirs}], got {tuple(coeffs.shape)}")
    coeffs = coeffs.to(dtype=torch.float32, device=device).contiguous()  # no-op when it already is
    num_points = coeffs.shape[0]
    num_params = base.shape[0]
    if out is None:
        out = torch.empty((num_points, num_params), dtype=torch.float32, device=device)
    else:
        _check_tensors(out=out, device=device)
        if out.shape != (num_points, num_params) or not out.is_contiguous():
            raise ConfigError(f"Expected a contiguous out buffer of shape {(num_points, num_params)}, "
                              f"got {tuple(out.shape)}")
    if out.numel() == 0:
        return out
    base, dirs = base.contiguous(), dirs.contiguous()
    cp = _cupy()
    with _launch(cp, device) as (kernels, sm_count):
        grid = elementwise_grid(out.numel(), sm_count)
        args = (_view(cp, base), _view(cp, dirs), _view(cp, coeffs), _view(cp, out), np.int64(num_points),
                np.int64(num_params), np.int32(num_dirs))
        kernels["perturb"]((grid,), (ELEMENTWISE_BLOCK,), args)
    return out


# ---------------------------------------------------------------------------------
# Helpers: CuPy import, compiled module per device, stream, zero-copy views.


def _cupy() -> Any:
    return require("cupy", "gpu", "The CUDA kernels")


def _check_tensors(device: torch.device | None = None, **tensors: torch.Tensor) -> torch.device:
    """The common CUDA device of ``tensors`` (all float32; at least one), or
    :class:`ConfigError`."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.device.type != "cuda":
            where = t.device if isinstance(t, torch.Tensor) else type(t).__name__
            raise ConfigError(f"The CUDA kernels got {name} on {where}",
                              hint="move the tensors to a CUDA device, or use lossgrid.kernels.cpu")
        if t.dtype != torch.float32:
            raise ConfigError(f"The CUDA kernels got {name} of dtype {t.dtype}; they compute in float32",
                              hint="convert with .float(), or use lossgrid.kernels.cpu for other dtypes")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ConfigError(f"The CUDA kernels got {name} on {t.device} but other arguments on {device}",
                              hint="put all arguments on one device")
    if device is None:
        raise ConfigError("The CUDA kernels got no tensor")
    return device


def _compiled_for(cp: Any, device: torch.device) -> tuple[dict[str, Any], int]:
    """The kernels and SM count of ``device``, compiled and loaded on first use."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _lock:
        if index not in _compiled:
            with cp.cuda.Device(index):
                module = cp.RawModule(code=kernel_source(), options=COMPILE_OPTIONS)
                kernels = {name: module.get_function(name) for name in KERNEL_NAMES}
                sm_count = int(cp.cuda.Device(index).attributes["MultiProcessorCount"])
            _compiled[index] = (kernels, sm_count)
        return _compiled[index]


@contextmanager
def _launch(cp: Any, device: torch.device) -> Iterator[tuple[dict[str, Any], int]]:
    """Make ``device`` current for torch and CuPy, and CuPy's current stream torch's
    current stream there; yields the compiled kernels and the SM count."""
    compiled = _compiled_for(cp, device)
    with torch.cuda.device(device), cp.cuda.Device(device.index):
        torch_stream = torch.cuda.current_stream(device)
        if hasattr(cp.cuda.Stream, "from_external"):  # CuPy >= 14 (ExternalStream is deprecated there)
            # through the CUDA stream protocol, which torch's own streams implement only since ~2.10
            stream = cp.cuda.Stream.from_external(_StreamHandle(torch_stream.cuda_stream))
        else:
            stream = cp.cuda.ExternalStream(torch_stream.cuda_stream, device.index)
        with stream:
            yield compiled


class _StreamHandle:
    """A raw ``cudaStream_t`` offered through the CUDA stream protocol (``__cuda_stream__``
    returns ``(version, handle)``), as CuPy 14's ``Stream.from_external`` expects."""

    def __init__(self, handle: int) -> None:
        self.handle = int(handle)

    def __cuda_stream__(self) -> tuple[int, int]:
        return 0, self.handle


def ensure_compiled(device: torch.device | str) -> None:
    """Compile and load the kernels for ``device`` now (CuPy's NVRTC); raises what CuPy raises."""
    _compiled_for(_cupy(), torch.device(device))


def _view(cp: Any, t: torch.Tensor) -> Any:
    """A CuPy array sharing ``t``'s memory. ``stream=-1``: the producer does not
    synchronise (both sides use torch's current stream)."""
    return cp.from_dlpack(t.detach().__dlpack__(stream=-1))
