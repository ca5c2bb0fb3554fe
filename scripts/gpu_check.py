"""GPU check: the GPU-marked tests and a ResNet-56 bench, into one JSON report that cannot be lost.

For the lent GPU machine (torch with CUDA, CuPy, nvcc; no TensorRT, no onnxruntime-gpu, no
network), whose only output is a folder that comes back when the command ends or is killed:

    PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --out "$OUT/gpu-check.json"
    make gpu-check PY=python3 OUT="$OUT/gpu-check.json"

What makes its results safe:

* the report is rewritten (atomically) after every step and, while a step runs, every few
  seconds: the environment, each GPU test as it finishes, each bench row; whenever the check is
  killed, the file holds whatever ran, and names what was running;
* every step that could hang runs in a child process with a wall-clock limit and is killed at
  it: the environment probe, pytest once per test file (with ``--timeout`` per test when
  pytest-timeout is installed), the bench (whose rows stream out of the child); the whole check
  keeps to ``--budget`` seconds (default 480): the tests may use ``--test-share`` of it, the
  bench the rest;
* a step that raises is recorded with its traceback and the check goes on; a failing bench
  row is an unavailable row with its reason, the other rows stay measured;
* on a machine where ``torch.cuda.is_available()``, a skipped ``gpu`` or ``cupy`` test is a
  failure with its skip reason (CuPy failing to import must not look like success); skipped
  ``tensorrt``/``ort_cuda`` tests are *unavailable* (the machine cannot have those packages);
* the exit status is non-zero when anything failed or did not complete, and a one-screen
  summary ends the output.

Without CUDA it stops at once (exit 2) with a one-line reason. ``--dry-run`` runs the
harness's own logic on the CPU instead, with planted faults: stand-in tests that pass, fail,
skip a gpu test and hang, a test file that hangs outside any test, a step that raises, and a
bench on a small model whose second row hangs until the deadline kills it; it exits 0 only if
every planted fault was caught and recorded as it should be (``self_check`` in the report).

``--readme`` prints the table of GPU paths in docs/backends.md from the latest committed
``benchmarks/baseline/gpu-*.json``; ``--write-readme`` writes it there between its markers
(``tests/scripts/test_gpu_check.py`` keeps docs/backends.md equal to it).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
MARKERS = ("gpu", "cupy", "tensorrt", "ort_cuda", "nvcc")
#: on a CUDA machine a skip of a test with one of these markers is a failure
MUST_RUN = {"gpu", "cupy"}
#: tests needing packages the lent machine cannot have: a skip is "unavailable", not a failure
ELSEWHERE = {"tensorrt", "ort_cuda"}
#: what the lent machine cannot verify (reported as such in every report)
UNVERIFIED = ("TensorRT runner (no TensorRT on the machine)",
              "ONNX Runtime's CUDA provider (onnxruntime-gpu is too large to carry there)",
              "sharding across GPUs with NCCL (one GPU)")
#: seconds kept after the bench for the summary and the last write (at most a tenth of the budget)
CLOSING_S = 10.0
#: bench rows in the order they are wanted: the headline numbers first (ResNet-56 fp32 share of the
#: peak, each precision's projection and loss error), then the other strategies and backends
GPU_COMBOS = (
    [(p, "torch", "static") for p in ("fp32", "tf32", "bf16", "fp16")]
    + [(p, "torch", "loop") for p in ("fp32", "tf32", "bf16", "fp16")]
    + [(p, "torch", s) for s in ("vmap", "wide") for p in ("fp32", "bf16")]
    + [("fp32", "onnxruntime", "wide"), ("fp32", "tensorrt", "inputs")]
)
DRY_COMBOS = (("fp32", "torch", "loop"), ("fp32", "torch", "static"), ("fp32", "torch", "vmap"))


# -- the report ------------------------------------------------------------------------------------
class Report:
    """The check's JSON report, rewritten atomically on every :meth:`save`."""

    def __init__(self, path: str, data: dict[str, Any]) -> None:
        self.path, self.data = os.path.abspath(path), data
        os.makedirs(os.path.dirname(self.path), exist_ok=True)

    def save(self) -> None:
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(json_safe(self.data), fh, indent=1, sort_keys=True, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one step, recorded before it starts and after it ends; an exception is recorded
        with its traceback (the step's result is then ``None``) and the check goes on."""
        entry: dict[str, Any] = {"name": name, "status": "running", "started": time.time()}
        self.data["steps"].append(entry)
        self.save()
        t0 = time.monotonic()
        try:
            result = fn()
            entry["status"] = "passed"
        except Exception as e:  # noqa: BLE001 - a step's failure is data for the report
            result = None
            entry.update(status="error", error=f"{type(e).__name__}: {e}",
                         traceback=traceback.format_exc(limit=-6).splitlines()[-20:])
            print(f"  step {name!r} raised {type(e).__name__}: {e}", flush=True)
        entry["seconds"] = round(time.monotonic() - t0, 2)
        self.save()
        return result


def json_safe(obj: Any) -> Any:
    """Plain JSON: non-finite floats as ``None``, tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def read_json(path: str) -> Any:
    """The JSON in ``path``, or ``None`` where it is missing or half-written."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def write_json(path: str, data: Any) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the new one)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(json_safe(data), fh, allow_nan=False)
    os.replace(tmp, path)


# -- children with wall-clock limits ---------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """In a child, before it runs: be killed when the check dies (Linux), so nothing hangs on after
    it; a check that died between the fork and this call is seen in the parent's pid."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def run_child(cmd: list[str], limit_s: float, log_path: str, env: dict[str, str] | None = None,
              poll: Callable[[], None] | None = None, every_s: float = 2.0) -> dict[str, Any]:
    """Run ``cmd`` (output to ``log_path``) for at most ``limit_s`` seconds, then kill its process
    group; ``poll`` is called every ``every_s`` seconds while it runs and once at the end."""
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=functools.partial(_die_with_parent, os.getpid()))
    killed = False
    while True:
        try:
            proc.wait(timeout=max(min(every_s, limit_s - (time.monotonic() - t0)), 0.01))
            break
        except subprocess.TimeoutExpired:
            if poll is not None:
                poll()
            if time.monotonic() - t0 >= limit_s:
                killed = True
                break
    with contextlib.suppress(ProcessLookupError):  # the child, or what it left behind in its group
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if poll is not None:
        poll()
    return {"returncode": None if killed else proc.returncode, "killed": killed, "limit_s": round(limit_s, 1),
            "seconds": round(time.monotonic() - t0, 2), "output_tail": tail(log_path)}


