"""The HDF5 surface file: schema, streaming, resume, refusal, corruption."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lossgrid.config import DirectionSpec, EvalSpec, GridSpec
from lossgrid.errors import SurfaceFileError
from lossgrid.surface.compute import compute_surface
from lossgrid.surface.file import SCHEMA_VERSION, SurfaceWriter, load_surface

LOOP = EvalSpec(strategy="loop", points_per_call=2, batch_size=64)


def make(model, data, path, grid="-1:1:4", y="-1:1:3", **kw):
    kw.setdefault("eval_spec", LOOP)
    return compute_surface(model, data, GridSpec.parse(grid, y), path, **kw)


def test_schema(tmp_path, trained_cnn, digits_small):
    path = tmp_path / "s.h5"
    make(trained_cnn, digits_small, path, model_description="small cnn")
    with h5py.File(path) as f:
        assert {"xcoordinates", "ycoordinates", "train_loss", "train_acc", "done", "xdirection", "ydirection"} <= set(f)
        assert f["xcoordinates"].shape == (4,) and f["ycoordinates"].shape == (3,)
        for name in ("train_loss", "train_acc"):
            assert f[name].shape == (4, 3) and f[name].dtype == np.float64
        assert f["done"].dtype == np.uint8 and f["done"][...].all()
        a = f.attrs
        assert a["schema_version"] == SCHEMA_VERSION
        for key in ("model", "data", "samples", "seed", "xnorm", "ynorm", "xignore", "yignore", "dir_type", "x", "y",
                    "identity", "runs", "seconds", "lossgrid_version", "loss", "directions"):
            assert key in a, key
        assert a["model"] == "small cnn" and a["samples"] == 150 and a["x"] == "-1:1:4"
        runs = json.loads(a["runs"])
        assert runs[0]["backend"] == "torch" and runs[0]["points"] == 12 and runs[0]["seconds"] > 0
    one = tmp_path / "one.h5"
    make(trained_cnn, digits_small, one, y=None)
    with h5py.File(one) as f:
        assert "ycoordinates" not in f and f["train_loss"].shape == (4,) and "ydirection" not in f


def test_indexing_is_ix_iy(tmp_path, trained_cnn, digits_small):
    surf = make(trained_cnn, digits_small, tmp_path / "s.h5", grid="-1:1:3", y="-1:1:5")
    loaded = load_surface(str(tmp_path / "s.h5"))
    assert loaded.loss.shape == (3, 5)
    # the origin is (ix=1, iy=2); it is the trained model, hence the lowest loss here
    assert np.nanargmin(loaded.loss) == np.ravel_multi_index((1, 2), (3, 5))
    np.testing.assert_array_equal(loaded.loss, surf.loss)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_is_identical(tmp_path, trained_cnn, digits_small):
    full = make(trained_cnn, digits_small, tmp_path / "full.h5")
    path = tmp_path / "part.h5"
    calls = []

    def stop_after_two_chunks(done, total):
        calls.append(done)
        if len(calls) == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        make(trained_cnn, digits_small, path, progress=stop_after_two_chunks)
    part = load_surface(str(path))
    assert part.done.sum() == 4 and not part.complete
    assert np.isnan(part.loss[~part.done]).all()
    seen = []
    resumed = make(trained_cnn, digits_small, path, progress=lambda d, t: seen.append(d))
    assert seen[0] == 4 and seen[-1] == 12
    np.testing.assert_array_equal(resumed.loss, full.loss)
    np.testing.assert_array_equal(load_surface(str(path)).acc, full.acc)
    runs = json.loads(load_surface(str(path)).attrs["runs"])
    assert [r["points"] for r in runs] == [4, 8]


def test_rerun_of_complete_file_computes_nothing(tmp_path, trained_cnn, digits_small):
    path = tmp_path / "s.h5"
    make(trained_cnn, digits_small, path)
    again = make(trained_cnn, digits_small, path)
    assert again.attrs["last_run"]["points"] == 0 and again.complete


def test_different_settings_refused_unless_overwrite(tmp_path, trained_cnn, digits_small):
    path = tmp_path / "s.h5"
    make(trained_cnn, digits_small, path)
    before = path.read_bytes()
    other_loss = lambda o, t: torch.nn.functional.cross_entropy(o, t, reduction="none")  # noqa: E731
    for kw in ({"grid": "-2:2:4"}, {"direction_spec": DirectionSpec(seed=9)}, {"loss": other_loss}):
        with pytest.raises(SurfaceFileError, match="different settings") as e:
            make(trained_cnn, digits_small, path, **kw)
        assert "--overwrite" in str(e.value)
    assert path.read_bytes() == before
    surf = make(trained_cnn, digits_small, path, grid="-2:2:4", overwrite=True)
    assert surf.complete and load_surface(str(path)).attrs["x"] == "-2:2:4"


@pytest.mark.cpu_bf16
def test_precision_decides_identity_and_older_fp32_files_resume(tmp_path, trained_cnn, digits_small):
    path = tmp_path / "s.h5"
    make(trained_cnn, digits_small, path, grid="-1:1:3", y=None, eval_spec=EvalSpec(strategy="loop", points_per_call=1))
    with h5py.File(path, "r+") as f:  # as an older file: no precision key; and a null one is the same
        identity = json.loads(f.attrs["identity"])
        assert "precision" not in identity
        identity["precision"] = None
        f.attrs["identity"] = json.dumps(identity, sort_keys=True)
        f["done"][1:] = 0
    surf = make(trained_cnn, digits_small, path, grid="-1:1:3", y=None)  # resumes at fp32
    assert surf.complete
    with h5py.File(path, "r+") as f:
        f["done"][2] = 0
    with pytest.raises(SurfaceFileError, match="differing: precision"):
        make(trained_cnn, digits_small, path, grid="-1:1:3", y=None,
             eval_spec=EvalSpec(strategy="loop", precision="bf16"))


@pytest.mark.cpu_bf16
def test_a_failing_precision_check_keeps_the_points_and_says_why(tmp_path, trained_cnn, digits_small, monkeypatch):
    from lossgrid.surface import checks as setup_module

    class Broken(setup_module.TorchRunner):
        def evaluate_points(self, coeffs):
            raise RuntimeError("CUDA out of memory (simulated, in the fp32 check)")

    monkeypatch.setattr(setup_module, "TorchRunner", Broken)
    path = tmp_path / "s.h5"
    surf = make(trained_cnn, digits_small, path, grid="-1:1:3", y=None, eval_spec=EvalSpec(strategy="static",
                                                                                         precision="bf16"))
    assert surf.complete and load_surface(str(path)).done.all()
    with h5py.File(path) as f:
        check = json.loads(f.attrs["runs"])[-1]["precision_check"]
    assert check["precision"] == "bf16" and "out of memory" in check["error"]


def test_corrupt_file_is_reported_and_kept(tmp_path, trained_cnn, digits_small):
    path = tmp_path / "s.h5"
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(SurfaceFileError, match="is not an HDF5 file"):
        make(trained_cnn, digits_small, path)
    assert path.read_bytes() == b"garbage" * 100
    with pytest.raises(SurfaceFileError):
        load_surface(str(path))


def test_unwritable_output(tmp_path, trained_cnn, digits_small):
    with pytest.raises(SurfaceFileError, match="does not exist"):
        make(trained_cnn, digits_small, tmp_path / "no" / "s.h5")
    with pytest.raises(SurfaceFileError, match="directory"):
        make(trained_cnn, digits_small, tmp_path)


def _done_count(path):
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f["done"][...].sum())
    except (OSError, KeyError):
        return 0


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    """A real kill -9 in the middle of a CLI run, then the same command again (in CI the fault
    injection test does this at random moments: tests/surface/test_fault_injection.py)."""
    ckpt = tmp_path / "net.pt"
    from tests.conftest import trained_small_cnn

    torch.save(trained_small_cnn(30).state_dict(), ckpt)
    conftest = os.path.join(os.path.dirname(__file__), "..", "conftest.py")
    args = ["--model", f"{conftest}:small_cnn", "--checkpoint", str(ckpt), "--data", "digits",
            "--x=-1:1:12", "--y=-1:1:12", "--strategy", "loop", "--points-per-call", "2", "-q"]
    env = {**os.environ, "LOSSGRID_NO_MALLOC_TUNING": "1"}
    cmd = [sys.executable, "-m", "lossgrid.cli", "surface", *args]
    killed = tmp_path / "killed.h5"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env)
    deadline = time.time() + 120
    while _done_count(killed) < 10 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _done_count(killed)
    assert 10 <= partial < 144, partial
    subprocess.run([*cmd, "--out", str(killed)], env=env, check=True)
    full = tmp_path / "full.h5"
    subprocess.run([*cmd, "--out", str(full)], env=env, check=True)
    a, b = load_surface(str(killed)), load_surface(str(full))
    assert a.complete and b.complete
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.acc, b.acc)


# -- property-based: any sequence of chunks, interrupted and resumed, ends in the same file ----------
@st.composite
def _plans(draw):
    shape = draw(st.sampled_from([(5,), (1,), (3, 4), (4, 1), (2, 7)]))
    n = int(np.prod(shape))
    order = draw(st.permutations(range(n)))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, n - 1)), max_size=n)))
    chunks = [list(order[a:b]) for a, b in zip([0, *cuts], [*cuts, n]) if b > a]
    stops = draw(st.sets(st.integers(0, len(chunks)), max_size=3))  # close the file (a crash) before these chunks
    finish = draw(st.booleans())
    return shape, chunks, stops, finish


@settings(max_examples=60, deadline=None)
@given(_plans())
def test_write_resume_cycle(plan):
    import tempfile

    shape, chunks, stops, finish = plan
    xs = np.linspace(-1, 1, shape[0])
    ys = np.linspace(-1, 1, shape[1]) if len(shape) == 2 else None
    values = np.random.RandomState(len(chunks)).randn(*shape)
    identity = {"k": "v", "shape": list(shape)}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.h5")
        writer = SurfaceWriter(path, xs, ys, identity, {}, None)
        for i, chunk in enumerate(chunks):
            if i in stops:  # interrupted: closed without finishing, then resumed
                writer.close()
                writer = SurfaceWriter(path, xs, ys, identity, {}, None)
                assert writer.resumed
            flat = np.array(chunk)
            idx = np.unravel_index(flat, shape)
            writer.write(flat, values[idx], values[idx] * 2)
        if finish:
            writer.finish({"points": len(chunks), "seconds": 0.1})
        else:
            writer.close()
        s = load_surface(path)
        assert s.complete and s.writer is None
        np.testing.assert_array_equal(s.loss, values)
        np.testing.assert_array_equal(s.acc, values * 2)
        assert sorted(os.listdir(d)) == ["s.h5"]
