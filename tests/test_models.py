import pickle
import struct
import types
import zipfile

import numpy as np
import pytest
import torch

from lossgrid.errors import ModelLoadError
from lossgrid.models import load_model, load_state, read_checkpoint, read_state
from tests.conftest import small_cnn

CONFTEST = __file__.replace("test_models.py", "conftest.py")


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_factory_specs():
    m, desc = load_model("lossgrid.zoo:mlp_digits")
    assert isinstance(m, torch.nn.Module) and desc == "lossgrid.zoo:mlp_digits"
    m2, _ = load_model(f"{CONFTEST}:small_cnn")
    assert type(m2).__name__ == "SmallCNN"


@pytest.mark.parametrize("wrap", ["plain", "state_dict_key", "dataparallel"])
def test_checkpoint_forms(tmp_path, trained_cnn, wrap):
    state = trained_cnn.state_dict()
    obj = {"plain": state, "state_dict_key": {"state_dict": state, "epoch": 3, "acc": 91.0},
           "dataparallel": {f"module.{k}": v for k, v in state.items()}}[wrap]
    path = tmp_path / "ck.pt"
    torch.save(obj, path)
    model, desc = load_model(f"{CONFTEST}:small_cnn", str(path))
    assert _same(model, trained_cnn) and str(path) in desc


def test_whole_module_and_torchscript(tmp_path, trained_cnn):
    whole = tmp_path / "whole.pt"
    torch.save(trained_cnn, whole)
    with pytest.raises(ModelLoadError, match="tests.conftest.SmallCNN.*--trust-checkpoint"):
        load_model(None, str(whole))
    model, _ = load_model(None, str(whole), trust_checkpoint=True)
    assert _same(model, trained_cnn)
    ts = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(trained_cnn), ts)
    model, _ = load_model(None, str(ts))
    assert isinstance(model, torch.jit.ScriptModule) and _same(model, trained_cnn)


def test_safetensors_checkpoint(tmp_path, trained_cnn):
    from safetensors.torch import save_file

    path = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in trained_cnn.state_dict().items()}, str(path))
    model, _ = load_model(f"{CONFTEST}:small_cnn", str(path))
    assert _same(model, trained_cnn)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelLoadError, match="not a valid safetensors file"):
        load_model(f"{CONFTEST}:small_cnn", str(broken))


def test_mismatched_state_dict_names_keys(tmp_path):
    path = tmp_path / "ck.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(ModelLoadError) as e:
        load_model(f"{CONFTEST}:small_cnn", str(path))
    msg = str(e.value)
    assert "conv1.weight" in msg and "not in the model: weight" in msg
    state = small_cnn().state_dict()
    state["fc.weight"] = torch.zeros(3, 3)
    torch.save(state, path)
    with pytest.raises(ModelLoadError, match=r"fc.weight \(3, 3\) vs \(10, 96\)"):
        load_model(f"{CONFTEST}:small_cnn", str(path))


