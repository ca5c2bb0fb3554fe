"""GPU check: the GPU-marked tests, then a bench of ResNet-56 on 50,000 images, into one JSON file.

For the lent GPU machine (torch with CUDA and CuPy; no network, no TensorRT).
It installs nothing: run it with that machine's Python,

    make gpu-check PY=python3          # or: python3 scripts/gpu_check.py

1. Without a usable CUDA GPU it stops at once (exit 2) with a message.
2. ``python -m pytest -q -p no:cacheprovider -m "gpu or cupy or tensorrt or nvcc" tests``; counts
   and failing test ids are read from pytest's JUnit XML (at most ``--pytest-seconds``).
3. :func:`lossgrid.engine.bench.run_bench` on ``resnet56()`` (random weights, seed 0) and
   50,000 synthetic 32x32x3 images made directly on the GPU (``torch.randn``, seed 0, random
   labels), at fp32, tf32 and bf16, every backend/strategy but ``auto``, projected onto the
   paper's 51x51 surface of 50,000 images (``project="51x51:50000"``).
4. Writes ``benchmarks/baseline/gpu-<device-slug>-<YYYY-MM-DD>.json``: ``{"bench": ...,
   "pytest": {passed, failed, errors, skipped, failing, ...}}``, then exits 1 if any GPU test
   failed (or the bench raised), 0 otherwise. The JSON is written first either way.

How it stays under 8 minutes on an H200 (the machine's call limit is 10): every row
evaluates only ``--points`` (default 8) grid points, the same ones, in one timed pass after a
warm-up of one point (per-point strategies) or one chunk (K-wide ones). One grid point is
50,000 ResNet-56 forwards, 12.6 TFLOP, so a row costs about 16 points' time: roughly 20 s
at a pessimistic 10 TFLOP/s, less at tf32/bf16. On top, the rows share a time budget
(``--total-seconds`` minus what the tests took, minus a margin for the last row): rows that
would start later are skipped and listed as such, never left running.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKERS = "gpu or cupy or tensorrt or ort_cuda or nvcc"
#: seconds kept free after the bench's budget: the last row, the closing GEMM peaks, the JSON
MARGIN_S = 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=8, help="grid points per bench row")
    parser.add_argument("--samples", type=int, default=50_000, help="synthetic 32x32x3 images")
    parser.add_argument("--total-seconds", type=float, default=420.0, help="target for the whole check")
    parser.add_argument("--pytest-seconds", type=float, default=210.0, help="limit for the GPU tests")
    parser.add_argument("--out", help="JSON path (default benchmarks/baseline/gpu-<device>-<date>.json)")
    args = parser.parse_args()
    t0 = time.perf_counter()

    import torch  # noqa: PLC0415 - only after argument parsing, so --help stays instant

    if not torch.cuda.is_available():
        print(f"gpu-check needs a CUDA GPU: torch {torch.__version__} sees none (torch.cuda.is_available() is "
              "False: no GPU, no driver, or a CPU-only build of torch). Run it on the GPU machine: "
              "make gpu-check PY=python3", file=sys.stderr)
        return 2
    sys.path.insert(0, ROOT)  # the working tree's lossgrid, installed or not
    name = torch.cuda.get_device_name(0)
    date = datetime.date.today().isoformat()
    out = args.out or os.path.join(ROOT, "benchmarks", "baseline", f"gpu-{slug(name)}-{date}.json")
    print(f"gpu-check on {name}, torch {torch.__version__} (CUDA {torch.version.cuda}); writes {out}", flush=True)

    tests = run_tests(args.pytest_seconds)
    print(f"tests: {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
          f"{tests['skipped']} skipped in {tests['seconds']:.0f} s", flush=True)
    for test_id in tests["failing"]:
        print(f"  FAILED {test_id}", flush=True)

    budget = max(args.total_seconds - (time.perf_counter() - t0) - MARGIN_S, 30.0)
    bench, error = None, None
    try:
        bench = run_gpu_bench(args.points, args.samples, budget)
    except Exception as e:  # noqa: BLE001 - recorded in the JSON, then the exit code says it failed
        error = f"{type(e).__name__}: {e}"
        print(f"bench failed: {error}", file=sys.stderr)
    report = {"bench": bench, "bench_error": error, "pytest": tests, "device_name": name, "date": date,
              "seconds": round(time.perf_counter() - t0, 1), "command": " ".join([os.path.basename(sys.executable),
                                                                                   *sys.argv])}
    write_json(out, report)
    print(f"wrote {out} after {report['seconds']:.0f} s", flush=True)
    return 1 if tests["failed"] or tests["errors"] or tests["timed_out"] or error else 0


def slug(text: str) -> str:
    """``NVIDIA H200`` -> ``nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def run_tests(limit_s: float) -> dict[str, Any]:
    """Run the GPU-marked tests in a child pytest; counts and failing ids from its JUnit XML."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "junit.xml")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", MARKERS, "tests",
               f"--junitxml={xml}"]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit_s)
            rc, output, timed_out = proc.returncode, proc.stdout + proc.stderr, False
        except subprocess.TimeoutExpired as e:
            rc, timed_out = None, True
            output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        result = parse_junit(xml) if os.path.exists(xml) else {"passed": 0, "failed": 0, "errors": 0,
                                                                "skipped": 0, "failing": []}
    # pytest exits 5 when nothing matched the markers: not a failure; other codes without counts are
    if rc not in (0, 1, 5, None) and not result["failed"] and not result["errors"]:
        result["errors"] = 1
        result["failing"].append(f"pytest exited with code {rc} (collection or usage error)")
    return {**result, "returncode": rc, "timed_out": timed_out, "seconds": round(time.perf_counter() - t0, 1),
            "command": shlex.join(cmd[2:]), "output_tail": output[-4000:]}


def parse_junit(path: str) -> dict[str, Any]:
    """Passed/failed/error/skipped counts and the failing test ids of a JUnit XML file."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failing = []
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            counts["failed"] += 1
            failing.append(test_id)
        elif "error" in kinds:
            counts["errors"] += 1
            failing.append(test_id)
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failing": failing}


