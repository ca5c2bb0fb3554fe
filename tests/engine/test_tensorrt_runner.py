"""The tensorrt backend.

What runs everywhere (no TensorRT, no GPU): the typed errors (TensorRT's absence
is simulated with ``sys.modules["tensorrt"] = None`` so the test means the same
where TensorRT is installed), the engine cache (plain bytes), and the ONNX graphs
the runner would hand TensorRT, run here with ONNX Runtime on the CPU against
the per-point PyTorch reference (loss within 1e-5 relative).

Two tests use a *fake* ``tensorrt`` module (a bare ``types.ModuleType`` or a
stand-in builder config): they only exercise lossgrid's own control flow (which
error comes when, which flags are set) and verify nothing about TensorRT itself.

The runner against TensorRT is checked only by the tests marked ``tensorrt`` and
``gpu`` (both strategies, K=1 and K=4, loss within 1e-5 relative of the torch
runner in fp32), which conftest.py skips where TensorRT or a GPU is missing.
"""

import logging
import os
import sys
import types

import numpy as np
import pytest
import torch

from lossgrid.engine.losses import cross_entropy
from lossgrid.engine.params import ParamLayout, full_states
from lossgrid.engine.runners._trt_cache import EngineCache, cache_key, default_cache_dir, pack
from lossgrid.errors import ConfigError, MissingBackendError

KEY_ARGS = dict(strategy="inputs", precision="fp32", batch_profile=(1, 256, 256), gpu_name="NVIDIA H200",
                capability=(9, 0), trt_version="10.13.0")


def _setup(model, data):
    layout = ParamLayout.from_model(model)
    return layout, layout.flatten(dict(model.named_parameters()))


def _points(base, k, seed=0, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    return base[None] + scale * base.abs().mean() * torch.randn(k, base.numel(), generator=gen)


def _reference(model, layout, weights, data):
    """Per-point PyTorch: mean cross-entropy of each weight set on the whole set."""
    from torch.func import functional_call

    with torch.no_grad():
        return np.array([float(cross_entropy(functional_call(model, layout.unflatten(w), (data.x,)), data.y).mean())
                         for w in weights])


# -- typed errors ------------------------------------------------------------------------
def test_missing_tensorrt_is_a_typed_error_with_nvidias_hint(monkeypatch, trained_cnn, digits_small):
    from lossgrid.engine.runners.tensorrt_runner import TensorRTRunner, tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if TensorRT were absent
    layout, _ = _setup(trained_cnn, digits_small)
    with pytest.raises(MissingBackendError) as e:
        TensorRTRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy, device="cuda")
    text = str(e.value)
    assert "tensorrt" in text and "not on PyPI" in text and "https://pypi.nvidia.com" in text
    assert 'pip install "lossgrid[tensorrt]"' in text and "container" in text
    with pytest.raises(MissingBackendError):
        tensorrt()


def test_bad_settings_are_refused_and_a_missing_tensorrt_named_before_the_device(monkeypatch, trained_cnn,
                                                                                    digits_small):
    """The missing-TensorRT error comes first on any device (it says where TensorRT comes from); a
    FAKE, empty ``tensorrt`` module then gets past the import to check our device/precision errors."""
    from lossgrid.engine.runners.tensorrt_runner import TensorRTRunner

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    layout, _ = _setup(trained_cnn, digits_small)
    args = (trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy)
    with pytest.raises(ConfigError, match="Unknown tensorrt strategy"):
        TensorRTRunner(*args, strategy="baked")
    with pytest.raises(ConfigError, match="points_per_call must be at least 1"):
        TensorRTRunner(*args, points_per_call=0)
    with pytest.raises(MissingBackendError, match="not on PyPI"):
        TensorRTRunner(*args, device="cpu")
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(ConfigError, match="cannot run on cpu"):
        TensorRTRunner(*args, device="cpu")
    with pytest.raises(ConfigError, match="Unknown precision"):
        TensorRTRunner(*args, precision="fp8")


def test_no_cuda_is_a_typed_error(monkeypatch, trained_cnn, digits_small):
    """Uses a FAKE, empty ``tensorrt`` module only to get past the import: checks our error, not TensorRT."""
    from lossgrid.engine.runners.tensorrt_runner import TensorRTRunner

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    layout, _ = _setup(trained_cnn, digits_small)
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as e:
        TensorRTRunner(trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy, device="cuda")
    assert "torch.cuda.is_available() is False" in str(e.value)


class _FakeConfig:
    """A FAKE builder config recording flags (our flag logic only; nothing about TensorRT)."""

    def __init__(self):
        self.flags = {"TF32"}  # TensorRT's default

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)


