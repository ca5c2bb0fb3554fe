"""Training with the paper's recipe: schedule, determinism, checkpoint layout, refusals, interruption."""

import json
import os

import pytest
import torch

from lossgrid.checkpoints import checkpoint_paths, epoch_of, sort_checkpoints
from lossgrid.data import load_data
from lossgrid.errors import ConfigError, EvaluationError
from lossgrid.models import load_state
from lossgrid.train.recipe import TrainRecipe, augment_batch, check_save_dir, evaluate, train_model
from lossgrid.trajectory.compute import compute_trajectory
from tests.conftest import small_cnn


@pytest.fixture(scope="module")
def digits():
    return load_data("digits:train", 256), load_data("digits:test", 120)


def _train(data, **kw):
    torch.manual_seed(kw.pop("init_seed", 0))
    model = small_cnn()
    kw.setdefault("epochs", 2)
    kw.setdefault("batch_size", 32)
    return model, train_model(model, data, **kw)


def test_step_decay_is_the_references_schedule():
    recipe = TrainRecipe(epochs=300)
    assert recipe.milestone_epochs == (150, 225)
    assert recipe.lr_at(1) == recipe.lr_at(150) == pytest.approx(0.1)
    assert recipe.lr_at(151) == recipe.lr_at(225) == pytest.approx(0.01)
    assert recipe.lr_at(226) == recipe.lr_at(300) == pytest.approx(0.001)
    assert TrainRecipe(epochs=10, milestones=()).lr_at(10) == pytest.approx(0.1)
    assert TrainRecipe(epochs=4, lr=0.5, gamma=0.5, milestones=(0.25,)).lr_at(2) == pytest.approx(0.25)


def test_the_rate_in_the_history_follows_the_schedule(digits):
    _, result = _train(digits[0], epochs=4, milestones=(0.5, 0.75), lr=0.05)
    assert [h["lr"] for h in result.history] == pytest.approx([0.05, 0.05, 0.005, 0.0005])
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4] and result.complete


@pytest.mark.parametrize("kw", [{"milestones": (0.75, 0.5)}, {"milestones": (1.0,)}, {"milestones": (0.0,)},
                                {"lr": 0.0}, {"momentum": 1.0}, {"weight_decay": -1.0}, {"gamma": 0.0},
                                {"gamma": 1.5}, {"batch_size": 0}, {"epochs": 0}, {"seed": -1}])
def test_bad_recipes_are_refused(kw):
    with pytest.raises(ConfigError):
        TrainRecipe(**{"epochs": 2, **kw})


