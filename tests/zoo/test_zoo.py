"""The model zoo: reference names, parameter counts, and loading the reference's checkpoints."""

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from lossgrid.data import CIFAR_NORMS
from lossgrid.errors import ConfigError, ModelLoadError
from lossgrid.models import load_model
from lossgrid.zoo import ZOO, ZooEntry, build, resnet_cifar, zoo_names
from tests.zoo._reference_defs import REFERENCE_MODELS, RefBasicBlock, RefBottleneck, RefBottleneckNoShort, RefResNet

#: parameter counts of the reference's definitions (sums over their weights and biases;
#: BN running statistics are buffers, not parameters)
REFERENCE_PARAMS = {
    "resnet20": 272_474, "resnet20_noshort": 269_722, "resnet32_noshort": 464_154,
    "resnet44_noshort": 658_586, "resnet50_16_noshort": 755_802, "resnet56": 855_770,
    "resnet56_noshort": 853_018, "resnet110": 1_730_714, "resnet110_noshort": 1_727_962,
    "wrn56_2": 3_412_394, "wrn56_2_noshort": 3_401_770, "wrn56_4": 13_628_234, "wrn56_4_noshort": 13_586_506,
    "wrn56_8": 54_470_282, "wrn56_8_noshort": 54_304_906, "wrn110_2_noshort": 6_893_482,
    "wrn110_4_noshort": 27_537_226, "vgg9": 2_789_706, "densenet121": 6_956_298,
    "resnet18": 11_173_962, "resnet18_noshort": 11_000_138, "resnet34": 21_282_122, "resnet34_noshort": 21_108_298,
    "resnet50": 23_520_842, "resnet50_noshort": 20_744_266, "resnet101": 42_512_970,
    "resnet101_noshort": 39_736_394, "resnet152": 58_156_618, "resnet152_noshort": 55_380_042,
}
#: the models small enough to build with real weights and run in every test run
LOADABLE = ["resnet20", "resnet20_noshort", "resnet32_noshort", "resnet56", "resnet56_noshort",
            "resnet110_noshort", "wrn56_2", "wrn56_2_noshort", "vgg9", "densenet121"]


