"""Sharded surfaces (``--nproc``, torchrun): bit-identical to one process, dynamic claiming
with a slow rank and an odd number of chunks, a killed rank resumed from the file."""

from __future__ import annotations

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

from lossgrid import load_surface

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "LOSSGRID_NO_MALLOC_TUNING": "1"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from tests.surface._dist_model import RankModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "net.pt"
    torch.save(RankModel().state_dict(), path)
    return str(path)


def surface_args(ckpt: str, out, *extra: str) -> list[str]:
    return ["surface", "--model", "tests.surface._dist_model:make", "--checkpoint", ckpt, "--data", "digits",
            "--samples", "120", "--x=-1:1:7", "--y=-1:1:5", "--strategy", "loop", "--points-per-call", "3",
            "--out", str(out), "-q", *extra]


def lossgrid(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lossgrid", *args], cwd=ROOT, env=env or ENV, timeout=timeout,
                          capture_output=True, text=True)


def arrays(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in ("train_loss", "train_acc", "train_loss_se", "done")}


def last_run(path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["runs"])[-1]


@pytest.fixture(scope="module")
def single(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "s.h5"
    r = lossgrid(*surface_args(ckpt, out))
    assert r.returncode == 0, r.stderr
    return arrays(out)


def test_torchrun_launches_the_same_job(ckpt, single, tmp_path) -> None:
    out = tmp_path / "s.h5"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "lossgrid", *surface_args(ckpt, out)], cwd=ROOT, env=ENV, timeout=240,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name, values in arrays(out).items():
        np.testing.assert_array_equal(values, single[name], err_msg=name)


def kill_rank1_after(out, pids, points: int) -> None:
    """SIGKILL rank 1 once the surface file holds ``points`` points."""
    deadline = time.time() + 180
    while time.time() < deadline:
        if out.exists() and (pids / "rank1").exists():
            try:
                if load_surface(str(out)).done.sum() >= points:
                    break
            except Exception:  # the file is being created
                pass
        time.sleep(0.05)
    os.kill(int((pids / "rank1").read_text()), signal.SIGKILL)  # a worker dies mid-run


def test_killing_a_rank_mid_run_then_resuming_with_a_slow_rank(ckpt, single, tmp_path) -> None:
    out, pids = tmp_path / "s.h5", tmp_path / "pids"
    pids.mkdir()
    env = {**ENV, "LOSSGRID_TEST_SLOW_RANK": "all", "LOSSGRID_TEST_SLEEP": "0.2", "LOSSGRID_TEST_PIDS": str(pids)}
    proc = subprocess.Popen([sys.executable, "-m", "lossgrid", *surface_args(ckpt, out, "--nproc", "2")], cwd=ROOT,
                            env=env, stderr=subprocess.PIPE, text=True)
    kill_rank1_after(out, pids, points=6)  # a worker dies mid-run
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    part = load_surface(str(out))
    assert 6 <= part.done.sum() < part.done.size, err
    np.testing.assert_array_equal(part.loss[part.done], single["train_loss"][part.done])  # saved points are whole
    # the same command resumes the file, now with rank 1 slow: two processes equal one bit for bit
    env = {**ENV, "LOSSGRID_TEST_SLOW_RANK": "1", "LOSSGRID_TEST_SLEEP": "0.15"}
    r = lossgrid(*surface_args(ckpt, out, "--nproc", "2", "--json"), env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["processes"] == 2
    for name, values in arrays(out).items():
        np.testing.assert_array_equal(values, single[name], err_msg=name)  # 35 points in chunks of 3 (odd)
    run = last_run(out)
    chunks = run["chunks_by_rank"]
    assert run["processes"] == 2 and 3 * sum(chunks.values()) >= part.done.size - part.done.sum()
    assert chunks.get("0", 0) > 2 * chunks.get("1", 0)  # chunks are claimed: the fast rank took most of the work


@pytest.mark.slow
def test_torchrun_elastic_restart_resumes_after_a_killed_rank(ckpt, single, tmp_path) -> None:
    out, pids = tmp_path / "s.h5", tmp_path / "pids"
    pids.mkdir()
    env = {**ENV, "LOSSGRID_TEST_SLOW_RANK": "all", "LOSSGRID_TEST_SLEEP": "0.2", "LOSSGRID_TEST_PIDS": str(pids)}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "--max-restarts", "1", "-m", "lossgrid", *surface_args(ckpt, out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_rank1_after(out, pids, points=6)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]  # torchrun restarted the ranks; they resumed the file
    for name, values in arrays(out).items():
        np.testing.assert_array_equal(values, single[name], err_msg=name)


def test_the_slurm_example_is_valid(tmp_path) -> None:
    import shlex

    from lossgrid.cli.surface import surface

    script = os.path.join(ROOT, "docs", "slurm-surface.sbatch")
    subprocess.run(["bash", "-n", script], check=True)  # shell syntax
    text = open(script).read().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("srun torchrun"))
    words = shlex.split(line)
    assert words[:2] == ["srun", "torchrun"] and "--max-restarts" in words
    args = words[words.index("lossgrid") + 2:]  # after "-m lossgrid surface"
    ctx = surface.make_context("surface", args)  # every option of the example parses
    assert ctx.params["device"] == "cuda" and ctx.params["out"] == "surface.h5"


