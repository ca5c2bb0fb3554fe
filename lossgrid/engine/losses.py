"""Per-sample losses and correct counts used by every runner.

A loss is a callable ``loss(outputs, targets)`` returning one value per sample
(shape ``[B]``); a callable that returns a scalar is taken as the batch mean.

Accuracy: a loss may say what counts as correct with ``correct(outputs, targets)``
(a count per sample; :class:`TokenCrossEntropy` counts tokens predicted right,
never an ignored one); otherwise accuracy is the share of argmax matches for class
labels (one per sample) and NaN for anything else (regression, sequences).

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
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .._spec import load_object
from ..errors import ConfigError, DataLoadError

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

    def sample_units(self, targets: torch.Tensor) -> torch.Tensor:
        """Tokens that count per sample (targets other than the ignore index), ``[B]``."""
        return (targets != self.ignore_index).reshape(targets.shape[0], -1).sum(dim=1)

    def units(self, targets: torch.Tensor) -> int:
        """Tokens that count in all of ``targets``."""
        return int(self.sample_units(targets).sum())

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Tokens predicted right per sample, ``[B]``, ignored positions never counted (the
        ignore index may be a real token id, such as a padding id 0)."""
        right = (outputs.argmax(dim=-1) == targets) & (targets != self.ignore_index)
        return right.reshape(targets.shape[0], -1).sum(dim=1)

    def __repr__(self) -> str:
        return self.__qualname__


token_cross_entropy = TokenCrossEntropy()

BUILTIN_LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse,
                                     "token_cross_entropy": token_cross_entropy}


def loss_units(loss_fn: LossFn, targets: torch.Tensor) -> int:
    """What the summed per-sample losses are divided by: the units the loss counts in
    ``targets`` (tokens), else the number of samples (:func:`unit_counts`)."""
    return int(unit_counts(loss_fn, [targets]).units)


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
            index = int(option[len("ignore="):])
            if not -2**63 <= index < 2**63:  # token ids are int64
                raise ValueError(option)
            fn = TokenCrossEntropy(index)
        except ValueError:
            raise ConfigError(f"Cannot read loss {loss!r}", "the option of token_cross_entropy is ignore=N, N a "
                              "whole number that fits a token id (int64)",
                              "write token_cross_entropy or token_cross_entropy:ignore=-100") from None
        return fn, fn.__qualname__
    if ":" in loss:

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


class Stats(NamedTuple):
    """What a runner returns for ``K`` grid points (float64 arrays of length ``K``)."""

    #: mean loss per unit (sample, or token for token-level losses)
    loss: np.ndarray
    #: accuracy in percent; NaN without class labels
    acc: np.ndarray
    #: standard error of ``loss`` as an estimate of the mean over the population the samples
    #: were drawn from (infinite; :func:`finite_population` corrects for a subset of a finite
    #: set); NaN where it cannot be estimated (one sample, or a loss that returns batch means)
    loss_se: np.ndarray


@dataclass(frozen=True)
class UnitCounts:
    """How the evaluation set counts for a loss: ``samples``, ``units`` (their sum of
    per-sample units: samples, or counted tokens) and ``units_sq`` (the sum of squared
    per-sample units); ``per_sample`` is False for a loss that counts units only in total
    (its standard errors are not estimated)."""

    samples: int
    units: float
    units_sq: float
    per_sample: bool = True


def sample_units(loss_fn: LossFn, targets: torch.Tensor) -> torch.Tensor | None:
    """Units per sample (``[B]``) of a loss that counts its own (tokens); ``None``: one per sample."""
    fn = getattr(loss_fn, "sample_units", None)
    return None if fn is None else fn(targets).double()


def counts_per_sample(loss_fn: LossFn) -> bool:
    """Whether a loss's units are known per sample (one per sample, or ``sample_units``), not
    only in total (``units`` alone): what standard errors and anchors need."""
    return getattr(loss_fn, "sample_units", None) is not None or getattr(loss_fn, "units", None) is None


def unit_counts(loss_fn: LossFn, targets: list[torch.Tensor]) -> UnitCounts:
    """The :class:`UnitCounts` of a set given as target batches."""
    samples = sum(int(t.shape[0]) for t in targets)
    if getattr(loss_fn, "sample_units", None) is not None:
        per = [sample_units(loss_fn, t) for t in targets]
        units = float(sum(float(c.sum()) for c in per if c is not None))
        units_sq = float(sum(float((c * c).sum()) for c in per if c is not None))
        result = UnitCounts(samples, units, units_sq)
    elif not counts_per_sample(loss_fn):  # units in total only
        result = UnitCounts(samples, float(sum(int(loss_fn.units(t)) for t in targets)), float("nan"), False)
    else:
        return UnitCounts(samples, float(samples), float(samples))
    if result.units < 1:

        raise DataLoadError("The targets hold no unit the loss counts",
                            f"{getattr(loss_fn, '__qualname__', loss_fn)} counts {result.units:g} (every target "
                            "ignored?)", "check the targets and the ignore index")
    return result


