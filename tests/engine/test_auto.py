"""The auto runner's choice, its timing budget and its clean-up, on runners of known cost.

The runners' costs are charged to a virtual clock that replaces ``time`` in the
timing code, so the tests are exact and do not depend on the machine's load.
"""

import gc
import types
import weakref

import numpy as np
import pytest
import torch

from lossgrid.engine.losses import Stats
from lossgrid.engine.runners import auto, timing
from lossgrid.engine.runners.auto import AutoRunner
from lossgrid.engine.runners.base import Runner
from lossgrid.engine.runners.timing import seconds_per_point

CLOSED: list[float] = []  # marks of the Fake runners closed so far

CLOCK = types.SimpleNamespace(now=0.0)


@pytest.fixture(autouse=True)
def virtual_clock(monkeypatch):
    fake_time = types.SimpleNamespace(perf_counter=lambda: CLOCK.now)
    monkeypatch.setattr(timing, "time", fake_time)
    monkeypatch.setattr(auto, "time", fake_time)


class Fake(Runner):
    """Costs ``fixed`` seconds per point plus ``per_batch`` per point and batch (on the virtual
    clock); its loss is its ``mark``."""

    def __init__(self, mark: float, per_batch: float, fixed: float = 0.0, strategy: str = "loop",
                 batches: int = 4, warmup: float = 0.0) -> None:
        self.mark, self.per_batch, self.fixed, self.strategy = mark, per_batch, fixed, strategy
        self.warmup = warmup  # charged once, on the first call
        self.batches = [None] * batches
        self.points_per_call = 4
        self.calls = 0
        self.closed = False

    def evaluate(self, weights):
        self.calls += 1
        k = weights.shape[0]
        CLOCK.now += k * (self.fixed + self.per_batch * len(self.batches)) + (self.warmup if self.calls == 1 else 0)
        return Stats(np.full(k, self.mark), np.full(k, 100.0), np.full(k, np.nan))

    def describe(self):
        return {"backend": "fake", "strategy": self.strategy}

    def close(self):
        self.closed = True
        CLOSED.append(self.mark)


W = torch.zeros(4, 3)


def test_seconds_per_point_extrapolates_fixed_and_per_batch_costs():
    runners = {"a": Fake(1, per_batch=0.008, fixed=0.004), "b": Fake(2, per_batch=0.002, fixed=0.0)}
    t = seconds_per_point(runners, W[:1], rounds=2)
    assert t["a"] == pytest.approx(0.004 + 4 * 0.008)
    assert t["b"] == pytest.approx(4 * 0.002)


def test_clear_losers_are_timed_once():
    fast, slow = Fake(1, per_batch=0.002), Fake(2, per_batch=0.008)
    seconds_per_point({"fast": fast, "slow": slow}, W[:1], rounds=3, keep_within=1.5)
    assert slow.calls == 2 and fast.calls == 6  # one round (one and two batches) against three


def _auto(candidates, budget=0.05):
    """An AutoRunner whose factories build new Fakes (as make_runner's do) and record weak references."""
    made = []

    def factory(args, kw):
        def build():
            runner = Fake(*args, **kw)
            made.append(weakref.ref(runner))
            return runner
        return build

    auto = AutoRunner([(label, factory(args, kw)) for label, args, kw in candidates], points_per_call=4,
                      budget=budget)
    return auto, made


def test_small_job_keeps_the_default_without_building_the_others():
    auto, made = _auto([("torch/loop", (1, 0.002), {}), ("onnxruntime/baked", (2, 0.001), {"strategy": "baked"})])
    auto.expect(8)
    loss, _, _ = auto.evaluate(W)
    assert len(made) == 1 and auto.chosen.mark == 1 and list(loss) == [1, 1, 1, 1]
    assert "too small to repay" in auto.reason and auto.calibration_seconds == 0


def test_large_job_times_the_others_keeps_the_fastest_and_releases_the_rest():
    auto, made = _auto([("torch/loop", (1, 0.004), {}), ("onnxruntime/baked", (2, 0.001), {"strategy": "baked"}),
                        ("torch/vmap", (3, 0.006), {"strategy": "vmap"})], budget=1.0)
    auto.expect(10_000)
    CLOSED.clear()
    loss, _, _ = auto.evaluate(W)
    assert sorted(CLOSED) == [1, 3]  # the losers were closed at once, the winner is not
    # the first two points were real work of the default (a warm-up pass, a timed one), the rest the winner's
    assert list(loss) == [1, 1, 2, 2] and auto.chosen.mark == 2
    assert "fastest when timed" in auto.reason and auto.calibration_seconds > 0
    gc.collect()
    assert len(made) == 3 and [r() for r in made if r() is not None] == [auto.chosen]
    assert list(auto.evaluate(W)[0]) == [2, 2, 2, 2]


