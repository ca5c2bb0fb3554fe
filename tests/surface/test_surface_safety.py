"""The surface file under stress: one writer, readers during a run, --overwrite
that keeps the old file, full disks, I/O errors, signals at any moment."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from lossgrid.config import EvalSpec, GridSpec
from lossgrid.engine.lock import WriterLock, lock_holder
from lossgrid.errors import SurfaceFileError
from lossgrid.surface.compute import compute_surface
from lossgrid.surface.file import RUNS_CAPACITY, SurfaceWriter, load_surface, read_runs

CONFTEST = os.path.join(os.path.dirname(__file__), "..", "conftest.py")
LOOP = EvalSpec(strategy="loop", points_per_call=2, batch_size=64)
ENV = {**os.environ, "LOSSGRID_NO_MALLOC_TUNING": "1"}


def make(model, data, path, grid="-1:1:4", y="-1:1:3", **kw):
    kw.setdefault("eval_spec", LOOP)
    return compute_surface(model, data, GridSpec.parse(grid, y), path, **kw)


class Stop(Exception):
    pass


def stop_at(call: int):
    calls = []

    def progress(done, total):
        calls.append(done)
        if len(calls) == call:
            raise Stop

    return progress


def test_second_writer_is_refused_naming_the_holder(tmp_path, trained_cnn, digits_small):
    path = tmp_path / "s.h5"
    with WriterLock(path):
        for overwrite in (False, True):
            with pytest.raises(SurfaceFileError, match="being written by another run") as e:
                make(trained_cnn, digits_small, path, overwrite=overwrite)
            assert f"process {os.getpid()}" in str(e.value) and "--overwrite" not in str(e.value)
    assert not path.exists() and not os.path.exists(f"{path}.lock")
    make(trained_cnn, digits_small, path)  # the lock is gone with its holder
    assert lock_holder(path) is None and load_surface(path).complete


def test_lock_of_a_dead_process_does_not_block(tmp_path, trained_cnn, digits_small):
    path = tmp_path / "s.h5"
    # a lock file left by a killed run: nobody holds the flock
    (tmp_path / "s.h5.lock").write_text('{"pid": 999999, "host": "gone"}')
    assert lock_holder(path) is None
    assert make(trained_cnn, digits_small, path).complete


def test_file_system_without_locks_runs_with_a_warning(tmp_path, trained_cnn, digits_small, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert make(trained_cnn, digits_small, tmp_path / "s.h5").complete
    assert "cannot refuse a second run" in caplog.text


def test_overwrite_keeps_the_old_file_until_the_new_one_has_results(tmp_path, trained_cnn, digits_small):
    path = tmp_path / "s.h5"
    make(trained_cnn, digits_small, path)
    before = path.read_bytes()
    with pytest.raises(Stop):  # interrupted before the first chunk of the new surface
        make(trained_cnn, digits_small, path, grid="-2:2:4", overwrite=True, progress=stop_at(1))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["s.h5"]  # no partial file, no lock file left
    with pytest.raises(Stop):  # after the first chunk: the new file has taken the old one's place
        make(trained_cnn, digits_small, path, grid="-2:2:4", overwrite=True, progress=stop_at(2))
    new = load_surface(path)
    assert new.attrs["x"] == "-2:2:4" and new.done.sum() == 2
    resumed = make(trained_cnn, digits_small, path, grid="-2:2:4", overwrite=True)  # same settings: resumed
    assert resumed.attrs["last_run"]["points"] == 10 and resumed.complete


def test_reader_during_a_run_sees_a_consistent_snapshot(tmp_path, trained_cnn, digits_small):
    path = tmp_path / "s.h5"
    seen = []

    def progress(done, total):
        if done:
            snap = load_surface(path)  # the writer has it open in this very process
            assert snap.writer is not None and snap.writer["pid"] == os.getpid()
            seen.append(int(snap.done.sum()))
            assert np.isfinite(snap.loss[snap.done]).all() and np.isnan(snap.loss[~snap.done]).all()

    make(trained_cnn, digits_small, path, progress=progress)
    assert seen == [2, 4, 6, 8, 10, 12]
    assert load_surface(path).writer is None


def _cli(*args):
    return [sys.executable, "-m", "lossgrid.cli", *map(str, args)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from tests.conftest import trained_small_cnn

    path = tmp_path_factory.mktemp("ck") / "net.pt"
    torch.save(trained_small_cnn(30).state_dict(), path)
    return path


def surface_cmd(ckpt, out, *extra):
    return _cli("surface", "--model", f"{CONFTEST}:small_cnn", "--checkpoint", ckpt, "--data", "digits",
                "--samples", "600", "--x=-1:1:16", "--y=-1:1:16", "--strategy", "loop", "--points-per-call", "1",
                "--out", out, "-q", *extra)


def _wait_for_points(path, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path) and lock_holder(path):
            try:
                if load_surface(path).done.sum() >= n:
                    return
            except SurfaceFileError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"no {n} points in {path}")


def slow_loss(folder, seconds: float) -> str:
    """A ``--loss`` that takes ``seconds`` per batch (one batch a point here): a run lasts long enough
    for a test to act on it mid-run, whatever the machine's speed."""
    path = folder / "slow.py"
    path.write_text(f"import time, torch.nn.functional as F\ndef loss(out, y):\n    time.sleep({seconds})\n"
                    "    return F.cross_entropy(out, y, reduction='none')\n")
    return f"{path}:loss"


