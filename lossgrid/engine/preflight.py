"""Checks that run before any file is touched.

A surface of a model with NaN weights, along NaN directions or over NaN inputs
is NaN everywhere: hours of compute for nothing. Such inputs are refused with
a message naming the tensor or sample (lossgrid's policy: refuse, never warn
and go on). Labels that do not fit the loss and data that do not fit the model
are found by one forward pass over a few samples at the grid's origin, so the
error names the real cause instead of surfacing mid-run.

Example:
    >>> import torch
    >>> check_finite_model(torch.nn.Linear(2, 2))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import inputs as inp
from ..data import EvalData
from ..errors import ConfigError, DataLoadError, EvaluationError, ModelLoadError
from .losses import LossFn, cross_entropy, loss_units

PROBE_SAMPLES = 4


def _nonfinite(t: torch.Tensor) -> int:
    return int(t.numel() - torch.isfinite(t).sum().item()) if torch.is_floating_point(t) else 0


def _dims(t: torch.Tensor) -> str:
    return "[" + ", ".join(["N", *map(str, t.shape[1:])]) + "]"


#: the largest weight whose square a float32 sum can hold: beyond it filter norms and losses overflow
MAX_WEIGHT = 1.8e19


def check_finite_model(model: nn.Module, what: str = "the model") -> None:
    """Refuse NaN or infinite values in any floating-point state entry of ``model``, and values
    so large (beyond :data:`MAX_WEIGHT`) that norms and losses overflow float32."""
    for name, t in model.state_dict().items():
        bad = _nonfinite(t)
        if bad:
            raise ModelLoadError(f"The weights of {what} hold {bad} NaN or infinite value(s) in {name}",
                                 "every point of the surface would be NaN",
                                 "pass a checkpoint saved before training diverged")
        if torch.is_tensor(t) and torch.is_floating_point(t) and t.numel() and float(t.abs().max()) > MAX_WEIGHT:
            raise ModelLoadError(f"The weights of {what} hold values up to {float(t.abs().max()):.3g} in {name}",
                                 f"beyond {MAX_WEIGHT:.2g} their squares overflow float32: filter norms, outputs and "
                                 "losses around them are not finite numbers",
                                 "pass a checkpoint saved before training diverged")


def check_data(data: EvalData, loss_fn: LossFn) -> None:
    """Refuse non-finite inputs or targets and class labels of the wrong shape."""
    named = [("inputs" if n == "x" else f"inputs {n[1:]}", t) for n, t in inp.named_tensors(data.x)]
    for name, t in [*named, ("targets", data.y)]:
        if torch.is_floating_point(t):
            finite = torch.isfinite(t.reshape(len(t), -1)).all(dim=1)
            if not bool(finite.all()):
                first = int((~finite).nonzero()[0].item())
                raise DataLoadError(f"The {name} of {data.description} hold NaN or infinite values "
                                    f"({int((~finite).sum())} of {len(t)} samples, the first at index {first})",
                                    "every point of the surface would be NaN",
                                    "clean the data set or pass --samples to a clean subset")
    loss_units(loss_fn, data.y)  # a set whose targets the loss does not count at all is refused here
    if loss_fn is cross_entropy and not torch.is_floating_point(data.y) and data.y.dim() != 1:
        raise DataLoadError(f"The targets of {data.description} have shape {tuple(data.y.shape)}",
                            "cross_entropy needs one class index per sample, shape (N,)",
                            "save the labels as a 1-D array (y.ravel()), pass --loss mse for vector targets, "
                            "or --loss token_cross_entropy for token ids [N, T] of a sequence model")


def probe(model: nn.Module, data: EvalData, loss_fn: LossFn, device: torch.device, per_sample: bool = False) -> None:
    """Run the model and loss on a few samples at the origin; errors name the likely cause.
    ``per_sample``: the run needs every sample's loss (a loss returning the batch mean is refused)."""
    x = inp.to_device(inp.take(data.x, slice(0, PROBE_SAMPLES)), device)
    y = data.y[:PROBE_SAMPLES].to(device)
    out = _attempt(lambda: inp.forward(model, x), model, data)
    if loss_fn is cross_entropy and not torch.is_floating_point(data.y) and out.dim() == 2:
        check_labels(data, out.shape[-1])  # before the loss, which would fail on them with less to say
    values = _attempt(lambda: loss_fn(out, y), model, data)
    if not isinstance(values, torch.Tensor) or values.dim() > 1 or (values.dim() == 1 and len(values) != len(y)):
        raise EvaluationError(f"The loss returned {type(values).__name__} "
                              f"of shape {tuple(getattr(values, 'shape', ()))} for a batch of {len(y)} samples",
                              "a loss returns one value per sample (shape [B]) or the batch mean",
                              "fix the loss function")
    if not bool(torch.isfinite(values).all()):
        raise EvaluationError(f"The loss at the model's own weights is {values.flatten()[0].item()} on the first "
                              "samples of the data", f"its outputs overflow or are undefined there (largest weight "
                              f"{_largest_weight(model):.3g}): every point around it would be too",
                              "check the checkpoint (was it saved after training diverged?) and the data")
    if per_sample and values.dim() == 0:
        raise ConfigError("--anchor-stride needs per-sample losses but the loss returns the batch mean",
                          "anchors correct each point sample by sample",
                          "give a loss that returns one value per sample (reduction='none'), or drop --anchor-stride")


def _largest_weight(model: nn.Module) -> float:
    """The largest absolute value among the model's floating-point tensors."""
    return max((float(t.detach().abs().max()) for t in model.state_dict().values()
                if torch.is_tensor(t) and torch.is_floating_point(t) and t.numel()), default=0.0)


def check_labels(data: EvalData, classes: int) -> None:
    """Refuse class labels outside ``0 .. classes - 1`` (the model's outputs)."""
    lo, hi = int(data.y.min()), int(data.y.max())
    if lo < 0 or hi >= classes:
        raise DataLoadError(f"The labels of {data.description} run from {lo} to {hi}",
                            f"the model has {classes} outputs, so labels must lie in 0..{classes - 1}",
                            "pass the data set the model was trained on")


def _attempt(step: Callable[[], Any], model: nn.Module, data: EvalData) -> Any:
    """``step()`` with ``model`` in eval mode and gradients off (the modes are restored); a failure of
    the user's model or loss becomes an :class:`EvaluationError` naming the data's shapes."""
    modes = [(m, m.training) for m in model.modules()]  # per module: a frozen BatchNorm stays in eval
    model.eval()
    try:
        with torch.inference_mode():
            return step()
    except EvaluationError:
        raise
    except Exception as e:  # user models and losses raise anything
        raise EvaluationError(
            "The model and loss fail on the first samples of the data",
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
            f"check that --data fits the model (inputs {inp.sample_shape(data.x)}, targets {_dims(data.y)}) "
            "and --loss fits its outputs") from None
    finally:
        for module, training in modes:
            module.training = training
