"""``lossgrid demo``: train a small residual CNN on the bundled digits and plot its surface."""

from __future__ import annotations

import os

import click

from ._common import echo_json, run_with_progress


@click.command()
@click.option("--out", default="lossgrid-demo", show_default=True, metavar="DIR", help="Output directory.")
@click.option("--grid", default="-1:1:31", show_default=True, metavar="MIN:MAX:NUM", help="Both axes.")
@click.option("--epochs", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def demo(out: str, grid: str, epochs: int, seed: int, as_json: bool, quiet: bool) -> None:
    """Train a residual CNN on scikit-learn's digits, compute and render its 2D surface."""
    from ..config import Axis
    from ..demo import run_demo
    from ..errors import ConfigError

    try:
        Axis.parse(grid)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--grid") from None
    if os.path.exists(out) and not os.path.isdir(out):
        raise click.BadParameter(f"{out} is a file; the demo writes several files into a directory",
                                 param_hint="--out")
    result = run_with_progress("surface", not quiet,
                               lambda bar: run_demo(out, grid=grid, epochs=epochs, seed=seed, progress=bar))
    if as_json:
        echo_json(result)
        return
    s = result["summary"]
    click.echo(f"trained in {result['train_seconds']} s; surface {s['shape']} in {result['surface_seconds']} s "
               f"({result['run']['points_x_samples_per_s']:,.0f} points x samples/s); "
               f"center loss {s['center_loss']:.4g}, accuracy {s['center_acc']:.1f}%")
    click.echo("wrote " + ", ".join(result["paths"].values()))
    for what, why in result["skipped"].items():
        click.echo(f"skipped {what}: {why}", err=True)
