"""Fault injection: kill ``lossgrid surface`` runs with SIGKILL at random moments,
resume them with the same command, and check that

* no trial ever leaves an unreadable surface file (checked right after each kill),
* with ``--overwrite`` the old file is either untouched or replaced by a readable new one,
* the resumed surface equals an uninterrupted run bit for bit,
* no lock or partial file is left after the resume.

Each run is a child process forked from a server that has torch imported, so a
trial costs the run itself, not an interpreter start. Three kinds of trials
rotate: a fresh output, a partial output of the same settings (resume, killed
again), and an output with other settings replaced with ``--overwrite``.

Usage: ``python scripts/fault_injection.py --trials 200`` (the test suite runs 20).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONFTEST = os.path.join(HERE, "..", "tests", "conftest.py")
KINDS = ("fresh", "partial", "overwrite")


def _context() -> Any:
    os.environ["LOSSGRID_NO_MALLOC_TUNING"] = "1"  # no re-exec in the children
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "h5py", "lossgrid.cli.group", "lossgrid.surface.job",
                                "lossgrid.engine.runners.torch_runner", "lossgrid.exporters.wide"])
    return ctx


def _start(ctx: Any, argv: list[str]) -> Any:
    from lossgrid.cli import main

    proc = ctx.Process(target=main, args=(argv,))
    proc.start()
    return proc


def _run(ctx: Any, argv: list[str]) -> float:
    t0 = time.perf_counter()
    proc = _start(ctx, argv)
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"lossgrid {' '.join(argv)} exited with {proc.exitcode}")
    return time.perf_counter() - t0


def _digest(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def run(trials: int = 20, seed: int = 0, workdir: str | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run the trials; returns a summary and raises ``AssertionError`` on the first failure."""
    import torch

    from lossgrid.surface.file import load_surface

    sys.path.insert(0, os.path.join(HERE, ".."))
    from tests.conftest import trained_small_cnn

    own = workdir is None
    work = workdir or tempfile.mkdtemp(prefix="lossgrid-faults-")
    ctx = _context()
    rng = random.Random(seed)
    try:
        from lossgrid.data import load_data

        ckpt = os.path.join(work, "net.pt")
        torch.save(trained_small_cnn(20).state_dict(), ckpt)
        data = os.path.join(work, "data.npz")
        digits = load_data("digits:test", samples=120)
        np.savez(data, x=digits.x.numpy(), y=digits.y.numpy())

        def argv(out: str, grid: str = "-1:1:9", *extra: str) -> list[str]:
            return ["surface", "--model", f"{CONFTEST}:small_cnn", "--checkpoint", ckpt, "--data", f"npz:{data}",
                    f"--x={grid}", f"--y={grid}", "--strategy", "loop", "--points-per-call", "1",
                    "--batch-size", "64", "--out", out, "-q", *extra]

        _run(ctx, ["--version"])  # starts the fork server: not part of any timing
        reference = os.path.join(work, "reference.h5")
        seconds = _run(ctx, argv(reference))
        ref = load_surface(reference)
        other = os.path.join(work, "other.h5")
        _run(ctx, argv(other, "-1:1:3"))
        counts = {"killed_before_file": 0, "killed_with_partial_surface": 0, "old_file_kept": 0,
                  "finished_before_kill": 0}
        for trial in range(trials):
            kind = KINDS[trial % len(KINDS)]
            out = os.path.join(work, f"trial{trial}.h5")
            extra: tuple[str, ...] = ()
            old = None
            if kind == "partial":  # a surface of the same settings, killed before: resume it, kill again
                proc = _start(ctx, argv(out))
                time.sleep(rng.uniform(0.3, 1.0) * seconds)
                proc.kill()
                proc.join()
            elif kind == "overwrite":
                shutil.copy(other, out)
                old = _digest(out)
                extra = ("--overwrite",)
            delay = rng.uniform(0.0, 1.1) * seconds
            proc = _start(ctx, argv(out, "-1:1:9", *extra))
            time.sleep(delay)
            proc.kill()
            proc.join()
            if os.path.exists(out):
                surf = load_surface(out)  # raises if the kill left an unreadable file
                if old is not None and _digest(out) == old:
                    counts["old_file_kept"] += 1
                elif not surf.complete:
                    counts["killed_with_partial_surface"] += 1
                else:
                    counts["finished_before_kill"] += 1
            else:
                counts["killed_before_file"] += 1
            _run(ctx, argv(out, "-1:1:9", *extra))
            got = load_surface(out)
            assert got.complete, f"trial {trial}: not complete after the resume"
            for name in ("loss", "acc"):
                a, b = getattr(got, name), getattr(ref, name)
                assert np.array_equal(a, b), f"trial {trial} ({kind}, killed at {delay:.2f} s): {name} differs"
            debris = [n for n in os.listdir(work) if n.startswith(f".trial{trial}.") or n == f"trial{trial}.h5.lock"]
            assert not debris, f"trial {trial}: left {debris}"
            if verbose:
                print(f"trial {trial:3d} {kind:9s} killed at {delay:.2f} s: ok", flush=True)
            os.remove(out)
        return {"trials": trials, "seed": seed, "reference_seconds": round(seconds, 3), **counts}
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.trials, args.seed, verbose=args.verbose), indent=2))


if __name__ == "__main__":
    main()