def tail(path: str, chars: int = 3000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - chars, 0))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def child_env() -> dict[str, str]:
    """The environment of every child: the working tree's lossgrid and the pytest plugin importable."""
    path = os.pathsep.join(filter(None, [ROOT, SCRIPTS, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


class Clock:
    """The check's deadlines, in seconds since it started."""

    def __init__(self, budget_s: float, test_share: float) -> None:
        self.t0, self.budget_s = time.monotonic(), budget_s
        self.tests_end = test_share * budget_s
        self.end = budget_s - min(CLOSING_S, 0.1 * budget_s)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self, until: float) -> float:
        return max(until - self.elapsed(), 0.0)


# -- step 1: the environment (probed in a child) ---------------------------------------------------
PACKAGES = ("torch", "numpy", "h5py", "click", "onnx", "onnxruntime", "onnxruntime-gpu", "cupy-cuda12x",
            "cupy-cuda13x", "tensorrt", "pytest", "pytest-timeout", "plotly", "matplotlib", "scipy",
            "safetensors", "scikit-learn")


def probe() -> dict[str, Any]:
    """What this machine has (run in the probe child: it imports torch and CuPy)."""
    import importlib.metadata
    import platform

    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "packages": {}}
    for name in PACKAGES:
        try:
            env["packages"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env["packages"][name] = None
    import torch

    env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if env["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        env["device"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                         "memory_gib": round(props.total_memory / 2**30, 1),
                         "multiprocessors": props.multi_processor_count, "count": torch.cuda.device_count()}
    env["cupy"] = _probe_cupy()
    env["onnxruntime_providers"] = _probe(lambda: __import__("onnxruntime").get_available_providers())
    env["nvcc"] = _probe(lambda: subprocess.run(["nvcc", "--version"], capture_output=True, text=True,
                                                timeout=30).stdout.strip().splitlines()[-1])
    env["git_commit"] = _probe(lambda: subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                                      text=True, timeout=10, check=True).stdout.strip())
    return env


def _probe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - absence is the answer
        return f"unavailable: {type(e).__name__}: {e}"


def _probe_cupy() -> dict[str, Any]:
    try:
        import cupy
    except Exception as e:  # noqa: BLE001
        return {"importable": False, "error": f"{type(e).__name__}: {e}"}
    out: dict[str, Any] = {"importable": True, "version": cupy.__version__,
                           "cuda_available": bool(cupy.cuda.is_available())}
    if out["cuda_available"]:
        out["sum_check"] = _probe(lambda: float(cupy.arange(10, dtype=cupy.float32).sum()))  # a kernel runs
    return out


def environment_step(report: Report, work: str, limit_s: float) -> dict[str, Any]:
    out = os.path.join(work, "probe.json")
    child = run_child([sys.executable, __file__, "--probe", out], limit_s, os.path.join(work, "probe.log"),
                      child_env())
    env = read_json(out)
    if env is None:
        raise RuntimeError(f"the environment probe wrote nothing (killed: {child['killed']}, exit "
                           f"{child['returncode']}): {child['output_tail'][-500:]}")
    report.data["environment"] = env
    return env


# -- step 2: the GPU tests, one pytest per file ----------------------------------------------------
def gpu_test_files() -> list[str]:
    """Test files holding GPU-marked tests (found by reading them, before any import)."""
    marked = re.compile(r"pytest\.mark\.(" + "|".join(MARKERS) + r")\b")
    files = sorted(glob.glob(os.path.join(ROOT, "tests", "**", "test_*.py"), recursive=True))
    return [f for f in files if marked.search(open(f, encoding="utf-8").read())]


def display_name(path: str) -> str:
    """A test file's name in the report: relative to the checkout (a dry run's stand-ins: the file name)."""
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else os.path.basename(path)


def pytest_timeout_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("pytest_timeout") is not None


def run_test_file(report: Report, path: str, work: str, limit_s: float, test_timeout: float, cuda: bool) -> None:
    """One test file in a pytest child; results stream into the report as tests finish."""
    name = display_name(path)
    events = os.path.join(work, re.sub(r"\W", "_", name) + ".jsonl")
    env = {**child_env(), "LOSSGRID_GPU_CHECK_EVENTS": events}
    timeout = [f"--timeout={test_timeout:g}"] if pytest_timeout_installed() else []
    rootdir = ROOT if path.startswith(ROOT + os.sep) else os.path.dirname(path)  # node ids relative to the checkout
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "gpu_check_plugin", *timeout,
           "-m", " or ".join(MARKERS), "--rootdir", rootdir, path]
    tests = report.data["tests"]

    def collect() -> None:
        tests["results"].update(read_events(events, name, cuda))
        tests["counts"] = count(tests["results"])
        report.save()

    child = run_child(cmd, limit_s, os.path.join(work, re.sub(r"\W", "_", name) + ".log"), env, collect)
    results = {k: v for k, v in tests["results"].items() if v["file"] == name}
    failed = any(v["status"] == "failed" for v in results.values())
    status = "killed" if child["killed"] else "failed" if failed or child["returncode"] not in (0, 5) else "passed"
    tests["files"][name] = {**child, "status": status, "tests": len(results)}
    report.save()


