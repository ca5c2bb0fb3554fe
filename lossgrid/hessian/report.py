"""Reports on the Hessian: its spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019), the
JSON-ready summary that ``lossgrid hessian`` prints and saves, and the density plot.

The operator, its eigenpairs and its trace live in :mod:`lossgrid.hessian.operator`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .lanczos import density_on_grid, slq_nodes
from .operator import (
    EVAL_MODE_NOTE,
    HessianOperator,
    float64_matvec,
    hessian_trace,
    lanczos_eigs,
    top_eigs_and_trace,
)


@dataclass(frozen=True)
class Density:
    """Spectral density of ``H`` from stochastic Lanczos quadrature.

    ``density`` on ``grid`` integrates to about 1 (exactly 1 as a sum of
    Gaussians); ``nodes`` and ``weights`` (``[runs, iters]``) are the Ritz values
    and squared first eigenvector components of each run (each row sums to 1);
    ``sigma`` is the Gaussian broadening.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    runs: int
    iters: int
    sigma: float = 0.0

    def mean(self) -> float:
        """The spectrum's mean eigenvalue, an estimate of ``tr(H) / P``."""
        return float((self.nodes * self.weights).sum() / self.runs)


def spectral_density(op: HessianOperator, iters: int = 40, runs: int = 4, seed: int = 0, bins: int = 200,
                     sigma: float | None = None) -> Density:
    """The eigenvalue density of ``H`` by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Each of ``runs`` Lanczos runs of ``iters`` steps from a Gaussian vector ``v``
    gives Ritz values ``theta_i`` and weights ``tau_i`` (the squared first
    components of ``T``'s eigenvectors): a quadrature of ``v^T f(H) v / |v|^2``.
    The density is their Gaussian-broadened average on ``bins`` points.
    ``sigma`` defaults to two grid steps of the Ritz value range (smaller values
    need more ``bins`` to integrate to 1).

    Example:
        >>> import torch
        >>> from lossgrid.hessian.operator import hessian_operator
        >>> op = hessian_operator(torch.nn.Linear(3, 2), (torch.randn(64, 3), torch.arange(64) % 2))
        >>> d = spectral_density(op, iters=8, runs=2)
        >>> d.nodes.shape, round(float(d.weights.sum()), 6)
        ((2, 8), 2.0)
    """
    if iters < 1 or runs < 1 or bins < 2:
        raise ConfigError(f"Invalid density settings: iters={iters}, runs={runs}, bins={bins}",
                          hint="use iters >= 1, runs >= 1, bins >= 2")
    if sigma is not None and not sigma > 0:
        raise ConfigError(f"Density broadening sigma={sigma} must be positive")
    steps = min(iters, op.size)
    gen = torch.Generator().manual_seed(seed)
    nodes, weights = slq_nodes(float64_matvec(op), op.size, steps, runs, gen, op.device)
    grid, density, width = density_on_grid(nodes, weights, bins, sigma)
    return Density(grid, density, nodes, weights, runs, steps, float(width))


def curvature_summary(op: HessianOperator, top_k: int = 1, bottom_k: int = 0, trace_samples: int = 0,
                      trace_method: str = "hutch++", density: bool = False, seed: int = 0,
                      tol: float = 1e-3, trace_rse: float | None = None) -> tuple[dict[str, Any], Density | None]:
    """Loss, gradient norm and the requested curvature of ``op`` as a JSON-ready dict
    (and the :class:`Density` when asked for); ``0``/``False`` skips a part.

    Eigenpairs stop once their residual bounds are below ``tol * |lambda_max|``, or with
    ``top_k`` and a ``hutch++`` trace below ``tol`` times each top eigenvalue. With
    ``top_k`` and a ``hutch++`` trace both, they share one Krylov space
    (:func:`~lossgrid.hessian.operator.top_eigs_and_trace`): ``trace_samples`` is then the
    most probes, drawn until the standard error is at most ``trace_rse`` of the trace
    (default 0.05).

    Example:
        >>> import torch
        >>> from lossgrid.hessian.operator import hessian_operator
        >>> op = hessian_operator(torch.nn.Linear(3, 2), (torch.randn(64, 3), torch.arange(64) % 2))
        >>> summary, _ = curvature_summary(op, top_k=2, trace_samples=6)
        >>> sorted(summary["top"]), summary["trace"]["method"]
        (['iterations', 'residuals', 'values'], 'hutch++')
    """
    t0 = time.perf_counter()
    loss, grad = op.gradient()
    out: dict[str, Any] = {"parameters": op.size, "parameter_tensors": len(op.names),
                           "dtype": str(op.dtype).replace("torch.", ""), "loss_value": loss,
                           "grad_norm": float(grad.norm()), "seed": seed, "note": EVAL_MODE_NOTE}
    shared = bool(top_k and trace_samples and trace_method == "hutch++")
    t = None
    for which, k in (("top", top_k), ("bottom", bottom_k)):
        if not k:
            continue
        if which == "top" and shared:
            r, t = top_eigs_and_trace(op, k, trace_samples, 0.05 if trace_rse is None else trace_rse, seed, tol)
        else:
            r = lanczos_eigs(op, k, which, seed=seed, tol=tol)
        out[which] = {"values": r.values.tolist(), "residuals": r.residuals.tolist(),
                      "relative_residuals": [float(e / abs(v)) if v else None for e, v in zip(r.residuals, r.values)],
                      "iterations": r.iterations}
    if trace_samples:
        t = t or hessian_trace(op, trace_samples, trace_method, seed)
        out["trace"] = {"value": t.value, "stderr": t.stderr, "samples": t.samples, "method": t.method,
                        "mean_eigenvalue": t.value / op.size}
        if shared:
            out["trace"]["low_rank_vectors"] = out["top"]["iterations"]
    dens = spectral_density(op, seed=seed) if density else None
    if dens is not None:
        out["density"] = {"runs": dens.runs, "iters": dens.iters, "sigma": dens.sigma, "mean": dens.mean(),
                          "min": float(dens.nodes.min()), "max": float(dens.nodes.max()),
                          "nodes": dens.nodes.tolist(), "weights": dens.weights.tolist()}
    out["hvp_count"] = op.hvp_count
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out, dens


def plot_density(density: Density, out: str | os.PathLike, title: str | None = None, dpi: int = 150) -> None:
    """Render ``density`` on a log-scale y axis (as PyHessian does) into ``out``.

    The caller owns the path (write to a temporary sibling and move it, as the
    CLI does with :func:`lossgrid._files.atomic_output`); matplotlib is imported here.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    try:
        floor = max(float(density.density.max()), 1e-300) * 1e-7  # log axis: keep empty stretches visible
        ax.semilogy(density.grid, density.density + floor)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (log scale)")
        ax.set_title(title or f"Hessian spectral density (SLQ, {density.runs} runs x {density.iters} steps)")
        ax.grid(True, which="major", alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.fspath(out), dpi=dpi)
    finally:
        plt.close(fig)
