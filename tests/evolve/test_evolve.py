"""Evolving landscapes: one slice per checkpoint equal to compute_surface on the same
directions, natural order, the file layout, resume after a kill or lost done marks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from lossgrid import DirectionSpec, GridSpec, compute_surface, load_data, load_model
from lossgrid.checkpoints import find_checkpoints, natural_key
from lossgrid.engine.directions import load_directions
from lossgrid.errors import ConfigError, SurfaceFileError
from lossgrid.evolve.compute import compute_evolution, load_evolution
from lossgrid.surface.directions import create_directions

MODEL = "lossgrid.zoo:mlp_digits"
EPOCHS = (1, 2, 10)  # natural order differs from text order (epoch_10 < epoch_2 as text)
GRID = GridSpec.parse("-1:1:5", "-0.5:0.5:3")  # 15 points per checkpoint, the origin among them


def train_checkpoints(directory: str | os.PathLike, epochs: tuple[int, ...] = EPOCHS) -> list[str]:
    """Train lossgrid.zoo.mlp_digits on the digits, saving a state_dict after each epoch in ``epochs``."""
    from lossgrid.zoo import mlp_digits

    data = load_data("digits:train")
    torch.manual_seed(0)
    model = mlp_digits()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    paths = []
    for epoch in range(1, max(epochs) + 1):
        for _ in range(10):
            idx = torch.randint(0, len(data), (128,), generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
            opt.step()
        if epoch in epochs:
            paths.append(os.path.join(directory, f"epoch_{epoch}.pt"))
            torch.save(model.state_dict(), paths[-1])
    return paths


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("run")
    return train_checkpoints(directory)


@pytest.fixture(scope="module")
def data():
    return load_data("digits:test", samples=120)


def evolve(run, data, out, **kw):
    return compute_evolution(MODEL, find_checkpoints([os.path.join(os.path.dirname(run[0]), "epoch_*.pt")]), data,
                             kw.pop("grid", GRID), out, **kw)


def test_checkpoints_sort_by_the_numbers_in_their_names(run, tmp_path):
    pattern = os.path.join(os.path.dirname(run[0]), "epoch_*.pt")
    assert [os.path.basename(p) for p in find_checkpoints([pattern])] == ["epoch_1.pt", "epoch_2.pt", "epoch_10.pt"]
    assert find_checkpoints([run[2], pattern, run[0]]) == find_checkpoints([pattern])  # duplicates once
    assert sorted(["b/x_10", "a/x_9", "x_1e"], key=natural_key) == ["x_1e", "a/x_9", "b/x_10"]
    with pytest.raises(ConfigError, match="No checkpoint matches"):
        find_checkpoints([str(tmp_path / "none_*.pt")])
    with pytest.raises(ConfigError, match="does not exist"):
        find_checkpoints([str(tmp_path / "absent.pt")])


def test_each_slice_equals_compute_surface_on_the_shared_directions(run, data, tmp_path):
    out = tmp_path / "evo.h5"
    evo = evolve(run, data, out)
    assert evo.labels == ["epoch_1", "epoch_2", "epoch_10"] and evo.complete
    back = load_evolution(out)
    assert back.labels == evo.labels and back.checkpoints == run
    # the directions are the last checkpoint's, made once
    last, _ = load_model(MODEL, run[-1])
    made = create_directions(last, DirectionSpec(), ndim=2)
    assert back.attrs["directions"] == made.fingerprint()
    for i, ck in enumerate(run):
        model, _ = load_model(MODEL, ck)
        want = compute_surface(model, data, GRID, directions=load_directions(out, model))
        got = back.surfaces[i]
        np.testing.assert_allclose(got.loss, want.loss, rtol=1e-5)
        np.testing.assert_array_equal(got.acc, want.acc)
        np.testing.assert_array_equal(got.xcoordinates, GRID.x.coordinates())
        assert got.done.all() and got.attrs["label"] == f"epoch_{EPOCHS[i]}"
        np.testing.assert_array_equal(evo.surfaces[i].loss, got.loss)  # returned == stored
    # the landscape does change over training: the center loss falls
    centers = [s.summary()["center_loss"] for s in back.surfaces]
    assert centers[0] > centers[-1]


def test_file_layout(run, data, tmp_path):
    """Schema: root attrs, shared directions, one reference-layout group per checkpoint."""
    import h5py

    out = tmp_path / "evo.h5"
    evolve(run, data, out)
    with h5py.File(out, "r") as f:
        assert f.attrs["file_kind"] == "evolution" and f.attrs["schema_version"] == 1
        assert json.loads(f.attrs["labels"]) == ["epoch_1", "epoch_2", "epoch_10"]
        identity = json.loads(f.attrs["identity"])
        assert len(identity["checkpoint_fingerprints"]) == 3 and identity["x"] == "-1:1:5"
        assert set(f) == {"xdirection", "ydirection", "checkpoints"}
        assert sorted(f["checkpoints"]) == ["0000", "0001", "0002"]
        for i, name in enumerate(sorted(f["checkpoints"])):
            g = f["checkpoints"][name]
            assert set(g) == {"xcoordinates", "ycoordinates", "train_loss", "train_acc", "done"}
            assert g["train_loss"].shape == (5, 3) and g["done"].dtype == np.uint8
            assert g.attrs["index"] == i and g.attrs["checkpoint"] == run[i]
    # the file serves as a direction file
    model, _ = load_model(MODEL, run[0])
    assert load_directions(out, model).fingerprint() == load_evolution(out).attrs["directions"]


def test_rerun_computes_nothing_and_lost_marks_are_recomputed(run, data, tmp_path):
    import h5py

    out = tmp_path / "evo.h5"
    first = evolve(run, data, out)
    again = evolve(run, data, out)
    assert again.attrs["last_run"]["points"] == 0
    with h5py.File(out, "r+") as f:  # a crash between values and marks; some marks lost
        g = f["checkpoints/0001"]
        done = g["done"][...]
        done[1:3, :] = 0
        g["done"][...] = done
        g["train_loss"][1:3, :] = np.nan
        f["checkpoints/0002/done"][0, 0] = 0
    resumed = evolve(run, data, out)
    assert resumed.attrs["last_run"]["points"] == 2 * 3 + 1
    back = load_evolution(out)
    for a, b in zip(first.surfaces, back.surfaces):  # points alone in a call may round differently
        np.testing.assert_allclose(b.loss, a.loss, rtol=1e-6)
        assert b.done.all()
    assert len(json.loads(back.attrs["runs"])) == 2  # the run that computed nothing is not logged


KILL_SCRIPT = """
import os, signal, sys
from lossgrid import EvalSpec, GridSpec, load_data
from lossgrid.evolve.compute import compute_evolution
checkpoints, out, after = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])
def progress(done, total):
    if done >= after:
        os.kill(os.getpid(), signal.SIGKILL)