def _fake_trt(*flags):
    return types.SimpleNamespace(__version__="fake", BuilderFlag=types.SimpleNamespace(**{f: f for f in flags}))


def test_precision_flags_on_a_fake_builder_config():
    """Uses a FAKE ``tensorrt`` namespace (10.x has BF16, 11.x does not): checks lossgrid's flag choices only."""
    from lossgrid.engine.runners.tensorrt_runner import apply_precision

    trt10, trt11 = _fake_trt("TF32", "BF16", "REFIT"), _fake_trt("TF32", "REFIT")
    for trt in (trt10, trt11):
        config = _FakeConfig()
        apply_precision(trt, config, "fp32")
        assert config.flags == set()  # strict fp32 clears the default TF32
        config = _FakeConfig()
        apply_precision(trt, config, "tf32")
        assert config.flags == {"TF32"}
    config = _FakeConfig()
    apply_precision(trt10, config, "bf16")
    assert config.flags == {"BF16"}
    with pytest.raises(ConfigError, match="no BF16 builder flag") as e:
        apply_precision(trt11, _FakeConfig(), "bf16")
    assert "TensorRT 11 takes precision from tensor types" in str(e.value)


class _FakeContext:
    """A FAKE execution context that, as TensorRT documents, refuses (returns False for) an
    address not aligned to 256 bytes and otherwise records it: lossgrid's binding logic only."""

    def __init__(self):
        self.addresses, self.shapes, self.runs = {}, {}, 0

    def set_tensor_address(self, name, ptr):
        if ptr % 256:
            return False
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        return True

    def execute_async_v3(self, stream):
        self.runs += 1
        return True


def _bare_runner(batch_size, sample_shape):
    """A TensorRTRunner's binding state without TensorRT: only what ``_execute`` reads."""
    from lossgrid.engine.runners.tensorrt_runner import TensorRTRunner, aligned_empty

    runner = TensorRTRunner.__new__(TensorRTRunner)
    runner.context, runner.k, runner.batch_size, runner.device = _FakeContext(), 1, batch_size, torch.device("cpu")
    runner.manifest = types.SimpleNamespace(data_input="x", output="logits", data_shape=(batch_size, *sample_shape))
    runner._rows, runner._staging = batch_size, None
    runner._out = aligned_empty((1, batch_size, 10), torch.float32, "cpu")
    runner.stream = types.SimpleNamespace(cuda_stream=0)
    return runner


def test_misaligned_batch_views_are_staged_into_an_aligned_buffer():
    """Batches are views of one tensor: at a --batch-size of 3 samples of 7 floats, the second batch starts
    84 bytes in, an address TensorRT refuses; it is copied into an aligned staging buffer and bound there."""
    from lossgrid.engine.runners.tensorrt_runner import aligned_empty

    data = aligned_empty((9, 7), torch.float32, "cpu")
    data.copy_(torch.arange(63, dtype=torch.float32).view(9, 7))
    runner = _bare_runner(3, (7,))
    batches = data.split(3)
    assert batches[1].data_ptr() % 256 != 0
    for xb in batches:
        runner._execute(xb)
        bound = runner.context.addresses["x"]
        assert bound % 256 == 0
        if xb.data_ptr() % 256 == 0:  # an aligned view is bound as it is: no copy
            assert bound == xb.data_ptr()
        else:
            assert bound == runner._staging.data_ptr() and torch.equal(runner._staging[:3], xb)
    assert runner.context.runs == 3 and runner._staging is not None


def test_a_refused_address_is_an_error_not_a_run_on_a_stale_one():
    from lossgrid.engine.runners.tensorrt_runner import aligned_empty, bind_address

    buf = aligned_empty((8,), torch.float32, "cpu")
    bind_address(ctx := _FakeContext(), "w", buf)
    assert ctx.addresses == {"w": buf.data_ptr()}
    with pytest.raises(RuntimeError, match="refused the address of tensor 'w' \\(not aligned to 256 bytes\\)"):
        bind_address(ctx, "w", buf[1:])


def test_aligned_empty_is_aligned_for_every_dtype():
    from lossgrid.engine.runners.tensorrt_runner import aligned_empty

    for dtype in (torch.float32, torch.float16, torch.int64, torch.uint8):
        for n in (1, 5, 1000):
            t = aligned_empty((n, 3), dtype, "cpu")
            assert t.data_ptr() % 256 == 0 and t.shape == (n, 3) and t.dtype == dtype and t.is_contiguous()


