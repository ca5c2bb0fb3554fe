"""Matrix-free spectral algorithms behind :mod:`lossgrid.hessian.operator`: the
Lanczos iteration with full reorthogonalization, extreme eigenpairs from it,
Hutchinson and Hutch++ trace estimators, stochastic Lanczos quadrature and its
Gaussian broadening, seeded probe vectors.

Everything here works on a plain symmetric ``matvec(v) -> Hv`` over float64
vectors (tested on explicit matrices as well); the Hessian, validation and the
public result types live in :mod:`lossgrid.hessian.operator`.

Why full reorthogonalization: plain Lanczos loses orthogonality among its basis
vectors as soon as a Ritz value converges (Paige), after which copies of the
converged eigenvalue ("ghosts") appear and the spectrum of ``T`` no longer
describes ``H``. Hessian-vector products in float32 make this worse. So every
new vector is orthogonalized against the whole basis, twice ("twice is enough",
Kahan-Parlett), and the basis is kept in float64. The cost is ``m * P`` float64
numbers of memory for ``m`` steps (40 steps of an 11M-parameter model: 3.5 GB).

Example:
    >>> import torch
    >>> h = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    >>> run = lanczos(lambda v: h @ v, 5, 5, torch.ones(5, dtype=torch.float64), torch.Generator())
    >>> theta, _ = ritz_pairs(run)
    >>> [round(t, 6) for t in theta.tolist()]
    [1.0, 2.0, 3.0, 4.0, 5.0]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

MatVec = Callable[[torch.Tensor], torch.Tensor]
#: ``stop(theta, S, beta)`` after a step: Ritz values, Ritz vectors of ``T``, the last beta
StopCheck = Callable[[np.ndarray, np.ndarray, float], bool]
#: relative size of the next Lanczos vector below which the Krylov space is taken as invariant
BREAKDOWN = 1e-10


@dataclass
class LanczosRun:
    """The outcome of ``m`` Lanczos steps: ``T = Q H Q^T`` with ``Q`` of shape ``[m, P]``.

    ``alphas`` (``m``) is the diagonal of ``T``, ``betas`` (``m - 1``) its off-diagonal
    (zero where the iteration restarted in a fresh direction after an invariant
    subspace), ``beta_last`` the norm of the part of ``H q_m`` outside the basis
    (0 when the basis spans an invariant subspace): the Ritz residuals scale with it.
    """

    alphas: np.ndarray
    betas: np.ndarray
    beta_last: float
    basis: torch.Tensor

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def tridiagonal(self) -> np.ndarray:
        """``T`` as a dense float64 matrix ``[m, m]``."""
        t = np.diag(self.alphas)
        if self.steps > 1:
            t += np.diag(self.betas, 1) + np.diag(self.betas, -1)
        return t


def rademacher(size: int, count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``count`` random +-1 vectors as float64 ``[count, size]`` (drawn on the CPU, so the
    same seed gives the same vectors on every device)."""
    bits = torch.randint(0, 2, (count, size), generator=generator)
    return (bits * 2 - 1).to(torch.float64).to(device)