def read_events(path: str, name: str, cuda: bool) -> dict[str, dict[str, Any]]:
    """Each test's result from the plugin's events (a test started and never finished was killed)."""
    results: dict[str, dict[str, Any]] = {}
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError:
        return results
    for line in lines:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            entry = results.setdefault(event["nodeid"], {"file": name, "markers": event.get("markers", []),
                                                         "outcome": "killed", "seconds": 0.0, "message": ""})
            if event["event"] == "collect_error":
                entry.update(outcome="error", message=event["message"])
            elif event["event"] == "report" and entry["outcome"] not in ("failed", "error"):
                failed_outside = event["outcome"] == "failed" and event["when"] != "call"
                entry.update(outcome="error" if failed_outside else event["outcome"], message=event["message"])
                entry["seconds"] += event["seconds"]
            elif event["event"] == "finish" and entry["outcome"] == "killed":
                entry["outcome"] = "passed"  # a test with no report of its own: nothing failed
    for entry in results.values():
        entry["status"] = classify(entry, cuda)
        if entry["outcome"] == "killed":
            entry["message"] = "still running when its file was stopped at the limit (a hang?)"
    return results


def classify(entry: dict[str, Any], cuda: bool) -> str:
    """``passed``, ``failed``, ``unavailable`` (needs what this machine cannot have) or ``skipped``."""
    if entry["outcome"] == "passed":
        return "passed"
    if entry["outcome"] != "skipped":
        return "failed"
    markers = set(entry["markers"])
    if markers & ELSEWHERE:
        return "unavailable"
    if cuda and markers & MUST_RUN:
        entry["message"] = f"skipped on a CUDA machine: {entry['message']}"
        return "failed"
    return "skipped"


