"""The loop of a surface run: chunks of grid points measured, committed to the file (or memory) and counted.

:func:`lossgrid.surface.compute.compute_surface` opens the run (inputs, directions, the file) and hands a
:class:`ChunkLoop` the points left; the anchored phases (:mod:`lossgrid.surface.anchors`) swap how a chunk is
measured, sharded runs (:mod:`lossgrid.surface.distributed`) call :meth:`ChunkLoop.compute` on every rank and
:meth:`ChunkLoop.commit` on rank 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import CurvatureSpec, EvalSpec
from ..data import EvalData
from ..engine.device import memory_errors_explained
from ..engine.losses import LossFn, finite_population
from ..engine.params import ParamLayout
from ..engine.runners import Runner
from ..hessian.curvature import curvature_of_points
from ..kernels import perturb
from .checks import check_precision_error
from .distributed import Cluster
from .file import INTERPOLATED, SE, Surface, SurfaceWriter

Progress = Callable[[int, int], None]
#: a chunk's loss, accuracy and standard error, one value per point
Measured = tuple[np.ndarray, np.ndarray, np.ndarray]
#: points of a run's first chunk evaluated again in IEEE fp32 when the run's precision is lower
PRECISION_CHECK_POINTS = 3


@dataclass
class Evaluation:
    """What every chunk of a run is evaluated with: the model at the origin, the data, the loss, the flat
    origin ``base`` and axes ``dirs`` on ``device``, and the grid's coefficients ``points`` (one row a point)."""

    model: nn.Module
    data: EvalData
    loss_fn: LossFn
    layout: ParamLayout
    base: torch.Tensor
    dirs: torch.Tensor
    points: torch.Tensor
    device: torch.device
    eval_spec: EvalSpec
    curvature: CurvatureSpec | None = None
    bn_batches: list[Any] | None = None

    def coefficients(self, chunk: np.ndarray) -> torch.Tensor:
        """The coefficients of the points ``chunk`` (flat indices), on the device."""
        return self.points[chunk].to(self.device)


#: commits timed (after the first) for the job's estimate
TIMED_COMMITS = 3


