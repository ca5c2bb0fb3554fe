"""``lossgrid train``: train a model with the paper's recipe, saving the checkpoints that
``lossgrid trajectory`` reads."""

from __future__ import annotations

import os
from typing import Any

import click

from ..train.recipe import MAX_LR
from ._common import DATA_HELP, Progress, echo_json
from ._options import device_option
from ._types import MAX_BATCH, MAX_EPOCHS, SEED, Count, FiniteFloat


class _StepProgress(Progress):
    """The shared progress bar, counting optimizer steps."""

    def _rate(self, _: Any) -> str:
        return super()._rate(_).replace("points/s", "steps/s")


def _milestones(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        fractions = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give fractions of the run, comma-separated, e.g. 0.5,0.75") from None
    if any(not 0 < f < 1 for f in fractions) or list(fractions) != sorted(set(fractions)):
        raise click.BadParameter(f"{value!r}: give increasing fractions of the run, each strictly between 0 and 1, "
                                 "e.g. 0.5,0.75")
    return fractions


@click.command()
@click.option("--model", "model", required=True, metavar="SPEC",
              help="A zoo name (resnet20, resnet56_noshort ...), package.module:fn or path/to/file.py:fn.")
@click.option("--data", required=True, help="Training set: " + DATA_HELP)
@click.option("--test-data", metavar="SPEC", help="Evaluated after every epoch (loss and accuracy, eval mode).")
@click.option("--samples", type=Count(1, None), help="Train on a fixed, seeded subset of N samples.")
@click.option("--epochs", type=Count(1, MAX_EPOCHS), required=True)
@click.option("--batch-size", type=Count(1, MAX_BATCH), default=128, show_default=True)
@click.option("--lr", type=FiniteFloat(min=0, max=MAX_LR, min_open=True), default=0.1, show_default=True,
              help="Initial learning rate (SGD).")
@click.option("--momentum", type=FiniteFloat(0, 1, max_open=True), default=0.9, show_default=True)
@click.option("--weight-decay", type=FiniteFloat(min=0), default=5e-4, show_default=True)
@click.option("--milestones", default="0.5,0.75", show_default=True, callback=_milestones, metavar="F1,F2",
              help="Fractions of the run after which the rate is multiplied by --gamma ('' for none; the "
                   "reference's 150, 225 of 300 epochs).")
@click.option("--gamma", type=FiniteFloat(0, 1, min_open=True), default=0.1, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seeds the initial weights, the sample order and the augmentation.")
@click.option("--save-every", type=Count(1, MAX_EPOCHS), default=1, show_default=True,
              help="A checkpoint every N epochs (and after the last one).")
@click.option("--augment", is_flag=True, help="Random crops (4-pixel padding) and flips; 32x32 images only.")
@device_option()
@click.option("--out", required=True, metavar="DIR",
              help="Checkpoint directory: model_0.pt (initial), model_<epoch>.pt, final.pt, train.json. One holding "
                   "an earlier run is refused unless --overwrite.")
@click.option("--overwrite", is_flag=True,
              help="Replace a run already in --out: its files stay until the new run has finished its first epoch, "
                   "then all of them are replaced (a run that fails or is stopped before leaves them as they were).")
@click.option("--json", "as_json", is_flag=True, help="Print the training record as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train(**kw: Any) -> None:
    """Train a model with SGD, momentum, weight decay and step decay (Li et al. 2018's recipe).

    The checkpoints (state_dicts) are those `lossgrid trajectory` reads; the
    initial weights, the sample order and the augmentation follow --seed.

    \b
    Example:
      lossgrid train --model resnet20 --data cifar10:DIR --test-data cifar10:DIR:test \\
          --epochs 300 --augment --device cuda --out runs/resnet20
      lossgrid trajectory --model resnet20 --checkpoints 'runs/resnet20/model_*.pt' --out traj.h5
    """
    import torch

    from ..data import load_data
    from ..models import load_model
    from ..train.recipe import check_save_dir, train_model

    check_save_dir(kw["out"], kw["overwrite"])  # before any work
    _refuse_inputs_among_run_files(kw)
    data = load_data(kw["data"], kw["samples"], sample_seed=kw["seed"])
    test = load_data(kw["test_data"]) if kw["test_data"] else None
    torch.manual_seed(kw["seed"])  # the initial weights
    model, description = load_model(kw["model"])
    bar = _StepProgress("train", not kw["quiet"])
    try:
        result = train_model(model, data, epochs=kw["epochs"], batch_size=kw["batch_size"], lr=kw["lr"],
                             momentum=kw["momentum"], weight_decay=kw["weight_decay"], milestones=kw["milestones"],
                             gamma=kw["gamma"], seed=kw["seed"], test_data=test, save_dir=kw["out"],
                             save_every=kw["save_every"], overwrite=kw["overwrite"], progress=bar,
                             augment=kw["augment"], device=kw["device"],
                             description={"model": description, "model_spec": kw["model"]})
    finally:
        bar.close()
    record = {"model": description, "data": data.description, "out": kw["out"], **result.as_dict()}
    if kw["as_json"]:
        echo_json(record)
        return
    last = result.history[-1]
    test_text = (f"; test loss {last['test_loss']:.4g}, accuracy {last['test_acc']:.1f}%"
                 if "test_loss" in last else "")
    click.echo(f"trained {description} for {kw['epochs']} epochs in {result.seconds:.1f} s: train loss "
               f"{last['train_loss']:.4g}, accuracy {last['train_acc']:.1f}%{test_text}")
    click.echo(f"wrote {len(result.checkpoints)} checkpoints and train.json to {kw['out']}; its trajectory: "
               f"lossgrid trajectory --model {kw['model']} --checkpoints '{os.path.join(kw['out'], 'model_*.pt')}' "
               f"--out trajectory.h5")


def _refuse_inputs_among_run_files(kw: dict[str, Any]) -> None:
    """An input file that a run writes or replaces in --out (``model_<n>.pt``, ``final.pt``,
    ``train.json``) is refused: lossgrid never writes over one of its own inputs."""
    from ..errors import ConfigError
    from ..surface.job import spec_file
    from ..train.recipe import is_run_file

    out = os.path.realpath(kw["out"])
    inputs = {"--data": spec_file(kw["data"]), "--test-data": spec_file(kw["test_data"]),
              "--model": spec_file(kw["model"])}
    for option, path in inputs.items():
        if path and os.path.dirname(os.path.realpath(path)) == out and is_run_file(os.path.basename(path)):
            raise ConfigError(f"{option} {path} is a file the training run writes in --out {kw['out']}",
                              "lossgrid never writes over one of its own input files",
                              "move the input out of the run directory, or choose another --out")