@pytest.mark.slow
def test_adaptive_and_a_repeat_summary_shard_like_one_process(ckpt, tmp_path) -> None:
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    extra = ["--adaptive", "--adaptive-coarse", "2"]
    assert lossgrid(*surface_args(ckpt, one, *extra)).returncode == 0
    r = lossgrid(*surface_args(ckpt, two, *extra, "--nproc", "2"))
    assert r.returncode == 0, r.stderr
    with h5py.File(one, "r") as a, h5py.File(two, "r") as b:
        for name in ("train_loss", "done", "interpolated"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


@pytest.mark.slow
def test_anchors_shard_like_one_process(ckpt, tmp_path) -> None:
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    extra = ["--anchor-stride", "3"]  # anchors at x 0, 3, 6 and y 0, 3, 4: 9 of 35 points
    assert lossgrid(*surface_args(ckpt, one, *extra)).returncode == 0
    r = lossgrid(*surface_args(ckpt, two, *extra, "--nproc", "2"))
    assert r.returncode == 0, r.stderr
    a, b = arrays(one), arrays(two)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert (b["train_loss_se"] == 0).sum() == 9 and b["done"].all()


@pytest.mark.slow
def test_anchored_adaptive_grids_shard_like_one_process(ckpt, tmp_path) -> None:
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    extra = ["--x=-1:1:9", "--y=-1:1:9", "--anchor-stride", "4", "--adaptive"]  # anchors at 0, 4, 8 per axis
    assert lossgrid(*surface_args(ckpt, one, *extra)).returncode == 0
    r = lossgrid(*surface_args(ckpt, two, *extra, "--nproc", "2"))
    assert r.returncode == 0, r.stderr
    with h5py.File(one, "r") as a, h5py.File(two, "r") as b:
        for name in ("train_loss", "train_loss_se", "done", "interpolated"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        assert (b["train_loss_se"][()][b["done"][()].astype(bool)] == 0).sum() == 9
    assert last_run(two)["adaptive"]["finished"] and last_run(two)["processes"] == 2


def test_ranks_with_different_weights_are_refused(tmp_path) -> None:
    r = lossgrid("surface", "--model", "lossgrid.zoo:mlp_digits", "--data", "digits", "--samples", "50",
                 "--x=-1:1:3", "--nproc", "2", "--out", str(tmp_path / "s.h5"), "-q")
    assert r.returncode != 0 and "holds other weights than rank 0" in r.stderr
    assert "Traceback" not in r.stderr
