"""The GPU check's harness (scripts/gpu_check.py), on the CPU.

The dry run plants faults (tests that fail, hang and skip a gpu test, a file hanging outside any
test, a step that raises, a bench row that hangs until the deadline) and exits 0 only when the
harness caught each as it should; these tests run it, kill it mid-run, and check the pieces
(events to results, the README's table of GPU paths) on data written here.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.py")
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import gpu_check  # noqa: E402 - from scripts/


def test_the_dry_run_catches_every_planted_fault(tmp_path):
    out = tmp_path / "dry.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    report = json.loads(out.read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [c["check"] for c in report["self_check"] if not c["ok"]] == []
    assert report["status"] == "failed"  # the planted failures are failures of the check itself
    assert report["tests"]["counts"] == {"passed": 2, "failed": 3, "unavailable": 0, "skipped": 0}
    rows = report["bench"]["rows"]
    assert [r.get("available") for r in rows] == [True, False, False] and rows[1]["killed"]
    assert report["seconds"] <= report["budget_s"]
    assert "dry run: the harness against its planted faults" in proc.stdout


def test_a_check_killed_mid_run_leaves_what_it_had(tmp_path):
    out = tmp_path / "killed.json"
    proc = subprocess.Popen([sys.executable, SCRIPT, "--dry-run", "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the first test file's results are in
            report = gpu_check.read_json(str(out)) or {}
            if report.get("tests", {}).get("files"):
                break
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the check alone, as a runaway limit would: its children must follow
        proc.wait()
    report = json.loads(out.read_text())
    assert report["status"] == "running" and report["environment"]["python"]
    assert report["tests"]["results"]["test_standin_outcomes.py::test_passes"]["status"] == "passed"
    deadline = time.monotonic() + 10
    while _children_of_a_check() and time.monotonic() < deadline:  # a signal, then the kernel's clean-up
        time.sleep(0.1)
    assert _children_of_a_check() == []  # the children died with the check (no hang lives on after it)


def _children_of_a_check() -> list[str]:
    """Command lines of running children a dry run starts (its stand-in pytest files, its bench)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if "stand_in_tests" in cmdline or "--bench-child" in cmdline:
                found.append(cmdline.replace("\0", " "))
    return found