def run_gpu_bench(points: int, samples: int, budget_s: float) -> dict[str, Any]:
    """ResNet-56 (seeded random weights) on synthetic images made on the GPU, fp32/tf32/bf16."""
    import torch

    from lossgrid.engine.bench import run_bench
    from lossgrid.zoo import resnet56

    torch.manual_seed(0)
    model = resnet56()
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(samples, 3, 32, 32, generator=gen, device="cuda")
    y = torch.randint(0, 10, (samples,), generator=gen, device="cuda")

    def progress(done: int, total: int) -> None:
        print(f"  bench row {done}/{total}", flush=True)

    result = run_bench(model, (x, y), device="cuda", precisions=("fp32", "tf32", "bf16", "fp16"), points=points,
                       project="51x51:50000", progress=progress, budget_s=budget_s,
                       model_description="lossgrid.zoo:resnet56 (random weights, seed 0)")
    result["data"] = f"{samples} synthetic 32x32x3 images (torch.randn on the GPU, seed 0, random labels)"
    try:
        from lossgrid.cli.bench import format_table

        print(format_table(result), flush=True)
    except ImportError:  # click missing: the JSON holds everything
        print(json.dumps(result["rows"], indent=1), flush=True)
    return result


def write_json(path: str, report: dict[str, Any]) -> None:
    """Write the report atomically (a crash leaves the old file or none, never half of one)."""
    from lossgrid._files import atomic_output

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_output(path, "gpu-check report") as tmp, open(tmp, "w") as fh:
        json.dump(report, fh, indent=2, sort_keys=True, allow_nan=False)
        fh.write("\n")


if __name__ == "__main__":
    sys.exit(main())
