"""Output directories of runs (the demo, the gallery, training): earlier results are refused
without overwrite, and replaced with it only once the new run has results of its own."""

import os

import pytest

from lossgrid._outdir import STAGING_PREFIX, StagedDir, check_output_dir
from lossgrid.errors import ConfigError


def owned(name):
    return name.endswith(".pt") or name == "figures"


def _listing(folder):
    return {n: open(os.path.join(folder, n)).read() if os.path.isfile(os.path.join(folder, n)) else "dir"
            for n in sorted(os.listdir(folder))}


def _first_run(d):
    with StagedDir(d, "run", owned) as out:
        assert not out.staged and out.work == str(d)
        (d / "a.pt").write_text("old a")
        (d / "b.pt").write_text("old b")
        (d / "figures").mkdir()
        (d / "figures" / "f.png").write_text("old f")
    (d / "notes.txt").write_text("mine")


def test_earlier_results_are_refused_without_overwrite(tmp_path):
    d = tmp_path / "out"
    _first_run(d)
    with pytest.raises(ConfigError, match="already holds a run .*a.pt, b.pt, figures") as e:
        StagedDir(d, "run", owned)
    assert "--overwrite" in e.value.hint
    with pytest.raises(ConfigError, match="already holds"):
        check_output_dir(d, "run", owned)
    assert check_output_dir(tmp_path / "new", "run", owned) == [] and not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        StagedDir(tmp_path / "file", "run", owned)


def test_overwrite_replaces_them_only_when_the_new_run_publishes(tmp_path):
    d = tmp_path / "out"
    _first_run(d)
    before = _listing(d)
    with pytest.raises(RuntimeError):
        with StagedDir(d, "run", owned, overwrite=True) as out:
            assert out.staged and os.path.basename(out.work).startswith(STAGING_PREFIX)
            open(os.path.join(out.work, "a.pt"), "w").write("new a")
            assert _listing(d) == {**before, os.path.basename(out.work): "dir"}  # the old results untouched
            raise RuntimeError("the new run fails")
    assert _listing(d) == before  # and its staging is gone
    with StagedDir(d, "run", owned, overwrite=True) as out:
        open(os.path.join(out.work, "a.pt"), "w").write("new a")
        record = out.relocated({"files": [os.path.join(out.work, "a.pt"), "elsewhere/x"], "n": 3})
    assert _listing(d) == {"a.pt": "new a", "notes.txt": "mine"}  # b.pt and figures/ were the old run's
    assert record == {"files": [os.path.join(str(d), "a.pt"), "elsewhere/x"], "n": 3}


def test_the_staging_of_a_dead_run_is_removed(tmp_path):
    d = tmp_path / "out"
    _first_run(d)
    (d / f"{STAGING_PREFIX}999999999-x").mkdir()  # a process that no longer exists
    (d / f"{STAGING_PREFIX}{os.getpid()}-y").mkdir()  # this process: alive, kept
    with StagedDir(d, "run", owned, overwrite=True) as out:
        open(os.path.join(out.work, "c.pt"), "w").write("new c")
    assert sorted(os.listdir(d)) == sorted(["c.pt", "notes.txt", f"{STAGING_PREFIX}{os.getpid()}-y"])
