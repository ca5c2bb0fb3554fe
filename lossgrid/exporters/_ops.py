"""K-wide implementations of the functions, methods and modules a traced model uses.

Each handler takes the wide context and the node's arguments (wide values,
Python values) and returns a wide value (or a tuple of them).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._layout import LEAD, PACKED, SHARED, WV, lead_aligned, point_shape, shift_dim, to_lead, to_packed, unify


class Ctx:
    """What handlers need: K, the per-call parameters, and the modules by name."""

    def __init__(self, k: int, params: dict[str, torch.Tensor], modules: dict[str, nn.Module]) -> None:
        self.k = k
        self.params = params
        self.modules = modules

    def param(self, name: str) -> torch.Tensor | None:
        return self.params.get(name)


# ---------------------------------------------------------------- elementwise
ELEMENTWISE_FUNCTIONS: set[Any] = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.tanh, torch.sigmoid, torch.exp, torch.sqrt,
    torch.rsqrt, torch.abs, torch.clamp, torch.where, F.relu, F.relu6, F.gelu, F.silu, F.leaky_relu, F.elu,
    F.hardswish, F.hardtanh, F.softplus, F.mish, torch.nn.functional.hardsigmoid,
}
ELEMENTWISE_METHODS = {"add", "sub", "mul", "div", "relu", "sigmoid", "tanh", "exp", "sqrt", "pow", "neg",
                       "clamp", "contiguous", "float", "clone", "abs", "__add__", "__mul__"}
ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU,
                       nn.Hardswish, nn.Hardtanh, nn.Softplus, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d,
                       nn.Dropout2d, nn.AlphaDropout)
SPATIAL_FUNCTIONS: set[Any] = {F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
                               F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d}
SPATIAL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                   nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


def elementwise(ctx: Ctx, fn: Callable[..., Any], args: tuple, kwargs: dict) -> WV:
    flat = list(args) + list(kwargs.values())
    layout, conv = unify(flat, ctx.k)
    new_args = conv[:len(args)]
    new_kwargs = dict(zip(kwargs, conv[len(args):]))
    return WV(fn(*new_args, **new_kwargs), layout)


def spatial(ctx: Ctx, fn: Callable[..., Any], x: WV, *args: Any, **kwargs: Any) -> WV:
    """Ops that act per channel (pooling): run on the packed (or shared) tensor."""
    if x.layout == SHARED:
        return WV(fn(x.t, *args, **kwargs), SHARED)
    out = fn(to_packed(x, ctx.k), *args, **kwargs)
    if isinstance(out, tuple):  # return_indices
        raise NotImplementedError("pooling with return_indices")
    return WV(out, PACKED)


# ---------------------------------------------------------------- shape ops
def size(ctx: Ctx, x: WV, dim: int | None = None) -> Any:
    shape = point_shape(x, ctx.k)
    return torch.Size(shape) if dim is None else shape[dim]


def reshape(ctx: Ctx, x: WV, *shape: Any) -> WV:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    if x.layout == SHARED:
        return WV(x.t.reshape(*shape), SHARED)
    return WV(to_lead(x, ctx.k).reshape(ctx.k, *shape), LEAD)


def flatten(ctx: Ctx, x: WV, start_dim: int = 0, end_dim: int = -1) -> WV:
    if x.layout == SHARED:
        return WV(torch.flatten(x.t, start_dim, end_dim), SHARED)
    if start_dim == 0:
        raise NotImplementedError("flatten over the batch dimension")
    return WV(torch.flatten(to_lead(x, ctx.k), shift_dim(start_dim), shift_dim(end_dim)), LEAD)


def permute(ctx: Ctx, x: WV, *dims: Any) -> WV:
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    if x.layout == SHARED:
        return WV(x.t.permute(*dims), SHARED)
    rank = x.point_rank()
    return WV(to_lead(x, ctx.k).permute(0, *[(d % rank) + 1 for d in dims]), LEAD)


def transpose(ctx: Ctx, x: WV, d0: int, d1: int) -> WV:
    if x.layout == SHARED:
        return WV(x.t.transpose(d0, d1), SHARED)
    return WV(to_lead(x, ctx.k).transpose(shift_dim(d0), shift_dim(d1)), LEAD)


def cat(ctx: Ctx, tensors: list[WV], dim: int = 0) -> WV:
    layouts = {t.layout for t in tensors}
    if layouts <= {SHARED}:
        return WV(torch.cat([t.t for t in tensors], dim), SHARED)
    rank = tensors[0].point_rank()
    if LEAD not in layouts and dim % rank == 1 and rank >= 2:
        parts = [to_packed(t, ctx.k) for t in tensors]  # per-slice concat of channels
        b, rest = parts[0].shape[0], parts[0].shape[2:]
        joined = torch.cat([p.reshape(b, ctx.k, -1, *rest) for p in parts], dim=2)
        return WV(joined.reshape(b, -1, *rest), PACKED)
    return WV(torch.cat([lead_aligned(t, ctx.k, rank) for t in tensors], shift_dim(dim)), LEAD)


def reduce(ctx: Ctx, fn_name: str, x: WV, dim: Any = None, keepdim: bool = False, **kw: Any) -> WV:
    if dim is None:
        raise NotImplementedError(f"{fn_name} over all dimensions")
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if x.layout == SHARED:
        return WV(getattr(x.t, fn_name)(dims, keepdim=keepdim, **kw), SHARED)
    rank = x.point_rank()
    norm = [d % rank for d in dims]
    if x.layout == PACKED and min(norm) >= 2:
        return WV(getattr(x.t, fn_name)(tuple(norm), keepdim=keepdim, **kw), PACKED)
    return WV(getattr(to_lead(x, ctx.k), fn_name)(tuple(n + 1 for n in norm), keepdim=keepdim, **kw), LEAD)


def softmax_like(ctx: Ctx, fn: Callable[..., Any], x: WV, dim: int, **kw: Any) -> WV:
    if x.layout == SHARED:
        return WV(fn(x.t, dim, **kw), SHARED)
    return WV(fn(to_lead(x, ctx.k), shift_dim(dim), **kw), LEAD)


def getitem(ctx: Ctx, obj: Any, idx: Any) -> Any:
    if not isinstance(obj, WV):
        return obj[idx]
    if obj.layout == SHARED:
        return WV(obj.t[idx], SHARED)
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, WV) for i in idx):
        raise NotImplementedError("indexing with a tensor")
    return WV(to_lead(obj, ctx.k)[(slice(None), *idx)], LEAD)


def matmul(ctx: Ctx, a: WV, b: WV) -> WV:
    layout, (ta, tb) = unify([a, b], ctx.k)
    if layout == PACKED:
        ta, tb = to_lead(a, ctx.k), to_lead(b, ctx.k)
        layout = LEAD
    return WV(torch.matmul(ta, tb), layout)


# ---------------------------------------------------------------- modules
def conv(ctx: Ctx, mod: nn.Module, name: str, x: WV, weight: str | None = None, bias: str | None = None) -> WV:
    assert isinstance(mod, (nn.Conv1d, nn.Conv2d))
    if mod.padding_mode != "zeros":
        raise NotImplementedError(f"padding_mode={mod.padding_mode}")
    w = ctx.params[weight or f"{name}.weight"]
    b = ctx.param(bias or f"{name}.bias")
    k, cout = w.shape[0], w.shape[1]
    fn = F.conv1d if isinstance(mod, nn.Conv1d) else F.conv2d
    wk = w.reshape(k * cout, *w.shape[2:])
    bk = b.reshape(k * cout) if b is not None else None
    if x.layout == SHARED and mod.groups == 1:  # one convolution with K*Cout filters
        return WV(fn(x.t, wk, bk, mod.stride, mod.padding, mod.dilation, 1), PACKED)
    return WV(fn(to_packed(x, k), wk, bk, mod.stride, mod.padding, mod.dilation, mod.groups * k), PACKED)


def linear_weight_t(ctx: Ctx, name: str) -> torch.Tensor:
    """The Linear weight of module ``name`` as ``[K, in, out]``."""
    wt = ctx.param(f"{name}.weight|T")
    return wt if wt is not None else ctx.params[f"{name}.weight"].transpose(1, 2)


def linear(ctx: Ctx, mod: nn.Module, name: str, x: WV) -> WV:
    wt = linear_weight_t(ctx, name)  # [K, in, out]
    b = ctx.param(f"{name}.bias")
    t = x.t if x.layout == SHARED else to_lead(x, ctx.k)
    lead_dims = t.dim() - (2 if x.layout == SHARED else 3)  # per-point dims between batch and features
    y = torch.matmul(t, wt.reshape(wt.shape[0], *([1] * lead_dims), *wt.shape[1:]))
    if b is not None:
        y = y + b.reshape(b.shape[0], *([1] * (y.dim() - 2)), b.shape[1])
    return WV(y, LEAD)


def batch_norm(ctx: Ctx, mod: nn.Module, name: str, x: WV) -> WV:
    assert isinstance(mod, nn.modules.batchnorm._BatchNorm)
    if not mod.track_running_stats or mod.running_mean is None:
        raise NotImplementedError("BatchNorm without running statistics (uses batch statistics in eval)")
    mean, var = ctx.params[f"{name}.running_mean"], ctx.params[f"{name}.running_var"]
    k, c = mean.shape
    w = ctx.param(f"{name}.weight")
    b = ctx.param(f"{name}.bias")
    if x.layout == LEAD and x.point_rank() == 2:  # after Linear: [K, B, C]
        scale = 1.0 / torch.sqrt(var + mod.eps)
        if w is not None:
            scale = scale * w
        y = (x.t - mean[:, None, :]) * scale[:, None, :]
        return WV(y + b[:, None, :] if b is not None else y, LEAD)
    xp = to_packed(x, k)
    y = F.batch_norm(xp, mean.reshape(-1), var.reshape(-1), w.reshape(-1) if w is not None else None,
                     b.reshape(-1) if b is not None else None, False, 0.0, mod.eps)
    return WV(y, PACKED)


def layer_norm(ctx: Ctx, mod: nn.Module, name: str, x: WV) -> WV:
    assert isinstance(mod, nn.LayerNorm)
    t = to_lead(x, ctx.k)
    y = F.layer_norm(t, mod.normalized_shape, None, None, mod.eps)
    w, b = ctx.param(f"{name}.weight"), ctx.param(f"{name}.bias")
    pad = [1] * (t.dim() - 1 - len(mod.normalized_shape))
    if w is not None:
        y = y * w.reshape(w.shape[0], *pad, *w.shape[1:])
    if b is not None:
        y = y + b.reshape(b.shape[0], *pad, *b.shape[1:])
    return WV(y, LEAD)


def group_norm(ctx: Ctx, mod: nn.Module, name: str, x: WV) -> WV:
    assert isinstance(mod, nn.GroupNorm)
    w, b = ctx.param(f"{name}.weight"), ctx.param(f"{name}.bias")
    y = F.group_norm(to_packed(x, ctx.k), mod.num_groups * ctx.k, w.reshape(-1) if w is not None else None,
                     b.reshape(-1) if b is not None else None, mod.eps)
    return WV(y, PACKED)


def embedding(ctx: Ctx, mod: nn.Module, name: str, x: WV) -> WV:
    assert isinstance(mod, nn.Embedding)
    if x.layout != SHARED or mod.max_norm is not None:
        raise NotImplementedError("Embedding of weight-dependent indices or with max_norm")
    w = ctx.params[f"{name}.weight"]  # [K, V, D]
    return WV(w[:, x.t], LEAD)


def flatten_module(ctx: Ctx, mod: nn.Module, name: str, x: WV) -> WV:
    assert isinstance(mod, nn.Flatten)
    return flatten(ctx, x, mod.start_dim, mod.end_dim)


def multihead_attention(ctx: Ctx, mod: nn.Module, name: str, query: WV, key: WV, value: WV,
                        key_padding_mask: WV | None = None, need_weights: bool = True,
                        attn_mask: WV | None = None, average_attn_weights: bool = True,
                        is_causal: bool = False) -> tuple[WV, None]:
    assert isinstance(mod, nn.MultiheadAttention)
    if not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn:
        raise NotImplementedError("MultiheadAttention with kdim/vdim, bias_k/bias_v or add_zero_attn")
    k = ctx.k
    q, kk, v = (to_lead(t, k) for t in (query, key, value))
    if not mod.batch_first:  # [K, L, B, D] -> [K, B, L, D]
        q, kk, v = (t.transpose(1, 2) for t in (q, kk, v))
    d, h = mod.embed_dim, mod.num_heads
    w_in = ctx.params[f"{name}.in_proj_weight"].transpose(1, 2)  # [K, D, 3D]
    b_in = ctx.param(f"{name}.in_proj_bias")
    w_q, w_k, w_v = w_in[:, :, :d], w_in[:, :, d:2 * d], w_in[:, :, 2 * d:]

    def proj(t: torch.Tensor, wt: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        y = torch.matmul(t, wt.unsqueeze(1))
        return y + b[:, None, None, :] if b is not None else y

    bq, bk, bv = (b_in[:, :d], b_in[:, d:2 * d], b_in[:, 2 * d:]) if b_in is not None else (None, None, None)
    q, kk, v = proj(q, w_q, bq), proj(kk, w_k, bk), proj(v, w_v, bv)

    def heads(t: torch.Tensor) -> torch.Tensor:  # [K, B, L, D] -> [K, B, H, L, D/H]
        return t.reshape(t.shape[0], t.shape[1], t.shape[2], h, d // h).transpose(2, 3)

    q, kk, v = heads(q), heads(kk), heads(v)
    scores = torch.matmul(q, kk.transpose(-1, -2)) / math.sqrt(d // h)
    lq, lk = scores.shape[-2], scores.shape[-1]
    if is_causal and attn_mask is None:
        causal = torch.ones(lq, lk, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(causal, float("-inf"))
    if attn_mask is not None:
        m = attn_mask.t
        if m.dtype == torch.bool:
            scores = scores.masked_fill(m, float("-inf"))
        else:
            scores = scores + m
    if key_padding_mask is not None:
        pad = key_padding_mask.t[None, :, None, None, :]
        scores = scores.masked_fill(pad.bool(), float("-inf")) if pad.dtype == torch.bool else scores + pad
    out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [K, B, H, Lq, D/H]
    out = out.transpose(2, 3).reshape(out.shape[0], out.shape[1], lq, d)
    out = proj(out, linear_weight_t(ctx, f"{name}.out_proj"), ctx.param(f"{name}.out_proj.bias"))
    if not mod.batch_first:
        out = out.transpose(1, 2)
    return WV(out, LEAD), None


def encoder_layer(ctx: Ctx, mod: nn.Module, name: str, src: WV, src_mask: WV | None = None,
                  src_key_padding_mask: WV | None = None, is_causal: bool = False) -> WV:
    assert isinstance(mod, nn.TransformerEncoderLayer)
    act = mod.activation

    def act_fn(t: WV) -> WV:
        return WV(act(t.t), t.layout)

    def sa(t: WV) -> WV:
        return multihead_attention(ctx, mod.self_attn, f"{name}.self_attn", t, t, t, src_key_padding_mask,
                                   False, src_mask, True, is_causal)[0]

    def ff(t: WV) -> WV:
        return linear(ctx, mod.linear2, f"{name}.linear2", act_fn(linear(ctx, mod.linear1, f"{name}.linear1", t)))

    def add(a: WV, b: WV) -> WV:
        return elementwise(ctx, operator.add, (a, b), {})

    x = src
    if mod.norm_first:
        x = add(x, sa(layer_norm(ctx, mod.norm1, f"{name}.norm1", x)))
        return add(x, ff(layer_norm(ctx, mod.norm2, f"{name}.norm2", x)))
    x = layer_norm(ctx, mod.norm1, f"{name}.norm1", add(x, sa(x)))
    return layer_norm(ctx, mod.norm2, f"{name}.norm2", add(x, ff(x)))


def encoder(ctx: Ctx, mod: nn.Module, name: str, src: WV, mask: WV | None = None,
            src_key_padding_mask: WV | None = None, is_causal: bool | None = None) -> WV:
    assert isinstance(mod, nn.TransformerEncoder)
    x = src
    for i, layer in enumerate(mod.layers):
        x = encoder_layer(ctx, layer, f"{name}.layers.{i}", x, mask, src_key_padding_mask, bool(is_causal))
    if mod.norm is not None:
        x = layer_norm(ctx, mod.norm, f"{name}.norm", x)
    return x


MODULE_HANDLERS: list[tuple[type, Callable[..., Any]]] = [
    ((nn.Conv1d, nn.Conv2d), conv),
    (nn.Linear, linear),
    ((nn.BatchNorm1d, nn.BatchNorm2d), batch_norm),
    (nn.LayerNorm, layer_norm),
    (nn.GroupNorm, group_norm),
    (nn.Embedding, embedding),
    (nn.Flatten, flatten_module),
    (nn.MultiheadAttention, multihead_attention),
    (nn.TransformerEncoderLayer, encoder_layer),
    (nn.TransformerEncoder, encoder),
]  # type: ignore[list-item]
