"""``lossgrid trajectory`` and ``lossgrid plot --trajectory`` end to end."""

import json

import pytest
from click.testing import CliRunner

from lossgrid.cli.group import LossgridGroup
from lossgrid.cli.plot import plot
from lossgrid.cli.surface import surface
from lossgrid.cli.trajectory import trajectory
from lossgrid.surface.file import load_surface
from tests.trajectory.test_trajectory import train_run

MODEL = "lossgrid.zoo:mlp_digits"
# the commands under the real group's error handling (LossgridError -> exit 1 with the hint)
cli = LossgridGroup(name="lossgrid", commands={c.name: c for c in (trajectory, surface, plot)})


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    directory = tmp_path_factory.mktemp("run")
    train_run(directory, epochs=6)
    return directory


def test_trajectory_surface_and_overlay(checkpoints, tmp_path):
    traj = tmp_path / "traj.h5"
    r = run("trajectory", "--model", MODEL, "--checkpoints", checkpoints / "epoch_*.pt", "--out", traj, "-q",
            "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["checkpoints"] == 6 and s["final"].endswith("epoch_6.pt") and s["coords"][-1] == [0.0, 0.0]
    assert "--dir-file" in s["surface_command"] and "--xnorm none" in s["surface_command"]
    r = run("trajectory", "--model", MODEL, "--checkpoints", checkpoints / "epoch_*.pt", "--out", traj, "-q")
    assert r.exit_code == 1 and "exists" in r.output and "--overwrite" in r.output  # surfaces may use its axes
    r = run("trajectory", "--model", MODEL, "--checkpoints", checkpoints / "epoch_*.pt", "--out", traj, "-q",
            "--overwrite")
    assert r.exit_code == 0, r.output
    assert "explained variance: PC1" in r.output and "suggested grid: --x=" in r.output
    assert "lossgrid surface --model" in r.output and "lossgrid plot surface.h5 --trajectory" in r.output
    # the surface on the plane, from the suggested grid (coarse here)
    out = tmp_path / "s.h5"
    x, y = s["x"].rsplit(":", 1)[0] + ":5", s["y"].rsplit(":", 1)[0] + ":5"
    common = ["--data", "digits:test", "--samples", "100"]
    r = run("surface", "--model", MODEL, "--checkpoint", s["final"], "--dir-file", traj, f"--x={x}", f"--y={y}",
            "--xnorm", "none", *common, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert load_surface(str(out)).attrs["kind"] == "pca"
    png = tmp_path / "path.png"
    r = run("plot", out, "--trajectory", traj, "--out", png)  # without losses
    assert r.exit_code == 0, r.output
    assert png.stat().st_size > 5000
    r = run("plot", out, "--trajectory", traj, "--model", MODEL, *common, "--out", png, "--kind", "contourf")
    assert r.exit_code == 0, r.output
    assert "path loss: 1:" in r.output and "-> 6:" in r.output
    r = run("plot", out, "--trajectory", traj, "--model", MODEL, "--data", "digits:test", "--out", png)
    assert r.exit_code == 1 and "another data" in r.output  # not the surface's 100 samples
    r = run("plot", out, "--trajectory", traj, "--model", MODEL, "--out", png)
    assert r.exit_code == 2 and "--data" in r.output
    r = run("plot", out, "--trajectory", traj, "--out", traj)
    assert r.exit_code == 1 and "same file" in r.output


def test_a_surface_on_other_directions_is_refused(checkpoints, tmp_path):
    traj = tmp_path / "traj.h5"
    assert run("trajectory", "--model", MODEL, "--checkpoints", checkpoints / "epoch_*.pt", "--out", traj,
               "-q").exit_code == 0
    out = tmp_path / "random.h5"
    r = run("surface", "--model", MODEL, "--checkpoint", checkpoints / "epoch_6.pt", "--x=-1:1:3", "--y=-1:1:3",
            "--data", "digits:test", "--samples", "50", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    r = run("plot", out, "--trajectory", traj, "--out", tmp_path / "p.png")
    assert r.exit_code == 1 and "different directions" in r.output and "Hint:" in r.output


def test_bad_globs_and_outputs(checkpoints, tmp_path):
    r = run("trajectory", "--model", MODEL, "--checkpoints", tmp_path / "nope_*.pt", "--out", tmp_path / "t.h5")
    assert r.exit_code == 1 and "No checkpoint file matches" in r.output and "Hint: quote the glob" in r.output
    r = run("trajectory", "--model", MODEL, "--checkpoints", checkpoints / "epoch_*.pt",
            "--out", checkpoints / "epoch_3.pt")
    assert r.exit_code == 1 and "same file" in r.output
    r = run("trajectory", "--model", MODEL, "--checkpoints", checkpoints / "epoch_1.pt", "--out", tmp_path / "t.h5")
    assert r.exit_code == 1 and "cannot span a plane" in r.output
    r = run("trajectory", "--model", MODEL, "--out", tmp_path / "t.h5")
    assert r.exit_code == 2 and "--checkpoints" in r.output
    assert run("trajectory", "--help").exit_code == 0
