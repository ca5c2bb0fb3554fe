"""Per-sample losses and correct counts used by every runner.

A loss is a callable ``loss(outputs, targets)`` returning one value per sample
(shape ``[B]``); a callable that returns a scalar is taken as the batch mean.

Units: the reported loss is the sum of the per-sample values over the whole
set divided by the set's number of *units* -- its samples, unless the loss has
a ``units(targets)`` method. Token-level losses (:class:`TokenCrossEntropy`)
return each sequence's *sum* over its tokens and count the tokens that are not
ignored, so the surface holds the mean loss per token exactly (not a mean of
per-sequence means), and the accuracy is the share of those tokens predicted
right (an ignored position never matches: its target is negative).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy on logits ``[B, C]`` and class indices ``[B]``."""
    return F.cross_entropy(outputs, targets, reduction="none")


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error."""
    diff = outputs - targets.reshape(outputs.shape).to(outputs.dtype)
    return diff.pow(2).reshape(diff.shape[0], -1).mean(dim=1)


class TokenCrossEntropy:
    """Token-level cross-entropy for sequence models: logits ``[B, T, V]`` (or ``[B, V, T]``
    is NOT accepted: the vocabulary is the last axis) and token ids ``[B, T]``, positions
    whose target is ``ignore_index`` left out. Per sample: the sum over its tokens;
    :meth:`units` counts the tokens, so the surface's loss is the mean per token.

    A causal language model's shift (predict token t+1 from the prefix up to t) is the
    data's business: give targets already shifted, as training code does.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        self.ignore_index = int(ignore_index)
        self.__qualname__ = ("token_cross_entropy" if self.ignore_index == -100
                             else f"token_cross_entropy:ignore={self.ignore_index}")

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.dim() < 3 or targets.shape != outputs.shape[:-1]:
            raise ValueError(f"token_cross_entropy needs logits [B, T, V] and targets [B, T]; got outputs "
                             f"{tuple(outputs.shape)} and targets {tuple(targets.shape)}")
        flat = F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1).long(),
                               ignore_index=self.ignore_index, reduction="none")
        return flat.reshape(targets.shape[0], -1).sum(dim=1)

    def units(self, targets: torch.Tensor) -> int:
        """Tokens that count (targets other than the ignore index)."""
        return int((targets != self.ignore_index).sum())

    def __repr__(self) -> str:
        return self.__qualname__


token_cross_entropy = TokenCrossEntropy()

BUILTIN_LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse,
                                     "token_cross_entropy": token_cross_entropy}


def loss_units(loss_fn: LossFn, targets: torch.Tensor) -> int:
    """What the summed per-sample losses are divided by: ``loss_fn.units(targets)`` if the loss
    counts units of its own (tokens), else the number of samples."""
    units = getattr(loss_fn, "units", None)
    if units is None:
        return int(targets.shape[0])
    count = int(units(targets))
    if count < 1:
        from ..errors import DataLoadError

        raise DataLoadError("The targets hold no unit the loss counts",
                            f"{getattr(loss_fn, '__qualname__', loss_fn)} counts {count} (every target ignored?)",
                            "check the targets and the ignore index")
    return count


def resolve_loss(loss: str | LossFn) -> tuple[LossFn, str]:
    """A loss callable and its description from a name, ``module:function`` or callable."""
    if callable(loss):
        return loss, getattr(loss, "__qualname__", repr(loss))
    if loss in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[loss], loss
    if loss.startswith("token_cross_entropy:"):
        option = loss.partition(":")[2]
        try:
            if not option.startswith("ignore="):
                raise ValueError(option)
            fn = TokenCrossEntropy(int(option[len("ignore="):]))
        except ValueError:
            raise ConfigError(f"Cannot read loss {loss!r}", "the option of token_cross_entropy is ignore=N",
                              "write token_cross_entropy or token_cross_entropy:ignore=-100") from None
        return fn, fn.__qualname__
    if ":" in loss:
        from .._spec import load_object

        fn = load_object(loss, what="loss function")
        if not callable(fn):
            raise ConfigError(f"Loss {loss!r} is not callable", hint="point to a function (outputs, targets) -> losses")
        return fn, loss
    raise ConfigError(f"Unknown loss {loss!r}", f"built-in losses are {', '.join(BUILTIN_LOSSES)}",
                      "pass a built-in name or module:function returning per-sample losses")


def batch_loss_sum(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of per-sample losses of one batch (a scalar loss counts as the batch mean)."""
    values = loss_fn(outputs, targets)
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"the loss returned {type(values).__name__}, not a tensor")
    if values.dim() == 0:
        return values * outputs.shape[0]
    return values.sum()


def wide_batch_stats(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss sums ``[K]`` (float64) and correct counts ``[K]`` (or ``None`` without
    class labels) of one batch evaluated at ``K`` grid points (``outputs[K, B, ...]``)."""
    from torch.func import vmap

    outputs = outputs.float()  # losses of reduced-precision outputs are computed and reduced in fp32
    sums = vmap(lambda o: batch_loss_sum(loss_fn, o, targets))(outputs).double()
    if torch.is_floating_point(targets) or outputs.dim() < 3 or outputs.shape[-1] < 2:
        return sums, None
    return sums, (outputs.argmax(dim=-1) == targets).reshape(outputs.shape[0], -1).sum(dim=1)


def point_batch_stats(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss sum (float64 scalar, computed from fp32 outputs) and correct count (or
    ``None`` without class labels) of one batch at one grid point (``outputs[B, ...]``)."""
    outputs = outputs.float()  # losses of reduced-precision outputs are computed and reduced in fp32
    total = batch_loss_sum(loss_fn, outputs, targets).double()
    if torch.is_floating_point(targets) or outputs.dim() < 2 or outputs.shape[-1] < 2:
        return total, None
    return total, (outputs.argmax(dim=-1) == targets).sum()


def finish_stats(loss_sum: torch.Tensor, correct: torch.Tensor | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and accuracy in percent (NaN without labels) as float64 arrays; ``n`` is the
    set's number of units (:func:`loss_units`)."""
    loss = (loss_sum.double() / n).cpu().numpy()
    if correct is None:
        return loss, np.full(loss.shape, np.nan)
    return loss, (100.0 * correct.double() / n).cpu().numpy()


def evaluate_batches(batches: list[tuple[Any, torch.Tensor]], forward: Callable[[Any], torch.Tensor],
                     loss_fn: LossFn, k: int, n: int, device: torch.device | str = "cpu"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss and accuracy of ``k`` grid points over all ``batches``, where
    ``forward(xb)`` returns the outputs of the ``k`` points as ``[k, B, ...]``."""
    loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
    correct: torch.Tensor | None = torch.zeros(k, dtype=torch.int64, device=device)
    for xb, yb in batches:
        sums, right = wide_batch_stats(loss_fn, forward(xb), yb)
        loss_sum += sums
        correct = None if right is None or correct is None else correct + right
    return finish_stats(loss_sum, correct, n)
