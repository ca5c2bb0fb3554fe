"""The training-time Tracker: checkpoints, TensorBoard logs, numbers, and a model left untouched."""

import errno
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from lossgrid.data import load_data
from lossgrid.errors import ConfigError, MissingBackendError
from lossgrid.models import load_model
from lossgrid.surface.file import Surface
from lossgrid.train import track
from lossgrid.train.track import IMAGE_TAG, Tracker, TrackerWarning, landscape_image, landscape_numbers, parse_grid

CONFTEST = os.path.join(os.path.dirname(__file__), "..", "conftest.py")


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
                                            ({"batch_size": 0}, "batch_size=0"),
                                            ({"if_exists": "replace"}, "if_exists='replace'"),
                                            ({"image_size": (10**6, 10**6)}, "32 to 8192 pixels"),
                                            ({"seed": -1}, "seed=-1"), ({"seed": 2**64}, "seed=")])
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
    with pytest.warns(TrackerWarning, match="epoch 2: no landscape .*NaN or infinite"):
        numbers = tracker.step(2)  # NaN numbers with a warning, not raised into the training loop
    assert len(numbers) == 4 and all(math.isnan(v) for v in numbers.values())
    assert "NaN or infinite" in tracker.history[-1]["error"]
    with torch.no_grad():
        model[1].weight.fill_(0.01)
    assert np.isfinite(tracker.step(3)["center_loss"]) and "error" not in tracker.history[-1]  # tracked again


# ---- a tracker never mixes two runs, never ends the training loop ----

def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def tiny_data(samples: int = 16, features: int = 64):
    return torch.randn(samples, features, generator=torch.Generator().manual_seed(0)), torch.arange(samples) % 10


def tiny_tracker(out_dir, model=None, **kwargs) -> Tracker:
    return Tracker(model or tiny_model(), tiny_data(), out_dir, grid="-1:1:3", samples=None, **kwargs)


class FakeWriter:
    """TensorBoard's SummaryWriter, without tensorboard: records the calls, fails in the methods named in ``fail``."""

    fail: set = set()

    def __init__(self, log_dir):
        self._call("init")
        self.log_dir, self.calls = log_dir, []

    def _call(self, name):
        if name in self.fail:
            raise OSError(errno.EIO, f"Input/output error in {name}")

    def add_scalar(self, *args):
        self._call("add_scalar")

    def add_image(self, *args, **kwargs):
        self._call("add_image")

    def flush(self):
        self._call("flush")

    def close(self):
        self._call("close")


@pytest.fixture
def fake_tensorboard(monkeypatch):
    monkeypatch.setattr(FakeWriter, "fail", set())
    monkeypatch.setattr(track, "require", lambda *args: SimpleNamespace(SummaryWriter=FakeWriter))
    return FakeWriter


def test_an_earlier_run_is_refused_before_training(tmp_path):
    first = tiny_tracker(tmp_path / "run")
    first.step(0)
    saved = (tmp_path / "run" / "checkpoints" / "epoch_0000.pt").read_bytes()
    with pytest.raises(ConfigError) as e:
        tiny_tracker(tmp_path / "run")
    message = str(e.value)
    for needle in (str(tmp_path / "run" / "checkpoints"), "epoch_0000.pt", "mix the two runs", "another out_dir",
                   'if_exists="new"'):
        assert needle in message
    assert (tmp_path / "run" / "checkpoints" / "epoch_0000.pt").read_bytes() == saved
    assert os.listdir(tmp_path / "run") == ["checkpoints"]


def test_an_earlier_runs_tensorboard_events_are_refused(tmp_path, fake_tensorboard):
    (tmp_path / "run" / "tensorboard").mkdir(parents=True)
    (tmp_path / "run" / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"")
    with pytest.raises(ConfigError, match="events.out.tfevents.1.host"):
        tiny_tracker(tmp_path / "run", tensorboard=True, checkpoint=False)
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events.out.tfevents.2.host").write_bytes(b"")
    with pytest.raises(ConfigError, match="tb already holds 1 TensorBoard event file of an earlier run"):
        tiny_tracker(tmp_path / "other", tensorboard=tmp_path / "tb")


