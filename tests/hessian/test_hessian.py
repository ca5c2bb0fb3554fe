"""The Hessian engine against the exact Hessian of small models.

The reference is ``torch.autograd.functional.hessian`` of the mean loss over all
samples in float64 (a flat parameter vector through ``functional_call``) and
``torch.linalg.eigh``. Tolerances, and why:

* ``matvec``: relative 1e-4 for a float32 model (float32 rounding of a
  300-sample pass), 1e-8 for a float64 model (summation order only), also with
  uneven batches (exact weighting by batch size / N).
* eigenvalues: top-3 relative 1e-3 at the default ``tol``. Bottom-3 of a trained
  net sit in a cluster near 0, where a relative tolerance is meaningless at the
  default ``tol``: each is within ``tol * |lambda_max|`` (the Ritz residual bound),
  and within relative 1e-3 with ``tol=1e-7`` and ``iters=P``.
* eigenvectors: ``|cos| > 0.99`` for the top-3 (gaps of 0.2-0.4 x lambda_max).
* trace: within 3 stated standard errors of the exact trace.
* density: integrates to 1 within 1e-3; its mean within 4 standard deviations
  of a Gaussian quadratic form's mean (sqrt(2 var(lambda) / (P + 2) / runs)).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lossgrid.data import load_data
from lossgrid.errors import ConfigError
from lossgrid.hessian.lanczos import lanczos, ritz_pairs
from lossgrid.hessian.operator import (
    TRACE_KRYLOV,
    EigenResult,
    HessianOperator,
    TraceResult,
    hessian_operator,
    hessian_trace,
    lanczos_eigs,
    select_parameters,
    top_eigs_and_trace,
)
from lossgrid.hessian.report import Density, plot_density, spectral_density


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str] | None = None,
                  how: str = "autograd") -> torch.Tensor:
    """float64 Hessian of the mean cross-entropy over ``(x, y)`` w.r.t. ``names`` (all parameters by default):
    ``torch.autograd.functional.hessian`` (vectorized), or ``torch.func.hessian`` (forward-over-reverse vmapped
    over all P basis vectors; 10-40x faster through max-pooling, whose old-style vmap has no batching rule)."""
    model = model.double().eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    names = names or list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        sub = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        out = torch.func.functional_call(model, {**params, **sub}, (x.double(),))
        return nn.functional.cross_entropy(out, y)

    flat = torch.cat([params[n].reshape(-1) for n in names])
    if how == "func":
        return torch.func.hessian(loss)(flat).detach()
    return torch.autograd.functional.hessian(loss, flat, vectorize=True).detach()


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


class TinyCNN(nn.Module):
    """Conv + BatchNorm + ReLU + max-pool + Linear on 1x8x8 digits (218 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 4)
        return self.fc(h.flatten(1))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run ~100x slower with 2 intra-op threads on a busy 2-core machine (each op waits for a
    descheduled worker); one thread keeps every test here at a few seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", samples=300)


