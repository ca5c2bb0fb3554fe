"""Build the host harness of the CUDA source with g++ and call it through ctypes.

``host_harness.cpp`` includes ``lossgrid/kernels/lossgrid_kernels.cu`` as plain C++
and exposes one function per kernel that loops over blocks and threads exactly as
the kernel's launch would. :class:`HostKernels` wraps those functions for NumPy
float32 arrays; the launch shape (grid, block) is an explicit argument so tests can
use the shapes :mod:`lossgrid.kernels.cuda` picks as well as odd ones.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

import lossgrid.kernels

KERNELS_DIR = Path(lossgrid.kernels.__file__).parent
CUDA_SOURCE = KERNELS_DIR / "lossgrid_kernels.cu"
HARNESS = Path(__file__).with_name("host_harness.cpp")
CXX = "g++"
CXX_FLAGS = ("-O2", "-shared", "-fPIC", "-std=c++17", "-Wall", "-Wextra")

_f32 = np.ctypeslib.ndpointer(dtype=np.float32, flags="C_CONTIGUOUS")
_i64 = np.ctypeslib.ndpointer(dtype=np.int64, flags="C_CONTIGUOUS")
_ll, _int, _float = ctypes.c_longlong, ctypes.c_int, ctypes.c_float


def build(out_dir: Path) -> tuple[Path, str]:
    """Compile the harness into ``out_dir``; returns the library and the compiler's
    diagnostics (empty when there were no warnings). Raises ``RuntimeError`` with
    the compiler output on failure."""
    compiler = shutil.which(CXX)
    if compiler is None:
        raise RuntimeError(f"{CXX} is not installed")
    lib = out_dir / "liblossgrid_host.so"
    cmd = [compiler, *CXX_FLAGS, "-I", str(KERNELS_DIR), str(HARNESS), "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return lib, proc.stderr


class HostKernels:
    """The harness functions with NumPy arguments (float32, C-contiguous)."""

    def __init__(self, lib_path: Path) -> None:
        lib = ctypes.CDLL(str(lib_path))
        self._perturb = lib.lg_host_perturb
        self._perturb.argtypes = [_f32, _f32, _f32, _f32, _ll, _ll, _int, _int, _int]
        self._perturb.restype = None
        self._normalize_rows = lib.lg_host_normalize_rows
        self._normalize_rows.argtypes = [_f32, _f32, _i64, _ll, _float, _int, _f32]
        self._normalize_rows.restype = _int
        self._fold = lib.lg_host_fold_conv_bn
        self._fold.argtypes = [_f32, ctypes.c_void_p, _int, _f32, _f32, _f32, _f32, _float, _ll, _ll, _f32, _f32,
                               _int, _int]
        self._fold.restype = None

    def perturb(self, base: np.ndarray, dirs: np.ndarray, coeffs: np.ndarray, grid: int, block: int) -> np.ndarray:
        """``[K, P]`` weights of the grid points, as kernel ``perturb<<<grid, block>>>``."""
        base, dirs, coeffs = (_f32_array(a) for a in (base, dirs, coeffs))
        k, p = coeffs.shape[0], base.shape[0]
        out = np.full((k, p), np.nan, dtype=np.float32)  # NaN: an element never written shows
        self._perturb(base, dirs, coeffs, out, k, p, dirs.shape[0], grid, block)
        return out

    def normalize_rows(self, d: np.ndarray, w: np.ndarray, offsets: np.ndarray, eps: float,
                       block: int) -> np.ndarray:
        """Every row scaled, as kernel ``normalize_rows<<<rows, block, 2 * block * 4>>>``."""
        d, w = _f32_array(d), _f32_array(w)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        out = np.full_like(d, np.nan)
        if self._normalize_rows(d, w, offsets, offsets.size - 1, eps, block, out) != 0:
            raise ValueError(f"block size {block} is not a power of two")
        return out

    def fold_conv_bn(self, weight: np.ndarray, bias: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray,
                     mean: np.ndarray, var: np.ndarray, eps: float, grid: int,
                     block: int) -> tuple[np.ndarray, np.ndarray]:
        """Folded ``(weight, bias)`` as kernel ``fold_conv_bn<<<grid, block>>>``."""
        weight = _f32_array(weight)
        gamma, beta, mean, var = (_f32_array(a) for a in (gamma, beta, mean, var))
        k, c = weight.shape[:2]
        channels = k * c
        inner = weight.size // channels if channels else 0
        bias_arr = None if bias is None else _f32_array(bias)
        bias_ptr = None if bias_arr is None else bias_arr.ctypes.data
        w_out = np.full_like(weight, np.nan)
        b_out = np.full((k, c), np.nan, dtype=np.float32)
        self._fold(weight, bias_ptr, int(bias is not None), gamma, beta, mean, var, eps, channels, inner, w_out,
                   b_out, grid, block)
        return w_out, b_out


def _f32_array(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)