# -- the engine cache (bytes only) ------------------------------------------------------------
def test_cache_key_changes_with_each_input_and_is_stable_otherwise():
    base = cache_key(b"onnx-bytes", **KEY_ARGS)
    assert base == cache_key(b"onnx-bytes", **dict(KEY_ARGS)) and len(base) == 64
    changed = {"strategy": "refit", "precision": "tf32", "batch_profile": (1, 128, 256), "gpu_name": "NVIDIA H100",
               "capability": (8, 0), "trt_version": "11.3.0"}
    keys = {cache_key(b"onnx-bytez", **KEY_ARGS)}
    for field, value in changed.items():
        keys.add(cache_key(b"onnx-bytes", **{**KEY_ARGS, field: value}))
    assert base not in keys and len(keys) == len(changed) + 1


def test_default_cache_dir(monkeypatch, tmp_path):
    assert default_cache_dir(tmp_path / "mine") == str(tmp_path / "mine")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == os.path.join(str(tmp_path / "xdg"), "lossgrid", "tensorrt")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == os.path.join(str(tmp_path / "home"), ".cache", "lossgrid", "tensorrt")


def test_cache_hit_miss_and_the_entry_on_disk(tmp_path):
    cache = EngineCache(tmp_path / "cache")  # created on the first write
    builds = []

    def build():
        builds.append(1)
        return b"engine-plan"

    engine, hit, path = cache.get_or_build("k1", build, lambda data: data.decode())
    assert (engine, hit, len(builds)) == ("engine-plan", False, 1)
    assert open(path, "rb").read() == pack(b"engine-plan")
    engine, hit, _ = cache.get_or_build("k1", build, lambda data: data.decode())
    assert (engine, hit, len(builds)) == ("engine-plan", True, 1)
    assert os.listdir(tmp_path / "cache") == ["k1.engine"]  # no temporary files left


