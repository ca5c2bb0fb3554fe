"""Hostile inputs, tried systematically through the CLI.

Every case asserts the exit code, a message without a traceback, and that no
file that existed before changed (SHA-256 of every file in the work directory
before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys

import h5py
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from lossgrid.cli.group import cli
from lossgrid.exporters.manifest import METADATA_KEY
from lossgrid.surface.file import load_surface

CONFTEST = os.path.join(os.path.dirname(__file__), "..", "conftest.py")
MODEL = f"{CONFTEST}:small_cnn"


class Evil:
    """Unpickling this runs ``open(path, 'w')``: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A directory of good and hostile input files, made once."""
    from tests.conftest import trained_small_cnn

    d = tmp_path_factory.mktemp("hostile")
    model = trained_small_cnn(20)
    state = model.state_dict()
    torch.save(state, d / "ck.pt")
    torch.save(model, d / "whole.pt")
    marker = str(d / "PWNED")
    torch.save({"state_dict": state, "extra": Evil(marker)}, d / "evil.pt")
    torch.save(Evil(marker), d / "evil_whole.pt")
    (d / "empty.pt").write_bytes(b"")
    (d / "ckdir").mkdir()
    nan_state = {k: v.clone() for k, v in state.items()}
    nan_state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(nan_state, d / "nan.pt")
    cifar = d / "cifar"
    cifar.mkdir()
    with open(cifar / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": Evil(marker)}, fh, protocol=2)
    x = np.random.RandomState(0).rand(40, 1, 8, 8).astype(np.float32)
    np.savez(d / "labels2d.npz", x=x, y=np.zeros((40, 1), np.int64))
    xn = x.copy()
    xn[3, 0, 0, 0] = np.nan
    np.savez(d / "naninputs.npz", x=xn, y=np.zeros(40, np.int64))
    np.savez(d / "biglabels.npz", x=x, y=np.arange(40))
    r = invoke("surface", "--model", MODEL, "--checkpoint", d / "ck.pt", "--data", "digits:test", "--samples", "40",
               "--x=-1:1:3", "--y=-1:1:3", "--dir-file", d / "dirs.h5", "--out", d / "good.h5", "-q")
    assert r.exit_code == 0, r.output
    return d


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def checksums(d) -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, d)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def expect(work, args, code, *needles, new_files_ok=()):
    """Run the CLI; check exit code, message, no traceback, and that no existing file changed."""
    before = checksums(work)
    r = invoke(*args)
    assert r.exit_code == code, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    for needle in needles:
        assert needle in r.output, r.output
    after = checksums(work)
    changed = [k for k in before if after.get(k) != before[k]]
    assert not changed, changed
    added = [k for k in after if k not in before and k not in new_files_ok]
    assert not added, added
    assert not (work / "PWNED").exists(), "code from a file was executed"
    return r


def surface_args(work, out, *extra, checkpoint="ck.pt"):
    return ["surface", "--model", MODEL, "--checkpoint", work / checkpoint, "--data", "digits:test",
            "--samples", "40", "--x=-1:1:3", "--out", out, "-q", *extra]


# -- code execution -----------------------------------------------------------------
@pytest.mark.parametrize("args", [
    lambda w: surface_args(w, w / "o.h5", checkpoint="evil.pt"),
    lambda w: ["surface", "--checkpoint", w / "evil_whole.pt", "--data", "digits", "--out", w / "o.h5"],
    lambda w: surface_args(w, w / "o.h5", "--model2", w / "evil.pt"),
    lambda w: ["export", "--model", MODEL, "--checkpoint", w / "evil.pt", "--out", w / "o.onnx"],
    lambda w: ["export", "--checkpoint", w / "evil_whole.pt", "--out", w / "o.onnx"],
])
def test_pickled_code_never_runs(work, args):
    r = expect(work, args(work), 1, "holds Python objects", "--trust-checkpoint")
    assert "io.open" in r.output  # the refusal names what the file refers to


def test_cifar_batch_with_code_is_refused(work):
    expect(work, surface_args(work, work / "o.h5", "--data", f"cifar10:{work / 'cifar'}:test"), 1,
           "Cannot read CIFAR-10 batch", "io.open")


def test_whole_module_needs_trust(work):
    expect(work, ["surface", "--checkpoint", work / "whole.pt", "--data", "digits:test", "--samples", "20",
                  "--x=-1:1:2", "--out", work / "w.h5", "-q"], 1, "tests.conftest.SmallCNN", "--trust-checkpoint")
    try:
        expect(work, ["surface", "--checkpoint", work / "whole.pt", "--data", "digits:test", "--samples", "20",
                      "--x=-1:1:2", "--out", work / "w.h5", "-q", "--trust-checkpoint"], 0, new_files_ok=("w.h5",))
    finally:
        (work / "w.h5").unlink(missing_ok=True)


# -- outputs over inputs ----------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (lambda w: surface_args(w, w / "ck.pt", "--overwrite"), "same file as --checkpoint"),
    (lambda w: surface_args(w, os.path.join(w, ".", "ck.pt")), "same file as --checkpoint"),
    (lambda w: surface_args(w, w / "dirs.h5", "--dir-file", w / "dirs.h5", "--overwrite"), "same file as --dir-file"),
    (lambda w: surface_args(w, w / "labels2d.npz", "--data", f"npz:{w / 'labels2d.npz'}", "--overwrite"),
     "same file as --data"),
    (lambda w: surface_args(w, CONFTEST, "--overwrite"), "same file as --model"),
    (lambda w: ["export", "--model", MODEL, "--checkpoint", w / "ck.pt", "--out", w / "ck.pt"],
     "same file as --checkpoint"),
    (lambda w: ["plot", w / "good.h5", "--out", w / "good.h5"], "same file as input file 1"),
])
def test_no_command_writes_over_its_input(work, args, needle):
    r = expect(work, args(work), 1, needle)
    assert "--overwrite" not in r.output.split("Hint:")[-1]  # never a hint that destroys data


def test_overwrite_never_replaces_foreign_files(work):
    foreign = work / "notes.h5"
    with h5py.File(foreign, "w") as f:
        f["weights"] = np.arange(3)
    try:
        expect(work, surface_args(work, foreign, "--overwrite"), 1, "not a surface file")
        text = work / "notes.txt"
        text.write_text("precious")
        expect(work, surface_args(work, text, "--overwrite"), 1, "not an HDF5 file")
        expect(work, ["demo", "--out", text], 1, "is a file")
    finally:
        foreign.unlink()
        (work / "notes.txt").unlink(missing_ok=True)


# -- bad files ---------------------------------------------------------------------
def test_bad_checkpoints(work):
    expect(work, surface_args(work, work / "o.h5", checkpoint="empty.pt"), 1, "is empty (0 bytes)")
    expect(work, surface_args(work, work / "o.h5", checkpoint="ckdir"), 1, "is a directory")
    expect(work, surface_args(work, work / "o.h5", checkpoint="missing.pt"), 1, "does not exist")
    expect(work, surface_args(work, work / "o.h5", checkpoint="nan.pt"), 1, "NaN or infinite", "conv1.weight")


def _copy(work, name, new):
    (work / new).write_bytes((work / name).read_bytes())
    return work / new


@pytest.mark.parametrize("damage,needle", [
    (lambda f: f.__delitem__("xcoordinates"), "xcoordinates is missing"),
    (lambda f: (f.__delitem__("train_loss"), f.create_dataset("train_loss", data=np.zeros((2, 3)))),
     "train_loss has shape (2, 3)"),
    (lambda f: (f.__delitem__("done"), f.create_dataset("done", data=np.array([b"a", b"b", b"c"]))),
     "done is not numeric"),
    (lambda f: (f.__delitem__("xcoordinates"), f.create_dataset("xcoordinates", data=np.linspace(-1, 1, 4))),
     "train_loss has shape (3, 3), expected (4, 3)"),
])
def test_damaged_surface_files(work, damage, needle):
    path = _copy(work, "good.h5", "damaged.h5")
    with h5py.File(path, "a") as f:
        damage(f)
    try:
        expect(work, ["plot", path, "--out", work / "p.png"], 1, needle)
        expect(work, surface_args(work, path, "--y=-1:1:3", "--dir-file", work / "dirs.h5"), 1, "corrupt", needle)
    finally:
        path.unlink()


def test_resume_checks_the_coordinates(work):
    path = _copy(work, "good.h5", "coords.h5")
    with h5py.File(path, "a") as f:
        f["xcoordinates"][...] = [-2.0, 0.0, 2.0]
    try:
        expect(work, surface_args(work, path, "--y=-1:1:3", "--dir-file", work / "dirs.h5"), 1,
               "does not hold this run's x coordinates")
    finally:
        path.unlink()


@pytest.mark.parametrize("damage,needle", [
    (lambda f: f["xdirection"].move("0", "renamed"), "xdirection/0 (conv1.weight) is missing"),
    (lambda f: (f["xdirection"].__delitem__("2"), f["xdirection"].create_dataset("2", data=np.array([b"x"] * 6))),
     "xdirection/2 (bn1.weight) holds |S1"),
    (lambda f: f["ydirection/0"].__setitem__((0, 0, 0, 0), np.nan), "NaN or infinite"),
])
def test_damaged_direction_files(work, damage, needle):
    path = _copy(work, "dirs.h5", "baddirs.h5")
    with h5py.File(path, "a") as f:
        damage(f)
    try:
        expect(work, surface_args(work, work / "o.h5", "--y=-1:1:3", "--dir-file", path), 1, needle)
    finally:
        path.unlink()


def test_bad_onnx_manifests(work):
    from lossgrid.exporters.onnx import export_onnx
    from tests.conftest import small_cnn

    good = export_onnx(small_cnn(), torch.randn(2, 1, 8, 8), k=1, check=False)
    for name, value in (("list.onnx", "[1, 2]"), ("types.onnx", json.dumps({"version": 1, "k": "two"})),
                        ("inputs.onnx", json.dumps({**json.loads(good.manifest.to_json()), "inputs": [3]}))):
        proto = onnx.load_from_string(good.model_bytes)
        for prop in proto.metadata_props:
            if prop.key == METADATA_KEY:
                prop.value = value
        onnx.save(proto, str(work / name))
    try:
        expect(work, ["inspect", work / "list.onnx"], 1, "manifest is a JSON list")
        expect(work, ["inspect", work / "types.onnx"], 1, "malformed")
        expect(work, ["inspect", work / "inputs.onnx"], 1, "inputs[0]")
        expect(work, ["inspect", work / "ckdir"], 2)  # click refuses a directory argument
        expect(work, ["inspect", work / "empty.pt"], 1, "is empty")
    finally:
        for name in ("list.onnx", "types.onnx", "inputs.onnx"):
            (work / name).unlink()


# -- bad data and options --------------------------------------------------------------
@pytest.mark.parametrize("extra,code,needle", [
    (["--data", "npz:{w}/labels2d.npz"], 1, "shape (40, 1)"),
    (["--data", "npz:{w}/naninputs.npz"], 1, "the first at index 3"),
    (["--data", "npz:{w}/biglabels.npz"], 1, "run from 0 to 39"),
    (["--data", "npz:{w}/ckdir"], 1, "is a directory"),
    (["--data", "cifar10:{w}/ck.pt"], 1, "is a file, not a directory"),
    (["--x=-1:1:1e23"], 2, "NUM must be a whole number"),
    (["--x=-1:1:100000", "--y=-1:1:100000"], 2, "at most 4,194,304 grid points"),
    (["--x=-1e308:1e308:5"], 2, "too wide"),
    (["--device", "meta"], 2, "not a device lossgrid runs on"),
    (["--model", "{w}/ckdir/x.py:make"], 1, "does not exist"),
    (["--model", "{w}/ckdir:make"], 1, "is a directory"),
])
def test_bad_data_and_options(work, extra, code, needle):
    extra = [e.format(w=work) for e in extra]
    args = surface_args(work, work / "o.h5")
    if "--model" in extra:
        args[1:3] = []
    expect(work, [*args, *extra], code, needle)


def test_out_of_memory_names_the_option_to_lower(work, monkeypatch):
    from lossgrid.engine.runners.torch_runner import TorchRunner

    def oom(self, weights):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes")

    monkeypatch.setattr(TorchRunner, "_loop", oom)
    r = expect(work, surface_args(work, work / "oom.h5", "--strategy", "loop", "--points-per-call", "3"), 1,
               "Out of memory", "--points-per-call (now 3)", "--batch-size", new_files_ok=("oom.h5",))
    assert "model failed" not in r.output
    (work / "oom.h5").unlink(missing_ok=True)


# -- identity by fingerprint, not by spelling -----------------------------------------
def test_same_checkpoint_spelled_differently_resumes(work, monkeypatch):
    monkeypatch.chdir(work)
    r = expect(work, ["surface", "--model", MODEL, "--checkpoint", "./ck.pt", "--data", "digits:test",
                      "--samples", "40", "--x=-1:1:3", "--y=-1:1:3", "--dir-file", "dirs.h5", "--out", "good.h5"], 0)
    assert "0 points in" in r.output
    assert load_surface(str(work / "good.h5")).complete


# -- signals never raise inside an import -------------------------------------------------
def test_signal_during_an_import_is_delivered_again_later(monkeypatch):
    import signal
    import sys

    from lossgrid.cli import _signals

    scheduled = []

    class FakeTimer:
        def __init__(self, delay, fn, args):
            scheduled.append((delay, fn, args))
            self.daemon = False

        def start(self):
            pass

    monkeypatch.setattr(_signals.threading, "Timer", FakeTimer)
    space = {"sys": sys}
    exec(compile("frame = sys._getframe()", "<frozen importlib._bootstrap>", "exec"), space)
    _signals._on_signal(signal.SIGTERM, space["frame"])  # inside an import: no exception, delivered again
    assert scheduled and scheduled[0][2][1] == signal.SIGTERM
    with pytest.raises(_signals.Terminated):
        _signals._on_signal(signal.SIGTERM, sys._getframe())
    with pytest.raises(KeyboardInterrupt):
        _signals._on_signal(signal.SIGINT, sys._getframe())


@pytest.mark.parametrize("sig,args,code", [("SIGINT", ["zoo"], 0), ("SIGTERM", ["zoo"], 0), ("SIGINT", ["plot"], 2)])
def test_a_signal_during_shutdown_after_a_finished_run_keeps_its_exit_code(sig, args, code):
    """Ctrl-C or SIGTERM while the interpreter shuts down (here from an atexit hook, which runs after the
    command returned): no KeyboardInterrupt traceback, and the finished command's exit code."""
    program = ("import atexit, os, signal, time\n"
               f"atexit.register(lambda: (os.kill(os.getpid(), signal.{sig}), time.sleep(5)))\n"
               "from lossgrid.cli import main\n"
               f"main({args!r})\n")
    r = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr and "Stopped" not in r.stderr