def count(results: dict[str, dict[str, Any]]) -> dict[str, int]:
    out = {k: 0 for k in ("passed", "failed", "unavailable", "skipped")}
    for entry in results.values():
        out[entry["status"]] += 1
    return out


# -- step 3: the bench (in a child whose rows stream out) ------------------------------------------
STALLED: list[bool] = []  # the dry run's switch: once set, the stand-in model's forwards block


def stand_in_model() -> Any:
    """The dry run's model: a small MLP whose forward blocks once :data:`STALLED` is set."""
    from torch import nn

    class Stalling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x: Any) -> Any:
            while STALLED:
                time.sleep(0.05)
            return self.body(x)

    return Stalling()


def bench_child(out: str, points: int, samples: int, dry_run: bool) -> int:
    """The bench, run in the child: every partial result is written to ``out`` as it comes."""
    sys.path.insert(0, ROOT)
    import torch

    from lossgrid.bench.run import run_bench
    from lossgrid.zoo import resnet56

    torch.manual_seed(0)
    if dry_run:
        model, device, combos, project = stand_in_model(), "cpu", DRY_COMBOS, None
        x, y = torch.randn(samples, 1, 8, 8), torch.randint(0, 10, (samples,))
        data = f"{samples} random 1x8x8 inputs (the dry run's stand-in)"
    else:
        model, device, combos, project = resnet56(), "cuda", GPU_COMBOS, "51x51:50000"
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(samples, 3, 32, 32, generator=gen, device="cuda")
        y = torch.randint(0, 10, (samples,), generator=gen, device="cuda")
        data = f"{samples} synthetic 32x32x3 images (torch.randn on the GPU, seed 0, random labels)"

    def partial(result: dict[str, Any]) -> None:
        write_json(out, {**result, "data": data})
        print(f"  bench: {len(result['rows'])} row(s) done, running {result['running']}", flush=True)
        if dry_run and result["rows"]:
            STALLED.append(True)  # the planted hang: the next row blocks until the deadline kills it

    result = run_bench(model, (x, y), device=device, points=points, project=project, partial=partial,
                       combos=combos, model_description="stand-in MLP" if dry_run else
                       "lossgrid.zoo:resnet56 (random weights, seed 0)")
    write_json(out, {**result, "data": data, "running": None, "pending": [], "complete": True})
    return 0


def bench_step(report: Report, work: str, limit_s: float, points: int, samples: int) -> None:
    out = os.path.join(work, "bench.json")
    bench = report.data["bench"] = {"status": "running"}

    def collect() -> None:
        partial = read_json(out)
        if partial is None:
            return
        for r in partial.get("rows", [])[len(bench.get("rows", [])):]:  # one line per new row, as it comes
            print(f"  bench {r['precision']} {r['backend']}/{r['strategy']}: "
                  + (f"{r['images_per_s']:,.0f} images/s" if r.get("available") else str(r.get("reason"))[:120]),
                  flush=True)
        bench.update(partial)
        report.save()

    cmd = [sys.executable, __file__, "--bench-child", out, "--points", str(points), "--samples", str(samples)]
    if report.data["dry_run"]:
        cmd.append("--dry-run")
    child = run_child(cmd, limit_s, os.path.join(work, "bench.log"), child_env(), collect)
    bench["child"] = child
    if bench.get("complete"):
        bench["status"] = "complete"
    elif child["killed"]:
        close_killed_bench(bench, child["seconds"])
    else:
        bench["status"] = "error"
        raise RuntimeError(f"the bench exited with code {child['returncode']}: {child['output_tail'][-800:]}")


