"""The trajectory file (private; the public names are re-exported by :mod:`lossgrid.trajectory.compute`).

A trajectory file is a direction file -- ``lossgrid surface --dir-file`` reads
it -- with the run's path added. HDF5 layout::

    /                       attributes: the directions' metadata (``kind="pca"``,
                            ``dir_type``, ``xnorm``/``ynorm`` = ``none``,
                            ``xignore``/``yignore``, ``explained_variance_ratio``, ...)
    /xdirection, /ydirection
                            the two PCA directions, one dataset per tensor
                            (``"0"``, ``"1"``, ...), tensor names in the attribute ``names``
    /trajectory             group; attributes ``schema_version``, ``final`` (the
                            final checkpoint's path), ``final_fingerprint`` (its
                            state's fingerprint: the plane's origin),
                            ``explained_variance_ratio`` ``[2]``
    /trajectory/coords      float64 ``[n, 2]``: each checkpoint's coordinates
    /trajectory/residuals   float64 ``[n]``: the norm of what the plane misses
    /trajectory/paths       strings ``[n]``: the checkpoints, rows of ``coords``

The file is built in memory and moved into place, never half-written; an
existing file is replaced only if it is a trajectory file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import hdf5_image, input_file_problem, os_reason, publish_bytes
from ..engine.directions import META_KEYS, Directions, load_directions, write_direction_groups
from ..engine.params import ParamLayout
from ..errors import DirectionError

TRAJECTORY_SCHEMA = 1


@dataclass
class Trajectory:
    """A run's checkpoints projected on their PCA plane (rows of ``coords`` follow ``paths``)."""

    directions: Directions
    paths: list[str]
    coords: np.ndarray
    residuals: np.ndarray
    explained_variance_ratio: np.ndarray
    final: str
    #: fingerprint of the final model's state (as a surface file's ``model_fingerprint``): the plane's origin
    final_fingerprint: str = ""


def save_trajectory(path: str | os.PathLike, traj: Trajectory) -> None:
    """Write a direction file (``lossgrid surface --dir-file`` reads it) with the path:
    datasets ``trajectory/coords`` ``[n, 2]``, ``trajectory/residuals`` ``[n]``,
    ``trajectory/paths`` ``[n]`` and attributes ``final``, ``explained_variance_ratio``.
    Built in memory and moved into place: never half-written.

    Example:
        >>> save_trajectory("traj.h5", traj)  # doctest: +SKIP
    """
    import h5py

    def fill(f: Any) -> None:
        write_direction_groups(f, traj.directions)
        g = f.create_group("trajectory")
        g.attrs["schema_version"] = TRAJECTORY_SCHEMA
        g.attrs["final"] = traj.final
        g.attrs["final_fingerprint"] = traj.final_fingerprint
        g.attrs["explained_variance_ratio"] = np.asarray(traj.explained_variance_ratio, dtype=np.float64)
        g.create_dataset("coords", data=np.asarray(traj.coords, dtype=np.float64))
        g.create_dataset("residuals", data=np.asarray(traj.residuals, dtype=np.float64))
        # a dataset, not an attribute: thousands of paths exceed HDF5's 64 KiB attribute limit
        g.create_dataset("paths", data=list(traj.paths), dtype=h5py.string_dtype())

    path = os.fspath(path)
    if os.path.exists(path) and not _is_trajectory_file(path):
        raise DirectionError(f"{path} exists and is not a trajectory file",
                             "lossgrid replaces only its own trajectory files", "choose another --out")
    try:
        publish_bytes(path, hdf5_image(fill))
    except OSError as e:
        raise DirectionError(f"Cannot write trajectory file {path}", os_reason(e),
                             "free some space or choose a writable --out path") from None


def _is_trajectory_file(path: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            return isinstance(f.get("trajectory"), h5py.Group)
    except (OSError, ValueError):
        return False


def load_trajectory(path: str | os.PathLike, model: nn.Module | None = None) -> Trajectory:
    """Read a trajectory file; with ``model``, its directions are checked against the
    model (names, shapes) and placed on its device and dtype.

    Example:
        >>> traj = load_trajectory("traj.h5")  # doctest: +SKIP
    """
    import h5py

    path = os.fspath(path)
    problem = input_file_problem(path)
    hint = "pass a file written by lossgrid trajectory"
    if problem:
        raise DirectionError(f"Cannot read trajectory file {path}", problem, hint)
    try:
        with h5py.File(path, "r") as f:
            g = f.get("trajectory")
            if not isinstance(g, h5py.Group) or not all(k in g for k in ("coords", "residuals", "paths")):
                raise DirectionError(f"{path} is not a trajectory file", "it has no trajectory/coords, "
                                     "residuals and paths", hint)
            coords = np.asarray(g["coords"][()], dtype=np.float64)
            residuals = np.asarray(g["residuals"][()], dtype=np.float64)
            paths = [p.decode() if isinstance(p, bytes) else str(p) for p in g["paths"][()]]
            ratio = np.asarray(g.attrs["explained_variance_ratio"], dtype=np.float64)
            final = g.attrs["final"]
            final = final.decode() if isinstance(final, bytes) else str(final)
            origin = g.attrs.get("final_fingerprint", "")
            origin = origin.decode() if isinstance(origin, bytes) else str(origin)
            kind = f.attrs.get("kind")
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind != "pca":
                raise DirectionError(f"{path} holds {kind!r} directions, not a trajectory's PCA directions", hint=hint)
            directions = None if model is not None else _read_directions(f)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise DirectionError(f"Cannot read trajectory file {path}", str(e).splitlines()[0] if str(e) else None,
                             hint) from None
    if model is not None:
        directions = load_directions(path, model, ndim=2)
    assert directions is not None
    if coords.shape != (len(paths), 2) or residuals.shape != (len(paths),) or ratio.shape != (2,):
        raise DirectionError(f"Trajectory file {path} is inconsistent",
                             f"coords {coords.shape}, residuals {residuals.shape} for {len(paths)} paths", hint)
    return Trajectory(directions, paths, coords, residuals, ratio, final, origin)


def _read_directions(f: Any) -> Directions:
    """The two directions with the layout stored in the file (no model needed)."""
    meta = {k: (v.item() if isinstance(v, np.generic) else v.tolist() if isinstance(v, np.ndarray) else v)
            for k, v in f.attrs.items() if k in META_KEYS}
    tensors = []
    for gname in ("xdirection", "ydirection"):
        g = f[gname]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(g.attrs["names"])]
        tensors.append([torch.from_numpy(np.ascontiguousarray(g[str(i)][()])) for i in range(len(names))])
    layout = ParamLayout(tuple(names), tuple(tuple(int(d) for d in t.shape) for t in tensors[0]),
                         str(meta.get("dir_type", "weights")))
    return Directions(layout, tensors[0], tensors[1], meta)
