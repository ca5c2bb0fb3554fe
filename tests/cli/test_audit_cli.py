"""``lossgrid audit``: text and JSON output, --out written atomically, --fail-if exit codes
(0 / 3 / 1 / 2) without tracebacks."""

from __future__ import annotations

import json
import os

import click
import pytest
import torch
from click.testing import CliRunner

from lossgrid.audits.report import load_schema
from lossgrid.cli.audit import audit
from lossgrid.cli.group import LossgridGroup
from tests.audits.test_audit import validate

CONFTEST = os.path.join(os.path.dirname(__file__), "..", "conftest.py")


@click.group(cls=LossgridGroup)
def cli() -> None:
    """The command under the real group's error handling (LossgridError -> exit 1)."""


cli.add_command(audit)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from tests.conftest import small_cnn, trained_small_cnn

    d = tmp_path_factory.mktemp("ck")
    torch.save(trained_small_cnn(30).state_dict(), d / "net.pt")
    torch.save(small_cnn().state_dict(), d / "net2.pt")
    return str(d / "net.pt"), str(d / "net2.pt")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def audit_args(ckpt, *extra):
    return ["audit", "--model", f"{CONFTEST}:small_cnn", "--checkpoint", ckpt, "--data", "digits:test",
            "--samples", "80", "--radius", "0.05", "--directions", "2", "--trace-samples", "6", "--ascent-steps", "2",
            "-q", *extra]


def test_help_documents_exit_codes():
    r = run("audit", "--help")
    assert r.exit_code == 0
    for needle in ("--fail-if", "Exit codes", "3 a --fail-if condition is true", "--no-hessian", "--model2"):
        assert needle in r.output, needle


def test_json_report_and_atomic_out(tmp_path, ckpts):
    out = tmp_path / "audit.json"
    r = run(*audit_args(ckpts[0], "--json", "--out", out, "--model2", ckpts[1], "--fail-if", "loss > 1e6"))
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert validate(report, load_schema()) == []
    assert report["samples"] == 80 and report["settings"]["radii"] == [0.05] and report["barrier"]["value"] > 0
    assert report["model"] == f"{CONFTEST}:small_cnn @ {ckpts[0]}" and report["model2"] == ckpts[1]
    assert json.loads(out.read_text()) == report
    assert os.listdir(tmp_path) == ["audit.json"]  # no temporary file left beside it


def test_text_report(ckpts):
    r = run(*audit_args(ckpts[0], "--no-hessian"))
    assert r.exit_code == 0, r.output
    for needle in ("audit of", "center      loss", "sharpness", "lower bound", "r=0.05", "quadratic fits",
                   "hessian     (skipped: --no-hessian)"):
        assert needle in r.stdout, needle
    assert "barrier" not in r.stdout


def test_fail_if_true_exits_3_after_writing(tmp_path, ckpts):
    out = tmp_path / "audit.json"
    r = run(*audit_args(ckpts[0], "--no-hessian", "--out", out, "--fail-if", "loss > 1e6",
                        "--fail-if", "sharpness >= 0 and not acc > 100"))
    assert r.exit_code == 3, r.output
    assert "--fail-if condition is true: sharpness >= 0 and not acc > 100" in r.stderr
    assert "loss > 1e6" not in r.stderr  # only the true condition is named
    assert "center      loss" in r.stdout and json.loads(out.read_text())["schema_version"] == 1


def test_fail_if_unknown_field_exits_1_before_work(ckpts):
    r = run(*audit_args(ckpts[0], "--fail-if", "hessian.top > 1"))
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "Unknown report field 'hessian.top'" in r.output and "hessian.top_eig" in r.output
    assert "audit of" not in r.output  # refused before any work
    r = run(*audit_args(ckpts[0], "--fail-if", "barrier > 0.1"))  # no --model2: no barrier section
    assert r.exit_code == 1 and "'barrier.value'" in r.output and "only an audit with --model2" in r.output
    r = run(*audit_args(ckpts[0], "--no-hessian", "--fail-if", "top_eig > 1"))
    assert r.exit_code == 1 and "'hessian.top_eig'" in r.output and "--no-hessian leaves out" in r.output
    r = run(*audit_args(ckpts[0], "--fail-if", "random_directions.9.mean_increase > 1"))
    assert r.exit_code == 1 and "beyond the 1 --radius value of this audit" in r.output
    r = run(*audit_args(ckpts[0], "--fail-if", "loss > 100 or " * 3000 + "loss > 100"))  # no recursion at all
    assert r.exit_code == 2 and "split it into several --fail-if" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("args,needle", [
    (["--fail-if", "__import__('os').system('touch hacked.txt')"], "not allowed"),
    (["--fail-if", "top_eig >"], "--fail-if"),
    (["--fail-if", "1 < loss < 2"], "chained"),
    (["--directions", "0"], "--directions"),
    (["--radius", "-0.1"], "--radius"),
    (["--trace-samples", "2"], "--trace-samples"),
    (["--no-such-option"], "no-such-option"),
])
def test_bad_options_exit_2(ckpts, args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run(*audit_args(ckpts[0], *args))
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert not os.path.exists("hacked.txt")  # nothing was run


def test_out_refuses_an_input(ckpts):
    before = open(ckpts[0], "rb").read()
    r = run(*audit_args(ckpts[0], "--out", ckpts[0]))
    assert r.exit_code == 1 and "same file as --checkpoint" in r.output and "Traceback" not in r.output
    assert open(ckpts[0], "rb").read() == before
    r = run(*audit_args(ckpts[0], "--model2", ckpts[1], "--out", ckpts[1]))
    assert r.exit_code == 1 and "same file as --model2" in r.output


def test_errors_exit_1(ckpts, tmp_path):
    r = run(*audit_args(ckpts[0], "--data", "npz:" + str(tmp_path / "missing.npz")))
    assert r.exit_code == 1 and "Traceback" not in r.output
    r = run(*audit_args(ckpts[0], "--device", "tpu"))  # a bad option value: exit 2, the option named
    assert r.exit_code == 2 and "'tpu' is not a device lossgrid runs on" in r.output and "--device" in r.output