def close_killed_bench(bench: dict[str, Any], seconds: float) -> None:
    """A bench killed at the deadline: the row in flight and the rows after it, said as such."""
    bench["status"] = "killed at the deadline"
    rows = bench.setdefault("rows", [])
    running = bench.pop("running", None)
    if running is not None:
        rows.append({**running, "available": False, "killed": True,
                     "reason": f"killed at the check's deadline ({seconds:.0f} s into the bench) while it ran"})
    for spec in bench.pop("pending", []):
        rows.append({**spec, "available": False, "reason": "not run: the check's time budget was spent"})


# -- the summary ----------------------------------------------------------------------------------
def headline(bench: dict[str, Any]) -> list[str]:
    """The bench's numbers that matter: per precision, the best measured row's share of the GEMM
    peak, projected surface time and loss error against fp32."""
    lines = []
    rows = [r for r in bench.get("rows", []) if r.get("available")]
    for precision in dict.fromkeys(r["precision"] for r in rows):
        best = max((r for r in rows if r["precision"] == precision), key=lambda r: r["points_x_samples_per_s"])
        pct, proj, err = best.get("pct_of_peak"), best.get("projected_seconds"), best.get("max_rel_loss_error")
        lines.append(f"  {precision} {best['backend']}/{best['strategy']}: {best['images_per_s']:,.0f} images/s"
                     + (f", {pct:.1f}% of the {precision} GEMM peak" if pct is not None else "")
                     + (f", 51x51 x 50,000 surface in {proj / 60:.1f} min" if proj else "")
                     + (f", loss error vs fp32 {err:.2e}" if err is not None else ""))
    return lines


def summarize(report: Report) -> str:
    """The one-screen summary, and the report's ``status``."""
    data, env = report.data, report.data.get("environment") or {}
    tests, bench = data["tests"], data.get("bench") or {}
    counts = count(tests["results"])
    errors = [s for s in data["steps"] if s["status"] == "error"]
    killed_files = [f for f, v in tests["files"].items() if v["status"] == "killed"]
    failed_rows = [r for r in bench.get("rows", []) if str(r.get("reason") or "").startswith("failed in")]
    not_run = [r for r in bench.get("rows", []) if not r.get("available") and
               ("deadline" in str(r.get("reason")) or "not run" in str(r.get("reason")))]
    failed = counts["failed"] or errors or killed_files or failed_rows
    data["status"] = "failed" if failed else "incomplete" if not_run or bench.get("status") != "complete" else "passed"
    device = (env.get("device") or {}).get("name", "no GPU")
    lines = [f"gpu-check {data['status'].upper()} in {data['seconds']:.0f} s of {data['budget_s']:g} on {device} "
             f"(torch {env.get('torch')}, CUDA {env.get('torch_cuda')}); report: {report.path}",
             f"tests: {counts['passed']} passed, {counts['failed']} failed, {counts['unavailable']} unavailable, "
             f"{counts['skipped']} skipped, in {len(tests['files'])} file(s)"
             + (f"; killed at their limit: {', '.join(killed_files)}" if killed_files else "")]
    lines += [f"  FAILED {k}: {textwrap.shorten(v['message'], 150)}" for k, v in tests["results"].items()
              if v["status"] == "failed"][:12]
    measured = sum(1 for r in bench.get("rows", []) if r.get("available"))
    lines.append(f"bench ({bench.get('status', 'not run')}): {measured} of {len(bench.get('rows', []))} rows "
                 f"measured, {len(failed_rows)} failed, {len(not_run)} cut by the budget; {bench.get('model', '')} "
                 f"on {bench.get('samples', '?')} samples")
    lines += headline(bench)
    lines += [f"  FAILED row {r['precision']} {r['backend']}/{r['strategy']}: {r['reason'][:150]}" for r in failed_rows]
    lines += [f"step {s['name']!r} raised {s['error'][:150]}" for s in errors]
    lines.append("unverified on this machine: " + "; ".join(UNVERIFIED))
    return "\n".join(lines)


# -- the dry run: planted faults, and the check that each was caught -------------------------------
STAND_INS = {
    "test_standin_outcomes.py": '''
        import pytest
        pytestmark = pytest.mark.gpu

        def test_passes():
            assert 1 + 1 == 2

        def test_fails():
            assert 1 + 1 == 3, "a planted failure"

        def test_skipped_gpu_test():
            pytest.skip("a planted skip of a gpu test")
        ''',
    "test_standin_hang.py": '''
        import time
        import pytest
        pytestmark = pytest.mark.gpu

        def test_hangs():
            time.sleep(3600)

        def test_after_the_hang():
            assert True
        ''',
    "test_standin_hang_at_import.py": '''
        import time
        time.sleep(3600)  # a file that hangs outside any test: only its limit stops it
        ''',
}


