"""Anchor points as control variates: subset surfaces whose error is a small residual.

With ``--samples n`` every point is evaluated on the same seeded subset ``S`` of the
``N`` samples (common random numbers), so a point's error is the subset's error there,
``mean_S(l_p) - mean_N(l_p)``. Where the per-sample losses ``l_p(x)`` are large and
spread (far from the minimum) that error is a large share of the surface's range.

``--anchor-stride K`` evaluates the *anchor points* -- every K-th point on each axis,
the last one always included -- on the whole set, exactly, and on ``S`` keeping every
sample's loss. Every other point ``p`` is evaluated on ``S`` only and uses the anchors
around it as a control variate: ``c_p(x) = sum_j w_j l_{a_j}(x)``, the per-sample
losses of the surrounding anchors interpolated (bi)linearly to ``p``, whose mean over
the whole set is known exactly. The estimate

    L(p) = sum_j w_j L_N(a_j) + mean_S(l_p - c_p)

is unbiased for the mean over the whole set (``S`` is a simple random sample without
replacement), and its standard error is that of the residual ``r = l_p - c_p``,
``sqrt((1 - n/N) var_S(r) / n)``: per-sample losses change smoothly between nearby
weights, so the residual spreads far less than the loss itself. The stored
``train_loss_se`` is this standard error; anchors are exact (SE 0).

Token-level losses (per-sample sums over tokens, ``units`` per sample): the estimate
is of the set's total, divided by its (exactly known) units,
``L(p) = sum_j w_j L_N(a_j) + (N / U_N) mean_S(r)``; accuracy is estimated the same
way from the per-sample correct counts.

Cost: ``A N + (P - A) n + A n`` sample evaluations for ``A`` anchors of ``P`` points,
against ``P N`` for the exact surface (``A = 36`` of 441 at stride 4 on 21x21).

Example:
    >>> anchors = AnchorGrid((5, 5), 2)
    >>> anchors.flat().tolist()
    [0, 2, 4, 10, 12, 14, 20, 22, 24]
    >>> rows, weights = anchors.weights(np.array([6]))  # (1, 1): the middle of four anchors
    >>> weights.round(2).tolist()
    [[0.25, 0.25, 0.25, 0.25]]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import check_anchor_stride
from ..data import EvalData
from ..engine.device import memory_errors_explained
from ..engine.losses import LossFn, SampleValues, counts_per_sample, finite_population, unit_counts
from ..engine.runners import Runner
from ..errors import ConfigError
from .loop import ChunkLoop


def axis_anchors(num: int, stride: int) -> np.ndarray:
    """Anchor indices of one axis of ``num`` points: ``0, stride, 2 stride, ...`` and the last."""
    return np.array(sorted(set(range(0, num, stride)) | {num - 1}), dtype=np.int64)


def check_population(subset: EvalData, population: EvalData | None, loss_fn: LossFn) -> EvalData:
    """``population``, the set ``subset`` was drawn from, checked for use with anchors."""
    if population is None or subset.population != len(population):
        raise ConfigError("Anchors need the whole set the subset was drawn from",
                          f"the subset says it was drawn from {subset.population} samples; the set given has "
                          f"{None if population is None else len(population)}",
                          "pass population=the whole set and data=population.subset(n, seed)")
    if not counts_per_sample(loss_fn):
        raise ConfigError("Anchors need per-sample units",
                          f"{getattr(loss_fn, '__qualname__', loss_fn)} counts units only in total",
                          "give the loss a sample_units(targets) method, or drop --anchor-stride")
    return population


@dataclass(frozen=True)
class AnchorGrid:
    """The anchors of a grid of ``shape`` (1D or 2D) at ``stride`` and the interpolation
    weights of any point on them."""

    shape: tuple[int, ...]
    stride: int
    #: interpolate the anchors by cubic Lagrange stencils (an adaptive grid's coarse level) instead of (bi)linearly
    cubic: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "stride", check_anchor_stride(self.stride))
        if len(self.shape) not in (1, 2):
            raise ConfigError(f"Anchors need a 1D or 2D grid, not {len(self.shape)}D")

    @property
    def axes(self) -> list[np.ndarray]:
        return [axis_anchors(n, self.stride) for n in self.shape]

    def flat(self) -> np.ndarray:
        """Flat indices (C order) of the anchor points, in the order of their rows."""
        axes = self.axes
        if len(axes) == 1:
            return axes[0].copy()
        return (axes[0][:, None] * self.shape[1] + axes[1][None, :]).ravel()

    def pilot_points(self) -> np.ndarray:
        """Flat indices of points between anchors where residuals spread most in practice: in
        the cells at the grid's corners, edge midpoints and centre, each cell's middle point
        (the farthest from its anchors); an axis without points between anchors gives its first."""
        picks = []
        for axis in self.axes:
            cells = [(lo, hi) for lo, hi in zip(axis[:-1], axis[1:]) if hi - lo >= 2]  # with a point inside
            chosen = {cells[0], cells[len(cells) // 2], cells[-1]} if cells else set()
            picks.append(sorted({int((lo + hi) // 2) for lo, hi in chosen} or {0}))
        if len(picks) == 1:
            flat = np.array(picks[0], dtype=np.int64)
        else:
            flat = np.array([i * self.shape[1] + j for i in picks[0] for j in picks[1]], dtype=np.int64)
        return flat

    def weights(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For points ``flat`` (``[m]``): the anchor rows ``[m, c]`` around each and their
        interpolation weights ``[m, c]`` (weights sum to 1; an anchor itself has weight 1 on its
        own row). Linear: ``c`` = 2 in 1D, 4 in 2D. Cubic: ``c`` = 4 in 1D, 16 in 2D (rows of
        weight 0 pad stencils that are shorter at the ends of an axis)."""
        idx = np.unravel_index(np.asarray(flat, dtype=np.int64), self.shape)
        stencil = _cubic if self.cubic else _linear
        per_axis = [stencil(i, axis) for i, axis in zip(idx, self.axes)]
        if len(per_axis) == 1:
            return per_axis[0]
        (px, wx), (py, wy) = per_axis
        ny = len(self.axes[1])
        rows = (px[:, :, None] * ny + py[:, None, :]).reshape(len(px), -1)
        return rows, (wx[:, :, None] * wy[:, None, :]).reshape(len(px), -1)


