"""The package's requirements, read from setup.py without running it: one ONNX Runtime build per install."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_kwargs() -> dict:
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords
            if k.arg in ("install_requires", "extras_require")}


def _names(requirements: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip() for r in requirements}


def test_no_install_holds_both_onnxruntime_builds():
    kw = _setup_kwargs()
    base = _names(kw["install_requires"])
    assert not base & {"onnxruntime", "onnxruntime-gpu"}  # a plain install chooses no build
    extras = {name: _names(reqs) for name, reqs in kw["extras_require"].items()}
    for name, reqs in extras.items():
        assert not {"onnxruntime", "onnxruntime-gpu"} <= base | reqs, name
    assert "onnxruntime" in extras["cpu"] and "onnxruntime" in extras["dev"]
    assert "onnxruntime-gpu" in extras["gpu"] and "onnxruntime-gpu" in extras["gpu-cuda13"]


def test_the_make_install_keeps_the_cpu_build_and_the_harness_plugin():
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    assert '-e ".[dev]"' in makefile  # make demo / make test install the dev extra: ONNX Runtime's CPU build
    assert "pytest-timeout" in open(os.path.join(ROOT, "constraints.txt")).read()
