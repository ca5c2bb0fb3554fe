"""K-wide models: evaluate K weight sets of a model on one shared data batch.

:class:`WideModel` rewrites the ``torch.fx`` graph of a model into explicit wide
operations (grouped convolutions, batched matmuls, per-slice normalization; see
:mod:`lossgrid.exporters._layout`). Its weights are call arguments with a
leading ``[K]`` dimension, so the same module serves as a torch runner and as
the source of a clean ONNX graph with weights as inputs and a dynamic batch.

Convolutions followed by an eval-mode BatchNorm are fused: the graph takes the
*folded* weights under new names (``conv.weight|folded:bn``), computed per grid
point by :func:`lossgrid.kernels.fold_conv_bn` in :meth:`WideModel.prepare`.

Example:
    >>> import torch
    >>> from lossgrid.zoo import mlp_digits
    >>> model = mlp_digits().eval()
    >>> wide = WideModel(model, k=3)
    >>> state = {n: t.expand(3, *t.shape) for n, t in model.state_dict().items()}
    >>> wide.run(torch.randn(5, 64), wide.prepare(state)).shape
    torch.Size([3, 5, 10])
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import ExportError
from ..kernels import fold_conv_bn
from . import _ops as ops
from ._layout import LEAD, SHARED, WV, to_lead

FOLDED = "|folded:"
TRANSPOSED = "|T"  # Linear weights fed as [K, in, out]: no transpose inside the graph


@dataclass(frozen=True)
class Fold:
    """A convolution whose output goes only into a BatchNorm: fused per grid point."""

    conv: str
    bn: str
    eps: float
    conv_has_bias: bool
    bn_affine: bool

    @property
    def weight_input(self) -> str:
        return f"{self.conv}.weight{FOLDED}{self.bn}"

    @property
    def bias_input(self) -> str:
        return f"{self.conv}.bias{FOLDED}{self.bn}"


class WideModel(nn.Module):
    """``K`` copies of ``model`` with weights as call arguments.

    Args:
        model: the model (traced with ``torch.fx``; put in eval mode).
        k: grid points per call.
        fold_bn: fuse Conv -> BatchNorm pairs per grid point.
        transpose_linear: take Linear weights pre-transposed (``name.weight|T``,
            ``[K, in, out]``), so the graph multiplies without transposing.
    """

    def __init__(self, model: nn.Module, k: int = 1, fold_bn: bool = True, transpose_linear: bool = True) -> None:
        super().__init__()
        model = model.eval()
        try:
            self.gm = fx.symbolic_trace(model)
        except Exception as e:
            raise ExportError(f"Cannot trace {type(model).__name__} into a graph", f"{type(e).__name__}: {e}",
                              "models with data-dependent control flow cannot be exported; "
                              "make the forward a fixed sequence of operations") from None
        self.k = int(k)
        self.modules_by_name = dict(self.gm.named_modules())
        state = model.state_dict()
        self.state_names = [n for n, t in state.items() if torch.is_floating_point(t)]
        self.state_shapes = {n: tuple(state[n].shape) for n in self.state_names}
        self._check_modules()
        self.folds = self._find_folds() if fold_bn else {}
        self._skip = {f.bn for f in self.folds.values()}
        consumed = {f"{f.bn}.{p}" for f in self.folds.values()
                    for p in ("weight", "bias", "running_mean", "running_var")}
        consumed |= {f"{f.conv}.{p}" for f in self.folds.values() for p in ("weight", "bias")}
        attrs = {str(n.target) for n in self.gm.graph.nodes if n.op == "get_attr"}
        self.transposed = [f"{m}.weight" for m, mod in self.modules_by_name.items()
                           if isinstance(mod, nn.Linear) and f"{m}.weight" in self.state_shapes
                           and f"{m}.weight" not in attrs] if transpose_linear else []
        self.input_names: list[str] = []
        for name in self.state_names:
            if name not in consumed:
                self.input_names.append(name + TRANSPOSED if name in self.transposed else name)
        for f in self.folds.values():
            self.input_names += [f.weight_input, f.bias_input]
        self.input_shapes = {n: self._input_shape(n) for n in self.input_names}

    # ------------------------------------------------------------------ inputs
    def _input_shape(self, name: str) -> tuple[int, ...]:
        if name.endswith(TRANSPOSED):
            out, inp = self.state_shapes[name[: -len(TRANSPOSED)]]
            return (inp, out)
        if FOLDED not in name:
            return self.state_shapes[name]
        conv = name.split(FOLDED)[0].rsplit(".", 1)[0]
        w = self.state_shapes[f"{conv}.weight"]
        return w if name.split(FOLDED)[0].endswith(".weight") else (w[0],)

    def prepare(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Graph inputs from the full state of ``K`` points (``{name: [K, ...]}``):
        every floating-point state_dict entry, BatchNorms folded into their convs."""
        out = {n: state[n] for n in self.input_names if FOLDED not in n and not n.endswith(TRANSPOSED)}
        for n in self.transposed:
            out[n + TRANSPOSED] = state[n].transpose(1, 2)
        for f in self.folds.values():
            w = state[f"{f.conv}.weight"]
            k, c = w.shape[0], w.shape[1]
            ones = torch.ones(k, c, dtype=w.dtype, device=w.device)
            gamma = state[f"{f.bn}.weight"] if f.bn_affine else ones
            beta = state[f"{f.bn}.bias"] if f.bn_affine else torch.zeros_like(ones)
            bias = state[f"{f.conv}.bias"] if f.conv_has_bias else None
            out[f.weight_input], out[f.bias_input] = fold_conv_bn(
                w, bias, gamma, beta, state[f"{f.bn}.running_mean"], state[f"{f.bn}.running_var"], f.eps)
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, ...]`` and the inputs in ``input_names`` order -> outputs ``[K, B, ...]``."""
        return self.run(x, dict(zip(self.input_names, inputs)))

    def run(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        ctx = ops.Ctx(self.k, params, self.modules_by_name)
        env: dict[str, Any] = {}

        def load(a: Any) -> Any:
            return fx.node.map_arg(a, lambda n: env[n.name])

        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                env[node.name] = WV(x, SHARED)
            elif node.op == "get_attr":
                env[node.name] = self._get_attr(ctx, node.target)
            elif node.op == "output":
                out = load(node.args[0])
                if not isinstance(out, WV):
                    raise ExportError("The model output is not a single tensor",
                                      hint="return the logits tensor from forward")
                return to_lead(out, self.k)
            else:
                env[node.name] = self._call(ctx, node, load(node.args), load(node.kwargs))
        raise ExportError("The traced graph has no output")

    def _get_attr(self, ctx: ops.Ctx, target: str) -> Any:
        if target in ctx.params:
            return WV(ctx.params[target], LEAD)
        value = self.gm
        for part in target.split("."):
            value = getattr(value, part)
        return WV(value, SHARED) if isinstance(value, torch.Tensor) else value

    def _call(self, ctx: ops.Ctx, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        try:
            if node.op == "call_module":
                return self._call_module(ctx, node, args, kwargs)
            if node.op == "call_method":
                return _call_method(ctx, node.target, args, kwargs)
            return _call_function(ctx, node.target, args, kwargs)
        except NotImplementedError as e:
            raise ExportError(f"Cannot export {_where(node)}", str(e),
                              "replace it with a supported layer (see lossgrid.exporters docs)") from None

    def _call_module(self, ctx: ops.Ctx, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        name = str(node.target)
        mod = self.modules_by_name[name]
        if name in self._skip:  # BatchNorm folded into the conv before it
            return args[0]
        if name in self.folds:
            f = self.folds[name]
            return ops.conv(ctx, mod, name, args[0], f.weight_input, f.bias_input)
        if isinstance(mod, ops.ELEMENTWISE_MODULES):
            return WV(mod(args[0].t), args[0].layout)
        if isinstance(mod, ops.SPATIAL_MODULES):
            if getattr(mod, "return_indices", False):
                raise NotImplementedError("pooling with return_indices")
            return ops.spatial(ctx, mod, args[0])
        for types, handler in ops.MODULE_HANDLERS:
            if isinstance(mod, types):
                return handler(ctx, mod, name, *args, **kwargs)
        raise ExportError(f"Unsupported module {name} ({type(mod).__name__})")

    def _check_modules(self) -> None:
        supported = tuple(t for types, _ in ops.MODULE_HANDLERS
                          for t in (types if isinstance(types, tuple) else (types,)))
        supported += ops.ELEMENTWISE_MODULES + ops.SPATIAL_MODULES
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                mod = self.modules_by_name[str(node.target)]
                if not isinstance(mod, supported):
                    raise ExportError(f"Unsupported module {node.target} ({type(mod).__name__})",
                                      "lossgrid has no K-wide implementation of this layer",
                                      "use the torch backend for this model, or replace the layer")

    def _find_folds(self) -> dict[str, Fold]:
        calls: dict[str, int] = {}
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                calls[str(node.target)] = calls.get(str(node.target), 0) + 1
        folds = {}
        for node in self.gm.graph.nodes:
            if node.op != "call_module" or len(node.users) != 1:
                continue
            conv = self.modules_by_name[str(node.target)]
            (user,) = node.users
            if not isinstance(conv, (nn.Conv1d, nn.Conv2d)) or user.op != "call_module":
                continue
            bn = self.modules_by_name[str(user.target)]
            ok_bn = isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) and bn.track_running_stats
            if ok_bn and calls[str(node.target)] == 1 and calls[str(user.target)] == 1:
                folds[str(node.target)] = Fold(str(node.target), str(user.target), float(bn.eps),
                                               conv.bias is not None, bool(bn.affine))
        return folds


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack)[-1] if stack else ""
    what = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{what} at {path or node.name}"


def _call_method(ctx: ops.Ctx, method: str, args: tuple, kwargs: dict) -> Any:
    self_, rest = args[0], args[1:]
    if not isinstance(self_, WV):
        return getattr(self_, method)(*rest, **kwargs)
    if method in ops.ELEMENTWISE_METHODS:
        return ops.elementwise(ctx, lambda t, *a, **kw: getattr(t, method)(*a, **kw), args, kwargs)
    if method == "size":
        return ops.size(ctx, self_, *rest)
    if method == "dim":
        return self_.point_rank()
    if method in ("view", "reshape"):
        return ops.reshape(ctx, self_, *rest)
    if method == "flatten":
        return ops.flatten(ctx, self_, *rest, **kwargs)
    if method == "permute":
        return ops.permute(ctx, self_, *rest)
    if method == "transpose":
        return ops.transpose(ctx, self_, *rest)
    if method in ("mean", "sum", "amax", "amin"):
        return ops.reduce(ctx, method, self_, *rest, **kwargs)
    if method in ("softmax", "log_softmax"):
        return ops.softmax_like(ctx, getattr(torch, method), self_, *rest, **kwargs)
    if method == "__getitem__":
        return ops.getitem(ctx, self_, rest[0])
    raise NotImplementedError(f"tensor method .{method}()")


FUNCTIONS: dict[Any, Any] = {
    torch.flatten: ops.flatten,
    torch.reshape: ops.reshape,
    torch.permute: ops.permute,
    torch.transpose: ops.transpose,
    torch.cat: ops.cat,
    torch.concat: ops.cat,
    torch.matmul: ops.matmul,
    operator.matmul: ops.matmul,
    operator.getitem: ops.getitem,
}


def _call_function(ctx: ops.Ctx, fn: Any, args: tuple, kwargs: dict) -> Any:
    if fn is getattr and isinstance(args[0], WV):
        if args[1] == "shape":
            return ops.size(ctx, args[0])
        raise NotImplementedError(f"tensor attribute .{args[1]}")
    if fn in (torch.cat, torch.concat):
        return ops.cat(ctx, *args, **kwargs)
    if not any(isinstance(a, WV) for a in list(args) + list(kwargs.values())):
        return fn(*args, **kwargs)
    if fn in (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout):
        if kwargs.get("training", args[2] if len(args) > 2 else True):
            raise NotImplementedError("dropout in training mode")
        return args[0]
    if fn in ops.ELEMENTWISE_FUNCTIONS:
        return ops.elementwise(ctx, fn, args, kwargs)
    if fn in ops.SPATIAL_FUNCTIONS:
        return ops.spatial(ctx, fn, *args, **kwargs)
    if fn in (torch.mean, torch.sum, torch.amax, torch.amin):
        return ops.reduce(ctx, fn.__name__, *args, **kwargs)
    if fn in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax):
        return ops.softmax_like(ctx, fn, *args, **kwargs)
    if fn in FUNCTIONS:
        return FUNCTIONS[fn](ctx, *args, **kwargs)
    raise NotImplementedError(f"function {getattr(fn, '__name__', fn)}")