def test_without_cuda_make_gpu_check_exits_with_a_one_line_reason(tmp_path):
    out = tmp_path / "none.json"
    proc = subprocess.run(["make", "-s", "gpu-check", f"PY={sys.executable}", f"OUT={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    if gpu_check.read_json(str(out)).get("environment", {}).get("cuda_available"):
        pytest.skip("this machine has a CUDA GPU")
    assert proc.returncode != 0
    reason = [line for line in proc.stderr.splitlines() if not line.startswith("make")]  # make adds its own
    assert len(reason) == 1 and "needs a CUDA GPU" in reason[0] and "--dry-run" in reason[0]
    assert json.loads(out.read_text())["status"] == "no-gpu"


def _events(path, *records):
    with open(path, "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


def test_events_become_results(tmp_path):
    path = tmp_path / "e.jsonl"
    gpu, trt = ["gpu"], ["gpu", "tensorrt"]
    _events(path,
            {"event": "start", "nodeid": "a::ok", "markers": gpu},
            {"event": "report", "nodeid": "a::ok", "when": "call", "outcome": "passed", "seconds": 1.5,
             "message": ""},
            {"event": "finish", "nodeid": "a::ok"},
            {"event": "start", "nodeid": "a::cupy_skip", "markers": ["cupy"]},
            {"event": "report", "nodeid": "a::cupy_skip", "when": "setup", "outcome": "skipped", "seconds": 0,
             "message": "Skipped: CuPy is not available"},
            {"event": "start", "nodeid": "a::trt", "markers": trt},
            {"event": "report", "nodeid": "a::trt", "when": "setup", "outcome": "skipped", "seconds": 0,
             "message": "TensorRT is not installed"},
            {"event": "start", "nodeid": "a::teardown", "markers": gpu},
            {"event": "report", "nodeid": "a::teardown", "when": "call", "outcome": "passed", "seconds": 0.1,
             "message": ""},
            {"event": "report", "nodeid": "a::teardown", "when": "teardown", "outcome": "failed", "seconds": 0,
             "message": "device left dirty"},
            {"event": "start", "nodeid": "a::hung", "markers": gpu})
    with open(path, "a") as fh:
        fh.write('{"event": "report", "nodeid": "a::hung", "wh')  # a line cut by the kill
    on_gpu = gpu_check.read_events(str(path), "a", cuda=True)
    assert {k: v["status"] for k, v in on_gpu.items()} == {
        "a::ok": "passed", "a::cupy_skip": "failed", "a::trt": "unavailable", "a::teardown": "failed",
        "a::hung": "failed"}
    assert on_gpu["a::cupy_skip"]["message"] == "skipped on a CUDA machine: Skipped: CuPy is not available"
    assert on_gpu["a::teardown"]["outcome"] == "error" and on_gpu["a::hung"]["outcome"] == "killed"
    assert "still running" in on_gpu["a::hung"]["message"] and on_gpu["a::ok"]["seconds"] == 1.5
    on_cpu = gpu_check.read_events(str(path), "a", cuda=False)
    assert on_cpu["a::cupy_skip"]["status"] == "skipped"


def test_gpu_test_files_are_found_by_their_markers():
    files = [os.path.relpath(f, ROOT) for f in gpu_check.gpu_test_files()]
    assert "tests/kernels/test_cupy_kernels.py" in files and "tests/engine/test_static_runner.py" in files
    assert "tests/test_config.py" not in files


def test_every_gpu_path_names_tests_that_exist():
    """The README's table counts tests by id prefix: each prefix must match a real gpu-marked test."""
    import ast

    ids = set()
    for path in gpu_check.gpu_test_files():
        tree = ast.parse(open(path).read())
        ids |= {f"{os.path.relpath(path, ROOT)}::{n.name}" for n in tree.body if isinstance(n, ast.FunctionDef)}
    for name, prefixes, _ in gpu_check.GPU_PATHS:
        for prefix in prefixes:
            assert any(i.startswith(prefix) for i in ids), (name, prefix)


def _report(results, rows):
    return {"date": "2027-01-02", "environment": {"cuda_available": True, "device": {"name": "NVIDIA H200"}},
            "tests": {"results": results}, "bench": {"rows": rows}}


def test_the_readme_table_reads_a_report():
    results = {"tests/kernels/test_cupy_kernels.py::test_a": {"status": "passed"},
               "tests/kernels/test_cupy_kernels.py::test_b": {"status": "passed"},
               "tests/engine/test_static_runner.py::test_cuda_graph_replay[x]": {"status": "failed"},
               "tests/engine/test_tensorrt_runner.py::test_tensorrt_matches[a]": {"status": "unavailable"}}
    rows = [{"precision": "fp32", "backend": "torch", "strategy": "static", "available": True,
             "images_per_s": 31000.0, "pct_of_peak": 42.0}]
    table = gpu_check.readme_table("benchmarks/baseline/gpu-x.json", _report(results, rows))
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "ran on NVIDIA H200, 2027-01-02: 2 tests passed" in lines["CuPy weight kernels (perturb, filter "
                                                                     "norms, BatchNorm folding)"]
    static = lines["torch `static`: flat weight buffer, CUDA-graph replay"]
    assert "**failed** on NVIDIA H200, 2027-01-02: 1 of 1 tests" in static and "31,000 images/s (42% of peak)" in static
    assert gpu_check.NEVER_RUN in lines["TensorRT (`inputs`, `refit`)"]  # only unavailable: never ran
    assert gpu_check.NEVER_RUN in lines["sharding across GPUs (NCCL)"]


def test_the_readme_shows_the_table_of_the_latest_committed_report():
    readme = open(os.path.join(ROOT, "docs", "backends.md")).read()
    assert gpu_check.readme_table(*gpu_check.latest_report()) in readme, \
        "run: python3 scripts/gpu_check.py --write-readme"
