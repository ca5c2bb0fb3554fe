"""``lossgrid plot``: render a surface file."""

from __future__ import annotations

import click

from ..render import KINDS, METRICS


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--out", required=True, metavar="PATH", help="Image to write (.png, .pdf, .svg).")
@click.option("--kind", type=click.Choice(KINDS), default="auto", show_default=True)
@click.option("--metric", type=click.Choice(METRICS), default="loss", show_default=True)
@click.option("--log", "log_scale", is_flag=True, help="Log scale for the metric.")
@click.option("--levels", type=click.IntRange(min=2), help="Number of contour levels.")
@click.option("--vmax", type=float, help="Clip the metric above this value.")
@click.option("--title", help="Plot title.")
def plot(file: str, out: str, kind: str, metric: str, log_scale: bool, levels: int | None,
         vmax: float | None, title: str | None) -> None:
    """Render FILE (a surface file) to an image: 1D curve or 2D contour/heatmap."""
    from ..render import plot_surface

    path = plot_surface(file, out, kind=kind, metric=metric, log=log_scale, levels=levels, vmax=vmax, title=title)
    click.echo(f"wrote {path}")