def test_same_seed_same_weights_and_the_global_rng_is_untouched(digits):
    state = torch.get_rng_state()
    a, ra = _train(digits[0], seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b, rb = _train(digits[0], seed=3)
    c, _ = _train(digits[0], seed=4)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    assert [h["train_loss"] for h in ra.history] == [h["train_loss"] for h in rb.history]


def test_loss_goes_down_and_test_accuracy_is_measured(digits):
    model, result = _train(digits[0], epochs=4, test_data=digits[1], lr=0.05)
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < 0.5 * first["train_loss"]
    assert last["test_acc"] > 80.0 and not model.training
    assert (last["test_loss"], last["test_acc"]) == pytest.approx(evaluate(model, digits[1]))


def test_checkpoint_layout_is_what_the_trajectory_reads(digits, tmp_path):
    run = tmp_path / "run"
    model, result = _train(digits[0], epochs=5, save_every=2, save_dir=run, test_data=digits[1])
    names = sorted(os.listdir(run))
    assert names == ["final.pt", "model_0.pt", "model_2.pt", "model_4.pt", "model_5.pt", "train.json"]
    paths = checkpoint_paths(str(run / "model_*.pt"))
    assert [epoch_of(p) for p in paths] == [0, 2, 4, 5]
    assert [os.path.basename(p) for p in sort_checkpoints(result.checkpoints)] == [
        "model_0.pt", "model_2.pt", "model_4.pt", "model_5.pt", "final.pt"]
    final = torch.load(run / "final.pt", weights_only=True)
    last = torch.load(run / "model_5.pt", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(final[k], v) and torch.equal(last[k], v), k
    fresh = small_cnn()
    load_state(fresh, torch.load(run / "model_0.pt", weights_only=True))
    assert not torch.equal(fresh.conv1.weight, model.conv1.weight)
    record = json.loads((run / "train.json").read_text())
    assert record["complete"] and len(record["history"]) == 5 and record["recipe"]["epochs"] == 5
    assert record["milestone_epochs"] == [2, 4] and record["test_data"] == digits[1].description
    traj = compute_trajectory(small_cnn(), paths)
    assert traj.coords.shape == (4, 2) and list(traj.coords[-1]) == [0.0, 0.0]


def test_a_directory_holding_a_run_is_refused_unless_overwrite(digits, tmp_path):
    run = tmp_path / "run"
    _train(digits[0], epochs=3, save_dir=run)
    with pytest.raises(ConfigError, match="already holds a training run"):
        _train(digits[0], epochs=1, save_dir=run)
    with pytest.raises(ConfigError, match="already holds"):
        check_save_dir(run)
    (run / "notes.txt").write_text("mine")
    _train(digits[0], epochs=1, save_dir=run, overwrite=True)  # the stale model_2/3.pt must go
    assert sorted(os.listdir(run)) == ["final.pt", "model_0.pt", "model_1.pt", "notes.txt", "train.json"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        _train(digits[0], epochs=1, save_dir=tmp_path / "file")


def _hashes(folder):
    import hashlib

    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in sorted(os.listdir(folder))
            if (folder / n).is_file()}


def test_overwrite_keeps_the_old_run_until_the_new_one_finished_an_epoch(digits, tmp_path):
    run = tmp_path / "run"
    _train(digits[0], epochs=3, save_dir=run)
    before = _hashes(run)
    with pytest.raises(EvaluationError, match="diverged"):  # the new recipe diverges within its first epoch
        _train(digits[0], epochs=2, lr=1e6, save_dir=run, overwrite=True)
    assert _hashes(run) == before and sorted(os.listdir(run)) == sorted(before)  # and no staging debris

    def stop(done, total):
        if done == 3:  # inside the new run's first epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(digits[0], epochs=2, save_dir=run, overwrite=True, progress=stop)
    assert _hashes(run) == before

    def stop_later(done, total):
        if done == 12:  # inside epoch 2: epoch 1 is saved, the old run replaced, never mixed
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(digits[0], epochs=3, save_dir=run, overwrite=True, progress=stop_later)
    assert sorted(os.listdir(run)) == ["model_0.pt", "model_1.pt", "train.json"]
    record = json.loads((run / "train.json").read_text())
    assert [os.path.basename(p) for p in record["checkpoints"]] == ["model_0.pt", "model_1.pt"]
    assert all(os.path.dirname(p) == str(run) for p in record["checkpoints"])


def test_staging_left_by_a_killed_run_is_cleared(digits, tmp_path):
    run = tmp_path / "run"
    _train(digits[0], epochs=1, save_dir=run)
    dead = run / ".lossgrid-new-999999999-abc"  # the staging directory of a process that no longer exists
    dead.mkdir()
    (dead / "model_0.pt").write_bytes(b"half")
    _train(digits[0], epochs=1, save_dir=run, overwrite=True)
    assert sorted(os.listdir(run)) == ["final.pt", "model_0.pt", "model_1.pt", "train.json"]


def test_interrupt_leaves_only_whole_files(digits, tmp_path):
    run = tmp_path / "run"

    def stop(done, total):
        if done == 12:  # inside epoch 2 (8 steps per epoch)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(digits[0], epochs=3, save_dir=run, progress=stop)
    assert sorted(os.listdir(run)) == ["model_0.pt", "model_1.pt", "train.json"]  # no temporary files
    record = json.loads((run / "train.json").read_text())
    assert not record["complete"] and len(record["history"]) == 1
    torch.load(run / "model_1.pt", weights_only=True)


def test_progress_counts_steps(digits):
    seen = []
    _train(digits[0], epochs=2, batch_size=100, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 6) for i in range(1, 7)]  # 256 samples: 3 batches per epoch


def test_augment_crops_and_flips_32x32_images_only(digits):
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):  # each output is a window of the padded (possibly flipped) image
        padded = torch.nn.functional.pad(x[i], (4, 4, 4, 4))
        windows = [padded[:, a:a + 32, b:b + 32] for a in range(9) for b in range(9)]
        windows += [w.flip(2) for w in windows]
        assert any(torch.equal(out[i], w) for w in windows)
    with pytest.raises(ConfigError, match="32x32"):
        _train(digits[0], epochs=1, augment=True)
    data = (torch.randn(16, 3, 32, 32), torch.arange(16) % 10)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    assert train_model(model, data, epochs=1, batch_size=8, augment=True).complete


def test_a_diverging_run_stops_with_a_typed_error(digits):
    with pytest.raises(EvaluationError, match="diverged"):
        _train(digits[0], epochs=1, lr=1e6)


def test_data_the_model_cannot_train_on_is_refused_before_any_file(digits, tmp_path):
    from lossgrid.errors import DataLoadError, LossgridError

    x = digits[0].x.clone()
    x[5] = float("inf")
    cases = [((x, digits[0].y), None, DataLoadError, "NaN or infinite values.*index 5"),
             ((digits[0].x, digits[0].y + 10), None, DataLoadError, "labels .*run from 10 to 19.*10 outputs"),
             (digits[0], (digits[1].x[:, :, :6, :6], digits[1].y), ConfigError, "test set's samples have shape"),
             (digits[0], (digits[1].x, digits[1].y + 10), DataLoadError, "labels .*run from 10"),
             ((digits[0].x[:, :, :6, :6], digits[0].y), None, EvaluationError, "fail on the first samples")]
    for data, test, kind, needle in cases:
        with pytest.raises(kind, match=needle):
            _train(data, epochs=1, test_data=test, save_dir=tmp_path / "run")
        assert not (tmp_path / "run").exists()
    assert issubclass(kind, LossgridError)


def test_non_classification_data_is_refused():
    model = torch.nn.Linear(4, 1)
    with pytest.raises(ConfigError, match="targets"):
        train_model(model, (torch.randn(8, 4), torch.randn(8)), epochs=1)
    with pytest.raises(ConfigError, match="empty"):
        train_model(model, (torch.randn(0, 4), torch.zeros(0, dtype=torch.int64)), epochs=1)
