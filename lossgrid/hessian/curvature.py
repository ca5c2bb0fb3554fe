"""Convexity maps: the extreme Hessian eigenvalues at every grid point.

The paper checks whether a surface's apparent convexity is real by mapping
``|min_eig / max_eig|`` of the Hessian over the grid: near zero (blue in its
figures) the landscape is convex in every direction of weight space, large
values mean strong negative curvature that the 2D slice may hide. The
reference implementation stores ``max_eig`` and ``min_eig`` datasets in the
surface file; lossgrid writes the same names (``lossgrid surface
--curvature``), chunk by chunk with the losses, so that curvature surfaces
resume like any other.

Both eigenvalues come from ONE Lanczos run (full reorthogonalization, seeded),
whose Krylov space approximates both ends of the spectrum: ``iters`` HVPs per
grid point, each a pass over the whole evaluation set (BatchNorm in eval mode).
With more than 20 ``iters`` the run stops early once both extreme Ritz values
are converged to ``tol`` relative to the largest magnitude (never before 20
steps: converged Ritz values can still miss an eigenvalue the Krylov space has
not reached). The largest eigenvalue converges first; the smallest (a cluster
near zero, or small negative values) can be off by a few percent at 20 steps
(2% on a digits MLP): raise ``iters`` where ``min_eig`` matters. A point whose
loss is not finite gets NaN for both. At the grid's origin the eigenvalues are
those of the trained model; elsewhere those of the perturbed weights.

Example:
    >>> import torch
    >>> from lossgrid.config import CurvatureSpec
    >>> x, y = torch.randn(64, 3), torch.arange(64) % 2
    >>> lo, hi = extreme_eigenvalues(torch.nn.Linear(3, 2), (x, y), CurvatureSpec(iters=6))
    >>> bool(lo <= hi)
    True
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import CurvatureSpec
from ..data import EvalData
from ..engine.losses import LossFn
from ..engine.params import ParamLayout
from .lanczos import gaussian, lanczos, min_steps, ritz_pairs, ritz_residual_bounds
from .operator import hessian_operator

#: the surface-file datasets (the reference implementation's names)
DATASETS = ("max_eig", "min_eig")


def extreme_eigenvalues(model: nn.Module, data: EvalData | tuple[torch.Tensor, torch.Tensor],
                        spec: CurvatureSpec = CurvatureSpec(), loss: str | LossFn = "cross_entropy",
                        weights: dict[str, torch.Tensor] | None = None, device: str | torch.device = "cpu",
                        batch_size: int | None = None) -> tuple[float, float]:
    """``(min_eig, max_eig)`` of the Hessian of the mean loss at ``weights`` (default: the model's).

    Args:
        model: the network (not modified).
        data: the whole evaluation set.
        spec: Lanczos steps, tolerance, seed and the parameter subset.
        loss: as for :func:`lossgrid.compute_surface`.
        weights: ``{name: tensor}`` of the point (parameters and, for ``states``
            directions, buffers).
        device: where the HVPs run.
        batch_size: samples per HVP pass (default: by input size).
    """
    op = hessian_operator(model, data, loss, params=spec.params, batch_size=batch_size, device=str(device),
                          weights=weights)
    steps = min(op.size, spec.iters)
    gen = torch.Generator().manual_seed(spec.seed)

    def both_ends_converged(theta: np.ndarray, s: np.ndarray, beta: float) -> bool:
        bounds = ritz_residual_bounds(s, beta)
        scale = max(float(np.max(np.abs(theta))), 1e-30)
        return bool(bounds[0] <= spec.tol * scale and bounds[-1] <= spec.tol * scale)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        hv = op.matvec(v).to(torch.float64)
        if not bool(torch.isfinite(hv).all()):
            raise _NotFinite
        return hv

    try:
        # never stop before min_steps: two converged Ritz values can still miss an eigenvalue outside the Krylov
        # space; with the default 20 iters the run therefore always takes all of them
        run = lanczos(matvec, op.size, steps, gaussian(op.size, gen, op.device), gen, both_ends_converged,
                      check_from=min(steps, min_steps(1)))
        theta, _ = ritz_pairs(run)
    except (_NotFinite, np.linalg.LinAlgError):
        # the loss is not finite at this point (a diverged model): no curvature, as its loss is NaN there
        return float("nan"), float("nan")
    return float(theta[0]), float(theta[-1])


class _NotFinite(Exception):
    """A Hessian-vector product with NaN or infinite entries."""


def curvature_of_points(model: nn.Module, data: EvalData, loss_fn: LossFn, layout: ParamLayout,
                        weights: torch.Tensor, spec: CurvatureSpec, device: torch.device,
                        batch_size: int | None = None) -> dict[str, np.ndarray]:
    """``{"max_eig": [K], "min_eig": [K]}`` at the grid points whose flat weights are ``weights[K, P]``."""
    k = weights.shape[0]
    out = {name: np.empty(k) for name in DATASETS}
    for i in range(k):
        if not bool(torch.isfinite(weights[i]).all()):  # weights overflowed: the loss is NaN there too
            out["max_eig"][i] = out["min_eig"][i] = np.nan
            continue
        point = {name: t.detach() for name, t in layout.unflatten(weights[i]).items()}
        lo, hi = extreme_eigenvalues(model, data, spec, loss_fn, point, device, batch_size)
        out["max_eig"][i], out["min_eig"][i] = hi, lo
    return out


def convexity_ratio(min_eig: np.ndarray, max_eig: np.ndarray) -> np.ndarray:
    """``|min_eig / max_eig|`` as the paper maps it (NaN where ``max_eig`` is 0 or missing)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(np.asarray(min_eig, dtype=np.float64) / np.asarray(max_eig, dtype=np.float64))
    return np.where(np.isfinite(ratio), ratio, np.nan)
