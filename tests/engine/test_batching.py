"""Default batch sizes: CPU-tuned on the CPU, GPU-wide on CUDA, shared among the points of a pass.

The arithmetic needs no GPU (a ``torch.device("cuda")`` object is only a name); the gpu twin
checks that the runners built on CUDA use it.
"""

import pytest
import torch

from lossgrid.engine.runners.batching import (
    CPU_BATCH_VALUES,
    GPU_BATCH_VALUES,
    auto_batch_size,
    default_batch_size,
    device_batch_size,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
CIFAR = torch.zeros(1, 3, 32, 32).expand(50_000, 3, 32, 32)  # shapes only: no 600 MB of zeros


def test_cpu_batches_keep_their_tuned_size_whatever_the_points():
    assert default_batch_size(CIFAR, CPU) == default_batch_size(CIFAR, CPU, points=8) == 128
    assert auto_batch_size(torch.zeros(10, 64)) == 4096  # small inputs: large batches, capped
    assert 128 * 3 * 32 * 32 <= CPU_BATCH_VALUES


def test_gpu_batches_are_thousands_of_images_divided_among_the_points_of_a_pass():
    assert default_batch_size(CIFAR, CUDA) == 4096
    assert default_batch_size(CIFAR, CUDA, points=8) == 512  # a K-wide pass holds 8 points' activations
    assert default_batch_size(CIFAR, torch.device("cuda:1"), points=4) == 1024
    assert default_batch_size(CIFAR[:300], CUDA) == 512  # at most the set (the next power of two)
    assert default_batch_size(CIFAR, CUDA, points=100_000) == 64  # never below 64
    assert 4096 * 3 * 32 * 32 <= GPU_BATCH_VALUES < 2 * 4096 * 3 * 32 * 32


def test_dict_inputs_count_every_part():
    x = {"input_ids": torch.zeros(1, 128, dtype=torch.long).expand(100_000, 128),
         "mask": torch.zeros(1, 128).expand(100_000, 128)}
    assert device_batch_size(x) == GPU_BATCH_VALUES // 256  # 256 values per sample


@pytest.mark.gpu
@pytest.mark.parametrize("strategy,points", [("loop", 1), ("vmap", 4), ("wide", 4), ("static", 1)])
def test_runners_on_cuda_take_gpu_sized_batches(trained_cnn, strategy, points):
    from lossgrid.config import EvalSpec
    from lossgrid.data import EvalData
    from lossgrid.engine.losses import cross_entropy
    from lossgrid.engine.params import ParamLayout
    from lossgrid.engine.runners import make_runner

    x = torch.randn(20_000, 1, 8, 8)
    data = EvalData(x, torch.randint(0, 10, (20_000,)), "random")
    runner = make_runner(EvalSpec(strategy=strategy, device="cuda", points_per_call=4), trained_cnn,
                         ParamLayout.from_model(trained_cnn), data, cross_entropy)
    try:
        assert runner.describe()["batch_size"] == default_batch_size(x, CUDA, points) >= 4096
    finally:
        runner.close()
