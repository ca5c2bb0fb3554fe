"""``lossgrid trajectory``: PCA directions of a training run's checkpoints, written as a
direction file that ``lossgrid surface --dir-file`` reads and ``lossgrid plot --trajectory`` draws."""

from __future__ import annotations

import os
import shlex
from typing import Any

import click

from ..config import DIR_TYPES, IGNORES
from ._common import check_outputs, echo_json, run_with_progress


@click.command()
@click.option("--model", "model", required=True, metavar="SPEC",
              help="Factory of the architecture: path/to/file.py:fn or package.module:fn.")
@click.option("--checkpoints", "patterns", required=True, multiple=True, metavar="GLOB",
              help="Checkpoint files of the run, a quoted glob such as 'run/epoch_*.pt' (repeatable); sorted by "
              "the numbers in their file names.")
@click.option("--final", metavar="FILE", help="The final model, the plane's origin (default: the last checkpoint).")
@click.option("--dir-type", type=click.Choice(DIR_TYPES), default="weights", show_default=True,
              help="weights: parameters; states: also BatchNorm running statistics.")
@click.option("--ignore", type=click.Choice(IGNORES), default="biasbn", show_default=True,
              help="biasbn: 1-D tensors (biases, BatchNorm) set to zero in the differences, as the reference does.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow checkpoints that are whole pickled models (loading them runs code from the file).")
@click.option("--out", required=True, metavar="FILE.h5", help="Trajectory file (a direction file with the path).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out file (surfaces computed on its directions no longer match it).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def trajectory(**kw: Any) -> None:
    """PCA plane of a training run: directions, each checkpoint's coordinates, the
    suggested grid and the commands that compute and draw the surface under the path.

    \b
    Example:
      lossgrid trajectory --model lossgrid.zoo:mlp_digits --checkpoints 'run/epoch_*.pt' --out traj.h5
    """
    from ..checkpoints import checkpoint_paths
    from ..models import load_model
    from ..surface.job import spec_file
    from ..trajectory.compute import compute_trajectory, path_grid, save_trajectory

    out = kw["out"]
    paths = checkpoint_paths(kw["patterns"])
    inputs: dict[str, str | None] = {f"--checkpoints ({p})": p for p in paths}
    inputs.update({"--final": kw["final"], "--model": spec_file(kw["model"])})
    check_outputs({"--out": out}, inputs, kw["overwrite"])  # before any work
    model, _ = load_model(kw["model"])
    traj = run_with_progress("trajectory", not kw["quiet"], lambda bar: compute_trajectory(
        model, paths, kw["final"], kw["dir_type"], kw["ignore"], kw["trust_checkpoint"], bar))
    save_trajectory(out, traj)
    summary = _summary(traj, kw, out, path_grid(traj))
    if kw["as_json"]:
        echo_json(summary)
    else:
        _echo(summary)


def _summary(traj: Any, kw: dict[str, Any], out: str, grid: tuple[str, str]) -> dict[str, Any]:
    x, y = grid
    q = shlex.quote
    extra = (" --dir-type states" if kw["dir_type"] == "states" else "") + (
        " --trust-checkpoint" if kw["trust_checkpoint"] else "")
    surface = (f"lossgrid surface --model {q(kw['model'])} --checkpoint {q(traj.final)} --dir-file {q(out)} "
               f"--x={x} --y={y} --xnorm none{extra} --out surface.h5")
    plot = (f"lossgrid plot surface.h5 --trajectory {q(out)} --model {q(kw['model'])} --data digits "
            f"--out path.png")
    worst = int(traj.residuals.argmax())
    return {"file": os.fspath(out), "checkpoints": len(traj.paths), "first": traj.paths[0], "final": traj.final,
            "explained_variance_ratio": [float(v) for v in traj.explained_variance_ratio],
            "coords": traj.coords.tolist(), "residuals": traj.residuals.tolist(),
            "max_residual": float(traj.residuals[worst]), "max_residual_at": traj.paths[worst],
            "x": x, "y": y, "surface_command": surface, "plot_command": plot}


def _echo(s: dict[str, Any]) -> None:
    r1, r2 = s["explained_variance_ratio"]
    click.echo(f"wrote {s['file']}: {s['checkpoints']} checkpoints, {s['first']} ... {s['final']} (final, at 0,0)")
    click.echo(f"explained variance: PC1 {100 * r1:.1f}%, PC2 {100 * r2:.1f}% (the plane holds {100 * (r1 + r2):.1f}%)")
    click.echo(f"largest distance from the plane: {s['max_residual']:.4g} ({s['max_residual_at']})")
    click.echo(f"suggested grid: --x={s['x']} --y={s['y']}")
    click.echo("next (add --data/--samples for your evaluation set; the plot's must match the surface's):")
    click.echo(f"  {s['surface_command']}")
    click.echo(f"  {s['plot_command']}")