def test_empty_checkpoints_and_other_files_are_no_earlier_run(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    tiny_tracker(tmp_path / "run")  # empty
    (ckpt / "notes.txt").write_text("mine")
    (ckpt / ".epoch_0001.tmp-1-abcd.pt").write_bytes(b"")  # what a killed write can leave
    tracker = tiny_tracker(tmp_path / "run")
    assert tracker.out_dir == str(tmp_path / "run") and tracker.checkpoint_dir == str(ckpt)


def test_if_exists_new_writes_into_the_first_free_run_dir(tmp_path, caplog, fake_tensorboard):
    out = tmp_path / "run"
    tiny_tracker(out).step(0)
    second = tiny_tracker(out, if_exists="new")
    assert second.out_dir == str(out / "run-2") and second.checkpoint_dir == str(out / "run-2" / "checkpoints")
    assert "run-2" in caplog.text and str(out / "checkpoints") in caplog.text
    second.step(5)
    assert second.checkpoints == [str(out / "run-2" / "checkpoints" / "epoch_0005.pt")]
    assert sorted(os.listdir(out / "checkpoints")) == ["epoch_0000.pt"]  # the earlier run as it was
    (out / "run-3").mkdir()  # taken, if only by an empty directory
    assert tiny_tracker(out, if_exists="new").out_dir == str(out / "run-4")
    assert tiny_tracker(tmp_path / "fresh", if_exists="new").out_dir == str(tmp_path / "fresh")
    # a TensorBoard directory of its own holding an earlier run's events gets its run-N too
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events.out.tfevents.1.host").write_bytes(b"")
    third = tiny_tracker(tmp_path / "t", tensorboard=tmp_path / "tb", if_exists="new")
    assert third.log_dir == str(tmp_path / "tb" / "run-2") and third.out_dir == str(tmp_path / "t" / "run-2")
    assert (tmp_path / "tb" / "run-2").is_dir()


@pytest.mark.parametrize("where, kwargs, needle", [
    ("file", {}, "out_dir .*file is a file"),
    ("file/sub", {}, "Cannot create the directory .*file/sub"),
    ("dir", {"tensorboard": "file"}, "TensorBoard log directory .*file is a file"),
])
def test_an_out_dir_that_is_a_file_or_cannot_be_made(tmp_path, fake_tensorboard, where, kwargs, needle):
    (tmp_path / "file").write_text("not a directory")
    kwargs = {k: tmp_path / v for k, v in kwargs.items()}
    with pytest.raises(ConfigError, match=needle):
        tiny_tracker(tmp_path / where, **kwargs)


class OnlyBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.ones(1))

    def forward(self, x):
        return x.flatten(1)[:, :10] * self.scale


@pytest.mark.parametrize("model, needle", [(nn.Identity(), "Identity has no parameters"),
                                           (OnlyBuffers(), "OnlyBuffers has no parameters"),
                                           (nn.Linear(64, 10).state_dict(), "Cannot track a")])
