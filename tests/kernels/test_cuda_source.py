"""The CUDA source (lossgrid/kernels/lossgrid_kernels.cu) without a GPU.

The host harness (host_harness.cpp, built with g++) runs the kernels' per-element
``__host__ __device__`` functions with the kernels' own block/thread loops; its
results are checked against the NumPy float64 oracle on float32 inputs. A separate
test compiles the source with nvcc (no GPU needed to compile).

Tolerances (float32 kernels vs the float64 oracle on the same float32 inputs):
* perturb, D=1: one fused multiply-add, so within 1 ulp (rtol 2**-23, atol 0);
  D=2: rtol 2e-6, atol 2e-6.
* normalize_rows: rtol 1e-5, atol 1e-7 (float32 sums of squares over rows of up
  to 3e5 elements).
* fold_conv_bn: weights rtol 1e-6; biases rtol 1e-6, atol 1e-6 (beta and
  (b - mean) * s may cancel). NaN exactly where the oracle has NaN.
"""

from __future__ import annotations

import contextlib
import re
import subprocess

import numpy as np
import pytest
import torch

from lossgrid.kernels import cpu, cuda, reference

from ._host_build import CUDA_SOURCE, HostKernels, build

SM_COUNT = 132  # an H100/H200-sized GPU: the launch shapes cuda.py would pick there
KERNELS = ("perturb", "normalize_rows", "fold_conv_bn")
SHAPES = [(4, 3, 3, 3), (5, 7), (6,), (), (2, 3, 5), (64, 1, 1, 1), (3, 0), (0,)]


@pytest.fixture(scope="session")
def host_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[HostKernels, str]:
    lib, diagnostics = build(tmp_path_factory.mktemp("host_harness"))
    return HostKernels(lib), diagnostics


@pytest.fixture
def host(host_build: tuple[HostKernels, str]) -> HostKernels:
    return host_build[0]


