"""``lossgrid bench``: table and JSON output, --out written atomically, exit codes without tracebacks."""

import json
import os

import pytest
import torch
from click.testing import CliRunner

from lossgrid.cli.group import cli

CONFTEST = os.path.join(os.path.dirname(__file__), "..", "conftest.py")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from tests.conftest import small_cnn

    path = tmp_path_factory.mktemp("ck") / "net.pt"
    torch.save(small_cnn().state_dict(), path)
    return str(path)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def bench_args(ckpt, *extra):
    return ["bench", "--model", f"{CONFTEST}:small_cnn", "--checkpoint", ckpt, "--data", "digits:test",
            "--samples", "60", "--points", "2", "--backend", "torch", "--strategy", "loop", "--strategy", "vmap",
            "-q", *extra]


def test_json_on_stdout(ckpt):
    r = run(*bench_args(ckpt, "--json", "--project", "51x51:50000", "--precision", "fp32", "--precision", "tf32"))
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["samples"] == 60 and result["points"] == 2 and result["project"]["text"] == "51x51:50000"
    assert result["model"] == f"{CONFTEST}:small_cnn @ {ckpt}"
    rows = {(row["strategy"], row["precision"]): row for row in result["rows"]}
    assert set(rows) == {("loop", "fp32"), ("vmap", "fp32"), ("loop", "tf32"), ("vmap", "tf32")}
    assert rows["loop", "fp32"]["available"] and rows["vmap", "fp32"]["max_rel_loss_error"] <= 1e-4
    assert not rows["loop", "tf32"]["available"] and "TF32" in rows["loop", "tf32"]["reason"]


def test_table_and_atomic_out(tmp_path, ckpt):
    out = tmp_path / "bench.json"
    r = run(*bench_args(ckpt, "--out", out, "--project", "11x11:1000"))
    assert r.exit_code == 0, r.output
    for needle in ("small_cnn", "GEMM peak, this run: fp32", "torch/loop", "torch/vmap", "pts x smp/s",
                   "11x11:1000", "loss err: max relative against torch/loop fp32", f"wrote {out}"):
        assert needle in r.stdout, needle
    result = json.loads(out.read_text())
    assert [row["strategy"] for row in result["rows"]] == ["loop", "vmap"]
    assert os.listdir(tmp_path) == ["bench.json"]  # no temporary file left beside it
    # a second run refuses the file, which holds an earlier result; with --overwrite it replaces it whole
    before = out.read_bytes()
    r = run(*bench_args(ckpt, "--out", out))
    assert r.exit_code == 1 and "exists" in r.output and "--overwrite" in r.output and out.read_bytes() == before
    assert run(*bench_args(ckpt, "--out", out, "--overwrite")).exit_code == 0
    assert json.loads(out.read_text())["project"] is None and os.listdir(tmp_path) == ["bench.json"]


def test_out_refuses_an_input(tmp_path, ckpt):
    before = open(ckpt, "rb").read()
    r = run(*bench_args(ckpt, "--out", ckpt))
    assert r.exit_code == 1 and "same file as --checkpoint" in r.output and "Traceback" not in r.output
    assert open(ckpt, "rb").read() == before
    r = run(*bench_args(ckpt, "--out", CONFTEST))
    assert r.exit_code == 1 and "same file as --model" in r.output


@pytest.mark.parametrize("args,needle", [
    (["--project", "51x51"], "Cannot read projection"),
    (["--project", "0x5:10"], "empty grid"),
    (["--precision", "fp64"], "fp64"),
    (["--backend", "nope"], "nope"),
    (["--strategy", "nope"], "nope"),
    (["--points", "0"], "--points"),
    (["--batch-size", "-1"], "--batch-size"),
])
def test_bad_options_exit_2(ckpt, args, needle):
    r = run(*bench_args(ckpt, *args))
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("args,needle", [
    (["--data", "mnist"], "Unknown data spec"),
    (["--data", "npz:/nonexistent.npz"], "Cannot read data file"),
    (["--loss", "no_such_mod_xyz:fn"], "Cannot import module"),
    (["--out", "/nonexistent/dir/b.json"], "does not exist"),
])
def test_bad_specs_exit_1(ckpt, args, needle):
    r = run(*bench_args(ckpt, *args))
    assert r.exit_code == 1, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_bad_model_exit_1(tmp_path):
    r = run("bench", "--model", "no_such_mod_xyz:fn", "--data", "digits", "-q")
    assert r.exit_code == 1 and "Traceback" not in r.output
    r = run("bench", "--model", "lossgrid.zoo:mlp_digits", "--data", "digits", "--backend", "onnxruntime",
            "--strategy", "vmap", "-q")
    assert r.exit_code == 1 and "belongs to" in r.output and "Traceback" not in r.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    r = run("bench", "--model", f"{CONFTEST}:small_cnn", "--checkpoint", bad, "--data", "digits", "-q")
    assert r.exit_code == 1 and "corrupt" in r.output and "Traceback" not in r.output


def test_help():
    r = run("bench", "--help")
    assert r.exit_code == 0 and "--project" in r.output and "Example:" in r.output