def test_a_model_without_parameters_is_refused(tmp_path, model, needle):
    with pytest.raises(ConfigError, match=needle):
        Tracker(model, tiny_data(), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("data, needle", [(tiny_data(0), "is empty"),
                                          ((tiny_data()[0], torch.arange(15)), "16 inputs but targets of shape")])
def test_data_no_model_can_use_is_refused(tmp_path, data, needle):
    with pytest.raises(ConfigError, match=needle):
        Tracker(tiny_model(), data, tmp_path)


def test_data_that_does_not_fit_the_model_does_not_end_training(tmp_path, train_data):
    model = tiny_model()
    tracker = Tracker(model, tiny_data(features=32), tmp_path, grid="-1:1:3")  # the model wants 64 features
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(3):
        before = snapshot(model)
        with pytest.warns(TrackerWarning, match=f"epoch {epoch}: no landscape .*shapes cannot be multiplied"):
            numbers = tracker.step(epoch)
        assert same(before, snapshot(model))  # a failed step leaves the model as it was
        assert len(numbers) == 4 and all(np.isnan(v) for v in numbers.values())
        opt.zero_grad()
        nn.functional.cross_entropy(model(train_data.x), train_data.y).backward()
        opt.step()  # and the loop goes on
    assert [h["epoch"] for h in tracker.history] == [0, 1, 2]
    assert all("no landscape" in h["error"] for h in tracker.history)
    assert len(tracker.checkpoints) == 3  # the checkpoints are written all the same


def fail(*args, **kwargs):
    raise RuntimeError("a bug")


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def checkpoints_to_file(tracker, monkeypatch):
    os.rmdir(tracker.checkpoint_dir)
    open(tracker.checkpoint_dir, "w").close()


def unpicklable(obj, path):
    raise TypeError("cannot pickle '_thread.lock' object")  # what torch.save says of such a state_dict


@pytest.mark.parametrize("break_it, part, reason", [
    (lambda t, mp: mp.setattr(torch, "save", disk_full), "checkpoint", "No space left on device"),
    (checkpoints_to_file, "checkpoint", "checkpoints is a file"),
    (lambda t, mp: mp.setattr(torch, "save", unpicklable), "checkpoint", "TypeError: cannot pickle"),
    (lambda t, mp: mp.setattr(track, "compute_surface", fail), "landscape", "RuntimeError: a bug"),
    (lambda t, mp: mp.setattr(track, "landscape_numbers", fail), "landscape", "RuntimeError: a bug"),
    (lambda t, mp: mp.setattr(track, "landscape_image", fail), "TensorBoard log", "RuntimeError: a bug"),
    (lambda t, mp: mp.setattr(FakeWriter, "fail", {"init"}), "TensorBoard log", "Input/output error in init"),
    (lambda t, mp: mp.setattr(FakeWriter, "fail", {"add_scalar"}), "TensorBoard log", "Input/output error in add"),
], ids=["disk-full", "checkpoints-a-file", "unpicklable-state", "surface-bug", "numbers-bug", "plot-bug",
        "writer-init", "writer-write"])
def test_a_failing_step_warns_and_returns(tmp_path, monkeypatch, fake_tensorboard, break_it, part, reason):
    tracker = tiny_tracker(tmp_path, tensorboard=True)
    with monkeypatch.context() as mp:
        break_it(tracker, mp)
        with pytest.warns(TrackerWarning, match=f"epoch 0: no {part} .*{reason}.*Training goes on"):
            numbers = tracker.step(0)
    assert set(numbers) == {"center_loss", "center_acc", "max_increase_x", "curvature_x"}
    assert np.isfinite(numbers["center_loss"]) == (part != "landscape")  # a failed checkpoint still gives numbers
    assert tracker.history[-1]["epoch"] == 0 and f"no {part}" in tracker.history[-1]["error"]
    written = [] if part == "checkpoint" else [os.path.join(tmp_path, "checkpoints", "epoch_0000.pt")]
    assert tracker.checkpoints == written
    if reason != "checkpoints is a file":
        assert [n for n in os.listdir(tmp_path / "checkpoints") if n.startswith(".")] == []  # no temporary left
        assert np.isfinite(tracker.step(1)["center_loss"])  # the next step works again


def test_ctrl_c_during_a_step_is_not_swallowed(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    tracker = tiny_tracker(tmp_path)
    monkeypatch.setattr(track, "compute_surface", interrupt)
    with pytest.raises(KeyboardInterrupt):
        tracker.step(0)


def test_a_failing_close_warns(tmp_path, fake_tensorboard):
    with tiny_tracker(tmp_path, tensorboard=True) as tracker:
        tracker.step(0)
        fake_tensorboard.fail = {"close"}
        with pytest.warns(TrackerWarning, match="no TensorBoard close .*Input/output error"):
            tracker.close()
    tracker.close()  # closed already: nothing to do


def test_epochs_move_on_and_are_whole_numbers(tmp_path):
    tracker = tiny_tracker(tmp_path)
    tracker.step(1)
    path = tmp_path / "checkpoints" / "epoch_0001.pt"
    saved = path.read_bytes()
    with torch.no_grad():
        tracker.model[1].bias.add_(1.0)  # a later state of the model
    for epoch in (1, 0):  # a second training phase counting from 0 again
        with pytest.warns(TrackerWarning, match=f"epoch {epoch}: not tracked, as epoch {epoch} is not after "
                                                "the last tracked epoch 1"):
            assert np.isnan(tracker.step(epoch, force=True)["center_loss"])
    assert path.read_bytes() == saved and tracker.checkpoints == [str(path)]
    tracker.step(np.int64(2))
    tracker.step(torch.tensor(3))
    assert [h["epoch"] for h in tracker.history] == [1, 1, 0, 2, 3] and type(tracker.history[-1]["epoch"]) is int
    for epoch in (-1, 2.0, "3", True, 10**30):
        with pytest.raises(ConfigError, match="epoch="):  # a programming error in the loop, found at once
            tracker.step(epoch)


def test_sys_exit_in_a_loss_does_not_end_the_training_loop(tmp_path):
    def exiting_loss(outputs, targets):
        sys.exit(0)

    tracker = tiny_tracker(tmp_path, loss=exiting_loss)
    with pytest.warns(TrackerWarning, match="no landscape .*SystemExit"):
        numbers = tracker.step(0)
    assert np.isnan(numbers["center_loss"]) and "SystemExit" in tracker.history[-1]["error"]