@pytest.mark.parametrize("strategy,kept", [("loop", [1, 1, 1, 1]), ("wide", [1, 1, 1, 1])])
def test_the_job_is_estimated_from_a_warm_pass_not_the_first(strategy, kept):
    """A first pass that pays a warm-up (0.3 s on a 2 ms/point runner) would put a 10,000-point job at about
    3,000 s; the estimate comes from the next pass: 80 s. A one-point strategy times the chunk's next point
    (kept); a chunk-wide one repeats its chunk (the repeat is dropped, the values stay the first pass's)."""
    auto, made = _auto([("torch/" + strategy, (1, 0.002), {"warmup": 0.3, "strategy": strategy})])
    auto.expect(10_000)
    loss, _, _ = auto.evaluate(W)
    assert list(loss) == kept and auto.estimated_job_seconds == pytest.approx(0.008 * (10_000 - (2 if strategy ==
                                                                                                  "loop" else 4)))
    assert made[0]().calls == 3 if strategy == "loop" else made[0]().calls == 2
    slow = Fake(1, per_batch=0.5)  # a first pass of 2 s is mostly work: not repeated
    kept_stats, per_point = AutoRunner._warm_per_point(slow, W, 1)
    assert slow.calls == 1 and per_point == pytest.approx(2.0) and len(kept_stats) == 1


def test_candidates_that_cannot_run_are_skipped_with_the_reason():
    from lossgrid.errors import ExportError

    def broken():
        raise ExportError("Unsupported layer Foo")

    auto = AutoRunner([("torch/loop", lambda: Fake(1, 0.001)), ("onnxruntime/wide", broken)], 4, budget=1e6)
    auto.expect(10_000)
    auto.evaluate(W)
    assert auto.chosen.mark == 1 and "onnxruntime/wide unavailable (Unsupported layer Foo)" in auto.reason


def test_a_default_that_cannot_run_the_model_passes_to_the_next_candidate():
    from lossgrid.errors import ConfigError

    def refuse():
        raise ConfigError("The static strategy cannot run a TorchScript model")

    def broken():
        raise TypeError("an internal failure of this strategy")

    auto = AutoRunner([("torch/static", refuse), ("torch/wide", broken), ("torch/loop", lambda: Fake(7, 0.001))],
                      points_per_call=4)
    auto.expect(4)
    loss, _, _ = auto.evaluate(W)
    assert list(loss) == [7, 7, 7, 7] and auto.chosen.mark == 7
    assert "torch/static unavailable" in auto.reason and "TypeError" in auto.reason
    nobody = AutoRunner([("torch/static", refuse)], points_per_call=4)
    with pytest.raises(ConfigError, match="No runner can run this model"):
        nobody.evaluate(W)


def test_measured_commits_complete_the_estimate_once():
    """What the caller spends per point besides evaluating (a surface's commits) joins the estimate, once."""
    auto, _ = _auto([("torch/loop", (1, 0.002), {"warmup": 0.3})])
    auto.expect(1000)
    auto.evaluate(W)
    before = auto.estimated_job_seconds
    assert before == pytest.approx(0.008 * 998)
    auto.add_overhead(0.001)
    auto.add_overhead(0.001)
    assert auto.estimated_job_seconds == pytest.approx(before + 0.001 * 998)
    assert "with its commits measured, the job is estimated at 9 s" in auto.reason


def test_a_surface_run_logs_the_estimate_with_its_commits(tmp_path, monkeypatch):
    """On the real clock: a surface file's run log carries auto's estimate, commits included."""
    monkeypatch.undo()  # the real clock for the surface's own timing
    from lossgrid import GridSpec, compute_surface, load_data
    from tests.conftest import small_cnn

    surface = compute_surface(small_cnn(), load_data("digits", 16), GridSpec.parse("-1:1:80"), tmp_path / "s.h5")
    run = surface.attrs["last_run"]
    said = run.get("backend_choice") or run["strategy_reason"]  # by what auto chose between
    assert run["estimated_job_seconds"] > 0 and "with its commits measured" in said
