"""ONNX Runtime sessions: one build installed at a time, and messages that say which to install.

The messages are checked with the installed distributions simulated (``installed_builds`` and
the module lookup patched): they are lossgrid's own diagnosis, not ONNX Runtime's behaviour.
"""

import sys

import pytest

from lossgrid.errors import MissingBackendError
from lossgrid.exporters import session


@pytest.mark.parametrize("builds,needles", [
    ({"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"},
     ["both installed", "overwrite each other's files", "pip uninstall -y onnxruntime onnxruntime-gpu",
      "pip install onnxruntime-gpu (alone)"]),
    ({"onnxruntime": "1.31.1"}, ["the CPU build (onnxruntime 1.31.1", "pip uninstall -y onnxruntime, then",
                                 '"lossgrid[gpu-cuda13]"']),
    ({"onnxruntime-gpu": "1.31.1"}, ["onnxruntime-gpu 1.31.1 is installed but offers only", "cuDNN"]),
])
def test_a_missing_cuda_provider_is_explained_by_what_is_installed(monkeypatch, builds, needles):
    monkeypatch.setattr(session, "installed_builds", lambda: builds)
    message = str(session.missing_cuda_provider())
    for needle in needles:
        assert needle in message
    if "onnxruntime-gpu" in builds and "onnxruntime" not in builds:  # the same install would not help
        assert 'pip install "lossgrid[gpu' not in message


def test_the_installed_builds_are_read_from_the_distributions():
    assert set(session.installed_builds()) <= {"onnxruntime", "onnxruntime-gpu"}
    assert "onnxruntime" in session.installed_builds()  # the dev install has the CPU build


def test_no_onnxruntime_names_the_two_builds(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if it were absent
    with pytest.raises(MissingBackendError) as e:
        session.onnxruntime()
    assert 'pip install "lossgrid[cpu]"' in str(e.value) and "onnxruntime-gpu" in str(e.value)
    assert "install one build" in str(e.value)


def test_auto_on_the_cpu_without_onnxruntime_times_torch_only(monkeypatch, trained_cnn, digits_small):
    import lossgrid.engine.runners as runners
    from lossgrid.config import EvalSpec
    from lossgrid.engine.losses import cross_entropy
    from lossgrid.engine.params import ParamLayout

    monkeypatch.setattr(runners, "onnxruntime_installed", lambda: False)
    runner = runners.make_runner(EvalSpec(backend="auto"), trained_cnn, ParamLayout.from_model(trained_cnn),
                                 digits_small, cross_entropy)
    assert [name for name, _ in runner.candidates] == ["torch/loop", "torch/static", "torch/vmap", "torch/wide"]
    runner.close()