def stand_in_files(work: str) -> list[str]:
    folder = os.path.join(work, "stand_in_tests")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, source in STAND_INS.items():
        paths.append(os.path.join(folder, name))
        with open(paths[-1], "w", encoding="utf-8") as fh:
            fh.write(textwrap.dedent(source))
    return paths


def planted_failure() -> None:
    raise RuntimeError("a planted failure of a step")


def self_check(report: Report, budget_s: float) -> list[dict[str, Any]]:
    """Whether the dry run caught every planted fault, each as ``{check, ok, detail}``."""
    data = report.data
    results = {k.rpartition("::")[2]: v for k, v in data["tests"]["results"].items()}
    files = {os.path.basename(k): v for k, v in data["tests"]["files"].items()}
    steps = {s["name"]: s for s in data["steps"]}
    rows = (data.get("bench") or {}).get("rows", [])
    hang = results.get("test_hangs", {})
    on_disk = read_json(report.path) or {}
    checks = [
        ("the environment was probed", steps.get("environment", {}).get("status") == "passed", ""),
        ("a passing test is recorded as passed", results.get("test_passes", {}).get("status") == "passed", ""),
        ("a failing test is recorded as failed", results.get("test_fails", {}).get("status") == "failed", ""),
        ("a skipped gpu test is a failure on a CUDA machine",
         results.get("test_skipped_gpu_test", {}).get("status") == "failed", ""),
        ("a hanging test is stopped and failed, and its file goes on",
         hang.get("status") == "failed" and "test_after_the_hang" in results,
         textwrap.shorten(hang.get("message", ""), 120)),
        ("a file hanging outside any test is killed at its limit",
         files.get("test_standin_hang_at_import.py", {}).get("status") == "killed", ""),
        ("a raising step is recorded and the check goes on",
         "planted failure" in str(steps.get("a planted raising step", {}).get("error")), ""),
        ("the bench keeps the rows measured before a hang",
         any(r.get("available") and r.get("points_x_samples_per_s") for r in rows), ""),
        ("the hanging bench row is killed at the deadline and recorded", any(r.get("killed") for r in rows), ""),
        ("the rows after it are listed as not run", any("not run" in str(r.get("reason")) for r in rows), ""),
        ("the budget is honoured", data["seconds"] <= budget_s, f"{data['seconds']:.1f} s of {budget_s:g}"),
        ("the report on disk is the current one", on_disk.get("steps") == json_safe(data["steps"]), ""),
    ]
    return [{"check": c, "ok": bool(ok), "detail": d} for c, ok, d in checks]


# -- the table of GPU paths in docs/backends.md ---------------------------------------------------
#: each GPU path and the test ids (prefixes) and bench rows that exercise it
GPU_PATHS = (
    ("CuPy weight kernels (perturb, filter norms, BatchNorm folding)", ("tests/kernels/test_cupy_kernels.py",), ()),
    ("torch `static`: flat weight buffer, CUDA-graph replay", ("tests/engine/test_static_runner.py::test_cuda_graph",),
     (("fp32", "torch", "static"),)),
    ("torch `loop` / `vmap` / `wide` on CUDA, GPU-sized batches",
     ("tests/engine/test_batching.py::test_runners_on_cuda", "tests/engine/test_runner.py::test_wide_on_cuda"),
     (("fp32", "torch", "loop"), ("fp32", "torch", "vmap"), ("fp32", "torch", "wide"))),
    ("precisions tf32 / bf16 / fp16 (and fp32 as strict IEEE)",
     ("tests/engine/test_static_runner.py::test_reduced_precisions",),
     (("tf32", "torch", "static"), ("bf16", "torch", "static"), ("fp16", "torch", "static"))),
    ("`--bn recompute` on CUDA", ("tests/engine/test_static_runner.py::test_bn_recompute_on_cuda",), ()),
    ("anchored surfaces (per-sample values) on CUDA",
     ("tests/surface/test_control.py::test_anchored_surface_on_a_gpu",), ()),
    ("`compute_surface` on CUDA: the caller's model stays put, a seed's directions match the CPU's",
     ("tests/engine/test_device.py", "tests/engine/test_static_runner.py::test_surface_on_cuda"), ()),
    ("`lossgrid bench` on CUDA", ("tests/bench/test_bench.py::test_cuda_rows",), ()),
    ("ONNX Runtime's CUDA provider (`onnxruntime-gpu`)",
     ("tests/engine/test_onnxruntime_runner.py::test_cuda_provider",
      "tests/engine/test_onnxruntime_runner.py::test_wide_on_cuda"),
     (("fp32", "onnxruntime", "wide"),)),
    ("TensorRT (`inputs`, `refit`)", ("tests/engine/test_tensorrt_runner.py::test_tensorrt_matches",),
     (("fp32", "tensorrt", "inputs"),)),
    ("sharding across GPUs (NCCL)", (), ()),
)
NEVER_RUN = "written against the documented API, never run on a GPU"
TABLE_BEGIN, TABLE_END = "<!-- gpu-paths: made by scripts/gpu_check.py --readme -->", "<!-- /gpu-paths -->"