def _values(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    values = loss_fn(outputs, targets)
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"the loss returned {type(values).__name__}, not a tensor")
    return values


def point_batch_stats(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor,
                      keep: list[SampleValues] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Sums of one batch at one grid point (``outputs[B, ...]``, losses computed in fp32,
    summed in float64): per-sample losses ``l``, their squares, ``l`` times the samples'
    units, and the correct count (``None`` without class labels). A loss that returns the
    batch mean gives NaN squares (no standard error). ``keep``: the batch's per-sample
    values are appended to it as a :class:`SampleValues` of one point."""
    outputs = outputs.float()  # losses of reduced-precision outputs are computed and reduced in fp32
    values = _values(loss_fn, outputs, targets).double()
    if keep is not None:
        _keep(keep, loss_fn, values.unsqueeze(0), outputs.unsqueeze(0), targets)
    if values.dim() == 0:
        total = values * outputs.shape[0]
        sq = torch.full_like(total, float("nan"))
        cross = total if sample_units(loss_fn, targets) is None else sq
    else:
        total, sq = values.sum(), (values * values).sum()
        units = sample_units(loss_fn, targets)
        cross = total if units is None else (values * units).sum()
    return total, sq, cross, _correct(loss_fn, outputs, targets)


def wide_batch_stats(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor,
                     keep: list[SampleValues] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`point_batch_stats` of one batch at ``K`` grid points (``outputs[K, B, ...]``),
    each sum ``[K]``."""
    from torch.func import vmap

    outputs = outputs.float()  # losses of reduced-precision outputs are computed and reduced in fp32
    values = vmap(lambda o: _values(loss_fn, o, targets))(outputs).double()
    if keep is not None:
        _keep(keep, loss_fn, values, outputs, targets)
    if values.dim() == 1:  # batch means
        total = values * outputs.shape[1]
        sq = torch.full_like(total, float("nan"))
        cross = total if sample_units(loss_fn, targets) is None else sq
    else:
        total, sq = values.sum(dim=1), (values * values).sum(dim=1)
        units = sample_units(loss_fn, targets)
        cross = total if units is None else (values * units).sum(dim=1)
    hook = getattr(loss_fn, "correct", None)
    if hook is not None:
        return total, sq, cross, vmap(lambda o: hook(o, targets).sum())(outputs)
    if not _class_labels(outputs[0], targets):
        return total, sq, cross, None
    return total, sq, cross, (outputs.argmax(dim=-1) == targets).sum(dim=1)


def _class_labels(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether ``targets`` are one class index per sample for logits ``outputs[B, C]``."""
    return (not torch.is_floating_point(targets) and targets.dim() == 1 and outputs.dim() == 2
            and outputs.shape[-1] >= 2)


def _correct(loss_fn: LossFn, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Correct count of one batch at one point: the loss's own ``correct(outputs, targets)``
    (per sample) if it has one, else argmax matches for class labels, else ``None``
    (regression, or sequence targets of a loss that does not say what is correct)."""
    hook = getattr(loss_fn, "correct", None)
    if hook is not None:
        return hook(outputs, targets).sum()
    if not _class_labels(outputs, targets):
        return None
    return (outputs.argmax(dim=-1) == targets).sum()


def finish_stats(total: torch.Tensor, sq: torch.Tensor, cross: torch.Tensor, correct: torch.Tensor | None,
                 counts: UnitCounts) -> Stats:
    """Mean loss per unit, accuracy and the loss's standard error from the sums over the set.

    The mean is a ratio ``R = sum(l_i) / sum(c_i)`` of per-sample losses ``l_i`` and units
    ``c_i`` (1 per sample unless the loss counts tokens); its standard error is the ratio
    estimator's, ``sqrt(n / (n - 1) * sum((l_i - R c_i)^2)) / sum(c_i)``, which for one unit
    per sample is the familiar ``std(l) / sqrt(n)``.
    """
    total, sq, cross = total.double(), sq.double(), cross.double()
    units = counts.units
    loss = (total / units).cpu().numpy()
    n = counts.samples
    if n > 1 and counts.per_sample:
        resid = sq - 2 * (total / units) * cross + (total / units) ** 2 * counts.units_sq
        se = (torch.clamp(resid, min=0) * n / (n - 1)).sqrt() / units
        loss_se = se.cpu().numpy()
    else:
        loss_se = np.full(loss.shape, np.nan)
    acc = np.full(loss.shape, np.nan) if correct is None else (100.0 * correct.double() / units).cpu().numpy()
    return Stats(loss, acc, loss_se)


def finite_population(se: np.ndarray, samples: int, population: int | None) -> np.ndarray:
    """Standard errors of means over ``samples`` drawn without replacement from ``population``
    as estimates of the population's mean (the finite population correction
    ``sqrt(1 - n/N)``; 0 for the whole set). ``population=None``: unchanged (an infinite one)."""
    if population is None:
        return se
    return se * np.sqrt(max(0.0, 1.0 - samples / population))


def concat_stats(parts: list[Stats]) -> Stats:
    """The stats of consecutive chunks of points as one."""
    return Stats(*(np.concatenate([getattr(p, f) for p in parts]) for f in Stats._fields))


def evaluate_batches(batches: list[tuple[Any, torch.Tensor]], forward: Callable[[Any], torch.Tensor],
                     loss_fn: LossFn, k: int, counts: UnitCounts, device: torch.device | str = "cpu",
                     keep: list[SampleValues] | None = None) -> Stats:
    """Mean loss, accuracy and standard error of ``k`` grid points over all ``batches``,
    where ``forward(xb)`` returns the outputs of the ``k`` points as ``[k, B, ...]``.
    ``keep``: the per-sample values of the ``k`` points over all batches are appended to it
    (one :class:`SampleValues`)."""
    sums = [torch.zeros(k, dtype=torch.float64, device=device) for _ in range(3)]
    correct: torch.Tensor | None = torch.zeros(k, dtype=torch.int64, device=device)
    kept: list[SampleValues] | None = [] if keep is not None else None
    for xb, yb in batches:
        *parts, right = wide_batch_stats(loss_fn, forward(xb), yb, kept)
        for acc, part in zip(sums, parts):
            acc += part
        correct = None if right is None or correct is None else correct + right
    if keep is not None and kept is not None:
        keep.append(SampleValues.along_samples(kept))
    return finish_stats(*sums, correct, counts)


class SampleValues(NamedTuple):
    """Per-sample values of ``K`` grid points over ``n`` samples (float64 NumPy ``[K, n]``):
    the loss of every sample (a token-level loss: its sum over the sample's tokens) and
    how much of it is correct (``None`` without class labels or a ``correct`` hook)."""

    loss: np.ndarray
    correct: np.ndarray | None

    @staticmethod
    def along_samples(parts: list[SampleValues]) -> SampleValues:
        """Batches of the same points, one after the other."""
        return SampleValues._join(parts, axis=1)

    @staticmethod
    def along_points(parts: list[SampleValues], k: int | None = None) -> SampleValues:
        """Chunks of points over the same samples, one after the other (the first ``k``)."""
        joined = SampleValues._join(parts, axis=0)
        return joined if k is None else SampleValues(joined.loss[:k],
                                                     None if joined.correct is None else joined.correct[:k])

    @staticmethod
    def _join(parts: list[SampleValues], axis: int) -> SampleValues:
        """One set of values (NumPy) from parts in NumPy or, batch by batch, as device tensors
        (copied to the host here, once per call, not once per batch)."""
        if not parts:
            raise ValueError("no per-sample values were kept")

        def join(arrays: list[Any]) -> np.ndarray:
            if isinstance(arrays[0], torch.Tensor):
                return torch.cat([a.double() for a in arrays], dim=axis).cpu().numpy()
            return np.concatenate(arrays, axis=axis)

        labelled = all(p.correct is not None for p in parts)
        return SampleValues(join([p.loss for p in parts]), join([p.correct for p in parts]) if labelled else None)


def _keep(keep: list[SampleValues], loss_fn: LossFn, values: torch.Tensor, outputs: torch.Tensor,
          targets: torch.Tensor) -> None:
    """Append one batch's per-sample losses ``values[K, B]`` and correct counts of the
    outputs ``[K, B, ...]`` to ``keep``."""
    if values.dim() != 2:
        raise ConfigError("Per-sample losses are needed but the loss returns one value per batch",
                          f"{getattr(loss_fn, '__qualname__', loss_fn)} returned shape {tuple(values.shape[1:])} per "
                          "point", "give a loss that returns one value per sample (reduction='none')")
    hook = getattr(loss_fn, "correct", None)
    if hook is not None:
        right: torch.Tensor | None = torch.stack([hook(o, targets) for o in outputs])
    elif _class_labels(outputs[0], targets):
        right = outputs.argmax(dim=-1) == targets
    else:
        right = None
    keep.append(SampleValues(values, right))  # on the device: joined and copied once per call
