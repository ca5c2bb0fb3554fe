"""How many samples a surface needs for a target standard error (``--target-se``).

Every point is evaluated on the same seeded subset (common random numbers): the
differences between points are then far more precise than each point's absolute
value, and each point's standard error (:class:`~lossgrid.engine.losses.Stats`,
finite population corrected) says how far its loss may be from the loss over the
whole set.

A pilot evaluates a few points where the spread of per-sample losses is largest in
practice (the grid's corners and edge midpoints, far from the minimum, and its
centre) on :data:`PILOT_SAMPLES` samples; their per-sample standard deviations give
the subset size at which the standard error reaches the target,
``n = N s^2 / (E^2 N + s^2)`` (the finite population formula solved for ``n``),
times a safety margin. The surface job then checks every point's standard error and,
if some point exceeds the target after all, grows the subset from the largest
spread it saw and computes the surface again (:func:`grown_samples`).

Example:
    >>> required_samples(std=0.5, target=0.01, population=50_000)
    2381
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import EvalSpec, GridSpec
from ..data import EvalData
from ..engine.directions import Directions
from ..engine.losses import LossFn, SampleValues, unit_counts
from ..engine.params import perturbed_tensors
from ..engine.runners import make_runner
from ..errors import ConfigError
from .anchors import AnchorGrid, residual_std

#: samples of the pilot run
PILOT_SAMPLES = 256
#: the subset is this much larger than the pilot's estimate requires
SAFETY = 1.25
#: ... and than a grown subset requires by the largest spread the run saw
GROW_SAFETY = 1.25


@dataclass(frozen=True)
class SampleChoice:
    """The subset size chosen for a target standard error, and the pilot behind it."""

    samples: int
    population: int
    target: float
    pilot_samples: int
    pilot_points: int
    #: the largest per-sample standard deviation the pilot saw: of the loss, or with anchors of the
    #: residuals they leave (:mod:`lossgrid.surface.anchors`)
    pilot_std: float

    def as_dict(self) -> dict[str, float | int]:
        return {"samples": self.samples, "population": self.population, "target_se": self.target,
                "pilot_samples": self.pilot_samples, "pilot_points": self.pilot_points,
                "pilot_std": round(self.pilot_std, 6)}


def required_samples(std: float, target: float, population: int) -> int:
    """The smallest subset of ``population`` whose mean has a standard error of at most
    ``target`` when per-sample losses spread by ``std`` (no safety margin)."""
    if target <= 0 or not math.isfinite(target):
        raise ConfigError(f"Target standard error {target!r} is invalid", "it must be a positive number",
                          "pass e.g. --target-se 0.01")
    if not math.isfinite(std):
        return population
    var = std * std
    return max(2, min(population, math.ceil(population * var / (target * target * population + var))))


def pilot_indices(grid: GridSpec) -> np.ndarray:
    """Flat indices of the pilot points: corners, edge midpoints and centre (ends and centre in 1D)."""
    def picks(num: int) -> list[int]:
        return sorted({0, (num - 1) // 2, num - 1})

    if grid.y is None:
        return np.array(picks(grid.x.num))
    return np.array(sorted({i * grid.y.num + j for i in picks(grid.x.num) for j in picks(grid.y.num)}))


def choose_samples(model: nn.Module, data: EvalData, grid: GridSpec, directions: Directions, loss_fn: LossFn,
                   target: float, seed: int = 0, eval_spec: EvalSpec = EvalSpec(),
                   anchor_stride: int | None = None, cubic: bool = False) -> SampleChoice:
    """The subset of ``data`` (drawn with ``seed``) that meets ``target`` at the pilot points,
    with :data:`SAFETY` to spare. With ``anchor_stride`` the pilot measures the spread of the
    residuals the anchors leave (:mod:`lossgrid.surface.anchors`) between anchors, which is
    what an anchored surface's standard errors are made of (``cubic``: the anchors interpolated as an
    adaptive grid's coarse level, as they are with ``--adaptive``)."""

    population = len(data)
    required_samples(1.0, target, population)  # validates the target
    n0 = min(population, PILOT_SAMPLES)
    pilot = data if n0 == population else data.subset(n0, seed)
    device = torch.device(eval_spec.device)
    anchors = None if anchor_stride is None else AnchorGrid(grid.shape, anchor_stride, cubic)
    index = pilot_indices(grid) if anchors is None else anchors.pilot_points()
    spec = EvalSpec(strategy="loop", batch_size=eval_spec.batch_size, device=eval_spec.device)
    base = directions.layout.flatten(perturbed_tensors(model, directions.layout.dir_type)).to(device)
    runner = make_runner(spec, model, directions.layout, pilot, loss_fn)
    try:
        runner.set_directions(base, directions.flat().to(device))
        if anchors is None:
            coeffs = torch.as_tensor(grid.points()[index], dtype=torch.float32)
            std = per_sample_std(runner.evaluate_points(coeffs.to(device, base.dtype)).loss_se, n0)
        else:
            std = _residual_std(runner, anchors, index, grid, base, loss_fn, pilot)
    finally:
        runner.close()
    worst = float(np.nanmax(std)) if np.isfinite(std).any() else float("nan")
    if not math.isfinite(worst):
        raise ConfigError("A target standard error cannot be met with this loss",
                          "the pilot found no finite standard error (a loss that returns batch means, or "
                          "diverged points everywhere)", "pass --samples N instead of --target-se")
    n = min(population, math.ceil(required_samples(worst, target, population) * SAFETY))
    if anchors is not None:  # a few samples would meet the target but estimate their own errors poorly
        n = max(n, n0)
    return SampleChoice(max(n, 2), population, target, n0, len(index), worst)


def _residual_std(runner: Any, anchors: AnchorGrid, index: np.ndarray, grid: GridSpec, base: torch.Tensor,
                  loss_fn: LossFn, pilot: EvalData) -> np.ndarray:
    """The residuals' per-sample spread at the pilot points ``index`` (their anchors evaluated
    on the same samples), per unit of the loss."""

    rows = np.unique(anchors.weights(index)[0])
    need = anchors.flat()[rows]  # only the anchors around the pilot points
    coeffs = torch.as_tensor(grid.points()[np.concatenate([index, need])], dtype=torch.float32)
    _, values = runner.evaluate_point_samples(coeffs.to(base.device, base.dtype))
    kept = np.full((len(anchors.flat()), values.loss.shape[1]), np.nan)
    kept[rows] = values.loss[len(index):]
    counts = unit_counts(loss_fn, [pilot.y])
    return residual_std(anchors, index, SampleValues(values.loss[:len(index)], None), SampleValues(kept, None),
                        counts.units / counts.samples)


def per_sample_std(se: np.ndarray, samples: int, population: int | None = None) -> np.ndarray:
    """The per-sample spread behind standard errors of means over ``samples`` (undoing the
    finite population correction when ``population`` is given)."""
    se = np.asarray(se, dtype=np.float64)
    if population is not None and samples < population:
        se = se / math.sqrt(1.0 - samples / population)
    return se * math.sqrt(samples)


def grown_samples(se: np.ndarray, samples: int, population: int, target: float) -> int | None:
    """A larger subset if some point's standard error ``se`` (over ``samples`` of ``population``)
    exceeds ``target``; ``None`` when every finite one meets it or the whole set is used."""
    finite = se[np.isfinite(se)]
    if samples >= population or not finite.size or finite.max() <= target:
        return None
    std = float(per_sample_std(finite, samples, population).max())
    return max(samples + 1, min(population, math.ceil(required_samples(std, target, population) * GROW_SAFETY)))