def test_cache_write_is_atomic(monkeypatch, tmp_path, caplog):
    import lossgrid._files as files

    cache = EngineCache(tmp_path)
    assert cache.store("k", b"old engine")

    def half_then_fail(path, data):  # a full disk halfway through the temporary file
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "write_new_file", half_then_fail)
    with caplog.at_level(logging.WARNING):
        assert not cache.store("k", b"new engine, longer than the old one")
        assert not cache.store("other", b"never written")
    assert "No space left on device" in caplog.text
    assert cache.load("k") == b"old engine"  # the old entry is intact, the new one absent
    assert sorted(os.listdir(tmp_path)) == ["k.engine"]  # and no half-written temporary file

    monkeypatch.undo()
    monkeypatch.setattr(files.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(5, "I/O error")))
    assert not cache.store("k", b"new engine")
    assert cache.load("k") == b"old engine" and sorted(os.listdir(tmp_path)) == ["k.engine"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_corrupt_entry_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    cache = EngineCache(tmp_path)
    cache.store("k", b"engine-plan-bytes")
    path = cache.path("k")
    data = open(path, "rb").read()
    damaged = {"truncate": data[:-4], "flip": data[:-1] + bytes([data[-1] ^ 1]), "garbage": b"\x00" * 64,
               "empty": b""}[damage]
    open(path, "wb").write(damaged)
    with caplog.at_level(logging.WARNING):
        engine, hit, _ = cache.get_or_build("k", lambda: b"rebuilt", lambda d: d)
    assert (engine, hit) == (b"rebuilt", False)
    assert "corrupt" in caplog.text
    assert cache.load("k") == b"rebuilt"


@pytest.mark.parametrize("failure", ["none", "raises"])
def test_an_undeserializable_entry_is_rebuilt_with_a_warning(tmp_path, caplog, failure):
    """A well-formed entry the runtime rejects (a driver update, say): TensorRT returns None or raises."""
    cache = EngineCache(tmp_path)
    cache.store("k", b"stale plan")

    def deserialize(data):
        if data == b"stale plan":
            if failure == "raises":
                raise RuntimeError("plan built by another TensorRT")
            return None
        return data

    with caplog.at_level(logging.WARNING):
        engine, hit, _ = cache.get_or_build("k", lambda: b"fresh plan", deserialize)
    assert (engine, hit) == (b"fresh plan", False) and "cannot be deserialized" in caplog.text
    assert cache.load("k") == b"fresh plan"


def test_an_unwritable_cache_still_gives_the_engine(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING):
        engine, hit, _ = EngineCache(blocker / "cache").get_or_build("k", lambda: b"plan", lambda d: d)
    assert (engine, hit) == (b"plan", False) and "without caching" in caplog.text


# -- the graphs TensorRT would be given, run with ONNX Runtime on the CPU ----------------------------
@pytest.mark.parametrize("k", [1, 4])
def test_inputs_graph_matches_the_per_point_reference(trained_cnn, digits_small, k):
    from lossgrid.engine.runners.tensorrt_runner import onnx_for_tensorrt
    from lossgrid.exporters.onnx import float_state
    from lossgrid.exporters.session import make_session

    layout, base = _setup(trained_cnn, digits_small)
    weights = _points(base, k)
    onnx_bytes, export = onnx_for_tensorrt(trained_cnn, digits_small.x[:2], "inputs", k)
    assert export.manifest.k == k and {i["name"] for i in export.manifest.inputs} <= set(export.wide.input_names)
    prepared = export.wide.prepare(full_states(layout, weights, float_state(trained_cnn)))
    feeds = {n: prepared[n].contiguous().numpy() for n in export.manifest.input_names}
    logits = make_session(onnx_bytes).run([export.manifest.output],
                                          {export.manifest.data_input: digits_small.x.numpy(), **feeds})[0]
    got = np.array([float(cross_entropy(torch.from_numpy(logits[i]), digits_small.y).mean()) for i in range(k)])
    np.testing.assert_allclose(got, _reference(trained_cnn, layout, weights, digits_small), rtol=1e-5)


def test_refit_graph_holds_every_weight_as_a_named_initializer(trained_cnn, digits_small):
    """The refit graph as built (the model's own weights) and with each point's weights
    substituted by name, as the refitter does, against the per-point reference."""
    import onnx

    from lossgrid.engine.runners.onnxruntime_runner import _bake
    from lossgrid.engine.runners.tensorrt_runner import onnx_for_tensorrt
    from lossgrid.exporters.onnx import float_state
    from lossgrid.exporters.session import make_session

    layout, base = _setup(trained_cnn, digits_small)
    onnx_bytes, export = onnx_for_tensorrt(trained_cnn, digits_small.x[:2], "refit")
    proto = onnx.load_from_string(onnx_bytes)
    names = export.manifest.input_names
    assert {i.name for i in proto.graph.input} == {export.manifest.data_input}  # only the data is an input
    assert set(names) <= {i.name for i in proto.graph.initializer}

    def loss_of(model_bytes):
        feeds = {export.manifest.data_input: digits_small.x.numpy()}
        out = make_session(model_bytes).run([export.manifest.output], feeds)[0]
        return float(cross_entropy(torch.from_numpy(out[0]), digits_small.y).mean())

    np.testing.assert_allclose(loss_of(onnx_bytes), _reference(trained_cnn, layout, base[None], digits_small),
                               rtol=1e-5)
    weights = _points(base, 3, seed=1)
    prepared = export.wide.prepare(full_states(layout, weights, float_state(trained_cnn)))
    got = [loss_of(_bake(proto, {n: prepared[n][i:i + 1].contiguous().numpy() for n in names})) for i in range(3)]
    np.testing.assert_allclose(got, _reference(trained_cnn, layout, weights, digits_small), rtol=1e-5)


# -- TensorRT on a GPU (skipped by conftest.py without TensorRT or a GPU) --------------------------
@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("strategy,k", [("inputs", 1), ("inputs", 4), ("refit", 1), ("refit", 4)])
def test_tensorrt_matches_the_torch_runner_in_fp32(tmp_path, trained_cnn, digits_small, strategy, k):
    from lossgrid.engine.runners.tensorrt_runner import TensorRTRunner
    from lossgrid.engine.runners.torch_runner import TorchRunner

    layout, base = _setup(trained_cnn, digits_small)
    weights = _points(base, 6, seed=2)  # 6 points: with K=4 the last call is padded
    args = (trained_cnn, layout, digits_small.x, digits_small.y, cross_entropy)
    ref_loss, ref_acc, _ = TorchRunner(*args, device="cuda", precision="fp32").evaluate(weights)
    with TensorRTRunner(*args, strategy=strategy, points_per_call=k, batch_size=64, cache_dir=tmp_path) as runner:
        loss, acc, _ = runner.evaluate(weights.cuda())
        info = runner.describe()
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert np.mean(acc == ref_acc) >= 0.99 or np.allclose(acc, ref_acc, atol=1.0)
    assert info["backend"] == "tensorrt" and info["strategy"] == strategy and info["precision"] == "fp32"
    assert info["engine_cache_hit"] is False and os.path.exists(info["engine_cache"])
    with TensorRTRunner(*args, strategy=strategy, points_per_call=k, batch_size=64, cache_dir=tmp_path) as again:
        assert again.describe()["engine_cache_hit"] is True
        np.testing.assert_allclose(again.evaluate(weights)[0], ref_loss, rtol=1e-5)
