"""Markers, skips and shared fixtures. This is the one place that decides to skip."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
import torch
from torch import nn


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _cupy_gpu() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    import cupy  # noqa: PLC0415 - only probed when installed

    return bool(cupy.cuda.is_available())


def _ort_cuda() -> bool:
    from lossgrid.exporters.session import cuda_provider_available

    return torch.cuda.is_available() and cuda_provider_available()


def _cpu_bf16_reason() -> str | None:
    from lossgrid.engine.precision import cpu_bf16

    fast, why = cpu_bf16()
    return None if fast else f"this CPU has no native bf16, so lossgrid refuses bf16 on it ({why})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {
        "gpu": None if _cuda_available() else "no CUDA GPU on this machine",
        "cupy": None if _cupy_gpu() else "CuPy with a usable GPU is not available (pip install \"lossgrid[gpu]\")",
        "tensorrt": None if importlib.util.find_spec("tensorrt") else "TensorRT is not installed",
        "nvcc": None if shutil.which("nvcc") else "nvcc (the CUDA compiler) is not installed",
        "cxx": None if shutil.which("g++") else "g++ (the C++ compiler) is not installed",
        "cpu_bf16": _cpu_bf16_reason(),
        "ort_cuda": None if _ort_cuda() else ("ONNX Runtime's CUDA provider with a GPU is not available "
                                              "(pip install \"lossgrid[gpu]\" installs onnxruntime-gpu)"),
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


class SmallCNN(nn.Module):
    """Conv + BN + residual + Linear on 1x8x8 inputs: every kind of tensor a direction touches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(h + self.bn2(self.conv2(h)))
        h = nn.functional.max_pool2d(h, 2)
        return self.fc(h.flatten(1))


def small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN()


def trained_small_cnn(steps: int = 60) -> SmallCNN:
    """A SmallCNN trained briefly on digits, with non-trivial BN running stats."""
    from lossgrid.data import load_data

    data = load_data("digits:train")
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (64,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def trained_cnn() -> SmallCNN:
    return trained_small_cnn()


@pytest.fixture(scope="session")
def digits_small():
    from lossgrid.data import load_data

    return load_data("digits:test", samples=150)


#: session fixtures shared by many tests: a test must leave them where they were (on the CPU)
SHARED = ("trained_cnn", "digits_small", "digits_all")


@pytest.fixture(autouse=True)
def _shared_fixtures_stay_on_the_cpu(request: pytest.FixtureRequest):
    yield
    for name in SHARED:
        if name not in request.fixturenames:
            continue
        value = request.getfixturevalue(name)
        tensors = [*value.parameters(), *value.buffers()] if isinstance(value, nn.Module) else \
            [t for t in (getattr(value, "x", None), getattr(value, "y", None)) if isinstance(t, torch.Tensor)]
        moved = sorted({str(t.device) for t in tensors if t.device.type != "cpu"})
        assert not moved, f"the test left the shared fixture {name} on {', '.join(moved)}"
