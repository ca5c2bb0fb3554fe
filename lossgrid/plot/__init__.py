"""Render surface files: curves, contours, heatmaps, 3D surfaces (matplotlib),
interactive HTML (plotly), VTK for ParaView, and side-by-side comparisons.
Plotting libraries are imported only when rendering.

Example:
    >>> plot_surface("surface.h5", "contour.png")                          # doctest: +SKIP
    >>> plot_surfaces(["small_batch.h5", "large_batch.h5"], "cmp.png", kind="compare")  # doctest: +SKIP
    >>> plot_surface("surface.h5", "path.png", trajectory="traj.h5")          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from .._files import atomic_output, check_output_path, refuse_input_as_output
from ..errors import ConfigError
from ..surface.file import Surface
from ..trajectory.compute import check_same_plane, load_trajectory
from . import mpl
from .common import (
    AUTO_LOG_KINDS,
    METRICS,
    as_surface,
    axis_label,
    check_same_axes,
    curvature_values,
    default_levels,
    metric_values,
    parse_levels,
    use_log,
)
from .html import write_html
from .vtk import write_vtk

if TYPE_CHECKING:
    from ..trajectory.compute import Trajectory

logger = logging.getLogger(__name__)

KINDS_1D = ("curve",)
KINDS_2D = ("contour", "contourf", "heatmap", "surface3d")
KINDS = ("auto",) + KINDS_1D + KINDS_2D + ("html", "vtk", "compare", "curvature")
#: an output ending in one of these is the interactive page of its kind (``html``: of the surfaces given)
HTML_EXTENSIONS = (".html", ".htm")

__all__ = ["KINDS", "METRICS", "axis_label", "default_levels", "metric_values", "parse_levels", "plot_surface",
           "plot_surfaces"]


def plot_surface(surface: Surface | str | os.PathLike, out: str | os.PathLike, kind: str = "auto",
                 metric: str = "loss", log: bool | None = None, levels: int | list[float] | str | None = None,
                 vmax: float | None = None, title: str | None = None, upsample: int | None = None,
                 dpi: int = 150, trajectory: Trajectory | str | os.PathLike | None = None,
                 path_loss: Any = None) -> str:
    """Render one surface; see :func:`plot_surfaces`."""
    return plot_surfaces([surface], out, kind, metric, log, levels, vmax, title, upsample=upsample, dpi=dpi,
                         trajectory=trajectory, path_loss=path_loss)


def plot_surfaces(surfaces: list[Surface | str | os.PathLike], out: str | os.PathLike, kind: str = "auto",
                  metric: str = "loss", log: bool | None = None, levels: int | list[float] | str | None = None,
                  vmax: float | None = None, title: str | None = None, allow_mismatch: bool = False,
                  upsample: int | None = None, dpi: int = 150,
                  trajectory: Trajectory | str | os.PathLike | None = None, path_loss: Any = None) -> str:
    """Render surfaces to ``out``; returns the path written.

    Kinds: ``curve`` (1D; several files overlaid, each on its own directions,
    as in the paper's small- vs large-batch figures), ``contour``, ``contourf``,
    ``heatmap``, ``surface3d`` (2D; image by the extension of ``out``), ``html``
    (the interactive page of the surfaces given: curves, a 3D panel beside the
    contour, or a comparison), ``vtk`` (``.vts``/``.vtp``/``.vtk``; ``vmax`` clips,
    ``upsample`` interpolates), ``compare`` (side by side on one color scale;
    surfaces must share directions and grid unless ``allow_mismatch``), and
    ``curvature`` (the paper's convexity map ``|min_eig / max_eig|`` of a surface
    computed with ``--curvature``: a heatmap in 2D, a curve with both eigenvalues
    in 1D) and ``auto`` (curve, or contour; html/vtk by the extension of ``out``).
    ``metric`` is ``loss``, ``acc`` or ``err``; ``levels`` a count, a list, or
    ``MIN:MAX:STEP``. ``log``: log10 of the metric (``True``), linear (``False``), or ``None``: linear,
    but for ``surface3d`` and the page of a 2D surface the shared rule of
    :func:`~lossgrid.plot.common.use_log` (log where the values span more than two decades), so that a PNG
    3D and an HTML page of one surface agree.

    An ``out`` ending in ``.html`` writes the interactive page of any kind (:mod:`lossgrid.plot.html`):
    curves, compare, curvature, a 2D kind (3D panel and contour) or a trajectory over its plane.

    ``trajectory`` (a :class:`~lossgrid.trajectory.compute.Trajectory` or its file)
    draws a training path over a 2D ``contour``/``contourf``/``heatmap`` of a
    surface computed on the trajectory's directions (a surface on other directions
    is refused); ``path_loss`` (``[n]``, from
    :func:`~lossgrid.trajectory.compute.path_losses`) colors its points on the
    contour's color scale.
    """
    if not surfaces:
        raise ConfigError("No surface file given", hint="pass at least one FILE.h5")
    out = os.fspath(out)
    inputs = {f"input file {i + 1}": s.path if isinstance(s, Surface) else s for i, s in enumerate(surfaces)}
    if isinstance(trajectory, (str, os.PathLike)):
        inputs["the trajectory"] = trajectory
    refuse_input_as_output(out, inputs)
    check_output_path(out, "plot")
    loaded = [as_surface(s) for s in surfaces]
    for s in loaded:
        if s.writer is not None:
            logger.warning("%s is being written by process %s on %s: plotting the %d of %d points done so far",
                        s.path, s.writer.get("pid", "?"), s.writer.get("host", "?"), int(s.done.sum()), s.done.size)
    if kind not in KINDS:
        raise ConfigError(f"Unknown plot kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    if metric not in METRICS:
        raise ConfigError(f"Unknown metric {metric!r}", hint=f"use one of {', '.join(METRICS)}")
    lv = parse_levels(levels) if isinstance(levels, str) else levels
    first = loaded[0]
    ext = os.path.splitext(out)[1].lower()
    page = kind == "html" or ext in HTML_EXTENSIONS and kind != "vtk"  # every kind has its page
    if kind == "auto" and ext in (".vts", ".vtp", ".vtk"):
        kind = "vtk"
    elif kind in ("auto", "html"):
        kind = ("compare" if len(loaded) > 1 and first.ndim == 2 else "curve" if first.ndim == 1 else "contour")
        if kind == "contour" and _flat_axis(first) and not page:  # a 2D grid one point wide: a strip of cells
            kind = "heatmap"
    if len(loaded) > 1 and kind not in ("curve", "compare"):
        raise ConfigError(f"Plot kind {kind} draws one surface, got {len(loaded)}",
                          hint="use --kind compare for several 2D surfaces, or --kind curve for 1D ones")
    if trajectory is not None:
        trajectory = _check_trajectory(loaded, kind, trajectory, path_loss)
    if kind == "compare":
        check_same_axes(loaded, allow_mismatch)
    if kind == "curvature":
        curvature_values(first)  # refuses a surface without curvature before anything is drawn
    log = use_log(first, metric, log, vmax) if kind in AUTO_LOG_KINDS or page and kind in KINDS_2D else bool(log)
    if kind in KINDS_1D and any(s.ndim != 1 for s in loaded) or kind in KINDS_2D and first.ndim != 2:
        raise ConfigError(f"Plot kind {kind} does not fit a {first.ndim}D surface",
                          hint="use curve for 1D surfaces; contour, contourf, heatmap or surface3d for 2D ones")
    if (kind in ("contour", "contourf", "surface3d", "compare", "curvature") and not page
            and any(_flat_axis(s) for s in loaded)):
        shape = "x".join(str(n) for n in first.loss.shape)
        raise ConfigError(f"Plot kind {kind} needs at least 2 points on each axis; the surface is {shape}",
                          "contour lines and 3D surfaces are drawn between points of both axes",
                          "use --kind heatmap (or compute the surface with more points on that axis)")
    if not page and kind != "vtk":
        formats = mpl.image_formats()
        if ext.lstrip(".") not in formats:
            raise ConfigError(f"Cannot write a {kind} plot to {out}", f"unknown image type {ext or '(none)'!r}",
                              f"end --out in one of .{', .'.join(sorted(formats))} (or .html, .vts)")
    with atomic_output(out, "plot") as tmp:  # never a half-written image in place of a good one
        if page:
            write_html(kind, loaded, tmp, metric=metric, log=log, levels=lv, vmax=vmax, title=title,
                       trajectory=trajectory, path_loss=path_loss)
        elif kind == "curve":
            mpl.curve(loaded, tmp, log=log, vmax=vmax, title=title, dpi=dpi)
        elif kind == "surface3d":
            mpl.surface3d(first, tmp, metric=metric, log=log, vmax=vmax, title=title, dpi=dpi)
        elif kind == "curvature":
            mpl.curvature(first, tmp, vmax=vmax, title=title, dpi=dpi)
        elif kind == "compare":
            mpl.compare(loaded, tmp, metric=metric, log=log, levels=lv, vmax=vmax, title=title, dpi=dpi)
        elif kind == "vtk":
            write_vtk(first, tmp, metric=metric, log=log, zmax=vmax, upsample=upsample)
        else:
            mpl.plane(first, tmp, kind=kind, metric=metric, log=log, levels=lv, vmax=vmax, title=title, dpi=dpi,
                      trajectory=trajectory, path_loss=path_loss)
    return out


def _check_trajectory(surfaces: list[Surface], kind: str, trajectory: Any, path_loss: Any) -> Trajectory:
    """The trajectory, loaded; refuses plot kinds without a plane and surfaces on other directions."""
    import numpy as np

    if kind not in ("contour", "contourf", "heatmap") or len(surfaces) != 1 or surfaces[0].ndim != 2:
        raise ConfigError(f"A trajectory is drawn over one 2D contour, contourf or heatmap, not {kind}",
                          hint="pass one 2D surface file and --kind contour, contourf or heatmap")
    traj = trajectory if not isinstance(trajectory, (str, os.PathLike)) else load_trajectory(trajectory)
    check_same_plane(surfaces[0].attrs, traj)
    if path_loss is not None and np.shape(path_loss) != (len(traj.paths),):
        raise ConfigError(f"path_loss has shape {np.shape(path_loss)}", f"the trajectory has {len(traj.paths)} "
                          "checkpoints", "pass the values of lossgrid.trajectory.compute.path_losses")
    return traj


def _flat_axis(surface: Surface) -> bool:
    """Whether a 2D surface has an axis of one point."""
    return surface.ndim == 2 and min(surface.loss.shape) < 2