@dataclass
class ChunkLoop:
    """Evaluates chunks of grid points with ``runner`` and commits each one, counting points and sample
    evaluations for the run's log (:meth:`run_info`).

    ``measure`` is how a chunk is measured (default: the runner on ``ev.data``); ``check_data`` is the set the
    precision check evaluates the first chunk on (``None``: no check); ``per_point`` the samples a point costs.
    """

    ev: Evaluation
    runner: Runner
    surface: Surface
    writer: SurfaceWriter | None
    cluster: Cluster | None = None
    progress: Progress | None = None
    extra_names: Sequence[str] = ()
    start_done: int = 0
    measure: Callable[[np.ndarray], Measured] | None = None
    check_data: EvalData | None = None
    per_point: int = 0
    busy: Runner | None = None  # the runner named in an out-of-memory error (an anchors' runner while it runs)
    anchors: dict[str, Any] | None = None  # the anchors' part of the run's log, filled as they go
    policy: Any = None  # an adaptive grid's policy (its report goes into the log)
    precision_check: dict[str, Any] = field(default_factory=dict)
    sample_evals: int = 0
    #: seconds of the first commits (values, done mask, flushes), whose cost per point completes the job's
    #: estimate: on a tiny model a chunk costs as much to commit as to evaluate
    commit_seconds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.done_count, self.total, self.t0 = self.start_done, self.surface.done.size, time.perf_counter()
        self.measure = self.measure or self.on_subset
        self.check_data = self.ev.data if self.check_data is None else self.check_data
        self.per_point = self.per_point or len(self.ev.data)
        # with curvature every point costs many passes over the data: write each one as soon as it is done
        self.step = 1 if self.ev.curvature is not None else self.runner.points_per_call

    def on_subset(self, chunk: np.ndarray) -> Measured:
        """The runner's loss, accuracy and standard error of ``chunk`` on the run's data."""
        loss_k, acc_k, se_k = self.runner.evaluate_points(self.ev.coefficients(chunk))
        return loss_k, acc_k, finite_population(se_k, len(self.ev.data), self.ev.data.population)

    def compute(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Measure ``chunk`` (and its curvature, if asked for); out of memory becomes a message with the fix."""
        ev = self.ev
        with memory_errors_explained(self.busy or self.runner):
            loss_k, acc_k, se_k = self.measure(chunk)
            extra = {SE: se_k}
            if ev.curvature is not None:
                weights = perturb(ev.base, ev.dirs, ev.coefficients(chunk))
                extra.update(curvature_of_points(ev.model, ev.data, ev.loss_fn, ev.layout, weights, ev.curvature,
                                                 ev.device, ev.eval_spec.batch_size))
        return loss_k, acc_k, extra

    def commit(self, chunk: np.ndarray, result: tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]) -> None:
        """Write ``chunk``'s values (file or memory), count them, check the precision once, report progress."""
        loss_k, acc_k, extra = result
        if self.writer is not None:
            t0 = time.perf_counter()
            self.writer.write(chunk, loss_k, acc_k, extra)
            self._count_commit(time.perf_counter() - t0, len(chunk))
        else:
            surface = self.surface
            idx = np.unravel_index(chunk, surface.done.shape)
            surface.loss[idx], surface.acc[idx], surface.done[idx] = loss_k, acc_k, True
            for name, values in extra.items():
                surface.extra[name][idx] = values
        self.done_count += len(chunk)
        self.sample_evals += len(chunk) * self.per_point
        ev = self.ev
        if ev.eval_spec.precision != "fp32" and not self.precision_check and self.check_data is not None:
            self.precision_check.update(check_precision_error(  # after the write: the points are safe
                ev.model, ev.layout, ev.base, ev.dirs, self.check_data, ev.loss_fn, ev.eval_spec,
                ev.coefficients(chunk[:PRECISION_CHECK_POINTS]), loss_k, ev.bn_batches))
        if self.progress:
            self.progress(self.done_count, self.total)

    def _count_commit(self, seconds: float, points: int) -> None:
        """After :data:`TIMED_COMMITS` commits past the first (which publishes the file), hand their cost per
        point to a runner that estimates the job (``auto``), once."""
        if len(self.commit_seconds) > TIMED_COMMITS:  # done: a long run keeps no list of every commit
            return
        self.commit_seconds.append(seconds / points)
        if len(self.commit_seconds) == TIMED_COMMITS + 1 and hasattr(self.runner, "add_overhead"):
            self.runner.add_overhead(float(np.median(self.commit_seconds[1:])))

    def evaluate(self, indices: np.ndarray) -> None:
        """Evaluate and commit the points ``indices`` chunk by chunk (on every rank of a sharded run)."""
        if self.cluster is not None:  # chunks claimed by every rank, committed by rank 0
            names = [n for n in self.extra_names if n != INTERPOLATED]
            self.cluster.evaluate(indices, self.step, self.compute, self.commit, names)
            return
        for start in range(0, len(indices), self.step):
            chunk = indices[start:start + self.step]
            self.commit(chunk, self.compute(chunk))

    def run_info(self) -> dict[str, Any]:
        """The run's log entry (also of a run stopped part way), kept as the surface's ``last_run``."""
        seconds = time.perf_counter() - self.t0
        # with a file, its done mask counts: a signal between a chunk's commit and its count must not be missed
        done = int(self.surface.done.sum()) if self.writer is not None else self.done_count
        run = {**self.runner.describe(), "seconds": round(seconds, 4), "points": done - self.start_done,
               "samples": len(self.ev.data)}
        run["points_x_samples_per_s"] = round(self.sample_evals / seconds, 1) if seconds > 0 else None
        if self.anchors is not None:
            run["anchors"] = self.anchors
        if self.precision_check:
            run["precision_check"] = self.precision_check
        if self.policy is not None:
            run["adaptive"] = self.policy.report()
        if self.cluster is not None:
            run["processes"] = self.cluster.world
            run["chunks_by_rank"] = {str(r): n for r, n in sorted(self.cluster.chunks.items())}
        self.surface.attrs["last_run"] = run
        return run
