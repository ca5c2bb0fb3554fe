"""Do the paper's orderings appear in the full-size gallery, seed after seed?

Runs :func:`lossgrid.gallery.build.run_gallery` at ``--size full`` for each seed of ``--seeds``
(fixed before looking at any result: 0, 1, 2 by default; never chosen for the outcome)
and writes, per seed, whether (a) the deep net without shortcuts is less convex than
its residual twin and (b) the large-batch minimum is sharper than the small-batch one,
with every number behind both verdicts, the timings and the machine.

    python benchmarks/gallery_seeds.py benchmarks/baseline/gallery-seeds-2026-11-30.json
    python benchmarks/gallery_seeds.py /tmp/g.json --seeds 0 --size ci       # quick

On a machine shared with other work, set OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from typing import Any

METRICS = ("train_loss", "train_acc", "test_acc", "center_loss", "nonconvex_share", "negative_curvature",
           "loss_rise", "center_curvature", "top_eig", "train_seconds", "surface_seconds", "hessian_seconds")


def summarize(result: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The verdicts and the numbers behind them, per seed, and how often each ordering held."""
    seeds = {}
    for seed in result["seeds"]:
        run = result["runs"][str(seed)]
        seeds[str(seed)] = {
            "verdicts": run["verdicts"],
            "models": {name: {k: m.get(k) for k in ("role", "depth", "shortcuts", "batch_size", *METRICS)}
                       for name, m in run["models"].items()},
        }
    held = {key: sum(1 for v in values if v) for key, values in result["verdicts"].items()}
    return {"date": time.strftime("%Y-%m-%d"), "machine": {"platform": platform.platform(),
                                                           "cpus": os.cpu_count(),
                                                           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                                                           "torch_threads": result["torch_threads"]},
            "lossgrid_version": result["lossgrid_version"], "config": result["config"], "seeds": result["seeds"],
            "verdicts": result["verdicts"], "held": held, "of": len(result["seeds"]),
            "seconds": round(seconds, 1), "seconds_per_seed": round(seconds / len(result["seeds"]), 1),
            "per_seed": seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, fixed in advance")
    parser.add_argument("--size", default="full", choices=("ci", "full"))
    parser.add_argument("--dir", help="gallery directory to keep (default: a temporary one)")
    args = parser.parse_args()
    from lossgrid.gallery.build import run_gallery

    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_gallery(args.dir or tmp, size=args.size, seeds=seeds)
        summary = summarize(result, time.perf_counter() - t0)
    with open(args.out, "w") as fh:
        json.dump(summary, fh, indent=2, sort_keys=True)
        fh.write("\n")
    for seed in seeds:
        v = summary["per_seed"][str(seed)]["verdicts"]
        print(f"seed {seed}: " + "; ".join(f"{k}: {v[k]['holds']} {v[k]['values']}" for k in sorted(v)))
    print(f"held: {summary['held']} of {summary['of']}; {summary['seconds']} s")


if __name__ == "__main__":
    main()
