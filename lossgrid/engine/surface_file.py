"""The HDF5 surface file.

Layout (schema version 1; dataset names follow the reference implementation so
its users' scripts read our files):

* ``xcoordinates`` ``(nx,)``, ``ycoordinates`` ``(ny,)`` (2D only), float64;
* ``train_loss``, ``train_acc``: float64, shape ``(nx,)`` or ``(nx, ny)``
  indexed ``[ix, iy]``; NaN where not yet computed (and where the loss really is
  NaN: the ``done`` mask tells them apart);
* ``done``: uint8 mask of computed points;
* groups ``xdirection``/``ydirection``: the directions (as in a direction file);
* attributes: ``schema_version``, ``identity`` (JSON of every setting that
  determines the values; a run with different settings is refused), the same
  settings as separate attributes for readers, and ``runs`` (JSON log of the
  backends and timings of every run that wrote to the file).

Values are written chunk by chunk, the ``done`` mask after the values, each
chunk flushed: a killed run leaves a file whose ``done`` points are complete.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SurfaceFileError

SCHEMA_VERSION = 1
LOSS, ACC, DONE = "train_loss", "train_acc", "done"


@dataclass
class Surface:
    """A (possibly partial) surface in memory."""

    xcoordinates: np.ndarray
    ycoordinates: np.ndarray | None
    loss: np.ndarray
    acc: np.ndarray
    done: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def ndim(self) -> int:
        return 1 if self.ycoordinates is None else 2

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def summary(self) -> dict[str, Any]:
        """Minimum loss and where, loss at the origin, completion."""
        valid = self.done.astype(bool) & np.isfinite(self.loss)
        out: dict[str, Any] = {"file": self.path, "shape": list(self.loss.shape),
                               "points_done": int(self.done.sum()), "points_total": int(self.done.size)}
        if valid.any():
            flat = np.where(valid, self.loss, np.inf)
            idx = np.unravel_index(int(np.argmin(flat)), flat.shape)
            out["min_loss"] = float(self.loss[idx])
            out["min_at"] = self._coords(idx)
            out["min_acc"] = _num(self.acc[idx])
        else:
            out["min_loss"] = None
            out["min_at"] = None
        center = self._origin_index()
        if center is not None and self.done[center]:
            out["center_loss"] = _num(self.loss[center])
            out["center_acc"] = _num(self.acc[center])
        else:
            out["center_loss"] = None
            out["center_acc"] = None
        out["nonfinite_points"] = int((self.done.astype(bool) & ~np.isfinite(self.loss)).sum())
        return out

    def _coords(self, idx: tuple[int, ...]) -> list[float]:
        coords = [float(self.xcoordinates[idx[0]])]
        if self.ycoordinates is not None:
            coords.append(float(self.ycoordinates[idx[1]]))
        return coords

    def _origin_index(self) -> tuple[int, ...] | None:
        axes = [self.xcoordinates] + ([self.ycoordinates] if self.ycoordinates is not None else [])
        idx = []
        for ax in axes:
            hits = np.flatnonzero(np.isclose(ax, 0.0, atol=1e-12))
            if not len(hits):
                return None
            idx.append(int(hits[0]))
        return tuple(idx)


def _num(v: Any) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


class SurfaceWriter:
    """Streams grid-point results into a surface file (create, resume or refuse)."""

    def __init__(self, path: str, xcoords: np.ndarray, ycoords: np.ndarray | None,
                 identity: dict[str, Any], attrs: dict[str, Any], directions: Any,
                 overwrite: bool = False) -> None:

        self.path = path
        shape = (len(xcoords),) if ycoords is None else (len(xcoords), len(ycoords))
        ident = json.dumps(identity, sort_keys=True)
        if os.path.exists(path) and not overwrite:
            self.f = _open_existing(path)
            try:
                stored = json.loads(str(self.f.attrs.get("identity", "{}")))
                if self.f.attrs.get("schema_version") != SCHEMA_VERSION or stored != identity:
                    diff = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
                    raise SurfaceFileError(
                        f"Surface file {path} was computed with different settings",
                        "differing: " + (", ".join(diff) if diff else "schema version"),
                        "pass --overwrite to replace it, or choose another --out",
                    )
                self.loss = self.f[LOSS][...]
                self.acc = self.f[ACC][...]
                self.done = self.f[DONE][...].astype(bool)
                if self.loss.shape != shape or self.done.shape != shape:
                    raise SurfaceFileError(f"Surface file {path} has arrays of the wrong shape",
                                           hint="pass --overwrite to replace it")
            except SurfaceFileError:
                self.f.close()
                raise
            except (KeyError, OSError, ValueError) as e:
                self.f.close()
                raise SurfaceFileError(f"Surface file {path} is corrupt", str(e),
                                       "pass --overwrite to replace it, or choose another --out") from None
            self.resumed = True
        else:
            self.f = _create(path, overwrite)
            f = self.f
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["identity"] = ident
            for key, value in attrs.items():
                f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
            f.attrs["runs"] = "[]"
            f.create_dataset("xcoordinates", data=xcoords)
            if ycoords is not None:
                f.create_dataset("ycoordinates", data=ycoords)
            if directions is not None:
                from .directions import write_direction_groups

                write_direction_groups(f, directions)
            self.loss = np.full(shape, np.nan)
            self.acc = np.full(shape, np.nan)
            self.done = np.zeros(shape, dtype=bool)
            f.create_dataset(LOSS, data=self.loss)
            f.create_dataset(ACC, data=self.acc)
            f.create_dataset(DONE, data=self.done.astype(np.uint8))
            f.flush()
            self.resumed = False
        self._run = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), **attrs.get("run", {})}

    def write(self, flat_indices: np.ndarray, loss: np.ndarray, acc: np.ndarray) -> None:
        """Store results of the points ``flat_indices`` (C order) and flush."""
        idx = np.unravel_index(flat_indices, self.loss.shape)
        self.loss[idx] = loss
        self.acc[idx] = acc
        self.done[idx] = True
        rows = slice(int(idx[0].min()), int(idx[0].max()) + 1)
        self.f[LOSS][rows] = self.loss[rows]
        self.f[ACC][rows] = self.acc[rows]
        self.f.flush()  # values before the mask
        self.f[DONE][rows] = self.done[rows].astype(np.uint8)
        self.f.flush()

    def finish(self, run_info: dict[str, Any]) -> None:
        """Append this run's backend and timings to the ``runs`` log and close."""
        runs = json.loads(str(self.f.attrs.get("runs", "[]")))
        runs.append({**self._run, **run_info})
        self.f.attrs["runs"] = json.dumps(runs)
        self.f.attrs["seconds"] = float(sum(r.get("seconds", 0.0) for r in runs))
        self.close()

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()


