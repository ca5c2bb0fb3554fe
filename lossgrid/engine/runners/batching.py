"""Samples per forward pass when the user names none: CPU-tuned on the CPU, GPU-wide on CUDA.

On a 2-core CPU a batch of about 2^19 input values (128 CIFAR images) already keeps
both cores busy (measured, see benchmarks/). A GPU needs thousands of images per
launch to be busy rather than launch-bound; there a batch holds about 2^24 input values
(4096 CIFAR images, whose ResNet-56 activations stay under 1 GiB), divided among the
grid points that one forward pass evaluates at once (K-wide strategies hold K points'
activations).

Example:
    >>> import torch
    >>> x = torch.zeros(1, 3, 32, 32).expand(50_000, 3, 32, 32)  # 50,000 CIFAR images (shapes only)
    >>> default_batch_size(x, torch.device("cpu")), default_batch_size(x, torch.device("cuda"))
    (128, 4096)
    >>> default_batch_size(x, torch.device("cuda"), points=8)
    512
"""

from __future__ import annotations

import torch

from ... import inputs as inp
from ...inputs import Inputs

#: input values per batch on the CPU
CPU_BATCH_VALUES = 1 << 19
#: input values per batch (all points of a forward pass together) on a GPU
GPU_BATCH_VALUES = 1 << 24


def default_batch_size(x: Inputs, device: torch.device, points: int = 1) -> int:
    """Samples per forward pass for ``x`` on ``device`` when ``points`` grid points share each pass."""
    if torch.device(device).type == "cuda":
        return device_batch_size(x, max(GPU_BATCH_VALUES // max(int(points), 1), 1))
    return auto_batch_size(x)


def auto_batch_size(x: Inputs, budget: int = CPU_BATCH_VALUES) -> int:
    """A CPU batch of about ``budget`` input values (a power of two in [64, 4096])."""
    per_sample = inp.values_per_sample(x) if inp.num_samples(x) else 1
    size = 64
    while size * 2 * per_sample <= budget and size < 4096:
        size *= 2
    return size


def device_batch_size(x: Inputs, budget: int = GPU_BATCH_VALUES) -> int:
    """A GPU batch of about ``budget`` input values (a power of two, at least 64, at most the set's size)."""
    per_sample = inp.values_per_sample(x)
    size = 64
    while size * 2 * per_sample <= budget and size < inp.num_samples(x):
        size *= 2
    return size