def test_bad_checkpoints(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(f"{CONFTEST}:small_cnn", str(tmp_path / "missing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(f"{CONFTEST}:small_cnn", str(corrupt))
    sd = tmp_path / "sd.pt"
    torch.save(small_cnn().state_dict(), sd)
    with pytest.raises(ModelLoadError, match="also pass --model"):
        load_model(None, str(sd))
    other = tmp_path / "other.pt"
    torch.save({"epoch": 1}, other)
    with pytest.raises(ModelLoadError, match="holds no state_dict"):
        load_model(f"{CONFTEST}:small_cnn", str(other))


@pytest.mark.parametrize("keep", [8000, 0.5, 0.99])
def test_a_truncated_checkpoint_says_so_in_the_users_words(tmp_path, keep):
    """A torch.save file cut short (a copy or download stopped): no OSError text, the size it was cut at."""
    whole = tmp_path / "whole.pt"
    torch.save(small_cnn().state_dict(), whole)
    data = whole.read_bytes()
    size = keep if isinstance(keep, int) else int(len(data) * keep)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[:size])
    with pytest.raises(ModelLoadError, match="is incomplete") as e:
        read_checkpoint(str(cut))
    text = str(e.value)
    assert f"truncated at {size:,} bytes" in text and "Errno" not in text and "OSError" not in text
    assert read_checkpoint(str(whole)).keys() == small_cnn().state_dict().keys()  # a whole one still loads


def test_bad_factories(tmp_path):
    src = tmp_path / "f.py"
    src.write_text("def bad():\n    return 3\ndef boom():\n    raise ValueError('x')\n")
    with pytest.raises(ModelLoadError, match="returned int"):
        load_model(f"{src}:bad")
    with pytest.raises(ModelLoadError, match="failed"):
        load_model(f"{src}:boom")
    with pytest.raises(ModelLoadError, match="Cannot import module"):
        load_model("no_such_pkg_xyz.mod:fn")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nofile.py") + ":fn")
    with pytest.raises(ModelLoadError, match="No model"):
        load_model(None, None)


class _Py2StylePickler(pickle._Pickler):
    """Writes ``str`` and ``bytes`` as Python 2 wrote its byte strings (SHORT_BINSTRING,
    BINSTRING), as in checkpoints saved by Python 2 code like the reference's; numpy
    scalars then hold raw bytes that UTF-8 cannot decode."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_str(self, obj):
        self._save_raw(obj.encode("ascii"), obj)

    def _save_bytes(self, obj):
        self._save_raw(obj, obj)

    def _save_raw(self, data, obj):
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_str
    dispatch[bytes] = _save_bytes


_PY2_STYLE = types.SimpleNamespace(__name__="py2_style", Pickler=_Py2StylePickler,
                                   dump=lambda obj, f, protocol: _Py2StylePickler(f, protocol).dump(obj))


def _old_torch_state(model, prefix=""):
    """A state_dict as PyTorch < 0.4.1 wrote it: no BatchNorm ``num_batches_tracked``."""
    return {prefix + k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("writer", ["legacy", "py2_style"])
def test_reference_t7_files(tmp_path, trained_cnn, writer):
    """The reference's published files: legacy serialization, {'state_dict', 'acc', 'epoch'},
    maybe a module. prefix, no num_batches_tracked; read with weights_only."""
    obj = {"state_dict": _old_torch_state(trained_cnn, "module."), "acc": np.float64(93.39), "epoch": 300}
    path = tmp_path / "model_300.t7"
    extra = {"pickle_module": _PY2_STYLE} if writer == "py2_style" else {}
    torch.save(obj, path, _use_new_zipfile_serialization=False, **extra)
    assert not zipfile.is_zipfile(path)
    stored = read_checkpoint(str(path))
    assert stored["epoch"] == 300 and float(stored["acc"]) == pytest.approx(93.39)
    fresh = small_cnn()
    counters = {k: v.clone() for k, v in fresh.state_dict().items() if k.endswith("num_batches_tracked")}
    load_state(fresh, read_state(str(path)), str(path))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in _old_torch_state(trained_cnn).items())
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in counters.items())  # left as they were
    model, _ = load_model(f"{CONFTEST}:small_cnn", str(path))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), trained_cnn.eval()(x))


def test_only_num_batches_tracked_may_be_missing(tmp_path, trained_cnn):
    state = _old_torch_state(trained_cnn)
    del state["bn1.running_mean"]
    path = tmp_path / "ck.t7"
    torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelLoadError, match="missing in .*: bn1.running_mean") as e:
        load_model(f"{CONFTEST}:small_cnn", str(path))
    assert "bn1.num_batches_tracked" not in str(e.value) and "bn2.num_batches_tracked" not in str(e.value)
    extra = _old_torch_state(trained_cnn)
    extra["bn1.num_batches_tracked_x"] = torch.tensor(1)
    with pytest.raises(ModelLoadError, match="not in the model: bn1.num_batches_tracked_x"):
        load_state(small_cnn(), extra)


def test_bare_zoo_names(tmp_path):
    model, desc = load_model("resnet20")
    assert desc == "resnet20" and type(model).__name__ == "CifarResNet"
    path = tmp_path / "r20.t7"
    torch.save({"state_dict": _old_torch_state(model)}, path, _use_new_zipfile_serialization=False)
    _, desc = load_model("resnet20", str(path))
    assert desc == f"resnet20 @ {path}"
    with pytest.raises(ModelLoadError, match="No model named 'resnet56_noshortt'.*resnet56_noshort"):
        load_model("resnet56_noshortt")
    with pytest.raises(ModelLoadError, match="does not match"):
        load_model("resnet56", str(path))
    with pytest.raises(ModelLoadError, match="net.py:factory"):
        load_model("net.py")
