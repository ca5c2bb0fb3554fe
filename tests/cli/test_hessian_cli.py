"""``lossgrid hessian``: JSON equal to the library's results, atomic --out that never
overwrites an input, bad globs as exit 1 with a hint, --plot, the table."""

from __future__ import annotations

import json
import os

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lossgrid.cli.group import LossgridGroup
from lossgrid.cli.hessian import hessian

CONFTEST = os.path.join(os.path.dirname(__file__), "..", "conftest.py")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run far faster with one intra-op thread on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from tests.conftest import trained_small_cnn

    path = tmp_path_factory.mktemp("ck") / "net.pt"
    torch.save(trained_small_cnn(20).state_dict(), path)
    return str(path)


@click.group(cls=LossgridGroup)
def group() -> None:
    """The command under lossgrid's error handling (LossgridError -> exit 1, no traceback)."""


group.add_command(hessian)


def run(*args):
    return CliRunner().invoke(group, ["hessian", *(str(a) for a in args)])


def base(ckpt):
    return ["--model", f"{CONFTEST}:small_cnn", "--checkpoint", ckpt, "--data", "digits:test", "--samples", "120",
            "-q"]


def test_json_matches_the_library(ckpt):
    r = run(*base(ckpt), "--top-k", "2", "--bottom-k", "1", "--trace", "--trace-samples", "12", "--density",
            "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    from lossgrid.data import load_data
    from lossgrid.hessian.operator import TRACE_KRYLOV, hessian_operator, lanczos_eigs, top_eigs_and_trace
    from lossgrid.hessian.report import spectral_density
    from lossgrid.models import load_model

    model, _ = load_model(f"{CONFTEST}:small_cnn", ckpt)
    op = hessian_operator(model, load_data("digits:test", 120))
    top, trace = top_eigs_and_trace(op, 2, 12, 0.05, tol=1e-4)  # --top-k with a hutch++ trace: one Krylov space
    bottom, dens = lanczos_eigs(op, 1, "bottom", tol=1e-4), spectral_density(op)
    np.testing.assert_allclose(out["top"]["values"], top.values, rtol=1e-12)
    np.testing.assert_allclose(out["top"]["residuals"], top.residuals, rtol=1e-9)
    assert out["top"]["iterations"] == top.iterations
    np.testing.assert_allclose(out["bottom"]["values"], bottom.values, rtol=1e-12)
    assert out["trace"]["value"] == pytest.approx(trace.value, rel=1e-12) and out["trace"]["samples"] == trace.samples
    assert out["trace"]["stderr"] == pytest.approx(trace.stderr, rel=1e-9) and out["trace"]["method"] == TRACE_KRYLOV
    assert out["trace"]["low_rank_vectors"] == top.iterations and 8 <= trace.samples <= 12
    assert out["density"]["mean"] == pytest.approx(dens.mean(), rel=1e-9)
    np.testing.assert_allclose(out["density"]["nodes"], dens.nodes, rtol=1e-12)
    assert out["hvp_count"] == op.hvp_count and out["parameters"] == op.size == 1378
    assert out["samples"] == 120 and "eval mode" in out["note"] and out["seconds"] > 0
    assert out["loss_value"] > 0 and out["grad_norm"] > 0


def test_table_output_and_param_subset(ckpt):
    r = run(*base(ckpt), "--params", "fc.*", "--top-k", "1")
    assert r.exit_code == 0, r.output
    assert "parameters: 970 in 2 tensor(s) (fc.*)" in r.output
    assert "top eigenvalues" in r.output and "BatchNorm uses its running statistics" in r.output
    assert "Hessian-vector products in" in r.output


def test_out_is_atomic_and_refuses_inputs(tmp_path, ckpt):
    out = tmp_path / "h.json"
    r = run(*base(ckpt), "--out", out, "--json")
    assert r.exit_code == 0, r.output
    written = json.loads(out.read_text())
    printed = json.loads(r.output)
    assert written == printed
    assert sorted(os.listdir(tmp_path)) == ["h.json"]  # no temporary sibling left behind
    before = open(ckpt, "rb").read()
    r = run(*base(ckpt), "--out", ckpt)
    assert r.exit_code == 1 and "same file as --checkpoint" in r.output and "Traceback" not in r.output
    assert open(ckpt, "rb").read() == before
    r = run(*base(ckpt), "--plot", ckpt)
    assert r.exit_code == 1 and "--plot" in r.output and open(ckpt, "rb").read() == before
    r = run(*base(ckpt), "--out", tmp_path / "missing" / "h.json")
    assert r.exit_code == 1 and "does not exist" in r.output


def test_bad_glob_is_exit_1_with_a_hint(ckpt):
    r = run(*base(ckpt), "--params", "layers.*")
    assert r.exit_code == 1, r.output
    assert "matches no parameter" in r.output and "Hint:" in r.output and "conv1.weight" in r.output
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit)


def test_plot_writes_a_png(tmp_path, ckpt):
    png = tmp_path / "density.png"
    r = run(*base(ckpt), "--top-k", "0", "--plot", png)
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert "density (SLQ, 4 runs x 40 steps" in r.output and f"wrote {png}" in r.output
    assert sorted(os.listdir(tmp_path)) == ["density.png"]


def test_help():
    r = run("--help")
    assert r.exit_code == 0 and "Usage:" in r.output and "--params GLOB" in r.output
