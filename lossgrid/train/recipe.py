"""Train a network with the paper's recipe, saving the checkpoints the trajectory tools read.

The recipe is that of the reference implementation's ``cifar10/main.py``
(Li et al. 2018): SGD with momentum 0.9, weight decay 5e-4, learning rate 0.1
divided by 10 (``gamma``) at fixed fractions of the run (``milestones``; the
reference's 150 and 225 of 300 epochs are 0.5 and 0.75), cross-entropy loss,
and, for 32x32 images, random crops of the 4-pixel padded image and random
horizontal flips (``augment``). The learning rate is constant within an epoch.

Everything random -- the order of the samples, the augmentation, dropout --
comes from ``seed``: the same seed, model and data give the same weights bit for
bit on the same machine and thread count. The caller seeds the model's
initialization (``torch.manual_seed`` before building it, as ``lossgrid train``
does); the global random state is left as it was.

Checkpoint layout (``save_dir``), the one :func:`lossgrid.checkpoints.checkpoint_paths`
sorts and ``lossgrid trajectory --checkpoints 'DIR/model_*.pt'`` reads: state_dicts
``model_0.pt`` (the initial weights), ``model_<epoch>.pt`` every ``save_every``
epochs and after the last one, ``final.pt`` (the trained model, the trajectory's
origin: ``--final DIR/final.pt``) and ``train.json`` (the recipe, the history per
epoch, ``complete``). Every file is written atomically, so Ctrl-C leaves whole
files only; ``train.json`` is rewritten at every checkpoint with the history so far.

Example:
    >>> from lossgrid.data import load_data
    >>> from lossgrid.zoo import resnet_digits
    >>> result = train_model(resnet_digits(), load_data("digits:train"), epochs=2,
    ...                      save_dir="run")                     # doctest: +SKIP
    >>> result.history[-1]["train_acc"]                          # doctest: +SKIP
    88.1
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import __version__
from .._files import atomic_output
from .._outdir import StagedDir, check_output_dir, earlier_results
from ..data import EvalData
from ..engine import preflight
from ..engine.device import resolve_device
from ..engine.losses import cross_entropy
from ..errors import ConfigError, EvaluationError

log = logging.getLogger(__name__)

#: checkpoint file names of a run: ``model_<epoch>.pt`` (``model_0.pt`` the initial weights), ``final.pt``
CHECKPOINT_RE = re.compile(r"^model_\d+\.pt$", re.ASCII)
FINAL_NAME = "final.pt"
RECORD_NAME = "train.json"
#: the largest learning rate: far beyond any that trains, well below what float32 steps overflow at
MAX_LR = 1e6
AUGMENT_SIZE = 32
AUGMENT_PADDING = 4


@dataclass(frozen=True)
class TrainRecipe:
    """How a network is trained; validated on construction, saved in ``train.json``."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    #: fractions of ``epochs`` after which the learning rate is multiplied by ``gamma``
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    seed: int = 0
    augment: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r} is invalid", "it must be a whole number of at least 1",
                                  f"pass --{name.replace('_', '-')} 1 or more")
        if not 0 < self.lr <= MAX_LR:
            raise ConfigError(f"lr={self.lr!r} is invalid", f"the learning rate must be above 0 and at most {MAX_LR:g}",
                              "pass --lr 0.1")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum={self.momentum!r} is invalid", "it must be in [0, 1)",
                              "pass --momentum 0.9 (or 0 for plain SGD)")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay={self.weight_decay!r} is invalid", "it must be 0 or more",
                              "pass --weight-decay 5e-4 (or 0)")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma={self.gamma!r} is invalid", "the decay factor must be in (0, 1]",
                              "pass --gamma 0.1")
        if any(not 0 < m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            raise ConfigError(f"milestones={list(self.milestones)} are invalid",
                              "they are increasing fractions of the run, each strictly between 0 and 1",
                              "pass --milestones 0.5,0.75 (the reference's 150 and 225 of 300 epochs), or '' "
                              "for a constant learning rate")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} is invalid", "it must be a non-negative integer")

    @property
    def milestone_epochs(self) -> tuple[int, ...]:
        """The epochs after which the rate decays (``round(fraction * epochs)``, at least 1)."""
        return tuple(max(1, round(m * self.epochs)) for m in self.milestones)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (1-based): ``lr * gamma ** (milestones passed)``,
        as ``MultiStepLR(milestones=milestone_epochs)`` stepped once per epoch."""
        return self.lr * self.gamma ** sum(1 for m in self.milestone_epochs if epoch > m)


@dataclass
class TrainResult:
    """What :func:`train_model` did: per-epoch ``history`` (``epoch``, ``lr``, ``train_loss``,
    ``train_acc`` -- the running mean over the epoch's batches, in train mode -- and, with test
    data, ``test_loss``/``test_acc`` in eval mode; ``seconds``), the checkpoints written
    (in training order, ``final.pt`` last) and the total seconds."""

    recipe: TrainRecipe
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    seconds: float = 0.0
    complete: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"recipe": dataclasses.asdict(self.recipe), "milestone_epochs": list(self.recipe.milestone_epochs),
                "history": self.history, "checkpoints": self.checkpoints, "seconds": round(self.seconds, 3),
                "complete": self.complete}


def train_model(model: nn.Module, data: EvalData | tuple[torch.Tensor, torch.Tensor], *, epochs: int,
                batch_size: int = 128, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
                milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1, seed: int = 0,
                test_data: EvalData | tuple[torch.Tensor, torch.Tensor] | None = None,
                save_dir: str | os.PathLike | None = None, save_every: int = 1, overwrite: bool = False,
                progress: Callable[[int, int], None] | None = None, augment: bool = False,
                device: str = "cpu", description: dict[str, Any] | None = None) -> TrainResult:
    """Train ``model`` in place on ``data`` with SGD, momentum, weight decay and step decay.

    Args:
        model: the network, trained in place and returned to eval mode (on ``device``).
        data: the training set (inputs ``[N, ...]``, integer class labels).
        epochs, batch_size, lr, momentum, weight_decay, milestones, gamma, seed, augment:
            the :class:`TrainRecipe`. The last batch of an epoch may be smaller.
        test_data: evaluated after every epoch (loss and accuracy, eval mode).
        save_dir: where the checkpoints go (created); ``None`` writes nothing.
        save_every: a checkpoint every this many epochs (the last epoch always).
        overwrite: a ``save_dir`` already holding a run (``model_*.pt``, ``final.pt``
            or ``train.json``) is refused unless this is set; then the new run writes into a
            hidden staging directory until its first epoch's checkpoint, and only then replaces
            the old run's files (all of them: no stale epoch joins the new run's trajectory); a
            run that fails or is stopped before that leaves the old run as it was.
        progress: called as ``progress(steps_done, steps_total)`` after every batch.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        description: extra entries for ``train.json`` (model and data specs).

    Example:
        >>> import torch
        >>> x, y = torch.randn(64, 4), torch.arange(64) % 2
        >>> r = train_model(torch.nn.Linear(4, 2), (x, y), epochs=4, batch_size=16)
        >>> [h["lr"] for h in r.history], r.recipe.milestone_epochs
        ([0.1, 0.1, 0.010000000000000002, 0.0010000000000000002], (2, 3))
    """
    recipe = TrainRecipe(epochs, batch_size, lr, momentum, weight_decay, tuple(milestones), gamma, seed, augment)
    if not isinstance(save_every, int) or save_every < 1:
        raise ConfigError(f"save_every={save_every!r} is invalid", "it must be a whole number of at least 1",
                          "pass --save-every 1 or more")
    data, test_data = _as_data(data), _as_data(test_data) if test_data is not None else None
    for part, name in ((data, "training"), (test_data, "test")):
        if part is not None:
            _check_classification(part, name)
    if augment and tuple(data.x.shape[-2:]) != (AUGMENT_SIZE, AUGMENT_SIZE):
        raise ConfigError(f"--augment needs 32x32 images, the data has shape {tuple(data.x.shape[1:])}",
                          "random crops with 4-pixel padding and flips are the CIFAR-10 recipe",
                          "leave out --augment for other data")
    dev = resolve_device(device)
    model = model.to(dev)
    _preflight(model, data, test_data, dev)  # before any file is written
    out = None
    try:
        out = StagedDir(save_dir, "training run", is_run_file, overwrite) if save_dir is not None else None
        return _train(model, data, test_data, recipe, dev, out, save_every, progress, description)
    except BaseException:
        if out is not None:  # no epoch finished: an earlier run in save_dir stays as it was
            out.discard()
        raise


def _train(model: nn.Module, data: EvalData, test_data: EvalData | None, recipe: TrainRecipe, dev: torch.device,
           out: StagedDir | None, save_every: int, progress: Callable[[int, int], None] | None,
           description: dict[str, Any] | None) -> TrainResult:
    """The training loop of :func:`train_model`, checkpoints into ``out``."""
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    result = TrainResult(recipe)
    record = {"lossgrid_version": __version__, "data": data.description, "samples": len(data),
              "test_data": test_data.description if test_data is not None else None, "save_every": save_every,
              "device": str(dev), **(description or {})}
    steps_per_epoch = -(-len(data) // recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(recipe.seed)
    t0 = time.perf_counter()
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(recipe.seed)  # dropout and other randomness inside the model
        if out is not None:
            _checkpoint(model, out, 0, result, record, t0)
        for epoch in range(1, recipe.epochs + 1):
            t_epoch = time.perf_counter()
            rate = recipe.lr_at(epoch)
            for group in opt.param_groups:
                group["lr"] = rate
            loss_sum, correct = _train_epoch(model, opt, data, recipe, gen, dev, epoch, steps_per_epoch, total,
                                             progress)
            entry: dict[str, Any] = {"epoch": epoch, "lr": rate, "train_loss": loss_sum / len(data),
                                     "train_acc": 100.0 * correct / len(data)}
            if test_data is not None:
                entry["test_loss"], entry["test_acc"] = evaluate(model, test_data, device=dev)
            entry["seconds"] = round(time.perf_counter() - t_epoch, 3)
            result.history.append(entry)
            log.info("epoch %d/%d: lr %.3g, train loss %.4g", epoch, recipe.epochs, rate, entry["train_loss"])
            if out is not None and (epoch % save_every == 0 or epoch == recipe.epochs):
                _checkpoint(model, out, epoch, result, record, t0)
    model.eval()
    result.seconds = time.perf_counter() - t0
    result.complete = True
    if out is not None:
        _save_state(model, os.path.join(out.work, FINAL_NAME), result)
        _write_record(out.work, result, record)
    return result


def evaluate(model: nn.Module, data: EvalData | tuple[torch.Tensor, torch.Tensor], batch_size: int = 1024,
             device: str | torch.device = "cpu") -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of ``model`` on ``data`` in eval mode (the mode is restored)."""
    data = _as_data(data)
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    try:
        with torch.no_grad():
            for xb, yb in zip(data.x.split(batch_size), data.y.split(batch_size)):
                xb, yb = xb.to(dev), yb.to(dev)
                out = model(xb)
                loss += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
                correct += int((out.argmax(1) == yb).sum())
    finally:
        model.train(was_training)
    return loss / len(data), 100.0 * correct / len(data)


