"""Estimating a runner's seconds per grid point, for choosing the fastest one."""

from __future__ import annotations

import time
from typing import Any

import torch


def seconds_per_point(runner: Any, weights: torch.Tensor) -> float:
    """Time ``runner.evaluate`` on the first one and two batches (after a warm-up)
    and extrapolate to the whole evaluation set: fixed cost per point (weight
    copies, session builds) plus cost per batch times the number of batches."""
    saved = runner.batches
    times = []
    try:
        for nb in (1, 2) if len(saved) > 1 else (1,):
            runner.batches = saved[:nb]
            runner.evaluate(weights)
            best = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                runner.evaluate(weights)
                best = min(best, time.perf_counter() - t0)
            times.append(best / weights.shape[0])
    finally:
        runner.batches = saved
    if len(times) == 1:
        return times[0]
    per_batch = max(times[1] - times[0], times[0] / 2)
    return max(times[0] - per_batch, 0.0) + per_batch * len(saved)
