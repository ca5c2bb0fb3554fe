"""A test model for sharded runs: records each rank's pid and can make one rank slow."""

from __future__ import annotations

import os
import time

import torch

from tests.conftest import SmallCNN


class RankModel(SmallCNN):
    """SmallCNN that sleeps ``LOSSGRID_TEST_SLEEP`` seconds per forward on rank ``LOSSGRID_TEST_SLOW_RANK``
    (every rank when it is ``all``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slow = os.environ.get("LOSSGRID_TEST_SLOW_RANK")
        if slow is not None and slow in ("all", os.environ.get("RANK", "0")):
            time.sleep(float(os.environ.get("LOSSGRID_TEST_SLEEP", "0.05")))
        return super().forward(x)


def make() -> RankModel:
    pids = os.environ.get("LOSSGRID_TEST_PIDS")
    if pids:
        with open(os.path.join(pids, f"rank{os.environ.get('RANK', '0')}"), "w") as fh:
            fh.write(str(os.getpid()))
    return RankModel()
