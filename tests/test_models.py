import pytest
import torch

from lossgrid.errors import ModelLoadError
from lossgrid.models import load_model
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