def test_two_processes_one_file(tmp_path, ckpt):
    out = tmp_path / "s.h5"
    cmd = surface_cmd(ckpt, out, "--loss", slow_loss(tmp_path, 0.1))  # the first run is still writing
    first = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_points(out, 3, first)
        first.send_signal(signal.SIGSTOP)  # held mid-run, alive and holding its lock, however slow the checks
        for extra in ((), ("--overwrite",)):
            r = subprocess.run([*cmd, *extra], env=ENV, capture_output=True, text=True, timeout=120)
            assert r.returncode == 1, r.stderr
            assert f"process {first.pid}" in r.stderr and "Traceback" not in r.stderr
        png = tmp_path / "p.png"
        r = subprocess.run(_cli("plot", out, "--out", png), env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "being written by process" in r.stderr and png.stat().st_size > 1000, r.stderr
        assert first.poll() is None, "the first run ended too early for this test"
    finally:
        first.send_signal(signal.SIGTERM)
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 1 and "Stopped by SIGTERM" in err, err
    part = load_surface(out)
    assert part.done.sum() >= 3 and part.writer is None and len(read_runs(h5py.File(out, "r").attrs)) == 1


def _limit_file_size(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_leaves_old_files_and_no_debris(tmp_path, ckpt):
    """RLIMIT_FSIZE makes every write past 40 kB fail as a full disk would (EFBIG instead of ENOSPC)."""
    out = tmp_path / "s.h5"
    r = subprocess.run(surface_cmd(ckpt, out), env=ENV, capture_output=True, text=True, timeout=120,
                       preexec_fn=_limit_file_size(40_000))
    assert r.returncode == 1 and "Cannot create surface file" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.returncode != -signal.SIGSEGV
    assert sorted(os.listdir(tmp_path)) == []
    small = tmp_path / "small.h5"
    subprocess.run(_cli("surface", "--model", f"{CONFTEST}:small_cnn", "--checkpoint", ckpt, "--samples", "50",
                        "--x=-1:1:3", "--out", small, "-q"), env=ENV, check=True, timeout=120)
    before = small.read_bytes()
    r = subprocess.run(surface_cmd(ckpt, small, "--overwrite"), env=ENV, capture_output=True, text=True,
                       timeout=120, preexec_fn=_limit_file_size(40_000))
    assert r.returncode == 1 and "Cannot create surface file" in r.stderr, r.stderr
    assert small.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["small.h5"]
    r = subprocess.run(_cli("plot", small, "--out", tmp_path / "p.png"), env=ENV, capture_output=True, text=True,
                       timeout=120, preexec_fn=_limit_file_size(2_000))
    assert r.returncode == 1 and "Cannot write plot" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["small.h5"]


def test_io_error_mid_run_keeps_the_file_resumable(tmp_path, trained_cnn, digits_small, monkeypatch):
    full = make(trained_cnn, digits_small, tmp_path / "full.h5")
    path = tmp_path / "s.h5"
    original = h5py.Dataset.__setitem__
    calls = []

    def failing(self, key, value):
        calls.append(1)
        if len(calls) > 7:  # some chunks in, the disk fails
            raise OSError(28, "No space left on device")
        return original(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", failing)
    with pytest.raises(SurfaceFileError, match="No space left on device.*run the same command again"):
        make(trained_cnn, digits_small, path)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", original)
    part = load_surface(path)
    assert 0 < part.done.sum() < part.done.size and lock_holder(path) is None
    resumed = make(trained_cnn, digits_small, path)
    np.testing.assert_array_equal(resumed.loss, full.loss)


def test_runs_log_is_rewritten_in_place(tmp_path, trained_cnn, digits_small):
    path = tmp_path / "s.h5"
    with pytest.raises(Stop):
        make(trained_cnn, digits_small, path, progress=stop_at(2))
    size = path.stat().st_size
    for _ in range(5):
        with pytest.raises(Stop):
            make(trained_cnn, digits_small, path, progress=stop_at(2))
    assert path.stat().st_size == size  # no file structure was added by six runs' logs
    runs = read_runs(h5py.File(path, "r").attrs)
    assert len(runs) == 6 and all(r["points"] == 2 for r in runs)
    with h5py.File(path, "r") as f:
        assert f.attrs.get_id("runs").dtype.itemsize == RUNS_CAPACITY


def test_runs_log_beyond_capacity_keeps_first_and_latest(tmp_path):
    path = tmp_path / "s.h5"
    writer = SurfaceWriter(path, np.arange(3.0), None, {"a": 1}, {}, None)
    try:
        from lossgrid.surface.file import write_runs

        runs = [{"i": i, "note": "x" * 500} for i in range(100)]
        write_runs(writer.f, runs)
        kept = read_runs(writer.f.attrs)
    finally:
        writer.close()
    assert kept[0]["i"] == 0 and kept[-1]["i"] == 99 and kept[1]["omitted_runs"] > 0
    assert kept[1]["omitted_runs"] + len(kept) - 1 == 100


def ctrl_c_as_in_a_terminal() -> None:
    """In the child: SIGINT handled as in a terminal. A test run started in the background by a shell
    (as `make test` starts half the suite) inherits SIGINT ignored, which Python then leaves ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig,code,delay", [(signal.SIGINT, 130, 0.6), (signal.SIGTERM, 1, 1.2),
                                            pytest.param(signal.SIGTERM, 1, 0.6, marks=pytest.mark.slow),
                                            pytest.param(signal.SIGINT, 130, 1.2, marks=pytest.mark.slow)])
def test_signals_during_start_up(tmp_path, ckpt, sig, code, delay):
    """Ctrl-C or SIGTERM while torch is still being imported: a message, no traceback, the right code."""
    proc = subprocess.Popen(surface_cmd(ckpt, tmp_path / "s.h5"), env=ENV, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_in_a_terminal)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert proc.returncode == code, err
    assert "Traceback" not in err and ("Interrupted" in err or "Stopped by SIGTERM" in err), err


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 1, marks=pytest.mark.slow)])
def test_signal_mid_run_leaves_a_resumable_file(tmp_path, ckpt, sig, code):
    out = tmp_path / "s.h5"
    # 64 points (the last --x and --y count): at least 1.2 s of run after the fifth point
    cmd = surface_cmd(ckpt, out, "--loss", slow_loss(tmp_path, 0.02), "--x=-1:1:8", "--y=-1:1:8")
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_as_in_a_terminal)
    _wait_for_points(out, 5, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in err and "run the same command again" in err, err
    part = load_surface(out)
    assert 5 <= part.done.sum() < part.done.size and part.writer is None
    assert read_runs(h5py.File(out, "r").attrs)[-1]["points"] == int(part.done.sum())
    subprocess.run(cmd, env=ENV, check=True, timeout=300)
    assert load_surface(out).complete