def latest_report(folder: str = os.path.join(ROOT, "benchmarks", "baseline")) -> tuple[str | None, Any]:
    """The newest committed GPU check report (by its date, then name), or ``(None, None)``."""
    reports = [(read_json(p) or {}, p) for p in glob.glob(os.path.join(folder, "gpu-*.json"))]
    found = [(str(r.get("date", "")), p) for r, p in reports if not r.get("dry_run")]
    if not found:
        return None, None
    _, path = max(found)
    return os.path.relpath(path, ROOT), read_json(path)


def path_status(report: Any, tests: tuple[str, ...], combos: tuple[tuple[str, str, str], ...]) -> str:
    """What a report says of one GPU path: passed/failed tests with the device and date, bench numbers."""
    if not report or not (report.get("environment") or {}).get("cuda_available"):
        return NEVER_RUN
    results = [v for k, v in (report.get("tests") or {}).get("results", {}).items()
               if any(k.startswith(t) for t in tests) and v["status"] in ("passed", "failed")]
    rows = [r for r in (report.get("bench") or {}).get("rows", []) if r.get("available")
            and (r["precision"], r["backend"], r["strategy"]) in combos]
    if not results and not rows:
        return NEVER_RUN
    device = report["environment"]["device"]["name"]
    failed = sum(v["status"] == "failed" for v in results)
    text = (f"**failed** on {device}, {report['date']}: {failed} of {len(results)} tests" if failed
            else f"ran on {device}, {report['date']}: {len(results)} tests passed")
    numbers = [f"{r['precision']} {r['backend']}/{r['strategy']} {r['images_per_s']:,.0f} images/s"
               + (f" ({r['pct_of_peak']:.0f}% of peak)" if r.get("pct_of_peak") is not None else "") for r in rows]
    return text + ("; " + ", ".join(numbers) if numbers else "")


def readme_table(path: str | None, report: Any) -> str:
    source = f"`{path}`" if path else "no GPU check report is committed yet"
    lines = [TABLE_BEGIN, f"GPU paths as the latest GPU check found them ({source}):", "",
             "| GPU path | status |", "| --- | --- |"]
    lines += [f"| {name} | {path_status(report, tests, combos)} |" for name, tests, combos in GPU_PATHS]
    return "\n".join([*lines, TABLE_END])


