"""Model inputs and outputs beyond one tensor.

A model's inputs for a set of ``N`` samples are one of:

* a tensor ``[N, ...]`` -- called as ``model(x)``;
* a tuple of tensors, each ``[N, ...]`` -- positional arguments, ``model(*x)``;
* a dict of tensors, each ``[N, ...]`` -- keyword arguments, ``model(**x)``
  (transformers' ``input_ids``/``attention_mask``, say).

Every runner slices, batches and moves inputs through the functions here, so
that one convention holds everywhere. A model's outputs may be a tensor, an
object with a ``logits`` attribute (Hugging Face model outputs), a mapping with
a ``logits`` key, or a tuple/list whose first element is the tensor
(:func:`model_output`).

Example:
    >>> import torch
    >>> x = {"ids": torch.zeros(10, 4, dtype=torch.long), "mask": torch.ones(10, 4)}
    >>> num_samples(x), [num_samples(b) for b in split(x, 4)]
    (10, [4, 4, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, DataLoadError, EvaluationError

Inputs = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]


def as_inputs(x: Any, what: str = "the inputs") -> Inputs:
    """``x`` as :data:`Inputs`: arrays become tensors (floating point as float32); a tuple is
    several positional inputs, a list is one array (of samples); every part must hold the
    same number of samples (first axis)."""
    if isinstance(x, Mapping):
        if not x:
            raise DataLoadError(f"{what} are an empty dict", hint="give at least one input tensor")
        out: Inputs = {str(k): _as_tensor(v, f"{what}[{k!r}]") for k, v in x.items()}
    elif isinstance(x, tuple):
        if not x:
            raise DataLoadError(f"{what} are an empty tuple", hint="give at least one input tensor")
        out = tuple(_as_tensor(v, f"{what}[{i}]") for i, v in enumerate(x))
    elif isinstance(x, list) and x and all(isinstance(v, torch.Tensor) for v in x):
        out = _as_tensor(torch.stack(x), what)  # a list of samples is one array, as NumPy reads it
    else:
        out = _as_tensor(x, what)
    sizes = {name: int(t.shape[0]) for name, t in named_tensors(out)}
    if len(set(sizes.values())) > 1:
        raise DataLoadError(f"The parts of {what} hold different numbers of samples",
                            ", ".join(f"{n}: {s}" for n, s in sizes.items()),
                            "every input needs the samples on its first axis, the same count in each")
    return out


def _as_tensor(v: Any, what: str) -> torch.Tensor:
    try:
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
    except Exception as e:
        raise DataLoadError(f"{what} are not numeric", f"{type(e).__name__}: {e}",
                            "return tensors or NumPy arrays") from None
    if t.dim() == 0:
        raise DataLoadError(f"{what} are a scalar", "inputs need the samples on their first axis",
                            "return arrays of shape [N, ...]")
    if t.dtype == torch.bool:
        return t.contiguous()
    if torch.is_floating_point(t) and t.dtype != torch.float32:
        t = t.float()
    elif not torch.is_floating_point(t) and t.dtype not in (torch.int64, torch.int32):
        t = t.float()  # uint8 images and the like: values for the network (int32/int64 stay: token ids)
    return t.contiguous()


def is_tensor(x: Inputs) -> bool:
    """One tensor (the case every strategy supports)."""
    return isinstance(x, torch.Tensor)


def named_tensors(x: Inputs) -> list[tuple[str, torch.Tensor]]:
    """The tensors of ``x`` with a name each (``x``, ``x[0]``, ``x['ids']``), in a fixed order."""
    if isinstance(x, torch.Tensor):
        return [("x", x)]
    if isinstance(x, dict):
        return [(f"x[{k!r}]", t) for k, t in x.items()]
    return [(f"x[{i}]", t) for i, t in enumerate(x)]


def tensors(x: Inputs) -> list[torch.Tensor]:
    """The tensors of ``x`` in a fixed order."""
    return [t for _, t in named_tensors(x)]


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], x: Inputs) -> Inputs:
    """``x`` with ``fn`` applied to each tensor (the structure kept)."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: fn(t) for k, t in x.items()}
    return tuple(fn(t) for t in x)


