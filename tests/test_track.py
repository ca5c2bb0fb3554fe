"""The training-time Tracker: checkpoints, TensorBoard logs, numbers, and a model left untouched."""

import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from lossgrid.data import load_data
from lossgrid.engine.surface_file import Surface
from lossgrid.errors import ConfigError, MissingBackendError
from lossgrid.models import load_model
from lossgrid.track import IMAGE_TAG, Tracker, landscape_image, landscape_numbers, parse_grid

CONFTEST = os.path.join(os.path.dirname(__file__), "conftest.py")


@pytest.fixture(scope="module")
def train_data():
    return load_data("digits:train", samples=256)


def snapshot(model: nn.Module) -> dict:
    """Everything about the model a tracker must not change: values, grads, modes."""
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
            "modes": [m.training for m in model.modules()]}


def same(a: dict, b: dict) -> bool:
    def eq(x, y):
        return x is None and y is None or x is not None and y is not None and torch.equal(x, y)

    return (a["modes"] == b["modes"] and a["state"].keys() == b["state"].keys()
            and all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
            and all(eq(a["grads"][n], b["grads"][n]) for n in a["grads"]))


def train(model, data, epochs, tracker=None, on_step=None):
    """A plain loop whose data order comes from the global RNG (as most loops do)."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    if tracker is not None:
        on_step(0, tracker.step(0))
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(data))
        for start in range(0, len(data), 64):
            idx = order[start:start + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
            opt.step()
        if tracker is not None:
            on_step(epoch, tracker.step(epoch))
    return model


def test_checkpoints_numbers_and_an_untouched_model(tmp_path, train_data):
    from tests.conftest import small_cnn

    model = small_cnn()
    tracker = Tracker(model, train_data, tmp_path / "run", grid="-1:1:5", samples=64)
    seen = {}

    def check(epoch, numbers):
        # the step ran between these two snapshots only if the model is unchanged by it
        seen[epoch] = (numbers, snapshot(model))

    before = {}
    original_step = tracker.step

    def step(epoch, force=False):
        before[epoch] = snapshot(model)
        return original_step(epoch, force)

    tracker.step = step  # type: ignore[method-assign]
    train(model, train_data, 2, tracker, check)
    for epoch, (numbers, after) in seen.items():
        assert same(before[epoch], after), f"epoch {epoch}: the tracker changed the model"
        assert after["modes"][0] is True  # still in train mode
        assert set(numbers) == {"center_loss", "center_acc", "max_increase_x", "curvature_x"}
        assert all(np.isfinite(v) for v in numbers.values())
        assert numbers["max_increase_x"] >= 0
    assert seen[2][0]["center_loss"] < seen[0][0]["center_loss"]  # it trained
    assert [h["epoch"] for h in tracker.history] == [0, 1, 2]
    names = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert names == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]  # nothing temporary left behind
    assert tracker.checkpoints == [str(tmp_path / "run" / "checkpoints" / n) for n in names]
    loaded, _ = load_model(f"{CONFTEST}:small_cnn", tracker.checkpoints[-1])
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    loaded0, _ = load_model(f"{CONFTEST}:small_cnn", tracker.checkpoints[0])
    assert all(torch.equal(loaded0.state_dict()[k], v) for k, v in before[0]["state"].items())


def test_tracking_does_not_change_training(tmp_path, train_data):
    """Same seed, with and without a tracker: bit-identical weights (global RNG untouched)."""
    from tests.conftest import small_cnn

    plain = train(small_cnn(), train_data, 2)
    tracked = train(small_cnn(), train_data, 2, Tracker(small_cnn(), train_data, tmp_path, grid="-1:1:3",
                                                         samples=32, checkpoint=False), lambda e, n: None)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, tracked.state_dict()[k]), k
    assert not (tmp_path / "checkpoints").exists()


def test_eval_mode_kept_and_every_and_2d(tmp_path, train_data):
    from tests.conftest import trained_small_cnn

    model = trained_small_cnn(20)  # in eval mode
    before = snapshot(model)
    tracker = Tracker(model, (train_data.x, train_data.y), tmp_path, every=2, grid="2d", samples=48, checkpoint=False)
    assert tracker.step(1) == {}  # not a multiple of every
    numbers = tracker.step(2)
    assert set(numbers) == {"center_loss", "center_acc", "max_increase_x", "curvature_x", "max_increase_y",
                            "curvature_y"}
    assert tracker.step(3, force=True)["center_loss"] == pytest.approx(numbers["center_loss"])
    assert tracker.last_surface is not None and tracker.last_surface.loss.shape == (9, 9)
    assert same(before, snapshot(model)) and not model.training
    assert len(tracker.data) == 48


def test_tensorboard_event_file_holds_image_and_scalars(tmp_path, train_data):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install \"lossgrid[tensorboard]\")")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.conftest import small_cnn

    model = small_cnn()
    logged = {}
    with Tracker(model, train_data, tmp_path / "run", grid="-1:1:5", samples=64, tensorboard=True) as tracker:
        train(model, train_data, 1, tracker, lambda e, n: logged.__setitem__(e, n))
    log_dir = tmp_path / "run" / "tensorboard"
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    tags = acc.Tags()
    assert tags["images"] == [IMAGE_TAG]
    assert sorted(tags["scalars"]) == sorted(f"lossgrid/{name}" for name in logged[0])
    for name in logged[0]:
        events = acc.Scalars(f"lossgrid/{name}")
        assert [e.step for e in events] == [0, 1]
        assert [e.value for e in events] == pytest.approx([logged[0][name], logged[1][name]], rel=1e-6)
    images = acc.Images(IMAGE_TAG)
    assert [i.step for i in images] == [0, 1] and (images[0].width, images[0].height) == (480, 360)
    assert images[0].encoded_image_string.startswith(b"\x89PNG")
    # a log directory of one's own
    other = tmp_path / "tb"
    with Tracker(model, train_data, tmp_path / "run2", grid="-1:1:3", samples=16, tensorboard=str(other),
                 checkpoint=False) as tracker:
        tracker.step(0)
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(other))


def test_missing_tensorboard_names_the_extra(tmp_path, train_data, monkeypatch):
    from tests.conftest import small_cnn

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(MissingBackendError) as e:
        Tracker(small_cnn(), train_data, tmp_path, tensorboard=True)
    assert 'pip install "lossgrid[tensorboard]"' in str(e.value)


def test_numbers_of_a_known_landscape():
    x = np.linspace(-1, 1, 11)
    loss1 = 1.0 + 3.0 * x ** 2 + 0.5 * x  # curvature 6, largest increase at x=1: 3.5
    surf = Surface(x, None, loss1, np.full(11, 50.0), np.ones(11, bool))
    numbers = landscape_numbers(surf)
    assert numbers["center_loss"] == pytest.approx(1.0) and numbers["center_acc"] == 50.0
    assert numbers["curvature_x"] == pytest.approx(6.0) and numbers["max_increase_x"] == pytest.approx(3.5)
    y = np.linspace(-0.5, 0.5, 5)
    loss2 = 2.0 + x[:, None] ** 2 + 4.0 * y[None, :] ** 2
    loss2[0, 0] = np.nan  # skipped
    surf2 = Surface(x, y, loss2, np.zeros_like(loss2), np.ones(loss2.shape, bool))
    numbers = landscape_numbers(surf2, fit_points=3)
    assert numbers["curvature_x"] == pytest.approx(2.0) and numbers["curvature_y"] == pytest.approx(8.0)
    assert numbers["max_increase_y"] == pytest.approx(1.0)
    image = landscape_image(surf2, "t", (200, 150))
    assert image.shape == (150, 200, 3) and image.dtype == np.uint8 and image.std() > 0


@pytest.mark.parametrize("kwargs, needle", [({"grid": "1:2:5"}, "needs 0"), ({"grid": "-1:1:2"}, "at least 3"),
                                            ({"every": 0}, "every=0"), ({"samples": 0}, "samples=0"),
                                            ({"loss": "nope"}, "Unknown loss"), ({"fit_points": 2}, "fit_points"),
                                            ({"batch_size": 0}, "batch_size=0")])
def test_bad_settings(tmp_path, train_data, kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        Tracker(nn.Linear(64, 10), train_data, tmp_path, **kwargs)


def test_parse_grid():
    assert parse_grid("-1:1:11").shape == (11,)
    assert parse_grid("2d").shape == (9, 9)


def test_submodule_modes_survive_a_step_and_a_diverged_model_does_not_stop_training(tmp_path):
    import math

    import torch
    from torch import nn

    from lossgrid import Tracker, load_data

    data = load_data("digits", samples=64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    model.train()
    model[2].eval()  # a frozen BatchNorm inside a model in training mode
    before = [m.training for m in model.modules()]
    tracker = Tracker(model, data, str(tmp_path), checkpoint=False, samples=32)
    tracker.step(1)
    assert [m.training for m in model.modules()] == before
    with torch.no_grad():
        model[1].weight.fill_(float("inf"))
    numbers = tracker.step(2)  # logged as NaN with a warning, not raised into the training loop
    assert math.isnan(numbers["center_loss"])