def _layout(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def _randomized(model, seed=0):
    """``model`` with seeded random weights and BN statistics (so that BN is not an identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(0.2 * torch.randn(t.shape, generator=gen))
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)
    return model.eval()


def test_names_are_the_reference_names():
    assert set(zoo_names()) == set(REFERENCE_MODELS) == set(REFERENCE_PARAMS)
    assert zoo_names()[:2] == ["resnet20", "resnet20_noshort"]
    for name, entry in ZOO.items():
        assert isinstance(entry, ZooEntry) and entry.name == name
        assert entry.input_shape == (3, 32, 32) and entry.num_classes == 10
        assert entry.normalization == "reference" and entry.normalization in CIFAR_NORMS
        assert entry.description and entry.reference_params == REFERENCE_PARAMS[name]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ZOO["resnet56"].num_classes = 100  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_layout_and_parameter_count_match_the_reference(name):
    """Same state_dict names, order and shapes as the reference's class; same parameter count.
    Built on the meta device: shapes without memory, fast even for ResNet-152."""
    with torch.device("meta"):
        ours, ref = build(name), REFERENCE_MODELS[name]()
    assert _layout(ours) == _layout(ref)
    assert _n_params(ours) == _n_params(ref) == REFERENCE_PARAMS[name]


def _save_reference_checkpoint(path, ref, prefix="", with_counters=True):
    """As the reference saves (``{'state_dict', 'acc', 'epoch'}``, here in the legacy format)."""
    sd = {prefix + k: v for k, v in ref.state_dict().items() if with_counters or "num_batches_tracked" not in k}
    torch.save({"state_dict": sd, "acc": 93.4, "epoch": 300}, path, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize("name", LOADABLE)
def test_loads_a_reference_checkpoint(tmp_path, name):
    torch.manual_seed(0)
    ref = _randomized(REFERENCE_MODELS[name]())
    path = tmp_path / f"{name}.t7"
    _save_reference_checkpoint(path, ref, prefix="module.", with_counters=False)
    model, desc = load_model(name, str(path))
    assert desc == f"{name} @ {path}"
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in ref.state_dict().items() if "num_batches_tracked" not in k)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # the weights are equal bit for bit (above); the outputs differ only by float32 rounding: our final
        # pooling is adaptive, the reference's a fixed 8x8 average, which sum in other orders (measured 1.3e-5
        # relative on wrn56_2's largest logit on an AMD EPYC without AVX-512)
        torch.testing.assert_close(model.eval()(x), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("with_counters", [True, False])
def test_checkpoint_forms_of_the_reference(tmp_path, prefix, with_counters):
    ref = _randomized(REFERENCE_MODELS["resnet20_noshort"](), seed=3)
    path = tmp_path / "model_300.t7"
    _save_reference_checkpoint(path, ref, prefix, with_counters)
    model, _ = load_model("resnet20_noshort", str(path))
    for k, v in ref.state_dict().items():
        if "num_batches_tracked" not in k:
            assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.parametrize("block,shortcuts", [(RefBasicBlock, True), (RefBottleneck, True),
                                             (RefBottleneckNoShort, False)])
def test_four_stage_resnet_computes_the_reference_function(block, shortcuts):
    """ResNet-18..152 are too big to run here; one block per stage exercises the same code
    (the no-shortcut bottleneck ends without a ReLU in the reference, and so in ours)."""
    from lossgrid.zoo import ResNet4Stage
    from lossgrid.zoo.cifar import BasicBlock, Bottleneck

    ours_block = BasicBlock if block is RefBasicBlock else Bottleneck
    ref = _randomized(RefResNet(block, [1, 1, 1, 1]), seed=5)
    ours = ResNet4Stage(ours_block, (1, 1, 1, 1), shortcuts).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_resnet_cifar_family():
    assert _layout(resnet_cifar(56, shortcuts=False, width=2)) == _layout(build("wrn56_2_noshort"))
    assert _layout(resnet_cifar(110)) == _layout(build("resnet110"))
    net = resnet_cifar(8, in_channels=1, num_classes=4)  # n = 1 block per stage, on 8x8 digits
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    assert not any("shortcut" in k for k in resnet_cifar(20, shortcuts=False).state_dict())
    for bad in (21, 2, 56.0, True):
        with pytest.raises(ConfigError, match="6n \\+ 2"):
            resnet_cifar(bad)
    with pytest.raises(ConfigError, match="width"):
        resnet_cifar(20, width=0)


def test_build_errors_and_zoo_functions():
    with pytest.raises(ConfigError, match="resnet56"):
        build("resnet65")
    from lossgrid.zoo import densenet121, resnet20, resnet56, vgg9

    assert _n_params(resnet20()) == REFERENCE_PARAMS["resnet20"]
    assert _n_params(resnet56()) == REFERENCE_PARAMS["resnet56"]
    assert _layout(vgg9()) == _layout(build("vgg9"))
    with torch.device("meta"):
        assert _layout(densenet121()) == _layout(build("densenet121"))
    assert resnet20(num_classes=100).linear.out_features == 100


def test_small_models_keep_their_names():
    """Checkpoints of the demo and tests were saved with these names."""
    from lossgrid import zoo

    keys = list(zoo.resnet_digits().state_dict())
    assert keys[0] == "conv1.weight" and keys[-1] == "fc.bias" and "layers.0.conv1.weight" in keys
    for name in ("mlp", "mlp_digits", "mlp_mnist", "vgg_digits", "densenet_digits", "transformer_tokens",
                 "conv1d_digits", "ResNet", "BasicBlock", "DenseBlock", "DenseNetSmall", "TokenTransformer",
                 "Conv1dNet"):
        assert callable(getattr(zoo, name)), name


def test_bare_names_in_load_model():
    model, desc = load_model("resnet20")
    assert desc == "resnet20" and _n_params(model) == REFERENCE_PARAMS["resnet20"]
    with pytest.raises(ModelLoadError, match="closest names are resnet56"):
        load_model("resnet57")
    with pytest.raises(ModelLoadError, match="lossgrid.zoo:resnet_digits"):
        load_model("resnet_digits")
    with pytest.raises(ModelLoadError, match="zoo_names"):
        load_model("nothing_like_it")


def test_cli_surface_with_a_zoo_name(tmp_path):
    from lossgrid.cli.group import cli
    from lossgrid.surface.file import load_surface

    out = tmp_path / "f.h5"
    r = CliRunner().invoke(cli, ["surface", "--model", "resnet20", "--data", "synthetic:3x32x32:8", "--x=-1:1:2",
                                 "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert load_surface(str(out)).summary()["points_done"] == 2
    r = CliRunner().invoke(cli, ["surface", "--model", "resnet57", "--data", "synthetic:3x32x32:8",
                                 "--out", str(tmp_path / "g.h5"), "-q"])
    assert r.exit_code == 1 and "No model named 'resnet57'" in r.output and "Traceback" not in r.output
