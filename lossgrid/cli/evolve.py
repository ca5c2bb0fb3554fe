"""``lossgrid evolve``: the loss landscape around each checkpoint of a training run, on
shared directions, in one resumable file; optionally animated (GIF, MP4, HTML slider)."""

from __future__ import annotations

import os
import time
from typing import Any

import click

from ..errors import ConfigError
from ._common import DATA_HELP, LOSS_HELP, MODEL_HELP, echo_json, run_with_progress
from ._options import (
    TRUST_HELP,
    direction_options,
    direction_spec_of,
    eval_options,
    eval_spec_of,
    grid_of,
    grid_options,
    report_options,
)
from ._types import FINITE, SEED, Count, FiniteFloat

#: animation option -> the file extensions it writes
ANIMATIONS = {"gif": (".gif",), "mp4": (".mp4",), "html": (".html", ".htm")}


@click.command()
@click.option("--model", "model", metavar="SPEC", help=MODEL_HELP)
@click.option("--checkpoints", "patterns", multiple=True, required=True, metavar="GLOB",
              help="Checkpoint files or quoted glob patterns ('run/epoch_*.pt'); repeatable. Sorted by the numbers "
              "in their names (epoch_2 before epoch_10).")
@click.option("--trust-checkpoint", is_flag=True, help=TRUST_HELP)
@click.option("--data", default="digits", show_default=True, help=DATA_HELP)
@click.option("--samples", type=Count(1, None), help="Evaluate on a fixed, seeded subset of N samples.")
@click.option("--samples-seed", type=SEED, default=0, show_default=True)
@click.option("--loss", default="cross_entropy", show_default=True, help=LOSS_HELP)
@grid_options("-1:1:21")
@direction_options(
    kind_help="random: seeded Gaussian directions; hessian: the top-2 (top-1 in 1D) eigenvectors of the loss Hessian "
    "at the last checkpoint.",
    dir_file_help="Directions file: read if it exists, else written (made from the LAST checkpoint).")
@click.option("--out", required=True, metavar="FILE.h5",
              help="Evolution file, one surface per checkpoint (resumed if it exists).")
@click.option("--overwrite", is_flag=True, help="Replace an evolution file computed with other settings.")
@click.option("--gif", metavar="FILE.gif", help="Animated GIF, one frame per checkpoint.")
@click.option("--mp4", metavar="FILE.mp4", help="MP4 video (needs the ffmpeg program).")
@click.option("--html", metavar="FILE.html", help="Interactive HTML with a checkpoint slider (one offline file).")
@click.option("--metric", type=click.Choice(("loss", "acc", "err")), default="loss", show_default=True,
              help="What the animations show.")
@click.option("--log/--linear", "log_scale", default=None,
              help="Animations: log10 of the metric, or linear. Default: a 2D evolution takes log10 where the values "
              "of all checkpoints span more than two decades (as lossgrid plot's 3D and HTML pictures).")
@click.option("--vmax", type=FINITE, help="Animations: clip the metric above this value.")
@click.option("--fps", type=FiniteFloat(min=0.1, max=60), default=2.0, show_default=True,
              help="Animation frames (checkpoints) per second.")
@eval_options(strategy_note="What auto picks on the first checkpoint is kept for the others.")
@report_options()
def evolve(**kw: Any) -> None:
    """The loss landscape around every checkpoint of a training run, on the same
    directions (made from the last checkpoint), in one file; optionally animated.

    \b
    Example:
      lossgrid evolve --model lossgrid.zoo:mlp_digits --checkpoints 'run/epoch_*.pt' \\
          --data digits:test --x=-1:1:21 --y=-1:1:21 --out evo.h5 --gif evo.gif --html evo.html
    """
    t0 = time.perf_counter()
    grid, directions, evaluation = grid_of(kw), direction_spec_of(kw), eval_spec_of(kw)
    from ..checkpoints import find_checkpoints
    from ..data import load_data
    from ..evolve.compute import compute_evolution

    checkpoints = find_checkpoints(kw["patterns"])
    animations = _check_outputs(kw, checkpoints)  # before any work: bad paths, a missing ffmpeg
    data = load_data(kw["data"], kw["samples"], kw["samples_seed"])
    evo = run_with_progress("evolve", not kw["quiet"], lambda bar: compute_evolution(
        kw["model"], checkpoints, data, grid, kw["out"], direction_spec=directions, dir_file=kw["dir_file"],
        loss=kw["loss"], eval_spec=evaluation, overwrite=kw["overwrite"], trust_checkpoint=kw["trust_checkpoint"],
        progress=bar))
    from ..plot.animate import render_evolution

    written = {name: render_evolution(evo, path, metric=kw["metric"], log=kw["log_scale"], vmax=kw["vmax"],
                                      fps=kw["fps"]) for name, path in animations.items()}
    run = evo.attrs.get("last_run", {})
    summary = {**evo.summary(), "animations": written, "seconds": round(time.perf_counter() - t0, 3),
               "eval_seconds": run.get("seconds"), "points_computed": run.get("points"), "samples": len(data),
               "backend": run.get("backend"), "strategy": run.get("strategy")}
    if kw["as_json"]:
        echo_json(summary)
    else:
        _echo_summary(summary)


def _check_outputs(kw: dict[str, Any], checkpoints: list[str]) -> dict[str, str]:
    """Refuse unusable output paths and outputs that are inputs; check ffmpeg for --mp4.
    Returns the animations asked for, ``{"gif": path, ...}``."""
    from .._files import check_output_path, refuse_input_as_output
    from ..surface.checks import check_writable
    from ..surface.job import spec_file

    check_writable(kw["out"])
    inputs = {f"--checkpoints ({os.path.basename(c)})": c for c in checkpoints}
    inputs.update({"--model": spec_file(kw["model"]), "--data": spec_file(kw["data"]),
                   "--loss": spec_file(kw["loss"]),
                   "--dir-file": kw["dir_file"] if kw["dir_file"] and os.path.exists(kw["dir_file"]) else None})
    refuse_input_as_output(kw["out"], inputs)
    animations = {name: kw[name] for name in ANIMATIONS if kw[name]}
    for name, path in animations.items():
        if os.path.splitext(path)[1].lower() not in ANIMATIONS[name]:
            raise ConfigError(f"--{name} {path} does not end in {' or '.join(ANIMATIONS[name])}",
                              hint=f"name the file like evo{ANIMATIONS[name][0]}")
        check_output_path(path, f"--{name} file")
        refuse_input_as_output(path, {**inputs, "--out": kw["out"]}, option=f"--{name}")
    if "mp4" in animations:
        from ..plot.animate import check_mp4_writable

        check_mp4_writable()
    return animations


def _echo_summary(s: dict[str, Any]) -> None:
    how = f" ({s['backend']}/{s['strategy']})" if s.get("backend") else " (the file was complete)"
    click.echo(f"wrote {s['file']}: {len(s['checkpoints'])} checkpoints, {s['points_done']}/{s['points_total']} "
               f"points, {s['points_computed']} computed in {s['eval_seconds']} s{how}")
    for row in s["checkpoints"]:
        where = ", ".join(f"{c:g}" for c in row["min_at"]) if row.get("min_at") else "-"
        click.echo(f"  {row['label']:<20} min loss {row['min_loss']} at ({where}), center loss {row['center_loss']}")
    for path in s["animations"].values():
        click.echo(f"wrote {path}")
