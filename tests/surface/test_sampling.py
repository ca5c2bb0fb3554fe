"""``--target-se`` (a pilot picks the subset, the run confirms or grows it) and ``--repeats``
(several direction pairs, a per-point summary)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from lossgrid import load_surface
from lossgrid.config import DirectionSpec, EvalSpec, GridSpec, SurfaceJob
from lossgrid.engine.losses import finite_population
from lossgrid.errors import ConfigError, SurfaceFileError
from lossgrid.surface import sampling
from lossgrid.surface.job import run_surface_job
from lossgrid.surface.sampling import grown_samples, pilot_indices, required_samples


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from tests.conftest import trained_small_cnn

    path = tmp_path_factory.mktemp("ck") / "net.pt"
    torch.save(trained_small_cnn(20).state_dict(), path)
    return str(path)


def job(tmp_path, ckpt, **kw) -> SurfaceJob:
    base = dict(out=str(tmp_path / "s.h5"), grid=GridSpec.parse("-1:1:3", "-1:1:3"), model="tests.conftest:SmallCNN",
                checkpoint=ckpt, data="digits", evaluation=EvalSpec(strategy="loop"))
    return SurfaceJob(**{**base, **kw})


def test_required_samples_is_the_smallest_subset_meeting_the_target() -> None:
    for std, target, population in ((0.5, 0.01, 50_000), (1.3, 0.05, 1797), (0.2, 0.001, 10_000)):
        n = required_samples(std, target, population)
        se = finite_population(np.array([std / np.sqrt(n), std / np.sqrt(n - 1)]), n, population)
        assert se[0] <= target * (1 + 1e-9)
        assert finite_population(np.array([std / np.sqrt(n - 1)]), n - 1, population)[0] > target
    assert required_samples(10.0, 1e-6, 500) == 500
    with pytest.raises(ConfigError, match="positive"):
        required_samples(1.0, 0.0, 10)


def test_pilot_points_are_corners_edges_and_centre() -> None:
    assert pilot_indices(GridSpec.parse("-1:1:5")).tolist() == [0, 2, 4]
    assert len(pilot_indices(GridSpec.parse("-1:1:5", "-1:1:5"))) == 9
    assert pilot_indices(GridSpec.parse("0:0:1")).tolist() == [0]


def test_target_se_is_met_at_every_point_and_resumes(tmp_path, ckpt) -> None:
    j = job(tmp_path, ckpt, target_se=0.08)
    summary = run_surface_job(j)
    chosen = summary["target_se"]
    assert 2 <= chosen["samples"] < chosen["population"] == 1797
    surf = load_surface(j.out)
    assert np.nanmax(surf.extra["train_loss_se"]) <= 0.08
    with h5py.File(j.out, "r") as f:
        identity = json.loads(f.attrs["identity"])
    assert identity["target_se"] == 0.08 and identity["samples"] == chosen["samples"]
    again = run_surface_job(j)  # resumes the same subset: nothing to compute
    assert again["points_computed"] == 0 and again["target_se"]["samples"] == chosen["samples"]


def test_a_pilot_that_underestimates_grows_the_subset(tmp_path, ckpt, monkeypatch) -> None:
    monkeypatch.setattr(sampling, "SAFETY", 0.25)  # the pilot now asks for far too few samples
    j = job(tmp_path, ckpt, target_se=0.08)
    summary = run_surface_job(j)
    assert np.nanmax(load_surface(j.out).extra["train_loss_se"]) <= 0.08
    pilot_only = sampling.required_samples(summary["target_se"]["pilot_std"], 0.08, 1797) * 0.25
    assert summary["target_se"]["samples"] > pilot_only


def test_grown_samples() -> None:
    assert grown_samples(np.array([0.01, 0.02]), 100, 1000, 0.05) is None
    assert grown_samples(np.array([0.01, np.nan]), 100, 1000, 0.005) > 100
    assert grown_samples(np.array([0.5]), 1000, 1000, 0.01) is None  # the whole set already


def test_target_se_and_samples_exclude_each_other(tmp_path, ckpt) -> None:
    with pytest.raises(ConfigError, match="both choose the subset"):
        job(tmp_path, ckpt, target_se=0.1, samples=100)
    with pytest.raises(ConfigError, match="--repeats needs random directions"):
        job(tmp_path, ckpt, repeats=2, dir_file=str(tmp_path / "d.h5"))


def test_repeats_write_one_file_per_pair_and_a_summary(tmp_path, ckpt) -> None:
    j = job(tmp_path, ckpt, repeats=3, samples=200, directions=DirectionSpec(seed=4))
    summary = run_surface_job(j)
    files = [str(tmp_path / f"s.seed{s}.h5") for s in (4, 5, 6)]
    assert summary["repeat_files"] == files and summary["points_computed"] == 3 * 9
    parts = [load_surface(p) for p in files]
    mean = load_surface(j.out)
    stacked = np.stack([p.loss for p in parts])
    np.testing.assert_allclose(mean.loss, stacked.mean(0))
    np.testing.assert_allclose(mean.extra["train_loss_std"], stacked.std(0, ddof=1))
    assert mean.done.all() and mean.attrs["repeats"] == 3
    assert len({json.loads(p.attrs["identity"])["directions"] for p in parts}) == 3  # three different pairs
    again = run_surface_job(j)
    assert again["points_computed"] == 0


def test_repeats_never_replace_another_file(tmp_path, ckpt) -> None:
    run_surface_job(job(tmp_path, ckpt, samples=100))
    before = (tmp_path / "s.h5").read_bytes()
    with pytest.raises(SurfaceFileError, match="not a repeats summary"):
        run_surface_job(job(tmp_path, ckpt, samples=100, repeats=2))
    assert (tmp_path / "s.h5").read_bytes() == before


def test_repeats_with_overwrite_never_replace_a_foreign_file(tmp_path, ckpt) -> None:
    (tmp_path / "s.h5").write_text("my notes")
    with pytest.raises(SurfaceFileError, match="not a surface file"):
        run_surface_job(job(tmp_path, ckpt, samples=50, repeats=2, overwrite=True))
    assert (tmp_path / "s.h5").read_text() == "my notes"


def test_the_population_decides_the_identity(tmp_path, ckpt) -> None:
    whole = job(tmp_path, ckpt, samples=1797)  # the whole set drawn as a subset: standard errors 0
    run_surface_job(whole)
    assert np.nanmax(load_surface(whole.out).extra["train_loss_se"]) == 0
    with pytest.raises(SurfaceFileError, match="se_population"):
        run_surface_job(job(tmp_path, ckpt))  # the same rows as a population of their own: not the same file