# -- the check --------------------------------------------------------------------------------------
def run_check(args: argparse.Namespace) -> int:
    clock = Clock(args.budget, args.test_share)
    out = args.out or (os.path.join(tempfile.gettempdir(), "gpu-check-dry-run.json") if args.dry_run else
                       os.path.join(ROOT, "benchmarks", "baseline", f"gpu-check-{time.strftime('%Y-%m-%d')}.json"))
    report = Report(out, {"status": "running", "dry_run": args.dry_run, "budget_s": args.budget,
                          "date": time.strftime("%Y-%m-%d"), "command": " ".join([os.path.basename(sys.executable),
                                                                                 *sys.argv]),
                          "steps": [], "tests": {"files": {}, "results": {}, "counts": {}}, "bench": None,
                          "unverified": list(UNVERIFIED), "seconds": 0.0})
    report.save()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        env = report.step("environment", lambda: environment_step(report, work, min(120.0, clock.left(clock.end))))
        if not (env or {}).get("cuda_available") and not args.dry_run:
            reason = ("gpu-check needs a CUDA GPU, and torch sees none here (torch.cuda.is_available() is False: "
                      "no GPU, no driver, or a CPU build of torch); --dry-run checks the harness on the CPU")
            report.data.update(status="no-gpu", reason=reason, seconds=round(clock.elapsed(), 1))
            report.save()
            print(reason, file=sys.stderr)
            return 2
        print(f"gpu-check: writing {report.path} after every step (budget {args.budget:g} s)", flush=True)
        run_tests(report, work, clock, args, cuda=bool((env or {}).get("cuda_available")) or args.dry_run)
        if args.dry_run:
            report.step("a planted raising step", planted_failure)
        report.step("bench", lambda: bench_step(report, work, clock.left(clock.end), args.points, args.samples))
    report.data["seconds"] = round(clock.elapsed(), 1)
    text = summarize(report)
    report.save()
    if not args.dry_run:
        print(text, flush=True)
        return 0 if report.data["status"] == "passed" else 1
    return finish_dry_run(report, text, args.budget)


def run_tests(report: Report, work: str, clock: Clock, args: argparse.Namespace, cuda: bool) -> None:
    files = stand_in_files(work) if args.dry_run else gpu_test_files()
    for path in files:
        name = display_name(path)
        limit = min(args.file_timeout, clock.left(clock.tests_end))
        if limit <= 1.0:
            report.data["tests"]["files"][name] = {"status": "not run", "reason": "the tests' share of the budget "
                                                   "was spent"}
            continue
        print(f"  tests {name} (at most {limit:.0f} s)", flush=True)
        report.step(f"tests {name}", lambda p=path, t=limit: run_test_file(report, p, work, t, args.test_timeout,
                                                                         cuda))


def finish_dry_run(report: Report, text: str, budget_s: float) -> int:
    checks = report.data["self_check"] = self_check(report, budget_s)  # run_check saved the report before
    report.save()
    print(text, flush=True)
    print("dry run: the harness against its planted faults", flush=True)
    for c in checks:
        print(f"  {'ok  ' if c['ok'] else 'MISS'} {c['check']}" + (f" ({c['detail']})" if c["detail"] else ""),
              flush=True)
    return 0 if all(c["ok"] for c in checks) else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="the JSON report (default benchmarks/baseline/gpu-check-<date>.json)")
    parser.add_argument("--budget", type=float, help="seconds for the whole check (default 480; dry run 50)")
    parser.add_argument("--test-share", type=float, default=None, help="share of the budget the tests may use")
    parser.add_argument("--test-timeout", type=float, help="seconds per test (pytest-timeout; default 60)")
    parser.add_argument("--file-timeout", type=float, help="seconds per test file (default 150)")
    parser.add_argument("--points", type=int, default=4, help="grid points each bench row times")
    parser.add_argument("--samples", type=int, help="bench samples (default 50,000 images; dry run 256)")
    parser.add_argument("--dry-run", action="store_true", help="check the harness on the CPU with planted faults")
    parser.add_argument("--readme", action="store_true",
                        help="print the GPU table of docs/backends.md from the latest report")
    parser.add_argument("--write-readme", action="store_true", help="write that table into docs/backends.md")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--bench-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    real, dry = dict(budget=480.0, test_share=0.45, test_timeout=60.0, file_timeout=150.0, samples=50_000), \
        dict(budget=50.0, test_share=0.45, test_timeout=1.5, file_timeout=6.0, samples=256)
    for key, value in (dry if args.dry_run else real).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def write_readme() -> None:
    """Write the table of GPU paths into docs/backends.md, between TABLE_BEGIN and TABLE_END."""
    readme = os.path.join(ROOT, "docs", "backends.md")
    text = open(readme, encoding="utf-8").read()
    begin, end = text.index(TABLE_BEGIN), text.index(TABLE_END) + len(TABLE_END)
    with open(readme, "w", encoding="utf-8") as fh:
        fh.write(text[:begin] + readme_table(*latest_report()) + text[end:])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        write_json(args.probe, probe())
        return 0
    if args.bench_child:
        return bench_child(args.bench_child, args.points, args.samples, args.dry_run)
    if args.readme or args.write_readme:
        if args.write_readme:
            write_readme()
        print(readme_table(*latest_report()))
        return 0
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
