"""``lossgrid plot``: render one or more surface files (with a training path over a 2D one)."""

from __future__ import annotations

from typing import Any

import click
import numpy as np

from ..plot import KINDS, METRICS
from ..plot.common import MAX_LEVELS
from ._types import FINITE, SEED, Count, FiniteFloat


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, metavar="PATH",
              help="Output: .png/.pdf/.svg image, .html (interactive), .vts/.vtp/.vtk (ParaView).")
@click.option("--kind", type=click.Choice(KINDS), default="auto", show_default=True,
              help="auto: curve (1D), contour (2D), compare (several 2D), html/vtk by the --out extension; "
              "curvature: |min/max| Hessian eigenvalue map of a surface computed with --curvature.")
@click.option("--metric", type=click.Choice(METRICS), default="loss", show_default=True)
@click.option("--log/--linear", "log_scale", default=None,
              help="log10 of the metric, or linear. Default: linear, but a 3D or HTML picture takes log10 where the "
              "values span more than two decades (a trained model's loss), saying so in its axis titles.")
@click.option("--levels", callback=lambda ctx, param, value: _levels(value),
              help="Contour levels: a count (30), values (0.1,0.5,1) or MIN:MAX:STEP.")
@click.option("--vmax", type=FINITE, help="Clip the metric above this value (zmax for VTK).")
@click.option("--vmin", type=FINITE, help="With --vmax and --vlevel: contour levels from VMIN below VMAX every VLEVEL, "
              "as the reference implementation's plot_2D (instead of --levels).")
@click.option("--vlevel", type=FiniteFloat(min=0, min_open=True), help="The step of those levels (see --vmin).")
@click.option("--title", help="Plot title.")
@click.option("--upsample", type=Count(2, 64), help="VTK: interpolate to N points per axis.")
@click.option("--allow-mismatch", is_flag=True, help="compare: allow surfaces on different directions/grids.")
@click.option("--dpi", type=Count(30, 2400), default=150, show_default=True)
@click.option("--trajectory", metavar="TRAJ.h5", type=click.Path(dir_okay=False),
              help="Draw this training path (lossgrid trajectory) over the surface, which must be computed on its "
              "directions (--dir-file TRAJ.h5).")
@click.option("--model", "model", metavar="SPEC",
              help="--trajectory: with --data, evaluate the path's losses (the surface's model factory).")
@click.option("--checkpoint", metavar="FILE", help="--trajectory: the surface's model (default: the final checkpoint).")
@click.option("--trust-checkpoint", is_flag=True, help="Allow checkpoints that are whole pickled models.")
@click.option("--data", help="--trajectory: the surface's evaluation data, to evaluate the path's losses.")
@click.option("--samples", type=Count(1, None), help="--trajectory: the surface's --samples.")
@click.option("--samples-seed", type=SEED, default=0, show_default=True)
@click.option("--loss", default="cross_entropy", show_default=True, help="--trajectory: the surface's --loss.")
def plot(files: tuple[str, ...], out: str, kind: str, metric: str, log_scale: bool | None,
         levels: str | list[float] | None,
         vmax: float | None, vmin: float | None, vlevel: float | None, title: str | None, upsample: int | None,
         allow_mismatch: bool, dpi: int, **path: Any) -> None:
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
      lossgrid plot surface.h5 --trajectory traj.h5 --model lossgrid.zoo:mlp_digits --data digits --out path.png

    With --trajectory and --model/--data, the path's losses are evaluated at its
    coordinates by the surface engine (on the surface's model, data and loss,
    checked) and color its points on the contour's scale; without them the path
    is drawn without losses.
    """
    from .._files import refuse_input_as_output
    from ..plot import plot_surfaces

    levels = _reference_levels(vmin, vmax, vlevel) if vmin is not None or vlevel is not None else levels
    if not path["trajectory"] and any(path[k] for k in ("model", "checkpoint", "data")):
        raise click.UsageError("--model, --checkpoint and --data evaluate a --trajectory's losses: pass --trajectory")
    refuse_input_as_output(out, {"--trajectory": path["trajectory"], "--checkpoint": path["checkpoint"]})
    traj, losses = _trajectory(path, files) if path["trajectory"] else (None, None)
    written = plot_surfaces(list(files), out, kind=kind, metric=metric, log=log_scale, levels=levels, vmax=vmax,
                            title=title, allow_mismatch=allow_mismatch, upsample=upsample, dpi=dpi,
                            trajectory=traj, path_loss=losses)
    if losses is not None and traj is not None:
        from ..plot.path import epoch_labels

        labels = epoch_labels(traj.paths)
        click.echo(f"path loss: {labels[0]}: {losses[0]:.4g} -> {labels[-1]}: {losses[-1]:.4g} "
                   f"(min {losses.min():.4g} at {labels[int(losses.argmin())]})")
    click.echo(f"wrote {written}")


def _trajectory(opts: dict[str, Any], files: tuple[str, ...]) -> tuple[Any, Any]:
    """The trajectory and, given --model/--checkpoint and --data, its losses on the surface's plane."""
    from ..trajectory.compute import load_trajectory, path_losses

    wants = [name for name in ("model", "checkpoint", "data") if opts[name]]
    if not wants:
        return load_trajectory(opts["trajectory"]), None
    if not opts["data"] or not (opts["model"] or opts["checkpoint"]):
        raise click.UsageError("the path's losses need --data and --model (and --checkpoint, default: the "
                               "trajectory's final checkpoint); drop them all to draw the path without losses")
    if len(files) != 1:
        raise click.UsageError("a trajectory is drawn over one surface file")
    from ..data import load_data
    from ..models import load_model

    traj = load_trajectory(opts["trajectory"])
    model, _ = load_model(opts["model"], opts["checkpoint"] or traj.final, opts["trust_checkpoint"])
    traj = load_trajectory(opts["trajectory"], model)  # its directions checked against the model
    data = load_data(opts["data"], opts["samples"], opts["samples_seed"])
    return traj, path_losses(model, data, traj, opts["loss"], surface=files[0])


def _levels(value: str | None) -> str | None:
    """Check --levels at the command line (bad values exit 2 naming it); the text goes on as given."""
    from ..errors import ConfigError
    from ..plot.common import parse_levels

    try:
        parse_levels(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _reference_levels(vmin: float | None, vmax: float | None, vlevel: float | None) -> list[float]:
    """``--vmin/--vmax/--vlevel`` as the reference implementation reads them: ``arange(vmin, vmax, vlevel)``."""
    ctx = click.get_current_context()
    if vmin is None or vmax is None or vlevel is None:
        raise click.BadParameter("give --vmin, --vmax and --vlevel together (levels from VMIN below VMAX every "
                                 "VLEVEL), or --levels", param_hint="--vmin/--vlevel")
    if ctx.get_parameter_source("levels") not in (None, click.core.ParameterSource.DEFAULT):
        raise click.BadParameter("--levels and --vmin/--vlevel both set the contour levels: give one of them",
                                 param_hint="--levels")
    if not vmin < vmax or (vmax - vmin) / vlevel > MAX_LEVELS:
        raise click.BadParameter(f"levels from {vmin:g} below {vmax:g} every {vlevel:g}: need VMIN < VMAX and at "
                                 f"most {MAX_LEVELS} levels", param_hint="--vmin/--vmax/--vlevel")
    values = np.arange(vmin, vmax, vlevel)
    if len(values) < 2:
        raise click.BadParameter("fewer than two levels: lower --vlevel", param_hint="--vlevel")
    return [float(v) for v in values]