@pytest.fixture(scope="module")
def mlp(digits):
    """A smooth (tanh) MLP, 610 parameters, briefly trained: a non-convex point with negative eigenvalues."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
    return train(model, digits.x, digits.y)


@pytest.fixture(scope="module")
def mlp_exact(mlp, digits):
    import copy

    h = exact_hessian(copy.deepcopy(mlp), digits.x, digits.y)
    values, vectors = torch.linalg.eigh(h)
    return h, values.numpy(), vectors


@pytest.fixture(scope="module")
def cnn(digits):
    torch.manual_seed(0)
    return train(TinyCNN(), digits.x, digits.y, steps=40)  # BN running statistics move away from 0/1


@pytest.fixture(scope="module")
def mlp_op(mlp, digits) -> HessianOperator:
    return hessian_operator(mlp, digits)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_matvec_equals_exact_hessian_float32_and_float64(mlp, mlp_exact, digits):
    import copy

    h = mlp_exact[0]
    v = torch.randn(h.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    op32 = hessian_operator(mlp, digits, batch_size=64)  # 300 = 4 x 64 + 44: uneven batches
    assert op32.size == 610 and op32.dtype == torch.float32
    hv = op32.matvec(v.float())
    assert hv.dtype == torch.float32 and _rel(hv, h @ v) < 1e-4
    assert op32.matvec(v).dtype == torch.float64  # float64 in, float64 out (computed in the model's float32)
    op64 = hessian_operator(copy.deepcopy(mlp).double(), digits, batch_size=64)
    assert op64.dtype == torch.float64 and _rel(op64.matvec(v), h @ v) < 1e-8
    assert op32.hvp_count == 2 and op64.hvp_count == 1


def test_gradient_is_the_mean_loss_gradient(mlp, digits, mlp_op):
    import copy

    loss, grad = mlp_op.gradient()
    model = copy.deepcopy(mlp).double()
    mean = nn.functional.cross_entropy(model(digits.x.double()), digits.y)
    want = torch.autograd.grad(mean, list(model.parameters()))
    assert loss == pytest.approx(float(mean.detach()), rel=1e-6)
    assert _rel(grad, torch.cat([g.reshape(-1) for g in want])) < 1e-4
    assert mlp_op.hvp_count == 0  # a gradient is not an HVP


def test_top_and_bottom_eigenvalues_and_vectors(mlp_op, mlp_exact):
    _, values, vectors = mlp_exact
    top = lanczos_eigs(mlp_op, k=3, which="top")
    assert isinstance(top, EigenResult)
    np.testing.assert_allclose(top.values, values[::-1][:3], rtol=1e-3)
    assert 20 <= top.iterations <= 40 and top.vectors.shape == (3, 610)
    assert np.all(top.residuals <= 2e-3 * values[-1])
    torch.testing.assert_close(top.vectors.norm(dim=1), torch.ones(3, dtype=torch.float64))
    cos = (top.vectors @ vectors[:, -3:].flip(1)).diagonal().abs()
    assert bool((cos > 0.99).all()), cos
    bottom = lanczos_eigs(mlp_op, k=3, which="bottom")
    assert np.all(np.diff(bottom.values) >= 0)
    # what default settings guarantee in the cluster near 0: each value lies within its measured residual
    # of a true eigenvalue, and (interlacing) the i-th smallest Ritz value is >= the i-th smallest eigenvalue
    gaps = np.abs(bottom.values[:, None] - values[None, :]).min(axis=1)
    assert np.all(gaps <= bottom.residuals * (1 + 1e-6)) and np.all(bottom.values >= values[:3] - 1e-9)
    assert values[0] < 0 and bottom.values[0] < 0  # a non-convex point: a negative eigenvalue is found
    sharp = lanczos_eigs(mlp_op, k=3, which="bottom", iters=610, tol=1e-7)
    np.testing.assert_allclose(sharp.values, values[:3], rtol=1e-3)


def test_lanczos_is_exact_for_tiny_p_with_repeated_eigenvalues():
    # a linear softmax classifier: the Hessian has a zero eigenvalue of multiplicity 4 (shifting all
    # logits equally changes nothing), so plain Lanczos breaks down before P steps
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, generator=gen, dtype=torch.float64), torch.arange(50) % 2
    model = nn.Linear(3, 2).double()
    want = torch.linalg.eigvalsh(exact_hessian(model, x, y)).numpy()
    op = hessian_operator(model, (x, y))
    assert op.size == 8
    got = lanczos_eigs(op, k=8, which="bottom")
    np.testing.assert_allclose(got.values, want, atol=1e-10)
    assert got.iterations == 8


def test_lanczos_on_an_explicit_matrix_keeps_orthogonality():
    # the Krylov core alone: 200 steps on a spectrum with a big outlier and a dense cluster
    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=torch.float64))
    spectrum = torch.cat([torch.tensor([100.0, 50.0], dtype=torch.float64), torch.linspace(-1, 1, 198).double()])
    a = q @ torch.diag(spectrum) @ q.T
    run = lanczos(lambda v: a @ v, 200, 200, torch.randn(200, generator=gen, dtype=torch.float64), gen)
    basis = run.basis
    assert float((basis @ basis.T - torch.eye(200, dtype=torch.float64)).abs().max()) < 1e-10
    np.testing.assert_allclose(ritz_pairs(run)[0], np.sort(spectrum.numpy()), atol=1e-9)


def test_params_subset_is_the_sub_block(mlp, mlp_exact, digits):
    h = mlp_exact[0]
    v = torch.randn(90 + 18, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    op = hessian_operator(mlp, digits, params="3.*")  # the last Linear: flat indices 520..609
    assert op.names == ("3.weight", "3.bias") and op.size == 90
    assert _rel(op.matvec(v[:90].float()), h[520:, 520:] @ v[:90]) < 1e-4
    top = lanczos_eigs(op, k=2)
    np.testing.assert_allclose(top.values, torch.linalg.eigvalsh(h[520:, 520:]).numpy()[::-1][:2], rtol=1e-3)
    op = hessian_operator(mlp, digits, params=" 1.bias , 3.weight ")  # comma-separated, model order kept
    assert op.names == ("1.bias", "3.weight")
    idx = torch.cat([torch.arange(512, 520), torch.arange(520, 600)])
    assert _rel(op.matvec(v[:88].float()), h[idx][:, idx] @ v[:88]) < 1e-4


def test_cnn_with_batchnorm_in_eval_mode(cnn, digits):
    import copy

    cnn.train()  # the operator must not depend on, or change, the caller's mode and statistics
    stats = {n: b.clone() for n, b in cnn.named_buffers()}
    op = hessian_operator(cnn, digits)
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    hv = op.matvec(v.float())
    assert cnn.training and all(torch.equal(b, stats[n]) for n, b in cnn.named_buffers())
    h = exact_hessian(copy.deepcopy(cnn), digits.x, digits.y, how="func")  # in eval mode, too
    assert op.size == 218 and _rel(hv, h @ v) < 1e-4
    top = lanczos_eigs(op, k=3)
    np.testing.assert_allclose(top.values, torch.linalg.eigvalsh(h).numpy()[::-1][:3], rtol=1e-3)
    cnn.eval()


def test_weights_override_is_the_point_of_the_hessian(mlp, digits):
    import copy

    moved = copy.deepcopy(mlp)
    with torch.no_grad():
        moved[1].weight.add_(0.1)
    point = {"1.weight": moved[1].weight.detach().clone()}
    v = torch.randn(610, generator=torch.Generator().manual_seed(5))
    a = hessian_operator(mlp, digits, weights=point).matvec(v)
    b = hessian_operator(moved, digits).matvec(v)
    assert torch.equal(a, b)
    assert not torch.equal(a, hessian_operator(mlp, digits).matvec(v))
    with pytest.raises(ConfigError, match="not a parameter"):
        hessian_operator(mlp, digits, weights={"nope": torch.zeros(1)})


def test_trace_estimators(mlp_op, mlp_exact):
    exact = float(mlp_exact[1].sum())
    for method in ("hutchinson", "hutch++"):
        t = hessian_trace(mlp_op, samples=60, method=method)
        assert isinstance(t, TraceResult) and t.method == method and t.samples == 60
        assert abs(t.value - exact) <= 3 * t.stderr, (method, t, exact)
    errors = {m: np.mean([abs(hessian_trace(mlp_op, 24, m, seed=s).value - exact) for s in range(5)])
              for m in ("hutchinson", "hutch++")}
    assert errors["hutch++"] < errors["hutchinson"], errors
    with pytest.raises(ConfigError):
        hessian_trace(mlp_op, samples=3)


def test_every_product_mode_gives_the_same_product(mlp, digits, mlp_exact, monkeypatch):
    import lossgrid.hessian.operator as operator

    v = torch.randn(mlp_exact[0].shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    want = mlp_exact[0] @ v
    op = hessian_operator(mlp, digits, batch_size=64)  # several batches, each its own kept graph
    for mode in ("graph", "vjp", "jvp"):
        op.mode = mode
        assert _rel(op.matvec(v), want) < 1e-5, mode
    assert op._graphs is not None and len(op._graphs) == 5
    monkeypatch.setattr(operator, "GRAPH_MEMORY_SHARE", 0.0)  # graphs that do not fit are not kept
    small = hessian_operator(mlp, digits, batch_size=64)
    assert _rel(small.matvec(v), want) < 1e-5 and small.mode == "vjp" and small._graphs is None


def test_top_eigenpairs_and_trace_share_one_krylov_space(mlp, digits, mlp_exact):
    values = mlp_exact[1]
    op = hessian_operator(mlp, digits)
    eig, trace = top_eigs_and_trace(op, k=3, rel_se=0.02, tol=1e-6)
    np.testing.assert_allclose(eig.values, values[::-1][:3], rtol=1e-4)
    assert np.all(eig.residuals <= 1e-4 * np.abs(eig.values))
    assert trace.method == TRACE_KRYLOV and abs(trace.value - values.sum()) <= 4 * trace.stderr
    assert trace.stderr <= 0.02 * abs(trace.value) or trace.samples == 64
    assert op.hvp_count == eig.iterations + 3 + trace.samples  # the basis: no product beyond Lanczos'


def test_spectral_density(mlp_op, mlp_exact, tmp_path):
    values = mlp_exact[1]
    d = spectral_density(mlp_op, iters=30, runs=8)
    assert isinstance(d, Density) and d.nodes.shape == d.weights.shape == (8, 30) and d.runs == 8 and d.iters == 30
    np.testing.assert_allclose(d.weights.sum(axis=1), 1.0, atol=1e-10)
    assert np.trapezoid(d.density, d.grid) == pytest.approx(1.0, abs=1e-3)
    p = len(values)
    spread = np.sqrt(2 * values.var() / (p + 2) / d.runs)
    assert abs(d.mean() - values.mean()) <= 4 * spread
    assert d.nodes.min() == pytest.approx(values.min(), abs=1e-3 * values.max())  # the extremes converge first
    assert d.nodes.max() == pytest.approx(values.max(), rel=1e-3)
    out = tmp_path / "density.png"
    plot_density(d, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_results(mlp, digits):
    op = hessian_operator(mlp, digits, params="3.*")

    def everything(seed: int):
        e = lanczos_eigs(op, k=2, which="bottom", seed=seed)
        t = hessian_trace(op, samples=12, seed=seed)
        d = spectral_density(op, iters=10, runs=2, seed=seed)
        return e, t, d

    (e1, t1, d1), (e2, t2, d2) = everything(7), everything(7)
    assert np.array_equal(e1.values, e2.values) and torch.equal(e1.vectors, e2.vectors)
    assert t1 == t2 and np.array_equal(d1.density, d2.density) and np.array_equal(d1.nodes, d2.nodes)
    assert everything(8)[1].value != t1.value


def test_progress_counts_hvps(mlp, digits):
    seen: list[int] = []
    op = hessian_operator(mlp, digits, progress=seen.append)
    e = lanczos_eigs(op, k=1)
    assert seen == list(range(1, e.iterations + 2)) and op.hvp_count == e.iterations + 1  # + the residual


def test_bad_parameter_glob_and_settings(mlp, digits, mlp_op):
    with pytest.raises(ConfigError) as e:
        hessian_operator(mlp, digits, params="layers.*")
    assert "matches no parameter" in str(e.value) and e.value.hint and "1.weight" in e.value.why
    assert select_parameters(mlp, "*.bias") == ("1.bias", "3.bias")
    with pytest.raises(ConfigError):
        lanczos_eigs(mlp_op, k=3, which="middle")
    with pytest.raises(ConfigError):
        lanczos_eigs(mlp_op, k=611)
    with pytest.raises(ConfigError):
        mlp_op.matvec(torch.zeros(3))
