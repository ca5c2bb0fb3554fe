"""Choosing the fastest runner on the actual model, data and machine, at a bounded cost.

:class:`AutoRunner` serves ``--backend auto`` (all backends and strategies) and
``--backend torch --strategy auto`` (the torch strategies). Its first call
evaluates one grid point for real with the default candidate (the result is
kept), which measures what a point costs; the other candidates are then timed,
cheapest to time first, only as far as the timing is expected to cost at most
``budget`` (3%) of the job -- a job too small to repay it keeps the default and
says so. Timed candidates run round-robin on one and two batches, one-point
strategies on one point and K-wide ones on K; clear losers are dropped after the
first round (:func:`~lossgrid.engine.runners.timing.seconds_per_point`). The
fastest is kept and every other one is released at once, so that no session,
thread pool or wide model of a loser lives on next to the winner.

Measured cause of the old behaviour (ResNet-20, 200 images, 5x5 grid): timing
five candidates on the whole first chunk (warm-up plus three rounds on one and
two batches) cost 47 s for a job of 2.5 s; after the choice, chunks ran at the
speed of the chosen runner alone."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ...config import AUTO_BUDGET
from ...errors import ConfigError, LossgridError, is_out_of_memory
from ..losses import SampleValues, Stats, concat_stats
from .base import Runner
from .timing import pass_width, seconds_per_point, warm_up

log = logging.getLogger(__name__)

#: rounds of round-robin timing (each on one and on two batches); after the first, candidates
#: estimated more than KEEP_WITHIN times slower than the fastest are dropped
ROUNDS = 2
KEEP_WITHIN = 1.5
#: expected set-up seconds of a candidate (export and parity check, fx rewrite), by backend
SETUP_PRIOR = {"torch": 0.05, "onnxruntime": 0.3, "tensorrt": 30.0}  # TensorRT: an engine build without cache
#: how much slower than the default a candidate may be assumed when estimating its timing cost
SLOWER = 1.5
#: a first pass quicker than this (seconds) is timed again once warm before the job is estimated from it
WARM_REPEAT_S = 1.0


class AutoRunner(Runner):
    """Delegates to the fastest of ``candidates`` (``(label, factory)`` pairs; the
    first is the default, used without timing on jobs too small to repay it).

    Args:
        candidates: labels such as ``torch/loop`` and factories building the runners.
        points_per_call: the chunk size the surface loop should use.
        budget: the share of the estimated job time that timing may cost.
        backend: what :meth:`describe` reports before a choice is made.
        device: the device the candidates run on (reported before a choice).
    """

    name = "auto"

    def __init__(self, candidates: list[tuple[str, Callable[[], Any]]], points_per_call: int,
                 budget: float = AUTO_BUDGET, backend: str = "auto", device: str = "cpu") -> None:
        if not candidates:
            raise ConfigError("No runner to choose from", hint="use --backend torch --strategy loop")
        self.candidates = candidates
        self.points_per_call = points_per_call
        self.budget = budget
        self.backend = backend
        self.device = device
        self.remaining: int | None = None
        #: the seconds the rest of the job should take with the runner chosen (None before the choice, or
        #: without :meth:`expect`), from its timed, warm passes
        self.estimated_job_seconds: float | None = None
        self._left: int | None = None  # the points left after the choice's own passes
        self._overhead = False  # whether add_overhead has added to the estimate
        self.chosen: Any = None
        self.reason = ""
        self.calibration_seconds = 0.0

    def expect(self, points: int) -> None:
        """The number of grid points this runner will evaluate (sets the timing budget).
        Without it, every candidate is timed."""
        self.remaining = int(points)

    def evaluate(self, weights: torch.Tensor) -> Stats:
        if self.chosen is None:
            return self._first_call(weights)
        return self.chosen.evaluate(weights)

    def evaluate_points(self, coeffs: torch.Tensor) -> Stats:
        if self.chosen is None:  # the choice times candidates on ready-made weights
            return super().evaluate_points(coeffs)
        return self.chosen.evaluate_points(coeffs)

    def evaluate_point_samples(self, coeffs: torch.Tensor) -> tuple[Stats, SampleValues]:
        if self.chosen is None:  # choose on a first chunk (that result is dropped); the winner keeps the values
            super().evaluate_points(coeffs[:self.points_per_call])
        return self.chosen.evaluate_point_samples(coeffs)

    def add_overhead(self, seconds_per_point: float) -> None:
        """Add what the caller spends per point besides evaluating it (committing it to a file, measured) to
        the job's estimate; the timing budget was set without it (it under-counts, so it times less)."""
        if self.estimated_job_seconds is not None and self._left and not self._overhead:
            self._overhead = True  # once: later loops on this runner add to the same job
            self.estimated_job_seconds += seconds_per_point * self._left
            self.reason += f"; with its commits measured, the job is estimated at {self.estimated_job_seconds:.0f} s"

    def close(self) -> None:
        if self.chosen is not None:
            self.chosen.close()

    def describe(self) -> dict[str, object]:
        if self.chosen is None:
            return {"backend": self.backend, "strategy": None, "strategy_reason": "not yet chosen",
                    "device": self.device, "points_per_call": self.points_per_call, "batch_size": None}
        out = {**self.chosen.describe(), "calibration_seconds": round(self.calibration_seconds, 3)}
        if self.estimated_job_seconds is not None:
            out["estimated_job_seconds"] = round(self.estimated_job_seconds, 3)
        if self.backend == "auto":
            out["backend_choice"] = f"auto: {self.reason}"
        else:
            out["strategy_reason"] = self.reason
        return out

    # -- the choice ----------------------------------------------------------------
    def _first_call(self, weights: torch.Tensor) -> Stats:
        k = weights.shape[0]
        refused: list[str] = []
        for position, (default_label, default_factory) in enumerate(self.candidates):
            default = self._build(default_label, default_factory)
            if not isinstance(default, str):  # the first candidate that can run this model is the default
                self.candidates = self.candidates[position:]
                break
            refused.append(default)
        else:
            raise ConfigError("No runner can run this model", "; ".join(refused),
                              "check the model and data with --backend torch --strategy loop")
        head = pass_width(default_label.partition("/")[2], k)
        kept, per_point = self._warm_per_point(default, weights, head)
        used = sum(len(s.loss) for s in kept)
        left = None if self.remaining is None else max(self.remaining - used, 0)
        self._left = left
        job = per_point * left if left is not None else float("inf")
        self._refused = refused
        runners = {default_label: default}
        best = self._choose(runners, weights, per_point, job, left)
        self.chosen = runners.pop(best)
        if getattr(self, "_directions", None) is not None:
            self.chosen.set_directions(self._origin, self._directions)
        for loser in runners.values():
            loser.close()
        runners.clear()  # release the others: sessions, thread pools, wide models
        gc.collect()
        log.info("%s chose %s (%s)", self.backend, best, self.reason)
        if used == k:
            return kept[0] if len(kept) == 1 else concat_stats(kept)
        return concat_stats([*kept, self.chosen.evaluate(weights[used:])])

    @staticmethod
    def _warm_per_point(default: Any, weights: torch.Tensor, head: int) -> tuple[list[Stats], float]:
        """The default's first pass (real work, kept) and its seconds per point once warm. A first pass pays
        the warm-up (allocations, thread pools, lazy initialisation): on a tiny model that is most of it, and
        an estimate from it put a 500 s job at 241,000 s. So a first pass quicker than :data:`WARM_REPEAT_S`
        is followed by a timed one, on the next points of the chunk when it has them (kept), else on the same
        points again (dropped: it costs at most that much); a slower first pass is mostly work already."""
        t0 = time.perf_counter()
        kept = [default.evaluate(weights[:head])]
        cold = time.perf_counter() - t0
        if cold >= WARM_REPEAT_S:
            return kept, cold / head
        fresh = 2 * head <= weights.shape[0]  # the chunk has a second pass's worth of points
        t0 = time.perf_counter()
        second = default.evaluate(weights[head:2 * head] if fresh else weights[:head])
        warm = (time.perf_counter() - t0) / head
        return (kept + [second] if fresh else kept), warm

    def _choose(self, runners: dict[str, Any], weights: torch.Tensor, per_point: float, job: float,
                left: int | None) -> str:
        """Build and time the candidates the budget allows (added to ``runners``); the fastest label.
        Sets :attr:`reason` and :attr:`calibration_seconds`."""
        default_label = next(iter(runners))
        batches = max(1, len(getattr(runners[default_label], "batches", [None])))
        k = weights.shape[0]
        unavailable: list[str] = []
        untimed: list[str] = []
        planned = spent = 0.0
        # cheapest to time first, so that as many as possible fit in the budget
        for estimate, label, factory in sorted(((self._timing_cost(label, k, per_point / batches), label, factory)
                                                for label, factory in self.candidates[1:]), key=lambda c: c[0]):
            if planned + estimate > self.budget * job:
                untimed.append(label)
                continue
            planned += estimate
            t1 = time.perf_counter()
            runner = self._build(label, factory, weights)
            spent += time.perf_counter() - t1
            if isinstance(runner, str):
                unavailable.append(runner)
            else:
                runners[label] = runner
        if len(runners) > 1:
            t1 = time.perf_counter()
            timings = seconds_per_point(runners, weights, rounds=ROUNDS, keep_within=KEEP_WITHIN)
            spent += time.perf_counter() - t1
            best = min(timings, key=timings.__getitem__)
            parts = [f"{label} {t * 1e3:.1f} ms/point" for label, t in sorted(timings.items(), key=lambda kv: kv[1])]
            reason = f"fastest when timed on this model and data: {', '.join(parts)}; timing cost {spent:.2f} s"
            if left:  # the rest of the job at the chosen runner's speed
                self.estimated_job_seconds = timings[best] * left
                reason += f" ({100 * spent / self.estimated_job_seconds:.1f}% of the job, estimated at " \
                          f"{self.estimated_job_seconds:.0f} s)"
            if untimed:
                reason += f"; not timed (over the {100 * self.budget:g}% budget): {', '.join(untimed)}"
        else:
            best = default_label
            self.estimated_job_seconds = job if np.isfinite(job) else None
            if not untimed:
                reason = f"{default_label}: no other candidate can run this model"
            elif left == 0:
                reason = f"{default_label}: the job is done after its first point, nothing left to choose for"
            else:
                reason = (f"{default_label} without timing the others: the rest of this job (about {job:.1f} s at "
                          f"{per_point * 1e3:.1f} ms/point) is too small to repay timing them")
        self.reason = "; ".join([reason, *getattr(self, "_refused", []), *unavailable])
        self.calibration_seconds = spent
        return best

    @staticmethod
    def _timing_cost(label: str, k: int, per_point_batch: float) -> float:
        """Expected seconds to set up, warm up and time ``label`` (its first round, on one and two
        batches), if it is SLOWER than the default's ``per_point_batch`` seconds per point and batch."""
        backend, _, strategy = label.partition("/")
        return SETUP_PRIOR.get(backend, 0.5) + pass_width(strategy, k) * per_point_batch * (1 + 3) * SLOWER

    @staticmethod
    def _build(label: str, factory: Callable[[], Any], weights: torch.Tensor | None = None) -> Any:
        """A built (and, with ``weights``, warmed-up) runner, or why it cannot run."""
        try:
            runner = factory()
            if weights is not None:
                warm_up(runner, weights)
            return runner
        except LossgridError as e:
            log.info("%s unavailable: %s", label, e)
            return f"{label} unavailable ({e.what})"
        except Exception as e:  # a strategy that cannot handle this model must never end the run
            if is_out_of_memory(e) and weights is None:  # the default: the surface loop names what to lower
                raise
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            log.info("%s unavailable: %s: %s", label, type(e).__name__, reason)
            return f"{label} unavailable ({type(e).__name__}: {reason})"
