"""How good `auto`'s job estimate is, and what a grid's size costs before its first point.

Each row runs `lossgrid surface` (auto backend) as a user would, into a new file, and records:
- the job estimate `auto` made (the run log's ``estimated_job_seconds``: its timed, warm passes times the
  points left) against the run's real evaluation seconds, and their ratio;
- the time from the command's start to the first committed point (the file polled as a reader would);
- the process's peak memory (GNU time's maximum resident set size).

Rows: a tiny MLP on 8 samples on 1D grids of 1e3 .. 1e6 points (set-up against grid size), the demo's
residual CNN on digits (31x31), and ResNet-20 on 500 synthetic CIFAR-shaped images (11x11).

    python benchmarks/job_estimates.py [--sizes 1000 10000 100000 1000000] [--out-dir benchmarks/baseline]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from lossgrid.surface.file import load_surface
from lossgrid.zoo import mlp_digits, resnet20, resnet_digits

LOSSGRID = [sys.executable, "-m", "lossgrid.cli"]


def checkpoints(work: str) -> dict[str, str]:
    """Seeded initial weights of the three models (an estimate needs no trained model)."""
    paths = {}
    for name, factory in (("mlp", mlp_digits), ("cnn", resnet_digits), ("resnet20", resnet20)):
        torch.manual_seed(0)
        paths[name] = os.path.join(work, f"{name}.pt")
        torch.save(factory().state_dict(), paths[name])
    return paths


def run(args: list[str], out: str) -> dict[str, object]:
    """One `lossgrid surface ... --out OUT` timed from its start: the first committed point, peak memory,
    and auto's estimate against the evaluation's seconds."""
    rss = out + ".rss"
    t0 = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss, *LOSSGRID, "surface", *args, "--out", out,
                             "-q"], stdout=subprocess.DEVNULL)
    first = None
    while proc.poll() is None:
        if first is None and os.path.exists(out):
            try:
                if load_surface(out).done.any():
                    first = time.perf_counter() - t0
            except Exception:  # not yet a whole file: the writer builds it under another name
                pass
        time.sleep(0.1)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"lossgrid surface {' '.join(args)} exited {proc.returncode}")
    last = json.loads(load_surface(out).attrs["runs"])[-1]
    estimate, seconds = last.get("estimated_job_seconds"), last["seconds"]
    with open(rss) as f:
        peak_mb = int(f.read().split()[-1]) / 1024
    return {"command_seconds": round(total, 2), "eval_seconds": seconds, "estimated_job_seconds": estimate,
            "estimate_over_real": round(estimate / seconds, 2) if estimate and seconds else None,
            "first_point_seconds": round(first if first is not None else total, 2), "peak_rss_mb": round(peak_mb, 1),
            "runner": f"{last.get('backend')}/{last.get('strategy')}", "reason": last.get("strategy_reason")}


def rows(work: str, sizes: list[int]) -> list[dict[str, object]]:
    ck = checkpoints(work)
    plans = [(f"mlp, 8 samples, {n:,} points (1D)", ["--model", "lossgrid.zoo:mlp_digits", "--checkpoint", ck["mlp"],
                                                    "--data", "digits", "--samples", "8", f"--x=-1:1:{n}"], n)
             for n in sizes]
    plans += [("demo CNN, digits:train (1437), 31x31", ["--model", "lossgrid.zoo:resnet_digits", "--checkpoint",
                                                        ck["cnn"], "--data", "digits:train", "--x=-1:1:31",
                                                        "--y=-1:1:31"], 961),
              ("ResNet-20, 500 synthetic 3x32x32, 11x11", ["--model", "lossgrid.zoo:resnet20", "--checkpoint",
                                                            ck["resnet20"], "--data", "synthetic:3x32x32:500:10",
                                                            "--x=-1:1:11", "--y=-1:1:11"], 121)]
    found = []
    for k, (name, args, points) in enumerate(plans):
        result = {"row": name, "points": points, **run(args, os.path.join(work, f"row{k}.h5"))}
        print(json.dumps(result), flush=True)
        found.append(result)
    return found


def markdown(found: list[dict[str, object]], machine: str) -> str:
    lines = [f"# auto's job estimate and a grid's set-up ({machine})", "",
             "| row | points | estimate (s) | real (s) | estimate / real | first point (s) | peak RSS (MB) | runner |",
             "|---|---|---|---|---|---|---|---|"]
    for r in found:
        lines.append(f"| {r['row']} | {r['points']:,} | {r['estimated_job_seconds']} | {r['eval_seconds']} | "
                     f"{r['estimate_over_real']} | {r['first_point_seconds']} | {r['peak_rss_mb']} | {r['runner']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--out-dir", default="benchmarks/baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lossgrid-estimates-") as work:
        found = rows(work, args.sizes)
    machine = f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {datetime.date.today()}"
    stem = os.path.join(args.out_dir, f"job-estimates-{datetime.date.today()}")
    with open(stem + ".json", "w") as f:
        json.dump({"machine": machine, "rows": found}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(found, machine))
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
