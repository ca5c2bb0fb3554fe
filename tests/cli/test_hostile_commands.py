"""Hostile inputs against every command, class by class (tests/cli/test_hostile.py holds surface's,
plot's and export's battery).

Every case asserts the exit code (2: a bad option, named; 1: an error with what, why and how),
a message without a traceback, and that no file of the user's changed (SHA-256 of every file in
the work directory before and after). Cases with a named pipe carry a timeout: a loader that
opened it would block forever.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from lossgrid.cli.group import cli

M = "lossgrid.zoo:mlp_digits"
DATA = ["--data", "digits", "--samples", "40"]
USER_CODE = '''
import sys
import torch


class NoParameters(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10]


def no_parameters():
    return NoParameters()


def exits():
    sys.exit(0)


def exiting_batch(data):
    sys.exit(3)


def three_values(outputs, targets):
    return torch.ones(3)
'''


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A directory of the user's files: a checkpoint, a named pipe, user code, earlier results, and a
    run whose checkpoint names hold characters that look like digits."""
    from lossgrid.zoo import mlp_digits

    d = tmp_path_factory.mktemp("hostile_commands")
    (d / "scratch").mkdir()  # where a command may write (never compared)
    torch.manual_seed(0)
    torch.save(mlp_digits().state_dict(), d / "ck.pt")
    os.mkfifo(d / "fifo.pt")
    (d / "user.py").write_text(USER_CODE)
    (d / "run").mkdir()
    for i, name in enumerate(("ck_e1²2.pt", "ck_e3.pt", "ck_e٣4.pt")):
        torch.manual_seed(i)
        torch.save(mlp_digits().state_dict(), d / "run" / name)
    for folder, files in (("trained", ("model_0.pt", "train.json")), ("demo", ("model.pt", "surface.h5")),
                          ("gallery", ("gallery.json", "index.html"))):
        (d / folder).mkdir()
        for name in files:
            (d / folder / name).write_bytes(b"an earlier result: " + name.encode())
    for name in ("report.json", "plot.png", "traj.h5"):
        (d / name).write_bytes(b"an earlier result")
    os.mkfifo(d / "fifo.json")
    (d / "trained" / "final.pt").write_bytes(b"data the user keeps inside the run directory")
    return d


def _hashes(folder):
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            path = os.path.join(root, n)
            if os.path.isfile(path) and "scratch" not in path:
                out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def invoke(work, *args):
    before = _hashes(work)
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in r.output and not isinstance(r.exception, (OSError, ValueError, RuntimeError)), \
        (r.output, r.exception)
    assert _hashes(work) == before, "a file of the user's changed"
    return r


def _numbers(w):
    s = w / "scratch"
    return [
        (["train", "--model", M, *DATA, "--epochs", "1", "--out", s, "--lr", "nan"], "--lr"),
        (["train", "--model", M, *DATA, "--epochs", "1", "--out", s, "--momentum", "inf"], "--momentum"),
        (["train", "--model", M, *DATA, "--epochs", "1000000000", "--out", s], "--epochs"),
        (["surface", "--model", M, *DATA, "--x=-1:1:3", "--out", s / "s.h5", "--target-se", "nan"], "--target-se"),
        (["surface", "--model", M, *DATA, "--x=-1:1:3", "--out", s / "s.h5", "--nproc", "100000"], "--nproc"),
        (["surface", "--model", M, *DATA, "--x=-1:1:3", "--out", s / "s.h5", "--seed", str(2**64)], "--seed"),
        (["surface", "--model", M, *DATA, "--x=-1:1:3", "--out", s / "s.h5", "--points-per-call", "1000000000"],
         "--points-per-call"),
        (["surface", "--model", M, *DATA, "--x=-1:1:3", "--out", s / "s.h5", "--auto-budget", "inf"],
         "--auto-budget"),
        (["evolve", "--model", M, "--checkpoints", w / "ck.pt", *DATA, "--x=-1:1:3", "--out", s / "e.h5",
          "--fps", "nan"], "--fps"),
        (["evolve", "--model", M, "--checkpoints", w / "ck.pt", *DATA, "--x=-1:1:3", "--out", s / "e.h5",
          "--vmax", "inf"], "--vmax"),
        (["bench", "--model", M, *DATA, "--points", "1000000000"], "--points"),
        (["bench", "--model", M, *DATA, "--project", "1x1:1" + "0" * 400], "--project"),
        (["audit", "--model", M, *DATA, "--radius", "nan"], "--radius"),
        (["audit", "--model", M, *DATA, "--sharpness-radius", "-inf"], "--sharpness-radius"),
        (["hessian", "--model", M, *DATA, "--top-k", "1000000000"], "--top-k"),
        (["export", "--model", M, "--out", s / "m.onnx", "--tolerance", "nan"], "--tolerance"),
        (["demo", "--out", s, "--epochs", "1000000000"], "--epochs"),
        (["gallery", "--out", s, "--seeds", "1000000"], "--seeds"),
        (["train", "--model", M, *DATA, "--epochs", "1", "--out", s, "--lr", "1e300"], "--lr"),
        (["plot", w / "traj.h5", "--out", s / "p.png", "--levels", "1" + "0" * 20], "--levels"),
        (["bench", "--model", M, *DATA, "--device", "tpu"], "--device"),
        (["surface", "--model", M, *DATA, "--x=-1:1:3000", "--y=-1:1:3000", "--out", s / "s.h5"], "--x/--y"),
    ]


