"""Private helpers of :mod:`lossgrid.audits.report`: statistics (t-intervals, quadratic
fits) and the filter-normalized epsilon-sharpness ascent.

The sharpness ball follows filter-wise normalization: every output filter (a
slice along dim 0 of a tensor of two or more dimensions, a Linear row) may move
by at most ``eps`` times its own norm, ``||delta_f|| <= eps * ||w_f||``; tensors of
at most one dimension (biases, BatchNorm affine parameters) do not move, as the
surface's ``--xignore biasbn`` default zeroes their directions.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import inputs as inp
from ..engine.losses import LossFn, batch_loss_sum, loss_units
from ..engine.params import ParamLayout

#: two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (a table up to
    30, the Cornish-Fisher expansion beyond it: error below 1e-4 there).

    Example:
        >>> round(t_quantile_975(7), 3)
        2.365
    """
    if df < 1:
        raise ValueError("df must be at least 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` when it is missing or not finite (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def mean_ci95(samples: np.ndarray) -> dict[str, float | None]:
    """Mean, sample std and the 95% t-interval of the mean over the finite ``samples``."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"mean": None, "std": None, "ci95_low": None, "ci95_high": None}
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "std": None, "ci95_low": None, "ci95_high": None}
    std = float(x.std(ddof=1))
    half = t_quantile_975(x.size - 1) * std / math.sqrt(x.size)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def quadratic_fit(alphas: np.ndarray, losses: np.ndarray) -> tuple[float, float]:
    """Least-squares ``loss(alpha) = a alpha^2 + b alpha + c``; returns ``(2a, R^2)``
    (NaN for both when fewer than three finite points remain). R^2 is 1 for a
    perfectly flat, perfectly fitted curve."""
    ok = np.isfinite(losses)
    a_, l_ = np.asarray(alphas, dtype=np.float64)[ok], np.asarray(losses, dtype=np.float64)[ok]
    if a_.size < 3:
        return math.nan, math.nan
    coef = np.polyfit(a_, l_, 2)
    residual = float(np.sum((np.polyval(coef, a_) - l_) ** 2))
    total = float(np.sum((l_ - l_.mean()) ** 2))
    r2 = 1.0 - residual / total if total > 0 else (1.0 if residual <= 1e-30 else 0.0)
    return 2.0 * float(coef[0]), r2


def filter_radii(layout: ParamLayout, base: torch.Tensor, eps: float) -> list[torch.Tensor | None]:
    """Per tensor of ``layout``: the radius of each filter, ``eps * ||w_f||`` as
    ``[rows, 1]``, or ``None`` for tensors that stay fixed (at most one dimension)."""
    out: list[torch.Tensor | None] = []
    for shape, w in zip(layout.shapes, layout.unflatten(base).values()):
        if len(shape) <= 1 or w.numel() == 0:
            out.append(None)
            continue
        out.append(eps * w.reshape(shape[0], -1).norm(dim=1, keepdim=True))
    return out


def ascent_step(layout: ParamLayout, delta: torch.Tensor, grad: torch.Tensor, radii: list[torch.Tensor | None],
                step: float) -> torch.Tensor:
    """One projected ascent step in the product of per-filter balls: each filter
    moves by ``step`` times its radius along its own normalized gradient (the
    steepest ascent for this ball), then is pulled back onto its ball."""
    new = torch.zeros_like(delta)
    parts_new = layout.unflatten(new)
    parts_old = layout.unflatten(delta)
    parts_grad = layout.unflatten(grad)
    for (name, shape), r in zip(zip(layout.names, layout.shapes), radii):
        if r is None:
            continue  # biases and BN parameters stay fixed
        g = parts_grad[name].reshape(shape[0], -1)
        d = parts_old[name].reshape(shape[0], -1) + step * r * g / (g.norm(dim=1, keepdim=True) + 1e-30)
        norm = d.norm(dim=1, keepdim=True)
        d = d * torch.clamp(r / (norm + 1e-30), max=1.0)  # projection onto ||d_f|| <= r_f
        parts_new[name].copy_(d.reshape(shape))
    return new


@dataclass
class LossGradient:
    """Mean loss and its gradient over the whole evaluation set at flat weights
    ``w[P]`` (parameters in ``layout`` order), with the model in eval mode."""

    model: nn.Module
    layout: ParamLayout
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    loss_fn: LossFn
    n: int

    @classmethod
    def build(cls, model: nn.Module, layout: ParamLayout, x: inp.Inputs, y: torch.Tensor, loss_fn: LossFn,
              batch_size: int, device: torch.device) -> "LossGradient":
        net = copy.deepcopy(model).to(device).eval()
        for p in net.parameters():
            p.requires_grad_(False)  # gradients flow into the flat vector only
        batches = inp.batches(inp.to_device(x, device), y.to(device), batch_size)
        return cls(net, layout, batches, loss_fn, loss_units(loss_fn, y))

    def __call__(self, w: torch.Tensor) -> tuple[float, torch.Tensor]:
        w = w.detach().clone().requires_grad_(True)
        params = self.layout.unflatten(w)
        total = 0.0
        for xb, yb in self.batches:
            # the sum over the batch divided by n: the gradients of all batches add up to the mean's gradient
            out = inp.model_output(inp.call_functional(self.model, params, xb))
            loss = batch_loss_sum(self.loss_fn, out.float(), yb) / self.n
            loss.backward()
            total += float(loss.detach())
        grad = w.grad if w.grad is not None else torch.zeros_like(w)  # None: the loss ignores the weights
        return total, grad.detach()


def sharpness_ascent(gradient: Callable[[torch.Tensor], tuple[float, torch.Tensor]],
                     evaluate: Callable[[torch.Tensor], float], layout: ParamLayout, base: torch.Tensor,
                     eps: float, steps: int, center_loss: float) -> dict[str, float]:
    """Epsilon-sharpness by projected gradient ascent from the center.

    Step ``k`` moves each filter by ``2 / steps`` of its radius (at least the whole
    radius for one or two steps) along its normalized gradient and projects; the
    loss of every iterate is known (``gradient`` returns it, the last one is
    ``evaluate``-d), and the largest is kept. The first step from the center is
    the maximizer of the linearized loss when the step reaches the boundary.
    Returns the loss at the best point found and the relative norm of its move.
    """
    radii = filter_radii(layout, base, eps)
    step = max(2.0 / steps, 0.5) if steps > 0 else 0.0
    delta = torch.zeros_like(base)
    best_loss, best_delta = center_loss, delta
    for k in range(steps):
        loss, grad = gradient(base + delta)
        if k > 0 and math.isfinite(loss) and loss > best_loss:
            best_loss, best_delta = loss, delta
        if not bool(torch.isfinite(grad).all()):
            break  # the loss diverged along the way: keep the best finite point
        delta = ascent_step(layout, delta, grad, radii, 1.0 if k == 0 else step)
    if steps > 0:
        last = evaluate(base + delta)
        if math.isfinite(last) and last > best_loss:
            best_loss, best_delta = last, delta
    moved = [float((d.reshape(r.shape[0], -1).norm(dim=1, keepdim=True) / (r + 1e-30)).max())
             for d, r in zip(layout.unflatten(best_delta).values(), radii) if r is not None]
    return {"loss_at_max": best_loss, "max_filter_fraction": max(moved, default=0.0)}
