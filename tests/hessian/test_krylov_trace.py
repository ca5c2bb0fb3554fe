"""Top eigenpairs and the trace from one Krylov space (:func:`top_eigs_and_trace`): the trace is
unbiased with an honest standard error over many seeds (explicit matrices with a trained network's
kind of spectrum: a few large eigenvalues over a bulk around zero) and more accurate than a separate
Hutch++ of as many products; against the exact Hessian of a small network in test_hessian.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lossgrid.hessian.lanczos import deflated_hutchinson, extreme_eigenpairs, hutch_plus_plus


def _network_like(size: int = 300, seed: int = 0) -> torch.Tensor:
    """A symmetric matrix with eigenvalues 60, 40, 25, 15, 10, 6, ... over a bulk spread around 0.1."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=gen, dtype=torch.float64))
    values = torch.randn(size, generator=gen, dtype=torch.float64) * 0.4 + 0.1
    values[:8] = torch.tensor([60.0, 40.0, 25.0, 15.0, 10.0, 6.0, 4.0, 3.0], dtype=torch.float64)
    return (q * values) @ q.T


def _shared(h: torch.Tensor, seed: int, rel_se: float = 0.05, max_probes: int = 64):
    """Trace, standard error, Lanczos steps and probes of the top-3 run with its basis as the low-rank part."""
    gen = torch.Generator().manual_seed(seed)
    matvec = lambda v: h @ v  # noqa: E731
    _, _, run = extreme_eigenpairs(matvec, h.shape[0], 3, "top", 60, 1e-4, gen, torch.device("cpu"), each=True)
    value, err, probes = deflated_hutchinson(matvec, run.basis, float(np.sum(run.alphas)), max_probes, rel_se, gen)
    return value, err, run.steps, probes


def test_trace_is_unbiased_with_an_honest_standard_error_over_many_seeds() -> None:
    h = _network_like()
    exact = float(torch.trace(h))
    z = np.array([(v - exact) / e for v, e, _, _ in (_shared(h, seed, rel_se=0.02) for seed in range(100))])
    assert abs(z.mean()) < 0.25  # no bias beyond a quarter of a standard error
    assert 0.90 <= np.mean(np.abs(z) <= 1.96) <= 0.99


def test_the_free_low_rank_part_beats_a_separate_hutch_plus_plus() -> None:
    """Both need the top-3 Lanczos run; with the same probes on top of it, the trace from its basis is more
    accurate than a separate Hutch++ of that many products (which must find the large eigenvalues again)."""
    h = _network_like(seed=1)
    exact = float(torch.trace(h))
    shared = [_shared(h, seed, rel_se=0.02) for seed in range(10)]
    errors = np.abs([v - exact for v, _, _, _ in shared])
    plain = np.abs([hutch_plus_plus(lambda v: h @ v, 300, max(probes, 12), torch.Generator().manual_seed(s),
                                    torch.device("cpu"))[0] - exact for s, (_, _, _, probes) in enumerate(shared)])
    assert np.mean(errors) < 0.8 * np.mean(plain)


@pytest.mark.parametrize("rel_se", [0.5, 0.05])
def test_probes_stop_on_the_standard_error(rel_se: float) -> None:
    h = _network_like(seed=2)
    value, err, _, probes = _shared(h, 0, rel_se=rel_se, max_probes=200)
    assert err <= rel_se * abs(value) and probes >= 8
