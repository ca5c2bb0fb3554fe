"""Torch kernels (CPU or any torch device): the engine's default implementation."""

from __future__ import annotations

import torch

from ..errors import ConfigError

EPS = 1e-10  # as in the reference implementation: guards all-zero filters


def normalize_direction(d: torch.Tensor, w: torch.Tensor, norm: str) -> torch.Tensor:
    """Rescale direction ``d`` against weights ``w``; returns a new tensor.

    * ``filter``: each slice along dim 0 (an output filter, a Linear row, or one
      scalar of a 1-D tensor) gets the norm of the matching slice of ``w``.
    * ``layer``: the whole tensor gets the norm of ``w``.
    * ``weight``: ``d * w`` (elementwise).
    * ``none``: ``d`` unchanged.
    """
    if d.shape != w.shape:
        raise ConfigError(f"Direction of shape {tuple(d.shape)} does not match weights {tuple(w.shape)}")
    if norm == "none":
        return d.clone()
    if norm == "weight":
        return d * w
    if norm == "layer":
        return d * (w.norm() / (d.norm() + EPS))
    if norm == "filter":
        if d.dim() == 0:
            return d * (w.abs() / (d.abs() + EPS))
        d2 = d.reshape(d.shape[0], -1)
        w2 = w.reshape(w.shape[0], -1)
        scale = w2.norm(dim=1, keepdim=True) / (d2.norm(dim=1, keepdim=True) + EPS)
        return (d2 * scale).reshape(d.shape)
    raise ConfigError(f"Unknown normalization {norm!r}", hint="use filter, layer, weight or none")


def fold_conv_bn(weight: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor, beta: torch.Tensor,
                 mean: torch.Tensor, var: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the convolution (or Linear) before it, for
    ``K`` grid points at once.

    ``weight`` is ``[K, Cout, ...]``; ``bias``, ``gamma``, ``beta``, ``mean``, ``var``
    are ``[K, Cout]`` (``bias`` may be ``None``). Returns ``(weight', bias')`` with
    ``weight' = weight * s`` and ``bias' = beta + (bias - mean) * s`` where
    ``s = gamma / sqrt(var + eps)``. A negative perturbed variance gives NaN, as
    the unfolded BatchNorm does.
    """
    scale = gamma / torch.sqrt(var + eps)
    shape = scale.shape + (1,) * (weight.dim() - scale.dim())
    folded_w = weight * scale.reshape(shape)
    b = bias if bias is not None else torch.zeros_like(mean)
    return folded_w, beta + (b - mean) * scale


def perturb(base: torch.Tensor, dirs: torch.Tensor, coeffs: torch.Tensor,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Weights of ``K`` grid points: ``base[None] + coeffs @ dirs``.

    Args:
        base: flat weights ``[P]``.
        dirs: flat directions ``[D, P]`` (``D`` = 1 or 2).
        coeffs: grid coefficients ``[K, D]``.
        out: optional ``[K, P]`` buffer to write into.
    """
    coeffs = coeffs.to(dtype=dirs.dtype, device=dirs.device)
    if out is None:
        return torch.addmm(base.unsqueeze(0), coeffs, dirs)
    return torch.addmm(base.unsqueeze(0), coeffs, dirs, out=out)