def gaussian(size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One standard normal float64 vector of length ``size`` (drawn on the CPU)."""
    return torch.randn(size, generator=generator, dtype=torch.float64).to(device)


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``w`` minus its projection on the rows of ``basis``, done twice for accuracy."""
    if basis.shape[0] == 0:
        return w
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def lanczos(matvec: MatVec, size: int, steps: int, start: torch.Tensor, generator: torch.Generator,
            stop: StopCheck | None = None, check_from: int = 1) -> LanczosRun:
    """Run up to ``steps`` Lanczos steps of the symmetric operator ``matvec`` from ``start``.

    Args:
        matvec: ``v -> Hv`` on float64 vectors of length ``size``.
        size: the dimension ``P``; at most ``P`` steps are taken.
        steps: the largest number of steps (one ``matvec`` each).
        start: the start vector (normalized here).
        generator: draws a fresh start direction when the Krylov space becomes
            invariant before ``steps`` (breakdown), so that repeated eigenvalues
            and ``P`` steps still give the whole spectrum.
        stop: called after step ``j >= check_from`` (on a schedule that keeps the
            ``T`` eigendecompositions cheap) with the Ritz pairs of ``T`` and the
            last beta; returning ``True`` ends the iteration.
        check_from: the first step count at which ``stop`` is consulted.
    """
    steps = min(steps, size)
    device = start.device
    basis = torch.zeros(steps, size, dtype=torch.float64, device=device)
    alphas: list[float] = []
    betas: list[float] = []
    q = start.to(torch.float64)
    q = q / q.norm()
    beta = 0.0
    scale = 0.0  # running size of T's entries, for the relative breakdown test
    for j in range(steps):
        basis[j] = q
        w = matvec(q).to(torch.float64)
        alpha = float(q @ w)
        # the three-term recurrence, then full reorthogonalization against the whole basis
        w = w - alpha * q
        if j > 0 and beta != 0.0:
            w = w - beta * basis[j - 1]
        w = _orthogonalize(w, basis[:j + 1])
        beta = float(w.norm())
        alphas.append(alpha)
        scale = max(scale, abs(alpha), beta)
        if j + 1 == steps:
            break
        if stop is not None and j + 1 >= check_from and _due(j + 1, check_from):
            run = LanczosRun(np.array(alphas), np.array(betas), beta, basis[:j + 1])
            theta, s = ritz_pairs(run)
            if stop(theta, s, beta):
                return run
        if beta <= BREAKDOWN * max(scale, 1e-300):
            # H maps span(basis) into itself: continue in a random direction orthogonal to it;
            # T gets a zero off-diagonal there, i.e. a new block of the same spectrum
            fresh = _orthogonalize(gaussian(size, generator, device), basis[:j + 1])
            norm = float(fresh.norm())
            if not math.isfinite(norm) or norm <= 1e-8:
                return LanczosRun(np.array(alphas), np.array(betas), 0.0, basis[:j + 1])
            q, beta = fresh / norm, 0.0
        else:
            q = w / beta
        betas.append(beta)
    return LanczosRun(np.array(alphas), np.array(betas), beta, basis[:len(alphas)])


def _due(step: int, first: int) -> bool:
    """Whether to test convergence after ``step``: every step at first, then about every
    tenth of the steps so far (a full eigendecomposition of ``T`` costs ``O(m^3)``)."""
    return (step - first) % max(1, step // 10) == 0


def ritz_pairs(run: LanczosRun) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors (columns) of the run's tridiagonal ``T``."""
    theta, s = np.linalg.eigh(run.tridiagonal())
    return theta, s


def ritz_residual_bounds(s: np.ndarray, beta: float) -> np.ndarray:
    """``||H y_i - theta_i y_i||`` of every Ritz pair, without a matvec: ``|beta * s[m-1, i]|``
    (exact in exact arithmetic; a full reorthogonalization keeps it accurate)."""
    return np.abs(beta * s[-1, :])


def broadened_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """``sum_i weights[i] * N(grid; nodes[i], sigma^2)``: Gaussian-broadened spectral measure."""
    z = (grid[:, None] - nodes.reshape(-1)[None, :]) / sigma
    kernel = np.exp(-0.5 * z * z) / (sigma * math.sqrt(2.0 * math.pi))
    return kernel @ weights.reshape(-1)


def extreme_eigenpairs(matvec: MatVec, size: int, k: int, which: str, steps: int, tol: float,
                       generator: torch.Generator, device: torch.device, each: bool = False
                       ) -> tuple[np.ndarray, torch.Tensor, LanczosRun]:
    """The ``k`` largest (``which="top"``) or smallest (``"bottom"``) Ritz pairs after at
    most ``steps`` Lanczos steps from a seeded Gaussian start: ``(values, unit vectors
    [k, size], the run)``. Stops early, after at least :func:`min_steps` steps, once
    every one of the ``k`` residual bounds is at most ``tol * max|theta|`` (``each``: at
    most ``tol`` times its own Ritz value's magnitude)."""

    def pick(theta: np.ndarray) -> np.ndarray:
        return np.argsort(-theta)[:k] if which == "top" else np.argsort(theta)[:k]

    def converged(theta: np.ndarray, s: np.ndarray, beta: float) -> bool:
        picked = pick(theta)
        scale = np.abs(theta[picked]) if each else np.max(np.abs(theta))
        return bool(np.all(ritz_residual_bounds(s, beta)[picked] <= tol * scale))

    # never stop before min_steps(k): an eigenvector that the start vector hardly touches enters the Krylov
    # space late, and until then a close neighbour's converged Ritz pair looks like the k-th eigenpair
    # (measured: a CNN's 4.42 taken for its 3rd eigenvalue 4.50 after 9 steps)
    run = lanczos(matvec, size, steps, gaussian(size, generator, device), generator, converged,
                  check_from=min_steps(k))
    theta, s = ritz_pairs(run)
    idx = pick(theta)
    # Ritz vectors: combinations of the basis by the eigenvectors of T
    vectors = torch.as_tensor(s[:, idx].T.copy(), dtype=torch.float64, device=device) @ run.basis
    return theta[idx], vectors / vectors.norm(dim=1, keepdim=True), run


def min_steps(k: int) -> int:
    """The fewest Lanczos steps before :func:`extreme_eigenpairs` may stop early: ``max(2k + 10, 20)``."""
    return max(2 * k + 10, 20)


def quadratic_forms(matvec: MatVec, vectors: torch.Tensor) -> np.ndarray:
    """``v^T H v`` for every row ``v`` of ``vectors`` (one matvec each)."""
    return np.array([float(v @ matvec(v)) for v in vectors])


def stderr(values: np.ndarray) -> float:
    """Standard error of the mean of ``values`` (sample standard deviation over sqrt(n))."""
    return float(values.std(ddof=1) / math.sqrt(len(values)))


def hutchinson(matvec: MatVec, size: int, samples: int, generator: torch.Generator,
               device: torch.device) -> tuple[float, float]:
    """``(estimate, stderr)`` of the trace: the mean of ``z^T H z`` over Rademacher ``z``."""
    values = quadratic_forms(matvec, rademacher(size, samples, generator, device))
    return float(values.mean()), stderr(values)


def hutch_plus_plus(matvec: MatVec, size: int, samples: int, generator: torch.Generator,
                    device: torch.device) -> tuple[float, float, int]:
    """``(estimate, stderr, matvecs used)`` of the trace by Hutch++ (Meyer, Musco, Musco,
    Woodruff 2021).

    A third of the budget sketches the dominant range ``Q = orth(H S)``, a third
    takes ``tr(Q^T H Q)`` exactly, the rest estimates the deflated trace
    ``tr((I - QQ^T) H (I - QQ^T))`` by Hutchinson; the standard error is that
    residual part's. When the sketch spans the whole space the result is exact.
    """
    sketch = min(samples // 3, size)
    hs = torch.stack([matvec(z) for z in rademacher(size, sketch, generator, device)])
    q = torch.linalg.qr(hs.T, mode="reduced").Q.T  # [sketch, P]: orthonormal rows spanning H S
    exact = float(quadratic_forms(matvec, q).sum())
    if sketch == size:  # Q spans everything: the deflated part is zero
        return exact, 0.0, 2 * sketch
    g = rademacher(size, samples - 2 * sketch, generator, device)
    g = g - (g @ q.T) @ q  # (I - QQ^T) g: g^T H g then samples the deflated matrix
    values = quadratic_forms(matvec, g)
    return exact + float(values.mean()), stderr(values), samples


def deflated_hutchinson(matvec: MatVec, basis: torch.Tensor, exact_part: float, max_probes: int, rel_se: float,
                        generator: torch.Generator, min_probes: int = 8) -> tuple[float, float, int]:
    """``(estimate, stderr, probes)`` of the trace when ``exact_part = tr(Q H Q^T)`` is known for
    the orthonormal rows ``Q`` of ``basis``: Hutch++'s low-rank part without its sketch.

    The rest, ``tr((I - Q^T Q) H (I - Q^T Q))``, is the mean of ``g^T H g`` over Rademacher
    ``g`` projected off ``Q`` (one matvec each, drawn after ``Q`` is fixed: unbiased whatever
    ``Q`` is). Probes are drawn until the standard error is at most ``rel_se`` of the
    estimate's magnitude, at least ``min_probes`` and at most ``max_probes`` of them.
    """
    size = basis.shape[1]
    values: list[float] = []
    estimate, err = exact_part, math.inf
    for _ in range(max_probes):
        g = _orthogonalize(rademacher(size, 1, generator, basis.device)[0], basis)
        values.append(float(g @ matvec(g)))
        if len(values) >= 2:
            estimate, err = exact_part + float(np.mean(values)), stderr(np.array(values))
            if len(values) >= min_probes and err <= rel_se * abs(estimate):
                break
    return estimate, err, len(values)


def slq_nodes(matvec: MatVec, size: int, steps: int, runs: int, generator: torch.Generator,
              device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature: ``(nodes, weights)`` of shape ``[runs, steps]``.

    Run ``r`` starts from a Gaussian vector ``v``; its nodes are the Ritz values
    and its weights the squared FIRST components of the eigenvectors of ``T``
    (``e_1^T f(T) e_1`` approximates ``v^T f(H) v / |v|^2``), so each row sums to 1.
    """
    nodes = np.zeros((runs, steps))
    weights = np.zeros((runs, steps))
    for r in range(runs):
        run = lanczos(matvec, size, steps, gaussian(size, generator, device), generator)
        theta, s = ritz_pairs(run)
        m = len(theta)
        nodes[r, :m], weights[r, :m] = theta, s[0, :] ** 2
        nodes[r, m:] = theta[-1]  # a run cut short (only if random restarts fail) pads with weight 0
    return nodes, weights


def density_on_grid(nodes: np.ndarray, weights: np.ndarray, bins: int, sigma: float | None
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """``(grid, density, sigma)``: the average over runs (rows) of the Gaussian-broadened
    quadratures on ``bins`` points spanning the nodes +- 5 sigma. ``sigma`` defaults to
    two grid steps of the node range, enough for the grid to integrate it to 1."""
    lo, hi = float(nodes.min()), float(nodes.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * 1e-3
    width = sigma if sigma is not None else 2.0 * span / bins
    grid = np.linspace(lo - 5 * width, hi + 5 * width, bins)
    if width < grid[1] - grid[0]:
        log.warning("density sigma %.3g is below the grid step %.3g: raise bins", width, grid[1] - grid[0])
    return grid, broadened_density(nodes, weights, grid, width) / nodes.shape[0], float(width)


def planned_hvps(size: int, top_k: int = 1, bottom_k: int = 0, trace_samples: int = 0, density: bool = False
                 ) -> int:
    """The most HVPs :func:`lossgrid.hessian.report.curvature_summary` does with its default
    settings (Lanczos may stop earlier): a budget for progress bars."""
    eigs = sum(min(size, max(4 * k + 20, 40)) + k for k in (top_k, bottom_k) if k)
    if top_k and trace_samples:  # the top eigenpairs' Lanczos run is longer, the trace shares its basis
        eigs += min(size, max(10 * top_k + 40, 60)) - min(size, max(4 * top_k + 20, 40))
    return eigs + trace_samples + (4 * min(40, size) if density else 0)
