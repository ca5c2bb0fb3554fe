"""pytest plugin of the GPU check: every test's start and outcome appended, as it happens, to the
JSON-lines file named by ``LOSSGRID_GPU_CHECK_EVENTS``, so that a pytest killed at its limit
still leaves the outcome of every test it finished and names the one it was running.

Loaded by ``scripts/gpu_check.py`` with ``-p gpu_check_plugin``; does nothing without the variable.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

#: the markers the check reports (what a test needs to run)
KNOWN_MARKERS = {"gpu", "cupy", "tensorrt", "ort_cuda", "nvcc", "cxx", "cpu_bf16"}
_markers: dict[str, list[str]] = {}


def _write(record: dict[str, Any]) -> None:
    path = os.environ.get("LOSSGRID_GPU_CHECK_EVENTS")
    if path:
        with open(path, "a", encoding="utf-8") as fh:  # closed at once: on disk even if pytest is killed next
            fh.write(json.dumps({**record, "time": time.time()}) + "\n")


def _message(report: Any) -> str:
    """A skip's reason, or the end of a failure's text (its last 1,500 characters)."""
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    text = getattr(report, "longreprtext", "") or str(longrepr or "")
    return text[-1500:]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        _markers[item.nodeid] = sorted({m.name for m in item.iter_markers()} & KNOWN_MARKERS)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _write({"event": "collect_error", "nodeid": report.nodeid, "message": _message(report)})


def pytest_runtest_logstart(nodeid: str) -> None:
    _write({"event": "start", "nodeid": nodeid, "markers": _markers.get(nodeid, [])})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or not report.passed:  # a setup's skip or error, a teardown's error
        _write({"event": "report", "nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                "seconds": round(report.duration, 3), "message": "" if report.passed else _message(report)})


def pytest_runtest_logfinish(nodeid: str) -> None:
    _write({"event": "finish", "nodeid": nodeid})