def _linear(index: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``axis`` of the two anchors around each index and their linear weights."""
    lo, hi, t = _bracket(index, axis)
    return np.stack([lo, hi], 1), np.stack([1 - t, t], 1)


def _cubic(index: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``axis`` of up to four anchors around each index (two on each side; three or
    two near the ends) and the weights of the Lagrange polynomial through them: the stencil of an
    adaptive grid's coarse level (:mod:`lossgrid.surface.adaptive`)."""
    lo, _, t = _bracket(index, axis)
    pos, w = np.zeros((len(index), 4), np.int64), np.zeros((len(index), 4))
    for m, (k, i) in enumerate(zip(lo, index)):
        if t[m] == 0.0:  # on an anchor
            pos[m, 0], w[m, 0] = k, 1.0
            continue
        nodes = np.arange(max(k - 1, 0), min(k + 3, len(axis)))
        pos[m, :len(nodes)] = nodes
        w[m, :len(nodes)] = lagrange_weights(axis[nodes].astype(float), float(i))
    return pos, w


def lagrange_weights(nodes: np.ndarray, x: float) -> np.ndarray:
    """Weights of the Lagrange polynomial through ``nodes`` evaluated at ``x``."""
    w = np.ones(len(nodes))
    for j, xj in enumerate(nodes):
        for m, xm in enumerate(nodes):
            if m != j:
                w[j] *= (x - xm) / (xj - xm)
    return w


def _bracket(index: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions in ``axis`` of the anchors at or below / above each index and the share of
    the way from the lower to the upper one (0 on an anchor)."""
    lo = np.searchsorted(axis, index, side="right") - 1
    hi = np.minimum(lo + 1, len(axis) - 1)
    on = axis[lo] == index
    hi = np.where(on, lo, hi)
    span = np.where(on, 1, axis[hi] - axis[lo])
    return lo, hi, np.where(on, 0.0, (index - axis[lo]) / span)


def residual_std(grid: AnchorGrid, points: np.ndarray, values: SampleValues, anchors: SampleValues,
                 units_per_sample: float = 1.0) -> np.ndarray:
    """Per-sample spread of the residuals ``l_p - sum_j w_j l_{a_j}`` at ``points`` from
    their values and all anchors' values on the same samples, in units of the loss per unit
    (``units_per_sample``: the set's mean units per sample); what the standard error of an
    anchored estimate is made of (:mod:`lossgrid.surface.sampling`)."""
    rows, w = grid.weights(points)
    resid = values.loss - np.einsum("mc,mcn->mn", w, anchors.loss[rows])
    return resid.std(axis=1, ddof=1) / units_per_sample


@dataclass
class ControlVariate:
    """What estimates points from the anchors: the anchors' exact losses and accuracies over
    the whole set (``[A]``, in the rows of :meth:`AnchorGrid.flat`), their per-sample values
    on the subset, the subset's size ``n`` and the whole set's samples ``N`` and units ``U``."""

    grid: AnchorGrid
    exact_loss: np.ndarray
    exact_acc: np.ndarray
    subset: SampleValues
    population: int
    units: float

    def estimate(self, flat: np.ndarray, values: SampleValues) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Loss, accuracy (percent) and the loss's standard error at points ``flat`` from their
        per-sample values on the subset (``values``, ``[m, n]``)."""
        rows, w = self.grid.weights(flat)
        n = values.loss.shape[1]
        if self.subset.loss.shape[1] != n:
            raise ValueError(f"{n} samples per point but the anchors hold {self.subset.loss.shape[1]}")
        scale = self.population / self.units  # per-sample means -> per unit of the whole set
        fpc = max(0.0, 1.0 - n / self.population)
        resid = values.loss - np.einsum("mc,mcn->mn", w, self.subset.loss[rows])
        loss = np.einsum("mc,mc->m", w, self.exact_loss[rows]) + scale * resid.mean(axis=1)
        se = scale * np.sqrt(fpc * resid.var(axis=1, ddof=1) / n) if n > 1 else np.full(len(flat), math.nan)
        if values.correct is None or self.subset.correct is None:
            acc = np.full(len(flat), math.nan)
        else:
            right = values.correct - np.einsum("mc,mcn->mn", w, self.subset.correct[rows])
            acc = np.einsum("mc,mc->m", w, self.exact_acc[rows]) + 100.0 * scale * right.mean(axis=1)
        return loss, acc, se


def evaluate_anchors(loop: ChunkLoop, anchor_todo: np.ndarray, population: EvalData,
                     exact_runner: Callable[[], Runner]) -> None:
    """The anchors left (``anchor_todo``) exactly on ``population``, with a runner of their own (every rank of a
    sharded run); ``loop.anchors`` (the run's log) says what was done."""
    ev = loop.ev
    if len(anchor_todo):
        runner = exact_runner()
        try:
            runner.set_directions(ev.base, ev.dirs)
            runner.expect(len(anchor_todo))
            loop.busy = runner

            def exactly(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                loss_k, acc_k, se_k = runner.evaluate_points(ev.coefficients(chunk))
                return loss_k, acc_k, finite_population(se_k, len(population), len(population))

            loop.measure, loop.check_data, loop.per_point = exactly, population, len(population)
            loop.evaluate(anchor_todo)
        finally:
            loop.anchors["runner"] = runner.describe()
            runner.close()
            loop.busy = None
    elif ev.eval_spec.precision != "fp32":
        loop.anchors["precision_check"] = "not run: the anchors (checked on the whole set) were done before"


def use_control_variates(loop: ChunkLoop, grid: AnchorGrid, population: EvalData) -> None:
    """From here on ``loop`` estimates points on the subset with the anchors (all done) as control variates:
    every rank evaluates the anchors on the subset, rank 0 shares their exact values."""
    ev = loop.ev
    rows = grid.flat()
    leader = loop.cluster is None or loop.cluster.leader
    exact = (loop.surface.loss.ravel()[rows], loop.surface.acc.ravel()[rows]) if leader else None
    if loop.cluster is not None:  # rank 0 holds the anchors' values
        exact = loop.cluster.share(exact)
    assert exact is not None
    control = ControlVariate(grid, *exact, _anchors_on_the_subset(loop, rows), len(population),
                             unit_counts(ev.loss_fn, [population.y]).units)

    def estimated(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _, values = loop.runner.evaluate_point_samples(ev.coefficients(chunk))
        return control.estimate(chunk, values)

    # estimates are not the runner's losses: nothing for the precision check to compare
    loop.measure, loop.check_data, loop.per_point = estimated, None, len(ev.data)


def _anchors_on_the_subset(loop: ChunkLoop, rows: np.ndarray) -> SampleValues:
    """Every rank evaluates the anchors on the subset itself (a few points, no transfer): their per-sample values."""
    chunks = [rows[i:i + loop.step] for i in range(0, len(rows), loop.step)]
    with memory_errors_explained(loop.runner):
        kept = SampleValues.along_points([loop.runner.evaluate_point_samples(loop.ev.coefficients(c))[1]
                                          for c in chunks])
    loop.sample_evals += len(rows) * len(loop.ev.data)
    return kept
