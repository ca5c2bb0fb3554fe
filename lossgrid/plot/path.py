"""A training path drawn over a 2D plot of its PCA plane: the checkpoints as points
(colored by their loss when given), arrows along training, epochs annotated by the
numbers in the checkpoints' file names, the start and the end marked, and the
explained variance in the axis labels ("PC1 (93.1%)"). matplotlib is imported by
the caller (:mod:`lossgrid.plot.mpl`); this module only draws on an axis.

Example:
    >>> fig, ax = plt.subplots()                      # doctest: +SKIP
    >>> draw_path(ax, load_trajectory("traj.h5"))     # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checkpoints import epoch_of

if TYPE_CHECKING:
    from ..trajectory.compute import Trajectory

#: at most this many arrows and epoch labels, evenly spread along long paths
MAX_ARROWS = 40
MAX_LABELS = 12


def pc_label(traj: Trajectory, k: int) -> str:
    """``PC1 (93.1%)``: the ``k``-th (0-based) component and the share of variance it explains."""
    return f"PC{k + 1} ({100 * float(traj.explained_variance_ratio[k]):.1f}%)"


def epoch_labels(paths: list[str]) -> list[str]:
    """Labels of the checkpoints: the last number in each file name (``epoch_12.pt`` -> ``12``),
    else the position in the path (``#3``)."""

    labels = []
    for i, p in enumerate(paths):
        epoch = epoch_of(p)
        labels.append(str(epoch) if epoch is not None else f"#{i + 1}")
    return labels


def path_values(path_loss: Any, log: bool = False, vmax: float | None = None) -> np.ndarray | None:
    """Path losses transformed as :func:`lossgrid.plot.metric_values` transforms the
    surface's (clipped at ``vmax``, then log10), so both share one color scale."""
    if path_loss is None:
        return None
    z = np.asarray(path_loss, dtype=np.float64)
    if vmax is not None:
        z = np.minimum(z, vmax)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)
    return z


def spread(count: int, most: int) -> np.ndarray:
    """At most ``most`` indices out of ``range(count)``, evenly spread, first and last included."""
    if count <= most:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, most).round().astype(int))


def draw_path(ax: Any, traj: Trajectory, values: np.ndarray | None = None, cmap: Any = None,
              norm: Any = None) -> Any:
    """Draw the path of ``traj`` on ``ax`` (in training order); returns the points' artist.

    ``values`` (one per checkpoint) color the points with ``cmap``/``norm`` (the
    plane's, so that a point's color reads on the contour's scale); without them
    the points are white.
    """
    xy = np.asarray(traj.coords, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    ax.plot(x, y, "-", color="black", lw=1.0, alpha=0.8, zorder=3)
    # arrows along training: on every segment of a short path, on evenly spread ones of a long path
    if len(xy) > 1:
        seg = spread(len(xy) - 1, MAX_ARROWS)
        ax.quiver(x[seg], y[seg], x[seg + 1] - x[seg], y[seg + 1] - y[seg], angles="xy", scale_units="xy",
                  scale=1, width=0.004, headwidth=5, headlength=6, color="black", alpha=0.8, zorder=4)
    if values is not None:
        points = ax.scatter(x, y, c=values, cmap=cmap, norm=norm, s=28, edgecolors="black", linewidths=0.6,
                            zorder=5, label="checkpoints (color: loss)")
    else:
        points = ax.scatter(x, y, c="white", s=24, edgecolors="black", linewidths=0.6, zorder=5,
                            label="checkpoints")
    labels = epoch_labels(traj.paths)
    for i in spread(len(xy), MAX_LABELS):
        ax.annotate(labels[i], (x[i], y[i]), textcoords="offset points", xytext=(4, 4), fontsize=7, zorder=6)
    ax.plot(x[0], y[0], "o", ms=11, mfc="none", mec="tab:green", mew=2.0, zorder=6,
            label=f"start ({os.path.basename(traj.paths[0])})")
    end = next((i for i, p in enumerate(traj.paths) if p == traj.final), len(xy) - 1)
    ax.plot(x[end], y[end], "s", ms=10, mfc="none", mec="tab:red", mew=2.0, zorder=6,
            label=f"end ({os.path.basename(traj.final)})")
    ax.set_xlabel(pc_label(traj, 0))
    ax.set_ylabel(pc_label(traj, 1))
    ax.legend(loc="best", fontsize=7)
    return points
