"""The CuPy kernels (lossgrid.kernels.cuda) on a GPU: against the NumPy oracle, the
torch kernels and the host build of the same CUDA source; CUDA-graph capture.

Every test needs CuPy and a GPU (``cupy`` marker; tests/conftest.py skips them
otherwise). CuPy itself is only imported inside tests.

Tolerances as in test_cuda_source.py (float32 vs the float64 oracle): perturb
rtol 2e-6 / atol 2e-6; normalization rtol 1e-5 / atol 1e-7; fold weights rtol 1e-6,
biases rtol 1e-6 / atol 1e-6. Against the host build with the same launch shape
the results are expected bit for bit (no fast math; fmaf and IEEE sqrt/div).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lossgrid.kernels import cpu, cuda, reference

pytestmark = pytest.mark.cupy

DEVICE = "cuda"
SHAPES = [(4, 3, 3, 3), (5, 7), (6,), (), (2, 3, 5), (64, 1, 1, 1), (3, 0)]
NORMS = ["filter", "layer", "weight", "none"]


def _randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen) * scale).to(DEVICE)


@pytest.fixture(scope="session")
def host_gpu_twin(tmp_path_factory: pytest.TempPathFactory):
    """The host build of the same CUDA source (only for tests also marked ``cxx``)."""
    from ._host_build import HostKernels, build

    return HostKernels(build(tmp_path_factory.mktemp("host_harness_gpu"))[0])


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_normalize_direction_matches_reference_and_torch(norm, shape):
    gen = torch.Generator().manual_seed(1)
    d, w = _randn(gen, *shape), _randn(gen, *shape, scale=2.0)
    got = cuda.normalize_direction(d, w, norm)
    assert got.shape == d.shape and got.device == d.device
    assert d.numel() == 0 or got.data_ptr() != d.data_ptr()
    want = reference.normalize_direction(d.cpu().numpy(), w.cpu().numpy(), norm)
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got, cpu.normalize_direction(d, w, norm), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("norm", NORMS)
def test_normalize_flat_equals_per_tensor(norm):
    gen = torch.Generator().manual_seed(2)
    shapes = [*SHAPES, (1000, 301), (300_001,)]
    ds = [_randn(gen, *s) for s in shapes]
    ws = [_randn(gen, *s, scale=3.0) for s in shapes]
    ds[0][1] = 0  # all-zero filters of the direction and of the weights
    ws[0][2] = 0
    flat_d = torch.cat([d.reshape(-1) for d in ds])
    flat_w = torch.cat([w.reshape(-1) for w in ws])
    offsets = cuda.row_offsets(shapes, norm)
    got = cuda.normalize_flat(flat_d, flat_w, offsets, norm)
    per_tensor = torch.cat([cuda.normalize_direction(d, w, norm).reshape(-1) for d, w in zip(ds, ws)])
    torch.testing.assert_close(got, per_tensor, rtol=1e-5, atol=1e-7)  # other block sizes: may round differently
    want = reference.normalize_flat(flat_d.cpu().numpy(), flat_w.cpu().numpy(), offsets, norm)
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got, cpu.normalize_flat(flat_d, flat_w, offsets, norm), rtol=1e-5, atol=1e-7)
    if norm == "filter":
        assert torch.all(got[offsets[1]:offsets[3]] == 0)  # filters 1 and 2 of the first tensor


@pytest.mark.cxx
@pytest.mark.parametrize("norm", ["filter", "layer"])
def test_normalize_rows_equals_host_build(host_gpu_twin, norm):
    gen = torch.Generator().manual_seed(3)
    shapes = [*SHAPES, (1000, 301), (300_001,)]
    offsets = cuda.row_offsets(shapes, norm)
    d, w = _randn(gen, int(offsets[-1])), _randn(gen, int(offsets[-1]))
    got = cuda.normalize_flat(d, w, offsets, norm).cpu().numpy()
    block = cuda.row_block(int(np.diff(offsets).max()))
    twin = host_gpu_twin.normalize_rows(d.cpu().numpy(), w.cpu().numpy(), offsets, cuda.EPS, block)
    np.testing.assert_array_equal(got, twin)


@pytest.mark.cxx
def test_perturb_and_fold_equal_host_build(host_gpu_twin):
    gen = torch.Generator().manual_seed(8)
    base, dirs, coeffs = _randn(gen, 100_003), _randn(gen, 2, 100_003), _randn(gen, 5, 2)
    sm_count = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    grid = cuda.elementwise_grid(5 * 100_003, sm_count)
    twin = host_gpu_twin.perturb(*(t.cpu().numpy() for t in (base, dirs, coeffs)), grid, cuda.ELEMENTWISE_BLOCK)
    np.testing.assert_array_equal(cuda.perturb(base, dirs, coeffs).cpu().numpy(), twin)
    w, b = _randn(gen, 3, 6, 4, 3, 3), _randn(gen, 3, 6)
    gamma, beta, mean = (_randn(gen, 3, 6) for _ in range(3))
    var = torch.rand(3, 6, generator=gen).to(DEVICE)
    got_w, got_b = cuda.fold_conv_bn(w, b, gamma, beta, mean, var, 1e-5)
    twin_w, twin_b = host_gpu_twin.fold_conv_bn(*(t.cpu().numpy() for t in (w, b, gamma, beta, mean, var)), 1e-5,
                                                cuda.elementwise_grid(w.numel(), sm_count), cuda.ELEMENTWISE_BLOCK)
    np.testing.assert_array_equal(got_w.cpu().numpy(), twin_w)
    np.testing.assert_array_equal(got_b.cpu().numpy(), twin_b)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("wshape", [(3, 6, 4, 3, 3), (3, 6, 4, 5), (3, 6, 8), (2, 5)])
def test_fold_conv_bn_matches_reference_and_torch(with_bias, wshape):
    gen = torch.Generator().manual_seed(4)
    k, c = wshape[:2]
    w = _randn(gen, *wshape)
    b = _randn(gen, k, c) if with_bias else None
    gamma, beta, mean = (_randn(gen, k, c) for _ in range(3))
    var = torch.rand(k, c, generator=gen).to(DEVICE) + 0.1
    var[0, 0] = -0.5  # negative perturbed variance -> NaN, like the oracle and BatchNorm
    got_w, got_b = cuda.fold_conv_bn(w, b, gamma, beta, mean, var, 1e-5)
    with np.errstate(invalid="ignore"):
        want_w, want_b = reference.fold_conv_bn(w.cpu().numpy(), None if b is None else b.cpu().numpy(),
                                                *(t.cpu().numpy() for t in (gamma, beta, mean, var)), 1e-5)
    assert torch.isnan(got_w[0, 0]).all() and torch.isnan(got_b[0, 0])
    np.testing.assert_allclose(got_w.cpu().numpy(), want_w, rtol=1e-6, atol=0)
    np.testing.assert_allclose(got_b.cpu().numpy(), want_b, rtol=1e-6, atol=1e-6)
    torch_w, torch_b = cpu.fold_conv_bn(w, b, gamma, beta, mean, var, 1e-5)
    torch.testing.assert_close(got_w, torch_w, rtol=1e-6, atol=1e-7, equal_nan=True)
    torch.testing.assert_close(got_b, torch_b, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("ndir", [1, 2])
@pytest.mark.parametrize("k,p", [(1, 1000), (7, 1000), (3, 100_003)])
def test_perturb_matches_reference_and_torch(ndir, k, p):
    gen = torch.Generator().manual_seed(5)
    base, dirs = _randn(gen, p), _randn(gen, ndir, p)
    coeffs = torch.randn(k, ndir, generator=gen, dtype=torch.float64)  # converted like the torch kernels do
    got = cuda.perturb(base, dirs, coeffs)
    assert got.shape == (k, p) and got.dtype == torch.float32 and got.device == base.device
    want = reference.perturb(base.cpu().numpy(), dirs.cpu().numpy(), coeffs.float().numpy())
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(got, cpu.perturb(base, dirs, coeffs), rtol=2e-6, atol=2e-6)
    out = torch.full((k, p), float("nan"), device=DEVICE)
    assert cuda.perturb(base, dirs, coeffs, out=out) is out
    torch.testing.assert_close(out, got, rtol=0, atol=0)


def test_perturb_with_out_allocates_nothing():
    import cupy

    gen = torch.Generator().manual_seed(6)
    base, dirs, coeffs = _randn(gen, 5000), _randn(gen, 2, 5000), _randn(gen, 9, 2)
    out = torch.empty(9, 5000, device=DEVICE)
    cuda.perturb(base, dirs, coeffs, out=out)  # compiles and loads the module
    torch.cuda.synchronize()
    torch_before = torch.cuda.memory_allocated()
    cupy_before = cupy.get_default_memory_pool().used_bytes()
    cuda.perturb(base, dirs, coeffs, out=out)
    assert torch.cuda.memory_allocated() == torch_before
    assert cupy.get_default_memory_pool().used_bytes() == cupy_before


def test_perturb_is_captured_in_a_cuda_graph():
    gen = torch.Generator().manual_seed(7)
    k, p = 16, 100_003
    base, dirs = _randn(gen, p), _randn(gen, 2, p)
    coeffs = torch.zeros(k, 2, device=DEVICE)  # fixed buffer: new coefficients are copied in
    out = torch.empty(k, p, device=DEVICE)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (compiles and loads the module)
        cuda.perturb(base, dirs, coeffs, out=out)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cuda.perturb(base, dirs, coeffs, out=out)
    for seed in range(3):
        new = torch.randn(k, 2, generator=torch.Generator().manual_seed(100 + seed))
        coeffs.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        want = reference.perturb(base.cpu().numpy(), dirs.cpu().numpy(), new.numpy())
        np.testing.assert_allclose(out.cpu().numpy(), want, rtol=2e-6, atol=2e-6)


def test_for_device_picks_cupy():
    import lossgrid.kernels as kernels

    assert kernels.for_device(DEVICE) is cuda and kernels.kernel_name(kernels.for_device(DEVICE)) == "cupy"


def test_wrong_dtype_or_shapes_raise_config_error():
    from lossgrid.errors import ConfigError

    with pytest.raises(ConfigError, match="float32"):
        cuda.perturb(torch.ones(4, device=DEVICE, dtype=torch.float64), torch.ones(1, 4, device=DEVICE),
                     torch.ones(2, 1))
    with pytest.raises(ConfigError, match="out buffer"):
        cuda.perturb(torch.ones(4, device=DEVICE), torch.ones(1, 4, device=DEVICE), torch.ones(2, 1),
                     out=torch.empty(3, 4, device=DEVICE))
    with pytest.raises(ConfigError, match="on cpu"):
        cuda.perturb(torch.ones(4, device=DEVICE), torch.ones(1, 4, device=DEVICE), torch.ones(2, 1),
                     out=torch.empty(2, 4))