def num_samples(x: Inputs) -> int:
    return int(tensors(x)[0].shape[0])


def take(x: Inputs, index: Any) -> Inputs:
    """Samples ``index`` (a slice or an index tensor) of every part of ``x``."""
    return map_tensors(lambda t: t[index], x)


def split(x: Inputs, size: int) -> list[Inputs]:
    """``x`` in consecutive batches of ``size`` samples (views, no copies)."""
    n = num_samples(x)
    return [take(x, slice(i, i + size)) for i in range(0, n, size)]


def to_device(x: Inputs, device: torch.device | str, non_blocking: bool = False) -> Inputs:
    return map_tensors(lambda t: t.to(device, non_blocking=non_blocking), x)


def sample_shape(x: Inputs) -> str:
    """``[N, 3, 32, 32]`` or ``{'ids': [N, 12], 'mask': [N, 12]}``, for messages."""
    def dims(t: torch.Tensor) -> str:
        return "[" + ", ".join(["N", *map(str, t.shape[1:])]) + "]"

    if isinstance(x, torch.Tensor):
        return dims(x)
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k!r}: {dims(t)}" for k, t in x.items()) + "}"
    return "(" + ", ".join(dims(t) for t in x) + ")"


def values_per_sample(x: Inputs) -> int:
    """Input values of one sample over all parts (sizes batches)."""
    return max(1, sum(int(t[0].numel()) for t in tensors(x)))


def call_model(model: Callable[..., Any], x: Inputs) -> Any:
    """``model(x)``, ``model(*x)`` or ``model(**x)`` by the kind of ``x``."""
    if isinstance(x, torch.Tensor):
        return model(x)
    if isinstance(x, dict):
        return model(**x)
    return model(*x)


def call_functional(model: nn.Module, params: dict[str, torch.Tensor], x: Inputs) -> Any:
    """:func:`torch.func.functional_call` of ``model`` with ``params`` on inputs ``x``."""
    from torch.func import functional_call

    if isinstance(x, torch.Tensor):
        return functional_call(model, params, (x,))
    if isinstance(x, dict):
        return functional_call(model, params, (), x)
    return functional_call(model, params, tuple(x))


def model_output(out: Any) -> torch.Tensor:
    """The tensor a loss is computed on: ``out`` itself, ``out.logits``, ``out['logits']``,
    or the first element of a tuple/list."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise EvaluationError(f"The model returned {type(out).__name__}, which holds no output tensor",
                          "lossgrid computes the loss on a tensor, an object's .logits, a dict's 'logits' or the "
                          "first element of a tuple",
                          "return the logits from forward(), or wrap the model so that it does")


def forward(model: Callable[..., Any], x: Inputs) -> torch.Tensor:
    """The output tensor of ``model`` on inputs ``x`` (:func:`call_model` + :func:`model_output`)."""
    return model_output(call_model(model, x))


def batches(x: Inputs, y: torch.Tensor, size: int) -> list[tuple[Inputs, torch.Tensor]]:
    """Inputs and targets in consecutive batches of ``size`` samples (views)."""
    return list(zip(split(x, size), y.split(size)))


def require_tensor(x: Inputs, what: str, hint: str = "use --backend torch --strategy loop (or vmap/static), "
                   "which accept several or named inputs") -> torch.Tensor:
    """``x`` if it is one tensor; otherwise a :class:`~lossgrid.errors.ConfigError` saying that
    ``what`` (a strategy, an exporter) needs a model with one tensor input."""
    if isinstance(x, torch.Tensor):
        return x

    raise ConfigError(f"{what} needs a model with one tensor input; this one takes {sample_shape(x)}",
                      "it traces or exports the model with a single input tensor", hint)
