"""Own models through the CLI: dict inputs by convention and by ``--batch``, a language
model with the token-level loss, ``--params``/``--exclude``, ``--bn recompute``."""

from __future__ import annotations

import json
import textwrap

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lossgrid.cli.group import cli

MODULE = textwrap.dedent('''
    import torch
    from torch import nn
    import torch.nn.functional as F


    class Out:
        def __init__(self, logits):
            self.logits = logits


    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(9, 8)
            self.mix = nn.Linear(8, 8)
            self.head = nn.Linear(8, 9)

        def forward(self, tokens, mask=None):
            h = F.gelu(self.mix(self.embed(tokens)))
            if mask is not None:
                h = h * mask.unsqueeze(-1)
            return Out(self.head(h))


    def make_model():
        return LM()


    def records():
        g = torch.Generator().manual_seed(1)
        tokens = torch.randint(0, 9, (12, 5), generator=g)
        labels = torch.roll(tokens, -1, dims=1)
        labels[:, -1] = -100
        return {"tokens": tokens, "labels": labels}


    def renamed():
        r = records()
        return {"ids": r["tokens"], "next": r["labels"], "m": torch.ones(12, 5)}


    def adapter(batch):
        return {"tokens": batch["ids"], "mask": batch["m"]}, batch["next"]


    def bn_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
''')


@pytest.fixture()
def mod(tmp_path):
    path = tmp_path / "own.py"
    path.write_text(MODULE)
    return str(path)


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_language_model_by_convention_with_a_token_loss_and_a_block(mod, tmp_path) -> None:
    out = tmp_path / "lm.h5"
    r = run("surface", "--model", f"{mod}:make_model", "--data", f"{mod}:records", "--loss", "token_cross_entropy",
            "--params", "head.*", "--x=-1:1:3", "--out", str(out), "--json", "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["points_done"] == 3
    with h5py.File(out, "r") as f:
        identity = json.loads(f.attrs["identity"])
        assert identity["loss"] == "token_cross_entropy" and identity["params"] == "head.*"
        loss = f["train_loss"][()]
    # the centre is the model itself: the mean per counted token, computed by torch
    ns: dict = {}
    exec(compile(MODULE, "own", "exec"), ns)  # the test's own module text, not a user file
    model, rec = ns["make_model"]().eval(), ns["records"]()
    with torch.no_grad():
        logits = model(rec["tokens"]).logits
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 9), rec["labels"].reshape(-1), ignore_index=-100)
    assert loss[1] == pytest.approx(float(want), rel=1e-5)


def test_batch_adapter_gives_keyword_inputs(mod, tmp_path) -> None:
    out = tmp_path / "a.h5"
    r = run("surface", "--model", f"{mod}:make_model", "--data", f"{mod}:renamed", "--batch", f"{mod}:adapter",
            "--loss", "token_cross_entropy", "--x=-1:1:3", "--out", str(out), "-q")
    assert r.exit_code == 0, r.output
    plain = tmp_path / "p.h5"
    assert run("surface", "--model", f"{mod}:make_model", "--data", f"{mod}:records", "--loss",
               "token_cross_entropy", "--x=-1:1:3", "--out", str(plain), "-q").exit_code == 0
    with h5py.File(out, "r") as a, h5py.File(plain, "r") as b:
        np.testing.assert_allclose(a["train_loss"][()], b["train_loss"][()], rtol=1e-6)  # mask of ones


def test_hessian_and_audit_take_the_same_models(mod) -> None:
    r = run("hessian", "--model", f"{mod}:make_model", "--data", f"{mod}:renamed", "--batch", f"{mod}:adapter",
            "--loss", "token_cross_entropy", "--top-k", "1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["top"]["values"][0] > 0


def test_selection_matching_nothing_is_exit_1_without_traceback(mod, tmp_path) -> None:
    r = CliRunner().invoke(cli, ["surface", "--model", f"{mod}:make_model", "--data", f"{mod}:records", "--loss",
                                 "token_cross_entropy", "--exclude", "*", "--x=-1:1:3", "--out",
                                 str(tmp_path / "x.h5"), "-q"])
    assert r.exit_code == 1
    assert "left to perturb" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.h5").exists()


def test_bn_recompute_stored_and_refused_where_it_cannot_run(mod, tmp_path) -> None:
    out = tmp_path / "bn.h5"
    base = ["surface", "--model", f"{mod}:bn_model", "--data", "digits", "--samples", "64", "--x=-1:1:3",
            "--bn", "recompute", "--bn-batches", "2", "--bn-batch-size", "16", "-q"]
    r = run(*base, "--out", str(out))
    assert r.exit_code == 0, r.output
    with h5py.File(out, "r") as f:
        assert f.attrs["bn"] == "recompute"
        assert json.loads(f.attrs["identity"])["bn"]["batch_size"] == 16
    r = CliRunner().invoke(cli, [*base, "--backend", "onnxruntime", "--strategy", "wide",
                                 "--out", str(tmp_path / "o.h5")])
    assert r.exit_code == 1 and "cannot re-estimate BatchNorm" in r.output
    # an eval run does not resume a recompute file
    r = CliRunner().invoke(cli, ["surface", "--model", f"{mod}:bn_model", "--data", "digits", "--samples", "64",
                                 "--x=-1:1:3", "-q", "--out", str(out)])
    assert r.exit_code == 1 and "--overwrite" in r.output


PAIR = textwrap.dedent('''
    import torch
    from torch import nn


    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(2, 4)
            self.out = nn.Linear(4, 1)

        def forward(self, left, right):
            return (self.out(torch.tanh(self.a(left) + self.b(right))), "aux")


    def make():
        return Pair()


    def triples():
        g = torch.Generator().manual_seed(0)
        left, right = torch.randn(30, 3, generator=g), torch.randn(30, 2, generator=g)
        return left, right, left[:, :1] - right[:, 1:]
''')


def test_positional_inputs_tuple_output_and_regression_without_accuracy(tmp_path) -> None:
    path = tmp_path / "pair.py"
    path.write_text(PAIR)
    out = tmp_path / "r.h5"
    r = run("surface", "--model", f"{path}:make", "--data", f"{path}:triples", "--loss", "mse", "--x=-1:1:3",
            "--backend", "auto", "--auto-budget", "1000", "--out", str(out), "-q")
    assert r.exit_code == 0, r.output
    ns: dict = {}
    exec(compile(PAIR, "pair", "exec"), ns)  # the test's own module text
    left, right, y = ns["triples"]()
    with torch.no_grad():
        want = float(((ns["make"]().eval()(left, right)[0] - y) ** 2).mean())
    with h5py.File(out, "r") as f:
        assert f["train_loss"][1] == pytest.approx(want, rel=1e-5)
        assert np.isnan(f["train_acc"][()]).all()  # regression: no accuracy