def _f32(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.cxx
def test_harness_compiles_without_warnings(host_build):
    assert host_build[1] == ""


@pytest.mark.cxx
@pytest.mark.parametrize("ndir", [1, 2])
@pytest.mark.parametrize("k,p", [(1, 1000), (7, 1000), (3, 100_003)])
@pytest.mark.parametrize("launch", ["default", "small"])
def test_perturb_matches_reference(host, ndir, k, p, launch):
    rng = np.random.default_rng(10 * ndir + k)
    base, dirs, coeffs = _f32(rng, p), _f32(rng, ndir, p), _f32(rng, k, ndir)
    grid, block = (cuda.elementwise_grid(k * p, SM_COUNT), cuda.ELEMENTWISE_BLOCK) if launch == "default" else (3, 32)
    got = host.perturb(base, dirs, coeffs, grid, block)
    want = reference.perturb(base, dirs, coeffs)
    assert not np.isnan(got).any()  # every element written by the grid-stride loop
    if ndir == 1:
        np.testing.assert_allclose(got, want, rtol=2**-23, atol=0)
    else:
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    torch_got = cpu.perturb(torch.from_numpy(base), torch.from_numpy(dirs), torch.from_numpy(coeffs))
    np.testing.assert_allclose(got, torch_got.numpy(), rtol=2e-6, atol=2e-6)


@pytest.mark.cxx
def test_perturb_launch_shape_does_not_change_results(host):
    rng = np.random.default_rng(5)
    base, dirs, coeffs = _f32(rng, 4099), _f32(rng, 2, 4099), _f32(rng, 5, 2)
    first = host.perturb(base, dirs, coeffs, 1, 32)
    for grid, block in [(7, 64), (cuda.elementwise_grid(5 * 4099, SM_COUNT), 256), (1000, 1024)]:
        np.testing.assert_array_equal(host.perturb(base, dirs, coeffs, grid, block), first)


@pytest.mark.cxx
@pytest.mark.parametrize("norm", ["filter", "layer"])
@pytest.mark.parametrize("block", ["default", 32, 256])
def test_normalize_rows_matches_reference(host, norm, block):
    rng = np.random.default_rng(1)
    shapes = [*SHAPES, (1000, 301), (300_001,)]
    offsets = reference.row_offsets(shapes, norm)
    d, w = _f32(rng, int(offsets[-1])), _f32(rng, int(offsets[-1]), scale=3.0)
    threads = cuda.row_block(int(np.diff(offsets).max())) if block == "default" else block
    got = host.normalize_rows(d, w, offsets, cuda.EPS, threads)
    want = reference.normalize_flat(d, w, offsets, norm)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    torch_got = cpu.normalize_flat(torch.from_numpy(d), torch.from_numpy(w), offsets, norm)
    np.testing.assert_allclose(got, torch_got.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.cxx
@pytest.mark.parametrize("norm", ["filter", "layer"])
def test_normalize_rows_equals_per_tensor_reference(host, norm):
    rng = np.random.default_rng(2)
    ds = [_f32(rng, *s) for s in SHAPES]
    ws = [_f32(rng, *s) for s in SHAPES]
    offsets = reference.row_offsets(SHAPES, norm)
    flat = host.normalize_rows(np.concatenate([x.ravel() for x in ds]), np.concatenate([x.ravel() for x in ws]),
                               offsets, cuda.EPS, cuda.row_block(int(np.diff(offsets).max())))
    want = np.concatenate([reference.normalize_direction(d, w, norm).ravel() for d, w in zip(ds, ws)])
    np.testing.assert_allclose(flat, want, rtol=1e-5, atol=1e-7)


@pytest.mark.cxx
def test_all_zero_filters_stay_zero(host):
    d = np.array([[0, 0, 0], [1, 2, 2], [1, 1, 1], [0, 0, 0]], dtype=np.float32)
    w = np.array([[1, 2, 2], [0, 0, 0], [2, 0, 0], [0, 0, 0]], dtype=np.float32)
    offsets = reference.row_offsets([d.shape], "filter")
    out = host.normalize_rows(d.ravel(), w.ravel(), offsets, cuda.EPS, 32).reshape(d.shape)
    assert np.all(out[[0, 1, 3]] == 0)
    np.testing.assert_allclose(np.linalg.norm(out[2]), 2.0, rtol=1e-6)
    np.testing.assert_allclose(out, reference.normalize_direction(d, w, "filter"), rtol=1e-6, atol=0)


@pytest.mark.cxx
def test_normalize_rows_rejects_block_that_is_not_a_power_of_two(host):
    with pytest.raises(ValueError, match="power of two"):
        host.normalize_rows(np.ones(4, np.float32), np.ones(4, np.float32), np.array([0, 4]), cuda.EPS, 48)


@pytest.mark.cxx
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("wshape", [(3, 6, 4, 3, 3), (3, 6, 4, 5), (3, 6, 8), (2, 5), (1, 1000, 3)])
@pytest.mark.parametrize("launch", ["default", "small"])
def test_fold_conv_bn_matches_reference(host, with_bias, wshape, launch):
    rng = np.random.default_rng(4)
    k, c = wshape[:2]
    w = _f32(rng, *wshape)
    b = _f32(rng, k, c) if with_bias else None
    gamma, beta, mean = (_f32(rng, k, c) for _ in range(3))
    var = (rng.random((k, c)) + 0.1).astype(np.float32)
    var[0, 0] = -0.5  # a perturbed variance can turn negative: NaN, as BatchNorm gives
    grid = cuda.elementwise_grid(w.size, SM_COUNT) if launch == "default" else 2
    block = cuda.ELEMENTWISE_BLOCK if launch == "default" else 32
    got_w, got_b = host.fold_conv_bn(w, b, gamma, beta, mean, var, 1e-5, grid, block)
    with np.errstate(invalid="ignore"):
        want_w, want_b = reference.fold_conv_bn(w, b, gamma, beta, mean, var, 1e-5)
    np.testing.assert_array_equal(np.isnan(got_w), np.isnan(want_w))
    np.testing.assert_array_equal(np.isnan(got_b), np.isnan(want_b))
    assert np.isnan(got_w[0, 0]).all() and np.isnan(got_b[0, 0])
    np.testing.assert_allclose(got_w, want_w, rtol=1e-6, atol=0)  # NaNs compare equal here
    np.testing.assert_allclose(got_b, want_b, rtol=1e-6, atol=1e-6)


def test_launch_shapes():
    assert cuda.elementwise_grid(1, 132) == 1
    assert cuda.elementwise_grid(1000, 132) == 4
    assert cuda.elementwise_grid(10**9, 132) == 132 * cuda.BLOCKS_PER_SM
    assert [cuda.row_block(n) for n in (0, 1, 32, 33, 100, 256, 10**6)] == [32, 32, 32, 64, 128, 256, 256]


def test_kernel_source_is_packaged_and_names_the_kernels():
    source = cuda.kernel_source()
    assert source == CUDA_SOURCE.read_text(encoding="utf-8")
    for name in KERNELS:
        assert re.search(rf'extern "C" __global__ void {name}\(', source)


@pytest.mark.nvcc
@pytest.mark.parametrize("output", ["--ptx", "-cubin"])
def test_nvcc_compiles_the_kernels(tmp_path, output):
    target = tmp_path / ("kernels.ptx" if output == "--ptx" else "kernels.cubin")
    cmd = ["nvcc", "-std=c++17", "-arch=sm_90", output, "-o", str(target), str(CUDA_SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr
    data = target.read_bytes()
    for name in KERNELS:
        if output == "--ptx":
            assert re.search(rf"\.visible \.entry {name}\(".encode(), data), name
        else:
            assert b"\0" + name.encode() + b"\0" in data, name


# ---------------------------------------------------------------------------------
# lossgrid.kernels.cuda's launches, run on the host build: the Python side passes
# arguments of the kernels' C types in the kernels' order, with launch shapes the
# kernels accept. CuPy, devices and streams are replaced; the arrays are CPU tensors.

_CTYPES = {"float": np.float32, "long long": np.int64, "int": np.int32}


def _kernel_signatures() -> dict[str, list[tuple[str, bool, bool]]]:
    """name -> [(C base type, is pointer, is const)] from the CUDA source."""
    found = re.findall(r'extern "C" __global__ void (\w+)\(([^)]*)\)', CUDA_SOURCE.read_text(encoding="utf-8"))
    signatures = {}
    for name, params in found:
        parsed = []
        for param in params.split(","):
            words = param.replace("*", " * ").replace("__restrict__", "").split()[:-1]  # drop the name
            base = " ".join(w for w in words if w not in ("const", "*"))
            parsed.append((base, "*" in words, "const" in words))
        signatures[name] = parsed
    return signatures


class _HostLaunch:
    """Stands in for a CuPy RawKernel: checks the arguments against the kernel's C
    signature, then runs the host build with the same launch shape."""

    def __init__(self, name: str, signature: list[tuple[str, bool, bool]], host: HostKernels) -> None:
        self.name, self.signature, self.host = name, signature, host
        self.launches: list[tuple[tuple, tuple, int]] = []

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        assert len(args) == len(self.signature), self.name
        for arg, (base, pointer, _const) in zip(args, self.signature):
            if pointer:
                assert isinstance(arg, np.ndarray) and arg.dtype == _CTYPES[base] and arg.flags.c_contiguous
            else:
                assert type(arg) is _CTYPES[base], (self.name, base, type(arg))
        (g,), (b,) = grid, block
        self.launches.append((grid, block, shared_mem))
        if self.name == "perturb":
            self.host._perturb(*args, g, b)
        elif self.name == "normalize_rows":
            assert b & (b - 1) == 0 and shared_mem == 2 * b * 4
            d, w, offsets, eps, out = args
            assert self.host._normalize_rows(d, w, offsets, g, eps, b, out) == 0
        else:
            assert shared_mem == 0
            self.host._fold(args[0], args[1].ctypes.data, *args[2:], g, b)


@pytest.fixture
def host_launches(host, monkeypatch) -> dict[str, _HostLaunch]:
    launches = {name: _HostLaunch(name, sig, host) for name, sig in _kernel_signatures().items()}
    assert set(launches) == set(KERNELS)

    def check(device=None, **tensors):
        assert all(t.dtype == torch.float32 for t in tensors.values())
        return torch.device("cpu")

    monkeypatch.setattr(cuda, "_cupy", lambda: None)
    monkeypatch.setattr(cuda, "_check_tensors", check)
    monkeypatch.setattr(cuda, "_launch", lambda cp, device: contextlib.nullcontext((launches, SM_COUNT)))
    monkeypatch.setattr(cuda, "_view", lambda cp, t: t.detach().numpy())
    return launches


@pytest.mark.cxx
def test_cuda_module_launches_run_on_the_host_build(host_launches):
    gen = torch.Generator().manual_seed(9)
    base, dirs = torch.randn(10_007, generator=gen), torch.randn(2, 10_007, generator=gen)
    coeffs = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    out = torch.empty(6, 10_007)
    assert cuda.perturb(base, dirs, coeffs, out=out) is out
    want = reference.perturb(base.numpy(), dirs.numpy(), coeffs.float().numpy())
    np.testing.assert_allclose(out.numpy(), want, rtol=2e-6, atol=2e-6)
    assert host_launches["perturb"].launches == [((cuda.elementwise_grid(out.numel(), SM_COUNT),),
                                                  (cuda.ELEMENTWISE_BLOCK,), 0)]

    for norm in ("filter", "layer", "weight", "none"):
        shapes = [(8, 3, 3), (8,), (), (5, 40)]
        offsets = cuda.row_offsets(shapes, norm)
        d, w = torch.randn(int(offsets[-1]), generator=gen), torch.randn(int(offsets[-1]), generator=gen)
        got = cuda.normalize_flat(d, w, offsets, norm)
        want = reference.normalize_flat(d.numpy(), w.numpy(), offsets, norm)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)
        one = cuda.normalize_direction(d[:72].view(8, 3, 3), w[:72].view(8, 3, 3), norm)
        np.testing.assert_allclose(one.numpy(), reference.normalize_direction(
            d[:72].view(8, 3, 3).numpy(), w[:72].view(8, 3, 3).numpy(), norm), rtol=1e-5, atol=1e-7)
    assert [launch[0] for launch in host_launches["normalize_rows"].launches] == [(22,), (8,), (4,), (1,)]
    strided = torch.randn(2, 90, generator=gen)  # non-contiguous inputs reach the kernels densely
    got = cuda.normalize_flat(strided[0, ::2], strided[1, ::2], np.array([0, 45]), "layer")
    np.testing.assert_allclose(got.numpy(), reference.normalize_flat(
        strided[0, ::2].numpy(), strided[1, ::2].numpy(), np.array([0, 45]), "layer"), rtol=1e-5, atol=1e-7)
    got = cuda.perturb(strided[0, ::2], strided[:, 1::2], torch.ones(1, 2))
    np.testing.assert_allclose(got.numpy()[0], (strided[0, ::2] + strided[:, 1::2].sum(0)).numpy(), rtol=1e-6)

    for bias in (torch.randn(2, 4, generator=gen), None):
        w = torch.randn(2, 4, 3, 3, generator=gen)
        gamma, beta, mean = (torch.randn(2, 4, generator=gen) for _ in range(3))
        var = torch.rand(2, 4, generator=gen) + 0.1
        got_w, got_b = cuda.fold_conv_bn(w, bias, gamma, beta, mean, var, 1e-5)
        want_w, want_b = reference.fold_conv_bn(w.numpy(), None if bias is None else bias.numpy(),
                                                *(t.numpy() for t in (gamma, beta, mean, var)), 1e-5)
        np.testing.assert_allclose(got_w.numpy(), want_w, rtol=1e-6, atol=0)
        np.testing.assert_allclose(got_b.numpy(), want_b, rtol=1e-6, atol=1e-6)
    assert len(host_launches["fold_conv_bn"].launches) == 2
