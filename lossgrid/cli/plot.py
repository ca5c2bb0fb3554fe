"""``lossgrid plot``: render one or more surface files."""

from __future__ import annotations

import click

from ..render import KINDS, METRICS


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, metavar="PATH",
              help="Output: .png/.pdf/.svg image, .html (interactive), .vts/.vtp/.vtk (ParaView).")
@click.option("--kind", type=click.Choice(KINDS), default="auto", show_default=True,
              help="auto: curve (1D), contour (2D), compare (several 2D), html/vtk by the --out extension; "
              "curvature: |min/max| Hessian eigenvalue map of a surface computed with --curvature.")
@click.option("--metric", type=click.Choice(METRICS), default="loss", show_default=True)
@click.option("--log", "log_scale", is_flag=True, help="log10 of the metric.")
@click.option("--levels", help="Contour levels: a count (30), values (0.1,0.5,1) or MIN:MAX:STEP.")
@click.option("--vmax", type=float, help="Clip the metric above this value (zmax for VTK).")
@click.option("--title", help="Plot title.")
@click.option("--upsample", type=click.IntRange(min=2), help="VTK: interpolate to N points per axis.")
@click.option("--allow-mismatch", is_flag=True, help="compare: allow surfaces on different directions/grids.")
@click.option("--dpi", type=click.IntRange(min=30), default=150, show_default=True)
def plot(files: tuple[str, ...], out: str, kind: str, metric: str, log_scale: bool, levels: str | None,
         vmax: float | None, title: str | None, upsample: int | None, allow_mismatch: bool, dpi: int) -> None:
    """Render surface FILES: 1D curves (overlaid), 2D contour/contourf/heatmap/surface3d,
    interactive HTML, VTK, or a side-by-side comparison on one color scale.

    \b
    Examples:
      lossgrid plot surface.h5 --out contour.png
      lossgrid plot surface.h5 --kind surface3d --log --out surface3d.png
      lossgrid plot surface.h5 --out surface.html
      lossgrid plot surface.h5 --out surface.vts --log --vmax 10 --upsample 201
      lossgrid plot small_batch.h5 large_batch.h5 --kind compare --out cmp.png
      lossgrid plot curvature.h5 --kind curvature --out convexity.png
    """
    from ..render import plot_surfaces

    path = plot_surfaces(list(files), out, kind=kind, metric=metric, log=log_scale, levels=levels, vmax=vmax,
                         title=title, allow_mismatch=allow_mismatch, upsample=upsample, dpi=dpi)
    click.echo(f"wrote {path}")