@pytest.mark.parametrize("case", range(22))
def test_numbers_that_are_not_finite_or_absurd_exit_2_naming_the_option(work, case):
    args, option = _numbers(work)[case]
    r = invoke(work, *args)
    assert r.exit_code == 2 and option in r.output, r.output
    assert os.listdir(work / "scratch") == []


def _occupied(w):
    return [
        ["train", "--model", M, *DATA, "--epochs", "1", "--out", w / "trained"],
        ["demo", "--out", w / "demo", "--epochs", "1"],
        ["gallery", "--out", w / "gallery", "--size", "ci"],
        ["trajectory", "--model", M, "--checkpoints", w / "run" / "*.pt", "--out", w / "traj.h5"],
        ["audit", "--model", M, *DATA, "--out", w / "report.json"],
        ["bench", "--model", M, *DATA, "--out", w / "report.json"],
        ["hessian", "--model", M, *DATA, "--out", w / "report.json"],
        ["hessian", "--model", M, *DATA, "--plot", w / "plot.png"],
        ["export", "--model", M, "--out", w / "ck.pt"],
        ["export", "--model", M, "--out", w / "traj.h5", "--overwrite"],  # not an export: never replaced
    ]


@pytest.mark.parametrize("case", range(10))
def test_earlier_results_are_refused_without_overwrite(work, case):
    r = invoke(work, *_occupied(work)[case])
    assert r.exit_code == 1 and "--overwrite" in r.output, r.output


@pytest.mark.parametrize("args", [
    ["hessian", "--model", M, *DATA, "--plot", "/proc/lossgrid-test.png"],
    ["audit", "--model", M, *DATA, "--out", "/proc/lossgrid-test.json"],
    ["bench", "--model", M, *DATA, "--out", "/sys/lossgrid-test.json"],
    ["train", "--model", M, *DATA, "--epochs", "1", "--out", "/proc/lossgrid-test"],
    ["demo", "--out", "/proc/lossgrid-test", "--epochs", "1"],
    ["gallery", "--out", "/proc/lossgrid-test", "--size", "ci"],
])
def test_unwritable_outputs_are_refused_before_any_work(work, args):
    r = invoke(work, *args)
    assert r.exit_code == 1 and "Cannot" in r.output and "trained" not in r.output, r.output


def _fifos(w):
    fifo = w / "fifo.pt"
    return [
        ["surface", "--model", M, "--checkpoint", fifo, *DATA, "--x=-1:1:3", "--out", w / "scratch" / "s.h5"],
        ["audit", "--model", M, "--checkpoint", fifo, *DATA],
        ["hessian", "--model", M, "--checkpoint", fifo, *DATA],
        ["bench", "--model", M, "--checkpoint", fifo, *DATA],
        ["train", "--model", M, "--data", f"npz:{fifo}", "--epochs", "1", "--out", w / "scratch"],
        ["evolve", "--model", M, "--checkpoints", fifo, *DATA, "--x=-1:1:3", "--out", w / "scratch" / "e.h5"],
        ["trajectory", "--model", M, "--checkpoints", fifo, "--checkpoints", w / "ck.pt",
         "--out", w / "scratch" / "t.h5"],
        ["plot", fifo, "--out", w / "scratch" / "p.png"],
        ["surface", "--model", f"{fifo}:make", *DATA, "--x=-1:1:3", "--out", w / "scratch" / "s.h5"],
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", range(9))
def test_named_pipes_as_inputs_are_refused_not_opened(work, case):
    r = invoke(work, *_fifos(work)[case])
    assert r.exit_code in (1, 2) and "not a regular file" in r.output, r.output


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [
    ["surface", "--model", M, *DATA, "--x=-1:1:3", "--out", "{w}/fifo.pt"],
    ["surface", "--model", M, *DATA, "--x=-1:1:3", "--out", "{w}/fifo.pt", "--overwrite"],
    ["audit", "--model", M, *DATA, "--out", "{w}/fifo.json", "--overwrite"],
    ["plot", "{w}/traj.h5", "--out", "{w}/fifo.json"],
    ["export", "--model", M, "--out", "{w}/fifo.pt", "--overwrite"],
])
def test_named_pipes_as_outputs_are_refused_never_replaced(work, args):
    r = invoke(work, *[str(a).format(w=work) for a in args])
    assert r.exit_code == 1 and "not a regular file" in r.output, r.output
    assert os.path.exists(work / "fifo.pt") and not os.path.isfile(work / "fifo.pt")


