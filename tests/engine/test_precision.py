"""Precision modes: the TF32 switches they set and restore, refusals, and the error report."""

import warnings

import numpy as np
import pytest
import torch

from lossgrid.engine.precision import check_precision, precision_error, precision_mode
from lossgrid.errors import ConfigError


def _flags():
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize("precision,inside", [("fp32", (False, False)), ("tf32", (True, True)),
                                              ("bf16", (False, False))])
def test_cuda_modes_set_tf32_switches_and_restore_them(precision, inside):
    # the switches are process-wide torch settings: they can be checked without a GPU
    before = _flags()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autocast warns that CUDA is absent on this machine
        with precision_mode(precision, "cuda"):
            assert _flags() == inside
    assert _flags() == before


def test_settings_are_restored_after_an_error():
    before = _flags()
    with pytest.raises(ValueError), precision_mode("tf32", "cuda"):
        raise ValueError("boom")
    assert _flags() == before


def test_tf32_is_refused_on_the_cpu_and_unknown_precisions_everywhere():
    with pytest.raises(ConfigError, match="TF32 is a mode of NVIDIA tensor cores"):
        check_precision("tf32", "cpu")
    with pytest.raises(ConfigError, match="Unknown precision"):
        check_precision("fp8", "cuda")


def test_bf16_on_a_cpu_without_native_bf16_is_refused_with_the_reason(monkeypatch):
    from lossgrid.engine import precision

    monkeypatch.setattr(precision, "_CPU_BF16", None)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"fpu", "avx2", "fma"})
    with pytest.raises(ConfigError, match="far slower than fp32") as e:
        check_precision("bf16", "cpu")
    assert "avx512_bf16" in e.value.why and "--precision fp32" in e.value.hint
    monkeypatch.setattr(precision, "_CPU_BF16", None)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"fpu", "avx512f", "avx512_bf16"})
    check_precision("bf16", "cpu")
    # without readable flags the two precisions are timed
    monkeypatch.setattr(precision, "_CPU_BF16", None)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: None)
    monkeypatch.setattr(precision, "_bf16_speed", lambda: 0.05)
    with pytest.raises(ConfigError, match="0.05x the fp32 speed"):
        check_precision("bf16", "cpu")
    monkeypatch.setattr(precision, "_CPU_BF16", None)
    monkeypatch.setattr(precision, "_bf16_speed", lambda: 2.4)
    check_precision("bf16", "cpu")
    check_precision("bf16", "cuda")  # a GPU decides for itself


@pytest.mark.cpu_bf16
def test_bf16_on_the_cpu_runs_matmuls_in_bf16():
    with precision_mode("bf16", "cpu"):
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.float32


def test_precision_error():
    err = precision_error(np.array([1.0, 2.2]), np.array([1.0, 2.0]))
    assert err["points"] == 2 and err["max_abs_loss_error"] == pytest.approx(0.2)
    assert err["max_rel_loss_error"] == pytest.approx(0.1)


def test_fp16_runs_on_gpus_only():
    with pytest.raises(ConfigError, match="fp16 cannot run fast on cpu"):
        check_precision("fp16", "cpu")
    check_precision("fp16", "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autocast warns that CUDA is absent on this machine
        with precision_mode("fp16", "cuda"):
            assert torch.get_autocast_dtype("cuda") == torch.float16
