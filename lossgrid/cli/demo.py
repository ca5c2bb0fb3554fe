"""``lossgrid demo``: train a small residual CNN on the bundled digits and plot its surface
(or, with ``--trajectory``, its training path on the PCA plane of its checkpoints)."""

from __future__ import annotations

import click

from ._common import echo_json, run_with_progress
from ._types import MAX_EPOCHS, SEED, Count


@click.command()
@click.option("--out", default="lossgrid-demo", show_default=True, metavar="DIR",
              help="Output directory. One holding an earlier demo's files is refused unless --overwrite.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier demo's files in --out, once this demo has written all of its own (an "
                   "interrupted or failed demo leaves them as they were). Other files there are never touched.")
@click.option("--grid", default=None, metavar="MIN:MAX:NUM",
              help="Both axes [default: -1:1:31]. With --trajectory the axes span the path: NUM alone "
                   "(default 31) sets the points per axis, MIN:MAX:NUM fixes both axes.")
@click.option("--epochs", type=Count(1, MAX_EPOCHS), default=12, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--trajectory", is_flag=True,
              help="Plot the training path instead: a checkpoint every epoch (DIR/checkpoints, by lossgrid's "
                   "Tracker), their PCA plane (DIR/trajectory.h5), the surface on it around the final model "
                   "(DIR/trajectory_surface.h5) and its contour with the path (DIR/trajectory.png).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def demo(out: str, grid: str | None, epochs: int, seed: int, trajectory: bool, as_json: bool, quiet: bool,
         overwrite: bool) -> None:
    """Train a residual CNN on scikit-learn's digits, compute and render its 2D surface
    (with --trajectory: its training path on the PCA plane of its checkpoints)."""
    from .._outdir import check_output_dir
    from ..config import Axis
    from ..demo import is_demo_file
    from ..errors import ConfigError

    num = None
    if trajectory and grid is not None and grid.strip().isascii() and grid.strip().isdigit():
        num = int(grid)
        if num < 2:
            raise click.BadParameter(f"{grid}: a plane needs at least 2 points per axis", param_hint="--grid")
    else:
        try:
            Axis.parse(grid if grid is not None else "-1:1:31")
        except ConfigError as e:
            raise click.BadParameter(str(e), param_hint="--grid") from None
    check_output_dir(out, "demo", is_demo_file, overwrite)  # before any work (a file there: exit 1, as train's)
    if trajectory and epochs < 2:  # the initial weights and two epochs: the fewest checkpoints that span a plane
        raise click.BadParameter(f"--trajectory needs 2 epochs or more, got {epochs}", param_hint="--epochs")
    if trajectory:
        _trajectory_demo(out, num or 31, None if num else grid, epochs, seed, as_json, quiet, overwrite)
        return
    from ..demo import run_demo

    grid = grid if grid is not None else "-1:1:31"
    result = run_with_progress("surface", not quiet, lambda bar: run_demo(out, grid=grid, epochs=epochs, seed=seed,
                                                                          progress=bar, overwrite=overwrite))
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


def _trajectory_demo(out: str, num: int, grid: str | None, epochs: int, seed: int, as_json: bool,
                     quiet: bool, overwrite: bool) -> None:
    from ..demo import run_trajectory_demo

    result = run_with_progress("surface", not quiet, lambda bar: run_trajectory_demo(
        out, num=num, grid=grid, epochs=epochs, seed=seed, progress=bar, overwrite=overwrite))
    if as_json:
        echo_json(result)
        return
    s = result["summary"]
    ratio = " + ".join(f"{100 * r:.1f}%" for r in result["explained_variance_ratio"])
    click.echo(f"trained {epochs} epochs in {result['train_seconds']} s (tracker: {result['checkpoints']} "
               f"checkpoints and 1D landscapes in {result['tracking_seconds']} s); PCA plane of the path in "
               f"{result['trajectory_seconds']} s explains {ratio} of its variance")
    click.echo(f"surface {s['shape']} on the plane in {result['surface_seconds']} s "
               f"({result['run']['points_x_samples_per_s']:,.0f} points x samples/s); final loss "
               f"{result['final_loss']:.4g}, lowest on the plane {s['min_loss']:.4g} at "
               f"({s['min_at'][0]:.3g}, {s['min_at'][1]:.3g})")
    click.echo("wrote " + ", ".join(result["paths"].values()))
