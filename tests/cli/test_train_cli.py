"""``lossgrid train`` end to end: records, refusals, exit codes, and the trajectory of its checkpoints."""

import json
import os

import pytest
from click.testing import CliRunner

from lossgrid.cli.group import cli

CONFTEST = os.path.join(os.path.dirname(__file__), "..", "conftest.py")
MODEL = f"{CONFTEST}:small_cnn"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def train_args(out, *more):
    return ["train", "--model", MODEL, "--data", "digits:train", "--samples", "200", "--epochs", "3",
            "--batch-size", "50", "--lr", "0.05", "--out", out, "-q", *more]


def test_train_json_files_and_trajectory(tmp_path):
    out = tmp_path / "run"
    r = run(*train_args(out, "--test-data", "digits:test", "--milestones", "0.5", "--json"))
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert [h["lr"] for h in s["history"]] == pytest.approx([0.05, 0.05, 0.005])
    assert s["complete"] and s["recipe"]["batch_size"] == 50 and "test_acc" in s["history"][-1]
    assert s["data"].startswith("digits:train (200 of")
    assert sorted(os.listdir(out)) == ["final.pt", "model_0.pt", "model_1.pt", "model_2.pt", "model_3.pt",
                                       "train.json"]
    assert json.loads((out / "train.json").read_text())["model_spec"] == MODEL
    traj = tmp_path / "traj.h5"
    r = run("trajectory", "--model", MODEL, "--checkpoints", out / "model_*.pt", "--out", traj, "-q", "--json")
    assert r.exit_code == 0, r.output
    t = json.loads(r.output)
    assert t["checkpoints"] == 4 and t["final"].endswith("model_3.pt")


def test_text_output_refusal_and_overwrite(tmp_path):
    out = tmp_path / "run"
    r = run(*train_args(out, "--save-every", "2"))
    assert r.exit_code == 0, r.output
    assert "trained" in r.output and "lossgrid trajectory --model" in r.output
    assert sorted(os.listdir(out)) == ["final.pt", "model_0.pt", "model_2.pt", "model_3.pt", "train.json"]
    r = run(*train_args(out))
    assert r.exit_code == 1 and "already holds a training run" in r.output and "--overwrite" in r.output
    assert "Traceback" not in r.output
    r = run(*train_args(out, "--overwrite", "--epochs", "1"))
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(out)) == ["final.pt", "model_0.pt", "model_1.pt", "train.json"]


@pytest.mark.parametrize("more, code, text", [
    (["--milestones", "0.5,abc"], 2, "fractions"),
    (["--milestones", "0.75,0.5"], 2, "increasing"),
    (["--milestones", "1.5"], 2, "increasing"),
    (["--lr", "0"], 2, "--lr"),
    (["--augment"], 1, "32x32"),
    (["--device", "tpu"], 2, "not a device lossgrid runs on"),
])
def test_bad_options(tmp_path, more, code, text):
    r = run(*train_args(tmp_path / "run", *more))
    assert r.exit_code == code and text in r.output, r.output
    assert "Traceback" not in r.output


def test_zoo_name_as_model_with_augmentation(tmp_path):
    out = tmp_path / "run"
    r = run("train", "--model", "resnet20", "--data", "synthetic:3x32x32:32", "--epochs", "1", "--batch-size", "16",
            "--augment", "--out", out, "-q", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["model"] == "resnet20" and s["recipe"]["augment"] and len(s["history"]) == 1


def test_help():
    for command in ("train", "gallery"):
        r = run(command, "--help")
        assert r.exit_code == 0 and "Example" in r.output
