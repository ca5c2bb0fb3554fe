"""Every kernel backend against the NumPy float64 reference (the shared contract)."""

import numpy as np
import pytest
import torch

from lossgrid.kernels import cpu, reference

BACKENDS = [pytest.param(cpu, id="torch-cpu")]
SHAPES = [(4, 3, 3, 3), (5, 7), (6,), (), (2, 3, 5)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["filter", "layer", "weight", "none"])
@pytest.mark.parametrize("shape", SHAPES)
def test_normalize_matches_reference(backend, norm, shape):
    gen = torch.Generator().manual_seed(1)
    d = torch.randn(shape, generator=gen, dtype=torch.float64)
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    got = backend.normalize_direction(d, w, norm)
    want = reference.normalize_direction(d.numpy(), w.numpy(), norm)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-15)
    assert got.shape == d.shape and got.data_ptr() != d.data_ptr()


@pytest.mark.parametrize("backend", BACKENDS)
def test_filter_norm_gives_each_filter_the_weight_norm(backend):
    gen = torch.Generator().manual_seed(2)
    d = torch.randn(8, 4, 3, 3, generator=gen)
    w = torch.randn(8, 4, 3, 3, generator=gen) * torch.arange(1, 9).view(8, 1, 1, 1)
    out = backend.normalize_direction(d, w, "filter")
    torch.testing.assert_close(out.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-5, atol=1e-6)
    # direction within each filter is kept
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), d.flatten(1), dim=1)
    torch.testing.assert_close(cos, torch.ones(8), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_weight_filter_gives_zero_direction(backend):
    d = torch.ones(2, 3)
    w = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    out = backend.normalize_direction(d, w, "filter")
    assert torch.all(out[0] == 0) and torch.isclose(out[1].norm(), torch.tensor(3.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ndir", [1, 2])
def test_perturb_matches_reference(backend, ndir):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(1000, generator=gen)
    dirs = torch.randn(ndir, 1000, generator=gen)
    coeffs = torch.randn(7, ndir, generator=gen, dtype=torch.float64)
    got = backend.perturb(base, dirs, coeffs)
    want = reference.perturb(base.numpy(), dirs.numpy(), coeffs.numpy())
    assert got.shape == (7, 1000) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    out = torch.empty(7, 1000)
    backend.perturb(base, dirs, coeffs, out=out)
    torch.testing.assert_close(out, got)


def test_normalize_rejects_shape_mismatch():
    from lossgrid.errors import ConfigError

    with pytest.raises(ConfigError):
        cpu.normalize_direction(torch.ones(2, 3), torch.ones(3, 2), "filter")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("wshape", [(3, 6, 4, 3, 3), (3, 6, 4, 5), (3, 6, 8)])
def test_fold_conv_bn_matches_reference(backend, with_bias, wshape):
    gen = torch.Generator().manual_seed(4)
    k, c = wshape[:2]
    w = torch.randn(wshape, generator=gen, dtype=torch.float64)
    b = torch.randn(k, c, generator=gen, dtype=torch.float64) if with_bias else None
    gamma, beta, mean = (torch.randn(k, c, generator=gen, dtype=torch.float64) for _ in range(3))
    var = torch.rand(k, c, generator=gen, dtype=torch.float64) + 0.1
    got_w, got_b = backend.fold_conv_bn(w, b, gamma, beta, mean, var, 1e-5)
    want_w, want_b = reference.fold_conv_bn(w.numpy(), None if b is None else b.numpy(), gamma.numpy(),
                                            beta.numpy(), mean.numpy(), var.numpy(), 1e-5)
    np.testing.assert_allclose(got_w.numpy(), want_w, rtol=1e-12)
    np.testing.assert_allclose(got_b.numpy(), want_b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fold_conv_bn_equals_conv_then_bn(backend):
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.BatchNorm2d(5)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.normal_()
    bn.eval()
    x = torch.randn(2, 3, 6, 6)
    w, b = backend.fold_conv_bn(conv.weight[None], conv.bias[None], bn.weight[None], bn.bias[None],
                                bn.running_mean[None], bn.running_var[None], bn.eps)
    with torch.no_grad():
        torch.testing.assert_close(torch.nn.functional.conv2d(x, w[0], b[0], padding=1), bn(conv(x)),
                                   rtol=1e-5, atol=1e-5)


FLAT_SHAPES = [(4, 3, 3, 3), (4,), (4,), (), (5, 7), (5,), (2, 3, 5), (1, 6), (3, 0), (300, 20)]


@pytest.mark.parametrize("norm,expected", [
    ("filter", [0, 6, 12, 13, 14, 15, 21]),
    ("layer", [0, 12, 14, 15, 21]),
    ("weight", [0, 12, 14, 15, 21]),
    ("none", [0, 12, 14, 15, 21]),
])
def test_row_offsets(norm, expected):
    offsets = cpu.row_offsets([(2, 3, 2), (2,), (), (1, 6)], norm)
    assert offsets.dtype == np.int64 and offsets.tolist() == expected
    assert cpu.row_offsets([], norm).tolist() == [0]


def test_row_offsets_rejects_unknown_norm():
    from lossgrid.errors import ConfigError

    with pytest.raises(ConfigError, match="Unknown normalization"):
        cpu.row_offsets([(2, 3)], "batch")


def _flat_case(dtype, norm, seed=6):
    gen = torch.Generator().manual_seed(seed)
    ds = [torch.randn(s, generator=gen, dtype=dtype) for s in FLAT_SHAPES]
    ws = [torch.randn(s, generator=gen, dtype=dtype) for s in FLAT_SHAPES]
    ds[0][1] = 0  # an all-zero filter of the direction ...
    ws[0][2] = 0  # ... and of the weights
    flat_d = torch.cat([d.reshape(-1) for d in ds])
    flat_w = torch.cat([w.reshape(-1) for w in ws])
    return ds, ws, flat_d, flat_w, cpu.row_offsets(FLAT_SHAPES, norm)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", ["filter", "layer", "weight", "none"])
def test_normalize_flat_equals_per_tensor(dtype, norm):
    ds, ws, flat_d, flat_w, offsets = _flat_case(dtype, norm)
    got = cpu.normalize_flat(flat_d, flat_w, offsets, norm)
    want = torch.cat([cpu.normalize_direction(d, w, norm).reshape(-1) for d, w in zip(ds, ws)])
    assert torch.equal(got, want)  # the same torch reductions on the same rows: bit for bit
    assert got.data_ptr() != flat_d.data_ptr()
    ref = reference.normalize_flat(flat_d.numpy(), flat_w.numpy(), offsets, norm)
    ref_per_tensor = np.concatenate([reference.normalize_direction(d.numpy(), w.numpy(), norm).ravel()
                                     for d, w in zip(ds, ws)])
    np.testing.assert_allclose(ref, ref_per_tensor, rtol=1e-14, atol=0)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(got.numpy(), ref, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("offsets", [[0, 3], [1, 6], [0, 4, 2, 6], [[0, 6]], []])
def test_normalize_flat_rejects_bad_offsets(offsets):
    from lossgrid.errors import ConfigError

    with pytest.raises(ConfigError, match="Row offsets"):
        cpu.normalize_flat(torch.ones(6), torch.ones(6), np.array(offsets), "filter")


def test_normalize_flat_rejects_unflat_or_unknown_norm():
    from lossgrid.errors import ConfigError

    with pytest.raises(ConfigError, match="flat"):
        cpu.normalize_flat(torch.ones(2, 3), torch.ones(2, 3), np.array([0, 6]), "layer")
    with pytest.raises(ConfigError, match="Unknown normalization"):
        cpu.normalize_flat(torch.ones(6), torch.ones(6), np.array([0, 6]), "batch")


def test_for_device_and_kernel_name(monkeypatch):
    import lossgrid.kernels as kernels
    from lossgrid.errors import ConfigError
    from lossgrid.kernels import cuda

    assert kernels.for_device("cpu") is cpu and kernels.for_device(torch.device("cpu")) is cpu
    monkeypatch.setattr(kernels, "_cupy_usable", lambda: False)
    assert kernels.for_device("cuda:0") is cpu  # torch kernels run on CUDA too
    monkeypatch.setattr(kernels, "_cupy_usable", lambda: True)
    monkeypatch.setattr(kernels, "_compiles", lambda index: True)
    assert kernels.for_device("cuda") is cuda and kernels.for_device("cpu") is cpu
    monkeypatch.setattr(kernels, "_compiles", lambda index: False)  # CuPy without a working NVRTC
    assert kernels.for_device("cuda:1") is cpu
    monkeypatch.setattr(kernels, "_compiles", lambda index: True)
    assert kernels.kernel_name(cpu) == "torch" and kernels.kernel_name(cuda) == "cupy"
    with pytest.raises(ConfigError):
        kernels.kernel_name(reference)


def test_a_kernel_compile_failure_falls_back_to_the_torch_kernels(monkeypatch, caplog):
    import lossgrid.kernels as kernels
    from lossgrid.kernels import cuda

    def broken(device):
        raise RuntimeError("nvrtc: error: failed to open libnvrtc-builtins.so (simulated)")

    monkeypatch.setattr(kernels, "_cupy_usable", lambda: True)
    monkeypatch.setattr(cuda, "ensure_compiled", broken)
    kernels._compiles.cache_clear()
    try:
        assert kernels.for_device("cuda:3") is cpu
        assert "cannot be compiled" in caplog.text and "libnvrtc" in caplog.text
    finally:
        kernels._compiles.cache_clear()


def test_torch_streams_reach_cupy_through_the_stream_protocol():
    from lossgrid.kernels.cuda import _StreamHandle

    assert _StreamHandle(0x7F00).__cuda_stream__() == (0, 0x7F00)


def test_cuda_module_has_the_cpu_contract():
    import inspect

    from lossgrid.kernels import cuda

    for name in ("normalize_direction", "row_offsets", "normalize_flat", "fold_conv_bn", "perturb"):
        assert list(inspect.signature(getattr(cuda, name)).parameters) == \
            list(inspect.signature(getattr(cpu, name)).parameters), name
    assert cuda.EPS == cpu.EPS == reference.EPS


def test_importing_kernels_does_not_import_cupy():
    import subprocess
    import sys

    code = "import sys, lossgrid.kernels, lossgrid.kernels.cuda; assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cuda_kernels_reject_cpu_tensors_and_other_dtypes():
    from lossgrid.errors import ConfigError
    from lossgrid.kernels import cuda

    with pytest.raises(ConfigError, match="on cpu"):
        cuda.perturb(torch.ones(4), torch.ones(1, 4), torch.ones(2, 1))
    with pytest.raises(ConfigError, match="on cpu"):
        cuda.normalize_flat(torch.ones(4), torch.ones(4), np.array([0, 4]), "layer")
    with pytest.raises(ConfigError, match="on cpu"):
        cuda.fold_conv_bn(torch.ones(1, 2, 3), None, *(torch.ones(1, 2) for _ in range(4)), 1e-5)
    with pytest.raises(ConfigError):
        cuda.normalize_direction(torch.ones(2, 3), torch.ones(3, 2), "filter")
    meta = torch.ones(4, dtype=torch.float64, device="meta")
    with pytest.raises(ConfigError):
        cuda.perturb(meta, meta.reshape(1, 4), torch.ones(2, 1))


def test_cuda_kernels_without_cupy_raise_missing_backend(monkeypatch):
    import sys

    from lossgrid.errors import MissingBackendError
    from lossgrid.kernels import cuda

    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(MissingBackendError, match=r"lossgrid\[gpu\]"):
        cuda._cupy()
