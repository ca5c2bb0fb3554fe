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
