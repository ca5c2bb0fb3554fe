"""Option groups: the options of each spec declared once, with one help text, for every command that takes them.

Each group is a decorator (``@grid_options("-1:1:51")``); the ``*_of`` functions build the spec from the parsed
options, so that a command reads them the same way as every other command that takes the group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..config import AUTO_BUDGET, DIR_KINDS, DIR_TYPES, IGNORES, NORMS, PRECISIONS, DirectionSpec, EvalSpec, GridSpec
from ..engine.runners import ALL_STRATEGIES, BACKENDS
from ..errors import ConfigError
from ._common import BATCH_HELP, DATA_HELP, LOSS_HELP, MODEL_HELP, parse_axis
from ._types import DEVICE, MAX_BATCH, MAX_POINTS_PER_CALL, SEED, Count, FiniteFloat

Decorator = Callable[[Any], Any]

TRUST_HELP = ("Allow checkpoints that are whole pickled models: loading them runs code named in the file. Only for "
              "files you made or trust. State dicts, safetensors and TorchScript need no trust.")
DEVICE_HELP = "cpu, cuda or cuda:N."


def group(*options: Decorator) -> Decorator:
    """Several click options as one decorator, listed in ``--help`` in the order given."""
    def apply(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


def device_option() -> Decorator:
    return click.option("--device", type=DEVICE, default="cpu", show_default=True, help=DEVICE_HELP)


def report_options() -> Decorator:
    """``--json`` (a machine-readable summary on stdout) and ``-q`` (no progress bar)."""
    return group(click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout."),
                 click.option("-q", "--quiet", is_flag=True, help="No progress bar."))


def grid_options(x_default: str) -> Decorator:
    """``--x`` and ``--y``, each ``MIN:MAX:NUM`` (no ``--y``: a 1D grid)."""
    return group(
        click.option("--x", "x", default=x_default, show_default=True, callback=parse_axis, metavar="MIN:MAX:NUM"),
        click.option("--y", "y", default=None, callback=parse_axis, metavar="MIN:MAX:NUM", help="Second axis (2D)."))


def grid_of(kw: dict[str, Any]) -> GridSpec:
    """The grid of ``--x``/``--y``; a pair too large together is a bad pair of options (exit 2)."""
    try:
        return GridSpec(kw["x"], kw["y"])
    except ConfigError as e:  # each axis parsed, together too large
        raise click.BadParameter(str(e), param_hint="--x/--y") from None


def direction_options(kind_help: str, dir_file_help: str) -> Decorator:
    """The direction settings of :class:`DirectionSpec` (type, kind, norms, ignores, seed) and ``--dir-file``."""
    return group(
        click.option("--dir-type", type=click.Choice(DIR_TYPES), default="weights", show_default=True),
        click.option("--dir-kind", type=click.Choice(DIR_KINDS), default="random", show_default=True, help=kind_help),
        click.option("--xnorm", type=click.Choice(NORMS), default="filter", show_default=True),
        click.option("--ynorm", type=click.Choice(NORMS), default=None, help="Default: same as --xnorm."),
        click.option("--xignore", type=click.Choice(IGNORES), default="biasbn", show_default=True),
        click.option("--yignore", type=click.Choice(IGNORES), default=None, help="Default: same as --xignore."),
        click.option("--seed", type=SEED, default=0, show_default=True, help="Direction seed."),
        click.option("--dir-file", metavar="FILE", help=dir_file_help))


def direction_spec_of(kw: dict[str, Any]) -> DirectionSpec:
    """The :class:`DirectionSpec` of the parsed options (the selection ones where the command has them)."""
    return DirectionSpec(kw["dir_type"], kw["xnorm"], kw["xignore"], kw["ynorm"], kw["yignore"], kw["seed"],
                         kw["dir_kind"], kw.get("params"), kw.get("exclude"), bool(kw.get("trainable_only")))


def eval_options(strategy_note: str = "") -> Decorator:
    """The evaluation settings of :class:`EvalSpec`: backend, strategy, precision, timing budget, chunk sizes,
    device."""
    strategy_help = ("torch: loop | vmap | wide (K-wide model) | static (weights in one buffer written in place, "
                     "CUDA graphs on a GPU); onnxruntime: wide (K-wide graph) | baked (per-point sessions, CPU); "
                     "tensorrt: inputs | refit; auto: timed." + (" " + strategy_note if strategy_note else ""))
    return group(
        click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True,
                     help="auto: time every backend/strategy on this model and data, keep the fastest."),
        click.option("--strategy", type=click.Choice(ALL_STRATEGIES), default="auto", show_default=True,
                     help=strategy_help),
        click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
                     help="fp32: IEEE (TF32 off); tf32: TF32 tensor cores (NVIDIA GPUs); bf16: bfloat16 autocast "
                     "(GPUs, CPUs with native bf16); fp16: float16 autocast (NVIDIA GPUs). A lower precision stores "
                     "its loss error against fp32 at the first points; auto never lowers it."),
        click.option("--auto-budget", type=FiniteFloat(min=0), default=AUTO_BUDGET, show_default=True,
                     metavar="SHARE", help="auto: the share of the job's time that timing candidates may cost; a "
                     "smaller job keeps the default without timing (0: never time, 1000: always)."),
        click.option("--points-per-call", type=Count(1, MAX_POINTS_PER_CALL),
                     help="Grid points per runner call (default 8)."),
        click.option("--batch-size", type=Count(1, MAX_BATCH),
                     help="Samples per forward pass (default: by input size)."),
        device_option())


def eval_spec_of(kw: dict[str, Any]) -> EvalSpec:
    """The :class:`EvalSpec` of the parsed options."""
    return EvalSpec(kw["backend"], kw["strategy"], kw["points_per_call"], kw["batch_size"], kw["device"],
                    kw["auto_budget"], kw["precision"])


def model_data_options(example: str, samples_help: str, data_note: str = "") -> Callable[[Any], Any]:
    """The options every model-in, numbers-out command shares: ``--model`` (required),
    ``--checkpoint``, ``--trust-checkpoint``, ``--data`` (required), ``--samples``, ``--loss``."""
    return group(
        click.option("--model", "model", required=True, metavar="SPEC",
                     help=f"{MODEL_HELP} E.g. {example}."),
        click.option("--checkpoint", metavar="FILE",
                     help="state_dict (or {'state_dict': ...}); random weights without it."),
        click.option("--trust-checkpoint", is_flag=True, help=TRUST_HELP),
        click.option("--data", required=True, help=DATA_HELP + (" " + data_note if data_note else "")),
        click.option("--samples", type=Count(1, None), help=samples_help),
        click.option("--loss", default="cross_entropy", show_default=True, help=LOSS_HELP),
        click.option("--batch", "batch", metavar="SPEC", help=BATCH_HELP))
