"""``lossgrid evolve``: one file, GIF/HTML/MP4 animations with one frame per checkpoint,
resumable, the typed error when ffmpeg is missing, outputs that are inputs refused."""

from __future__ import annotations

import json
import os
import re
import shutil

import click
import pytest
from click.testing import CliRunner

from lossgrid.cli.evolve import evolve
from lossgrid.cli.group import LossgridGroup
from lossgrid.plot.page import read_page
from tests.evolve.test_evolve import train_checkpoints


@click.group(cls=LossgridGroup)
def cli() -> None:
    """The real group's error handling around ``evolve`` (registered by lossgrid.cli.group)."""


cli.add_command(evolve)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("run")
    train_checkpoints(directory)
    return directory


def invoke(*args):
    return CliRunner().invoke(cli, ["evolve", *map(str, args)])


def base_args(run_dir, out):
    return ["--model", "lossgrid.zoo:mlp_digits", "--checkpoints", os.path.join(run_dir, "epoch_*.pt"),
            "--data", "digits:test", "--samples", "80", "--x=-1:1:4", "--y=-1:1:3", "--out", out, "-q"]


def test_evolve_writes_one_file_and_animations(run_dir, tmp_path):
    from PIL import Image

    out, gif, html = tmp_path / "evo.h5", tmp_path / "evo.gif", tmp_path / "evo.html"
    result = invoke(*base_args(run_dir, out), "--gif", gif, "--html", html, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [r["label"] for r in summary["checkpoints"]] == ["epoch_1", "epoch_2", "epoch_10"]
    assert summary["points_done"] == summary["points_total"] == summary["points_computed"] == 36
    assert summary["animations"] == {"gif": str(gif), "html": str(html)}
    with Image.open(gif) as im:
        assert im.n_frames == 3
    frames = read_page(str(html))["frames"]
    assert frames["labels"] == ["epoch_1  (1/3)", "epoch_2  (2/3)", "epoch_10  (3/3)"]  # the label of each frame
    assert all({u["panel"] for u in f} == {"surface3d", "contour"} for f in frames["updates"])  # both panels
    assert not re.findall(r"<script[^>]*\ssrc=", html.read_text())  # offline: plotly.js inlined
    # the same command again computes nothing
    again = invoke(*base_args(run_dir, out))
    assert again.exit_code == 0, again.output
    assert "0 computed" in again.output and "epoch_10" in again.output


def test_mp4_or_the_typed_error(run_dir, tmp_path, monkeypatch):
    out, mp4 = tmp_path / "evo.h5", tmp_path / "evo.mp4"
    if shutil.which("ffmpeg"):
        result = invoke(*base_args(run_dir, out), "--mp4", mp4)
        assert result.exit_code == 0, result.output
        assert mp4.stat().st_size > 0 and mp4.read_bytes()[4:8] == b"ftyp"
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)  # ffmpeg absent
    missing = tmp_path / "new.h5"
    result = invoke(*base_args(run_dir, missing), "--mp4", tmp_path / "b.mp4")
    assert result.exit_code == 1
    for words in ("ffmpeg", "apt-get install ffmpeg", "conda install", "--gif", "--html"):
        assert words in result.output
    assert "Traceback" not in result.output
    assert not missing.exists()  # refused before any work


def test_mp4_error_type_from_the_library(monkeypatch):
    from lossgrid.errors import MissingBackendError
    from lossgrid.plot.animate import check_mp4_writable

    monkeypatch.setenv("PATH", "")
    with pytest.raises(MissingBackendError, match="ffmpeg"):
        check_mp4_writable()


def test_bad_outputs_are_refused(run_dir, tmp_path):
    ck = os.path.join(run_dir, "epoch_1.pt")
    result = invoke(*base_args(run_dir, ck))
    assert result.exit_code == 1 and "same file as --checkpoints" in result.output
    out = tmp_path / "evo.h5"
    result = invoke(*base_args(run_dir, out), "--gif", tmp_path / "evo.png")
    assert result.exit_code == 1 and "does not end in .gif" in result.output
    dirs = tmp_path / "dirs.gif"  # any name: an existing --dir-file is an input
    dirs.write_bytes(b"not read")
    result = invoke(*base_args(run_dir, out), "--dir-file", dirs, "--gif", dirs)
    assert result.exit_code == 1 and "--gif" in result.output and "same file as --dir-file" in result.output
    result = invoke(*base_args(run_dir, out)[:3], str(tmp_path / "none_*.pt"), "--out", out)
    assert result.exit_code == 1 and "No checkpoint matches" in result.output
    assert not out.exists()


def test_help():
    result = CliRunner().invoke(evolve, ["--help"])
    assert result.exit_code == 0 and "--checkpoints" in result.output and "--mp4" in result.output