compute_evolution("lossgrid.zoo:mlp_digits", checkpoints, load_data("digits:test", samples=120),
                  GridSpec.parse("-1:1:5", "-0.5:0.5:3"), out, eval_spec=EvalSpec(points_per_call=3),
                  progress=progress)
"""


def test_a_killed_run_resumes_where_it_stopped(run, data, tmp_path):
    whole = evolve(run, data, tmp_path / "whole.h5")
    out = tmp_path / "killed.h5"
    after = 15 + 6  # all of the first checkpoint, two chunks of the second
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, ",".join(run), str(out), str(after)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, proc.stderr
    partial = load_evolution(out)
    assert [int(s.done.sum()) for s in partial.surfaces] == [15, 6, 0]
    assert not os.path.exists(str(out) + ".lock") or partial.writer is None  # the kernel dropped the lock
    resumed = evolve(run, data, out, eval_spec=__import__("lossgrid").EvalSpec(points_per_call=3))
    assert resumed.attrs["last_run"]["points"] == 45 - after
    for a, b in zip(whole.surfaces, load_evolution(out).surfaces):
        np.testing.assert_allclose(b.loss, a.loss, rtol=1e-6)
        assert b.done.all()


def test_interrupt_keeps_the_chunks_done(run, data, tmp_path):
    out = tmp_path / "evo.h5"

    def stop(done, total):
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evolve(run, data, out, progress=stop, eval_spec=__import__("lossgrid").EvalSpec(points_per_call=4))
    assert int(load_evolution(out).surfaces[0].done.sum()) == 8
    assert evolve(run, data, out).attrs["last_run"]["points"] == 45 - 8


def test_other_settings_are_refused_unless_overwrite(run, data, tmp_path):
    out = tmp_path / "evo.h5"
    evolve(run, data, out)
    with pytest.raises(SurfaceFileError, match="different settings") as e:
        evolve(run, data, out, direction_spec=DirectionSpec(seed=1))
    assert "directions" in str(e.value) and "--overwrite" in str(e.value)
    assert evolve(run, data, out, direction_spec=DirectionSpec(seed=1), overwrite=True).complete
    assert load_evolution(out).attrs["seed"] == 1
    other = tmp_path / "surface.h5"
    model, _ = load_model(MODEL, run[0])
    compute_surface(model, data, GridSpec.parse("-1:1:3"), other)
    with pytest.raises(SurfaceFileError, match="not an evolution file"):
        evolve(run, data, other, overwrite=True)  # a surface file is never replaced
    with pytest.raises(SurfaceFileError, match="not an evolution file"):
        load_evolution(other)


def test_checkpoints_of_another_architecture_are_refused_before_any_file(run, data, tmp_path):
    from lossgrid.zoo import mlp

    odd = tmp_path / "epoch_3.pt"
    torch.save(mlp(hidden=32).state_dict(), odd)
    out = tmp_path / "evo.h5"
    with pytest.raises(Exception, match="does not match|size mismatch|Missing|shape"):
        compute_evolution(MODEL, [run[0], str(odd), run[-1]], data, GRID, out)
    assert not out.exists()


def test_1d_in_memory_and_a_dir_file(run, data, tmp_path):
    dirs = tmp_path / "dirs.h5"
    grid = GridSpec.parse("-1:1:7")
    mem = compute_evolution(MODEL, run, data, grid, None, dir_file=dirs)
    assert mem.ndim == 1 and mem.complete and mem.path is None and dirs.exists()
    stored = compute_evolution(MODEL, run, data, grid, tmp_path / "e.h5", dir_file=dirs)  # read, not made
    for a, b in zip(mem.surfaces, stored.surfaces):
        np.testing.assert_array_equal(a.loss, b.loss)
    summary = stored.summary()
    assert [r["label"] for r in summary["checkpoints"]] == ["epoch_1", "epoch_2", "epoch_10"]
    assert summary["points_done"] == summary["points_total"] == 21