def _open_existing(path: str) -> Any:
    import h5py

    try:
        return h5py.File(path, "r+")
    except (OSError, ValueError) as e:
        raise SurfaceFileError(f"Cannot open existing surface file {path}", str(e).splitlines()[0],
                               "it is corrupt or not HDF5; pass --overwrite to replace it, "
                               "or choose another --out") from None


def _create(path: str, overwrite: bool) -> Any:
    import h5py

    try:
        if overwrite and os.path.exists(path):
            os.remove(path)
        return h5py.File(path, "w")
    except OSError as e:
        raise SurfaceFileError(f"Cannot create surface file {path}", str(e).splitlines()[0],
                               "choose a writable --out path") from None


def load_surface(path: str) -> Surface:
    """Read a surface file (ours, or the reference implementation's)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise SurfaceFileError(f"Cannot read surface file {path}", str(e).splitlines()[0],
                               "pass an HDF5 file written by lossgrid surface") from None
    with f:
        if "xcoordinates" not in f or LOSS not in f:
            raise SurfaceFileError(f"{path} is not a surface file", "it has no xcoordinates/train_loss datasets",
                                   "pass a file written by lossgrid surface")
        x = f["xcoordinates"][...]
        y = f["ycoordinates"][...] if "ycoordinates" in f else None
        loss = f[LOSS][...]
        acc = f[ACC][...] if ACC in f else np.full(loss.shape, np.nan)
        done = f[DONE][...].astype(bool) if DONE in f else np.ones(loss.shape, dtype=bool)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    return Surface(x, y, loss, acc, done, attrs, path)
