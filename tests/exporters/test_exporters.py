"""K-wide models and ONNX export, each checked against the plain PyTorch model point by point."""

import onnx
import pytest
import torch
from torch import nn
from torch.func import functional_call

from lossgrid import zoo
from lossgrid.errors import ExportError
from lossgrid.exporters.manifest import METADATA_KEY, read_manifest
from lossgrid.exporters.onnx import check_parity, export_onnx, load_onnx, random_point_states
from lossgrid.exporters.wide import FOLDED, WideModel
from tests.conftest import small_cnn


def with_random_bn_stats(model):
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


MODELS = {
    "mlp": (zoo.mlp_digits, lambda: torch.randn(5, 1, 8, 8)),
    "resnet": (zoo.resnet_digits, lambda: torch.randn(5, 1, 8, 8)),
    "vgg": (zoo.vgg_digits, lambda: torch.randn(5, 1, 8, 8)),
    "densenet": (zoo.densenet_digits, lambda: torch.randn(5, 1, 8, 8)),
    "transformer": (zoo.transformer_tokens, lambda: torch.randint(0, 32, (5, 12))),
    "conv1d": (zoo.conv1d_digits, lambda: torch.randn(5, 1, 8, 8)),
}


def plain(model, states, x):
    k = next(iter(states.values())).shape[0]
    with torch.no_grad():
        return torch.stack([functional_call(model, {n: v[i] for n, v in states.items()}, (x,)) for i in range(k)])


@pytest.mark.parametrize("k", [1, 4, 16])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("fold", [True, False])
def test_wide_model_matches_plain_model(name, k, fold):
    torch.manual_seed(0)
    factory, data = MODELS[name]
    model = with_random_bn_stats(factory())
    x = data()
    states = random_point_states(model, k, seed=k)
    wide = WideModel(model, k=k, fold_bn=fold)
    with torch.no_grad():
        got = wide.run(x, wide.prepare(states))
    torch.testing.assert_close(got, plain(model, states, x), rtol=1e-4, atol=1e-4)
    if fold and name in ("resnet", "vgg"):
        assert wide.folds and all(FOLDED in n for n in wide.input_names[-2 * len(wide.folds):])


@pytest.mark.parametrize("k", [1, 4, 16])
@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_export_matches_pytorch(name, k):
    torch.manual_seed(0)
    factory, data = MODELS[name]
    model = with_random_bn_stats(factory())
    result = export_onnx(model, data(), k=k, description=name)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    proto = onnx.load_from_string(result.model_bytes)
    onnx.checker.check_model(proto)
    manifest = read_manifest(proto)
    assert manifest.k == k and manifest.model == name
    # every weight is a real graph input with a leading [k] dimension; nothing is baked in
    inputs = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    for entry in manifest.inputs:
        assert inputs[entry["name"]] == [k, *entry["shape"]]
    assert not proto.graph.initializer
    assert inputs["input"][0] == "batch"


def test_batchnorm_is_folded_by_us_not_under_original_names():
    model = with_random_bn_stats(zoo.resnet_digits())
    result = export_onnx(model, torch.randn(3, 1, 8, 8), k=2)
    names = set(result.manifest.input_names)
    assert "conv1.weight" not in names and "bn1.running_var" not in names
    assert f"conv1.weight{FOLDED}bn1" in names and f"conv1.bias{FOLDED}bn1" in names
    ops = {n.op_type for n in onnx.load_from_string(result.model_bytes).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops


def test_dynamic_batch_dimension():
    from lossgrid.exporters.session import make_session

    model = with_random_bn_stats(zoo.resnet_digits())
    result = export_onnx(model, torch.randn(2, 1, 8, 8), k=3)
    session = make_session(result.model_bytes)
    from lossgrid.exporters.wide import WideModel as W

    states = random_point_states(model, 3)
    prepared = W(model, 3).prepare(states)
    feeds = {n: prepared[n].contiguous().numpy() for n in result.manifest.input_names}
    for batch in (1, 7, 33):
        x = torch.randn(batch, 1, 8, 8)
        out = session.run(None, {"input": x.numpy(), **feeds})[0]
        assert out.shape == (3, batch, 10)
        torch.testing.assert_close(torch.from_numpy(out), plain(model, states, x), rtol=1e-4, atol=1e-4)


def test_parity_check_catches_a_wrong_graph():
    model = zoo.mlp_digits().eval()
    result = export_onnx(model, torch.randn(2, 1, 8, 8), k=2)
    proto = onnx.load_from_string(result.model_bytes)
    relu = next(n for n in proto.graph.node if n.op_type == "Relu")
    relu.op_type = "Sigmoid"  # a graph that computes something else
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        check_parity(proto.SerializeToString(), model, torch.randn(2, 1, 8, 8))


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.PixelShuffle(2))

    def forward(self, x):
        return self.features(x).flatten(1)


class ControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


def test_unsupported_module_names_path_and_type():
    with pytest.raises(ExportError) as e:
        WideModel(Unsupported())
    assert "features.1" in str(e.value) and "PixelShuffle" in str(e.value)


def test_dynamic_control_flow_is_refused():
    with pytest.raises(ExportError, match="control flow"):
        WideModel(ControlFlow())


def test_unsupported_function_is_named():
    class Sorts(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return torch.sort(self.fc(x.flatten(1)), dim=1).values

    with pytest.raises(ExportError, match="sort"):
        export_onnx(Sorts(), torch.randn(2, 1, 8, 8), k=2)


def test_load_onnx_requires_manifest(tmp_path):
    model = small_cnn().eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, torch.randn(2, 1, 8, 8), k=2, path=path)
    proto, manifest = load_onnx(str(path))
    assert manifest.k == 2
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, bare)
    with pytest.raises(ExportError, match="no lossgrid manifest"):
        load_onnx(str(bare))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, "{not json"
    onnx.save(proto, bare)
    with pytest.raises(ExportError, match="corrupt"):
        load_onnx(str(bare))
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ExportError, match="Cannot read"):
        load_onnx(str(tmp_path / "junk.onnx"))


@pytest.mark.parametrize("name", ["resnet", "transformer"])
def test_export_with_loss_outputs(name):
    from lossgrid.exporters.session import make_session

    factory, data = MODELS[name]
    model = with_random_bn_stats(factory())
    x = data()
    result = export_onnx(model, x, k=3, with_loss=True)  # the parity check covers loss and correct too
    m = result.manifest
    assert m.label_input == "labels" and m.loss_outputs == ["loss", "correct"]
    states = random_point_states(model, 3, seed=5)
    prepared = WideModel(model, 3).prepare(states)
    feeds = {n: prepared[n].contiguous().numpy() for n in m.input_names}
    labels = torch.randint(0, 4, (len(x),))
    logits, loss, correct = make_session(result.model_bytes).run(None, {"input": x.numpy(), "labels": labels.numpy(),
                                                                        **feeds})
    want = plain(model, states, x)
    ce = torch.nn.functional.cross_entropy(want.flatten(0, 1), labels.repeat(3), reduction="none").reshape(3, -1)
    torch.testing.assert_close(torch.from_numpy(loss), ce, rtol=1e-4, atol=1e-5)
    assert loss.shape == correct.shape == (3, len(x))
