"""Values flowing through a K-wide model, and conversions between their layouts.

A wide value holds the activations of ``K`` grid points for one shared data batch
of ``B`` samples, in one of three layouts:

* ``shared``: ``[B, ...]`` -- does not depend on the weights (the input batch);
* ``lead``: ``[K, B, ...]`` -- the K slices stacked in front (Linear, attention);
* ``packed``: ``[B, K*C, ...]`` -- the K slices packed into the channel dimension,
  so that convolutions are grouped convolutions and BatchNorm, GroupNorm,
  pooling and elementwise ops run unchanged on all K slices at once.

Conversions happen only where an op needs another layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SHARED, LEAD, PACKED = "shared", "lead", "packed"


@dataclass
class WV:
    """A wide value: a tensor and its layout."""

    t: torch.Tensor
    layout: str

    def point_rank(self) -> int:
        """Rank of the tensor as one grid point's model sees it."""
        return self.t.dim() - 1 if self.layout == LEAD else self.t.dim()


def to_lead(v: WV, k: int) -> torch.Tensor:
    if v.layout == LEAD:
        return v.t
    if v.layout == SHARED:
        return v.t.unsqueeze(0).expand(k, *v.t.shape)
    t = v.t  # packed [B, K*C, *rest] -> [K, B, C, *rest]
    return t.reshape(t.shape[0], k, -1, *t.shape[2:]).transpose(0, 1)


def to_packed(v: WV, k: int) -> torch.Tensor:
    if v.layout == PACKED:
        return v.t
    if v.layout == SHARED:
        return v.t.repeat(1, k, *([1] * (v.t.dim() - 2)))
    t = v.t  # lead [K, B, C, *rest] -> [B, K*C, *rest]
    return t.transpose(0, 1).reshape(t.shape[1], -1, *t.shape[3:])


def point_shape(v: WV, k: int) -> tuple:
    """The shape one grid point's model would see (``x.shape`` / ``x.size()``)."""
    if v.layout == LEAD:
        return tuple(v.t.shape[1:])
    if v.layout == PACKED:
        return (v.t.shape[0], v.t.shape[1] // k, *v.t.shape[2:])
    return tuple(v.t.shape)


def lead_aligned(v: WV, k: int, rank: int) -> torch.Tensor:
    """``to_lead`` with singleton dims after K so per-point ranks broadcast."""
    t = to_lead(v, k)
    missing = rank - (t.dim() - 1)
    if missing > 0:
        t = t.reshape(t.shape[0], *([1] * missing), *t.shape[1:])
    return t


def shift_dim(d: int) -> int:
    """A per-point dim index as an index into a lead tensor."""
    return d + 1 if d >= 0 else d


def unify(values: list[object], k: int) -> tuple[str, list[object]]:
    """Bring wide values to one layout for an elementwise op; other args pass through."""
    wides = [v for v in values if isinstance(v, WV)]
    layouts = {v.layout for v in wides}
    if layouts <= {SHARED}:
        return SHARED, [v.t if isinstance(v, WV) else v for v in values]
    ranks = {v.point_rank() for v in wides}
    if LEAD not in layouts and len(ranks) == 1:
        return PACKED, [to_packed(v, k) if isinstance(v, WV) else v for v in values]
    rank = max(ranks)
    return LEAD, [lead_aligned(v, k, rank) if isinstance(v, WV) else v for v in values]