def test_an_input_inside_the_run_directory_is_never_written_over(work):
    r = invoke(work, "train", "--model", M, "--data", f"npz:{work / 'trained' / 'final.pt'}", "--epochs", "1",
               "--out", work / "trained", "--overwrite")
    assert r.exit_code == 1 and "a file the training run writes" in r.output, r.output


@pytest.mark.parametrize("loss,needle", [("token_cross_entropy:ignore=99999999999999999999999", "int64"),
                                         ("{user}:three_values", "shape (3,) for a batch of 4 samples")])
def test_losses_that_cannot_work_are_refused(work, loss, needle):
    r = invoke(work, "surface", "--model", M, *DATA, "--x=-1:1:3", "--out", work / "scratch" / "l.h5",
               "--loss", loss.format(user=work / "user.py"))
    assert r.exit_code == 1 and needle in r.output, r.output


@pytest.mark.parametrize("command", ["surface", "bench", "audit", "hessian", "train"])
def test_models_without_parameters_are_refused(work, command):
    args = [command, "--model", f"{work / 'user.py'}:no_parameters", *DATA]
    args += {"surface": ["--x=-1:1:3", "--out", work / "scratch" / "s.h5"], "train": ["--epochs", "1", "--out",
                                                                                     work / "scratch"]}.get(command, [])
    r = invoke(work, *args)
    assert r.exit_code == 1 and "no parameter" in r.output or "no trainable parameters" in r.output, r.output


def test_checkpoint_names_with_characters_like_digits(work, tmp_path):
    pattern = work / "run" / "*.pt"
    r = invoke(work, "trajectory", "--model", M, "--checkpoints", pattern, "--out", tmp_path / "t.h5", "--json", "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)  # numbers are ASCII digits: ² and ٣ are characters of the names
    assert summary["checkpoints"] == 3 and summary["first"].endswith("ck_e1²2.pt")
    assert summary["final"].endswith("ck_e٣4.pt")
    r = invoke(work, "evolve", "--model", M, "--checkpoints", pattern, *DATA, "--x=-1:1:3", "--out", tmp_path / "e.h5",
               "-q", "--json")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args", [
    ["surface", "--model", M, *DATA, "--batch", "{user}:exiting_batch", "--x=-1:1:3", "--out", "{scratch}/s.h5"],
    ["train", "--model", "{user}:exits", *DATA, "--epochs", "1", "--out", "{scratch}"],
])
def test_sys_exit_in_user_code_is_an_error_naming_where(work, args, capsys):
    from lossgrid.cli import main

    args = [str(a).format(user=work / "user.py", scratch=work / "scratch") for a in args]
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 1 and "called sys.exit" in err and "user.py" in err and "Traceback" not in err, err


def test_a_full_standard_output_is_a_message(tmp_path):
    env = {**os.environ, "LOSSGRID_NO_MALLOC_TUNING": "1"}
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "lossgrid", "zoo", "--json"], stdout=full, stderr=subprocess.PIPE,
                           text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Cannot write the output" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("args,needle", [(["surface", "--x=-1:1:3"], "run the same command again to resume"),
                                         (["-v", "evolve"], "run the same command again to resume"),
                                         (["train"], "stays as it was unless this run had finished its first"),
                                         (["gallery"], "A gallery in --out"), (["hessian"], "Nothing was written"),
                                         (["audit"], "Nothing was written"), ([], "Nothing was written")])
def test_a_stopped_command_says_what_it_leaves(args, needle):
    from lossgrid.cli._signals import interrupted_message

    message = interrupted_message(args)
    assert message.startswith("Interrupted (Ctrl-C).") and needle in message
    assert ("Finished chunks" in message) == (args[:1] == ["surface"])