def augment_batch(x: torch.Tensor, gen: torch.Generator, padding: int = AUGMENT_PADDING) -> torch.Tensor:
    """Random crops of the zero-padded images (the size of ``x``) and random horizontal flips, per sample.

    The reference pads raw pixels with 0 before normalizing; here the data is already
    normalized, so the padding is the per-channel mean (0) instead of black.
    """
    b, c, h, w = x.shape
    padded = nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    rows = (dy[:, None] + torch.arange(h)).to(x.device)
    cols = (dx[:, None] + torch.arange(w)).to(x.device)
    cols = torch.where(flip.to(x.device)[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, data: EvalData, recipe: TrainRecipe,
                 gen: torch.Generator, dev: torch.device, epoch: int, steps_per_epoch: int, total: int,
                 progress: Callable[[int, int], None] | None) -> tuple[float, int]:
    model.train()
    order = torch.randperm(len(data), generator=gen)
    loss_sum, correct = 0.0, 0
    for step, start in enumerate(range(0, len(data), recipe.batch_size)):
        idx = order[start:start + recipe.batch_size]
        xb = data.x[idx]
        if recipe.augment:
            xb = augment_batch(xb, gen)
        xb, yb = xb.to(dev), data.y[idx].to(dev)
        opt.zero_grad(set_to_none=True)
        out = model(xb)
        loss = nn.functional.cross_entropy(out, yb)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise EvaluationError(f"The training loss is {value} at epoch {epoch}, batch {step + 1}",
                                  "the run diverged", "lower --lr, or check the data for NaN or infinite values")
        loss.backward()
        opt.step()
        loss_sum += value * len(idx)
        correct += int((out.detach().argmax(1) == yb).sum())
        if progress is not None:
            progress((epoch - 1) * steps_per_epoch + step + 1, total)
    return loss_sum, correct


def _as_data(data: EvalData | tuple[torch.Tensor, torch.Tensor]) -> EvalData:
    if isinstance(data, EvalData):
        return data
    return EvalData(torch.as_tensor(data[0]), torch.as_tensor(data[1]), "in-memory tensors")


def _check_classification(data: EvalData, name: str) -> None:
    if not isinstance(data.x, torch.Tensor):
        raise ConfigError(f"The {name} set's inputs are a {type(data.x).__name__}, not one tensor",
                          "lossgrid train feeds one input tensor to the model",
                          "train models with several inputs with your own loop")
    if len(data) == 0:
        raise ConfigError(f"The {name} set is empty", hint="pass data with at least one sample")
    if data.y.dtype != torch.int64 or data.y.ndim != 1 or len(data.y) != len(data):
        raise ConfigError(f"The {name} set's targets are {data.y.dtype} of shape {tuple(data.y.shape)}",
                          "training minimizes cross-entropy over class labels: int64 of shape [N]",
                          "pass a classification data set (digits, cifar10:DIR, npz:FILE with integer y)")


def is_run_file(name: str) -> bool:
    """Whether a file name is one of a training run's (checkpoints, ``final.pt``, ``train.json``)."""
    return bool(CHECKPOINT_RE.match(name)) or name in (FINAL_NAME, RECORD_NAME)


def _preflight(model: nn.Module, data: EvalData, test_data: EvalData | None, dev: torch.device) -> None:
    """The model and the loss on a few samples of each set (labels within the model's classes), the
    test set's samples shaped like the training set's: errors now, not after an epoch."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"The model {type(model).__name__} has no trainable parameters",
                          "training changes parameters that require gradients: there are none",
                          "pass a model with trainable weights (check the factory)")
    if test_data is not None and tuple(test_data.x.shape[1:]) != tuple(data.x.shape[1:]):
        raise ConfigError(f"The test set's samples have shape {tuple(test_data.x.shape[1:])}, the training set's "
                          f"{tuple(data.x.shape[1:])}", "the model is evaluated on both after every epoch",
                          "pass a test set of the same kind as the training set (--test-data)")
    for part in (data, test_data):
        if part is not None:
            preflight.check_data(part, cross_entropy)
            preflight.probe(model, part, cross_entropy, dev)


def run_files(save_dir: str) -> list[str]:
    """The files of a training run in ``save_dir`` (checkpoints, ``final.pt``, ``train.json``)."""
    return earlier_results(save_dir, is_run_file)


def check_save_dir(save_dir: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """Refuse a ``save_dir`` that is a file, or holds a run when not ``overwrite``; returns the
    run's files found there (which ``overwrite`` replaces once the new run finished an epoch)."""
    return check_output_dir(save_dir, "training run", is_run_file, overwrite)


def _save_state(model: nn.Module, path: str, result: TrainResult) -> None:
    with atomic_output(path, "checkpoint") as tmp:
        torch.save({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}, tmp)
    result.checkpoints.append(path)


def _checkpoint(model: nn.Module, out: StagedDir, epoch: int, result: TrainResult, record: dict[str, Any],
                t0: float) -> None:
    """A checkpoint and the record so far; the first epoch's replaces an earlier run (``overwrite``)."""
    _save_state(model, os.path.join(out.work, f"model_{epoch}.pt"), result)
    if epoch >= 1 and out.staged:  # the new run has a result of its own now
        out.publish()
        result.checkpoints = [os.path.join(out.path, os.path.basename(p)) for p in result.checkpoints]
    result.seconds = time.perf_counter() - t0
    _write_record(out.work, result, record)


def _write_record(save_dir: str, result: TrainResult, record: dict[str, Any]) -> None:
    with atomic_output(os.path.join(save_dir, RECORD_NAME), "training record") as tmp, open(tmp, "w") as fh:
        json.dump({**record, **result.as_dict()}, fh, indent=2, sort_keys=True)
        fh.write("\n")
