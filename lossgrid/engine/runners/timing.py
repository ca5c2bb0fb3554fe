"""Estimating runners' seconds per grid point, for choosing the fastest one."""

from __future__ import annotations

import time
from typing import Any

import torch

#: strategies that evaluate one grid point per pass over the data (timed on one point)
ONE_POINT_STRATEGIES = ("loop", "baked", "static", "refit")


def pass_width(strategy: str, points_per_call: int) -> int:
    """How many grid points one pass of ``strategy`` over the data evaluates."""
    return 1 if strategy in ONE_POINT_STRATEGIES else points_per_call


def _timed_evaluate(runner: Any, weights: torch.Tensor, batches: list) -> float:
    saved = runner.batches
    runner.batches = batches
    try:
        t0 = time.perf_counter()
        runner.evaluate(weights)
        return (time.perf_counter() - t0) / weights.shape[0]
    finally:
        runner.batches = saved


def _sample(runner: Any, weights: torch.Tensor) -> torch.Tensor:
    return weights[:pass_width(str(getattr(runner, "strategy", "")), weights.shape[0])]


def warm_up(runner: Any, weights: torch.Tensor) -> None:
    """One call on the first batch: builds lazy state and fails early if the runner cannot run."""
    _timed_evaluate(runner, _sample(runner, weights), runner.batches[:1])


def seconds_per_point(runners: dict[str, Any], weights: torch.Tensor, rounds: int = 3,
                      keep_within: float | None = None) -> dict[str, float]:
    """Estimated seconds per grid point on the whole evaluation set, per runner.

    Each runner (already warmed up with :func:`warm_up`) is timed on its first
    one and two batches, on one point (one-point strategies) or all of
    ``weights`` (K-wide strategies, which pay for K points per pass), in
    ``rounds`` round-robin passes so that a slow moment of the machine does not
    fall on one candidate only; the best of the rounds is extrapolated as a fixed
    cost per point (weight copies, session builds) plus a cost per batch times the
    number of batches. With ``keep_within``, runners estimated more than that
    factor slower than the fastest after the first round are not timed again.
    """
    best = {name: [float("inf"), float("inf")] for name in runners}
    timed = dict(runners)
    out: dict[str, float] = {}
    for round_ in range(rounds):
        for name, runner in timed.items():
            for i, nb in enumerate((1, 2) if len(runner.batches) > 1 else (1,)):
                best[name][i] = min(best[name][i], _timed_evaluate(runner, _sample(runner, weights),
                                                                   runner.batches[:nb]))
        out.update({name: _extrapolate(*best[name], len(runner.batches)) for name, runner in timed.items()})
        if keep_within is not None and round_ == 0:
            fastest = min(out.values())
            timed = {name: r for name, r in timed.items() if out[name] <= keep_within * fastest}
    return out


def _extrapolate(one: float, two: float, batches: int) -> float:
    """Seconds per point on ``batches`` batches from the times on one and on two."""
    if batches == 1:
        return one
    per_batch = max(two - one, one / 2)
    return max(one - per_batch, 0.0) + per_batch * batches
