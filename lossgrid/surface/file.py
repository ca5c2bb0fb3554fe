"""The HDF5 surface file.

Layout (schema version 1; dataset names follow the reference implementation so
its users' scripts read our files):

* ``xcoordinates`` ``(nx,)``, ``ycoordinates`` ``(ny,)`` (2D only), float64;
* ``train_loss``, ``train_acc``: float64, shape ``(nx,)`` or ``(nx, ny)``
  indexed ``[ix, iy]``; NaN where not yet computed (and where the loss really is
  NaN: the ``done`` mask tells them apart);
* ``done``: uint8 mask of computed points;
* ``max_eig``, ``min_eig`` (only with ``--curvature``): float64 like the loss,
  the extreme Hessian eigenvalues at each point (the reference's names);
* groups ``xdirection``/``ydirection``: the directions (as in a direction file);
* attributes: ``schema_version``, ``identity`` (JSON of every setting that
  determines the values; a run with different settings is refused), the same
  settings as separate attributes for readers, and ``runs`` (JSON log of the
  backends and timings of every run that wrote to the file).

Values are written chunk by chunk, the ``done`` mask after the values, each
chunk flushed: a killed run leaves a file whose ``done`` points are complete.

Safety (see :class:`SurfaceWriter`): one writer per file (a lock file beside
it); a new file is built under a temporary name and moved into place only
when its layout is complete; ``overwrite`` keeps the old file until the new
one holds results; after creation a run changes only raw values and, in place,
the fixed-size ``runs``/``seconds`` attributes, so neither a kill at any moment
nor a full disk leaves a file that cannot be opened. Readers open a file that
is being written as a snapshot (``done`` read first, so every point marked done
has its values).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._files import (
    input_file_problem,
    is_hdf5,
    remove_quietly,
    temp_sibling,
)
from ..engine.directions import write_direction_groups
from ..engine.h5writer import (  # noqa: F401 - the run log and the writer lifecycle, re-exported: part of this API
    DONE,
    RUNS_CAPACITY,
    ResultWriter,
    h5_reason,
    is_lock_error,
    json_attr,
    log_run,
    read_runs,
    runs_attr_needs_upgrade,
    write_runs,
)
from ..engine.lock import WriterLock, lock_holder, reader_locking
from ..errors import SurfaceFileError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
LOSS, ACC = "train_loss", "train_acc"
#: the dataset of every point's standard error of the loss
SE = "train_loss_se"
#: the dataset marking the points an adaptive grid filled by interpolation (1) rather than evaluated (0)
INTERPOLATED = "interpolated"
#: optional per-point datasets a run may add (curvature maps), read whenever present
EXTRA_DATASETS = ("max_eig", "min_eig", "train_loss_se", "interpolated", "train_loss_std")
#: datasets that new files get and resumed files of earlier versions go without
OPTIONAL_DATASETS = ("train_loss_se", "interpolated")
#: identity entries that say how an input was spelled; fingerprints decide equality
DESCRIPTIONS = ("model", "data")


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
    #: the live writer (``pid``, ``host``, ``since``) when read while being written
    writer: dict[str, Any] | None = None
    #: optional per-point arrays (``max_eig``, ``min_eig``), NaN where not computed
    extra: dict[str, np.ndarray] = field(default_factory=dict)

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


class SurfaceWriter(ResultWriter):
    """Streams grid-point results into a surface file: creates, resumes or replaces it.

    Holds the file's writer lock (:class:`~lossgrid.engine.lock.WriterLock`)
    from construction to :meth:`finish`/:meth:`close`. An existing file with the
    same identity is resumed (also with ``overwrite``); one with other settings,
    or a corrupt one, is refused unless ``overwrite``, and then replaced only
    after the first chunk of the new file is flushed. Files that are not
    surface files are never replaced.
    """

    def __init__(self, path: str | os.PathLike, xcoords: np.ndarray, ycoords: np.ndarray | None,
                 identity: dict[str, Any], attrs: dict[str, Any], directions: Any,
                 overwrite: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.path = os.fspath(path)
        unknown = [name for name in extra if name not in EXTRA_DATASETS]
        if unknown:
            raise ValueError(f"unknown extra dataset(s) {unknown}")
        self.extra_names = tuple(extra)
        self.required = tuple(name for name in extra if name not in OPTIONAL_DATASETS)
        self.extra: dict[str, np.ndarray] = {}
        self.shape = (len(xcoords),) if ycoords is None else (len(xcoords), len(ycoords))
        self.f: Any = None
        self.partial: str | None = None  # a new file waiting to replace self.path
        self.resumed = False
        self.lock = WriterLock(self.path).acquire()
        try:
            self._open(xcoords, ycoords, identity, attrs, directions, overwrite)
        except BaseException:
            self.close()
            raise
        self._run = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), **attrs.get("run", {})}

    # -- opening ------------------------------------------------------------------
    def _open(self, xcoords: np.ndarray, ycoords: np.ndarray | None, identity: dict[str, Any],
              attrs: dict[str, Any], directions: Any, overwrite: bool) -> None:
        stale = temp_sibling(self.path, "partial", unique=False)
        remove_quietly(stale)  # left by a run killed while creating; we hold the lock
        if not os.path.exists(self.path):
            self._create(stale, xcoords, ycoords, identity, attrs, directions, publish=True)
            return
        refusal = self._resume(xcoords, ycoords, identity)
        if refusal is None:
            return
        what, why, replaceable = refusal
        if not replaceable:
            raise SurfaceFileError(what, why, "choose another --out; lossgrid replaces only surface files")
        if not overwrite:
            raise SurfaceFileError(what, why, "pass --overwrite to replace it (the old file stays until the new "
                                   "one holds results), or choose another --out")
        log.info("replacing %s (%s) once the first chunk is saved", self.path, why)
        self._create(stale, xcoords, ycoords, identity, attrs, directions, publish=False)

    def _resume(self, xcoords: np.ndarray, ycoords: np.ndarray | None,
                identity: dict[str, Any]) -> tuple[str, str, bool] | None:
        """Open the existing file for resuming; or why not and whether it may be replaced."""
        import h5py

        path = self.path
        if not is_hdf5(path):
            return f"Output {path} exists and is not an HDF5 file", "it is not a surface file", False
        try:
            f = h5py.File(path, "r+", locking="best-effort")
        except (OSError, ValueError) as e:
            if is_lock_error(e):
                return (f"Surface file {path} is open in another program", "HDF5 reports it locked for writing",
                        False)
            return f"Surface file {path} is corrupt", h5_reason(e), True
        resumed = False
        try:
            if LOSS not in f and "xcoordinates" not in f and "identity" not in f.attrs:
                return (f"Output {path} is an HDF5 file but not a surface file",
                        "it has no train_loss, xcoordinates or identity", False)
            stored = json_attr(f.attrs.get("identity"), {})
            a, b = comparable_identity(stored), comparable_identity(identity)
            if f.attrs.get("schema_version") != SCHEMA_VERSION or a != b:
                keys = sorted(set(a) | set(b))
                diff = [k for k in keys if a.get(k) != b.get(k)]
                return (f"Surface file {path} was computed with different settings",
                        "differing: " + (", ".join(diff) if diff else "schema version"), True)
            problem = check_layout(f, self.shape, xcoords, ycoords, self.required)
            if problem:
                return f"Surface file {path} is corrupt", problem, True
            # a file of an earlier version lacks the optional datasets: it is resumed without them
            self.extra_names = tuple(n for n in self.extra_names if n in self.required or n in f)
            self.loss = np.array(f[LOSS][...], dtype=np.float64)
            self.acc = np.array(f[ACC][...], dtype=np.float64)
            self.extra = {name: np.array(f[name][...], dtype=np.float64) for name in self.extra_names}
            self.done = f[DONE][...].astype(bool)
            if runs_attr_needs_upgrade(f):  # files of earlier versions: once, before any chunk
                write_runs(f, read_runs(f.attrs), create=True)
                f.flush()
            resumed = True
        except (OSError, KeyError, ValueError, TypeError) as e:
            return f"Surface file {path} is corrupt", h5_reason(e), True
        finally:
            if not resumed:
                f.close()
        self.f = f
        self.resumed = True
        return None

    def _create(self, tmp: str, xcoords: np.ndarray, ycoords: np.ndarray | None, identity: dict[str, Any],
                attrs: dict[str, Any], directions: Any, publish: bool) -> None:
        """Build the whole layout in ``tmp``; move it onto the path now (``publish``) or after the first chunk."""

        self.loss = np.full(self.shape, np.nan)
        self.acc = np.full(self.shape, np.nan)
        self.done = np.zeros(self.shape, dtype=bool)
        self.extra = {name: np.full(self.shape, np.nan) for name in self.extra_names}

        def fill(f: Any) -> None:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["identity"] = json.dumps(identity, sort_keys=True)
            for key, value in attrs.items():
                f.attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value)
            write_runs(f, [], create=True)
            f.attrs["seconds"] = 0.0
            f.create_dataset("xcoordinates", data=xcoords)
            if ycoords is not None:
                f.create_dataset("ycoordinates", data=ycoords)
            if directions is not None:
                write_direction_groups(f, directions)
            f.create_dataset(LOSS, data=self.loss)
            f.create_dataset(ACC, data=self.acc)
            for name, values in self.extra.items():
                f.create_dataset(name, data=values)
            f.create_dataset(DONE, data=self.done.astype(np.uint8))

        self._publish(tmp, fill, publish, "surface file")

    # -- writing ------------------------------------------------------------------
    def write(self, flat_indices: np.ndarray, loss: np.ndarray, acc: np.ndarray,
              extra: dict[str, np.ndarray] | None = None) -> None:
        """Store results of the points ``flat_indices`` (C order) and flush; the
        values (and the ``extra`` datasets the writer was made with) reach the
        disk before the ``done`` mask that marks them."""
        extra = extra or {}
        if not set(self.required) <= set(extra) <= set(self.extra_names) | set(OPTIONAL_DATASETS):
            raise ValueError(f"write() needs values for {self.extra_names}, got {sorted(extra)}")
        extra = {name: values for name, values in extra.items() if name in self.extra_names}
        idx = np.unravel_index(flat_indices, self.shape)
        self.loss[idx] = loss
        self.acc[idx] = acc
        for name, values in extra.items():
            self.extra[name][idx] = values
        self._commit(self.f, idx, {LOSS: self.loss, ACC: self.acc, **self.extra}, self.done, "surface file")

    def store_filled(self, loss: np.ndarray, acc: np.ndarray, interpolated: np.ndarray,
                     se: np.ndarray | None = None) -> None:
        """Store the values an adaptive grid filled in by interpolation at the points
        ``interpolated`` (never marked done: a resumed run may evaluate them), their
        standard errors ``se`` where the file has them, and the ``interpolated`` mask,
        values first."""
        self.loss[interpolated] = loss[interpolated]
        self.acc[interpolated] = acc[interpolated]
        with_se = se is not None and SE in self.extra
        if with_se:
            self.extra[SE][interpolated] = se[interpolated]
        self.extra["interpolated"] = interpolated.astype(np.float64)
        try:
            self.f[LOSS][...] = self.loss
            self.f[ACC][...] = self.acc
            if with_se:
                self.f[SE][...] = self.extra[SE]
            self.f.flush()
            self.f["interpolated"][...] = self.extra["interpolated"]
            self.f.flush()
        except (OSError, RuntimeError) as e:
            raise SurfaceFileError(f"Cannot write to surface file {self.path}", h5_reason(e),
                                   "free some space, then run the same command again: the evaluated points "
                                   "are kept") from None

    def finish(self, run_info: dict[str, Any]) -> None:
        """Append this run's backend and timings to the ``runs`` log and close.

        A run that computed no point (a complete file run again) leaves the file as it was.
        """
        if not run_info.get("points"):
            self.close()
            return
        try:
            log_run(self.f, {**self._run, **run_info})
        except (OSError, RuntimeError, ValueError, TypeError) as e:
            raise SurfaceFileError(f"Cannot record the run in surface file {self.path}", h5_reason(e),
                                   "the computed points are saved; free some space and run the same command "
                                   "again to log it") from None
        finally:
            self.close()

def comparable_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """The entries that decide whether two runs are the same job: not the spellings of
    inputs, and an absent entry equals ``null`` (so files written before a setting existed,
    at its neutral value, stay resumable)."""
    return {k: v for k, v in identity.items() if k not in DESCRIPTIONS and v is not None}


# -- validation and reading -------------------------------------------------------------
def check_layout(f: Any, shape: tuple[int, ...] | None = None, xcoords: np.ndarray | None = None,
                 ycoords: np.ndarray | None = None, extra: tuple[str, ...] = (), reference: bool = False
                 ) -> str | None:
    """What is wrong with an open surface file's datasets, or ``None``.

    With ``shape``/``xcoords``/``ycoords`` (a resume), the file must hold exactly
    that grid and all of ``train_loss``, ``train_acc``, ``done`` and the ``extra``
    datasets; optional datasets present (``max_eig``...) must match the grid too.
    ``reference``: a reference implementation's file, whose 2D datasets may also be
    shaped ``(ny, nx)`` (:func:`reference_order` reads both).
    """
    def numeric(name: str) -> str | None:
        if name not in f:
            return f"dataset {name} is missing"
        d = f[name]
        if not hasattr(d, "dtype") or d.dtype.kind not in "fiub":
            return f"dataset {name} is not numeric (found {getattr(d, 'dtype', type(d).__name__)})"
        return None

    for name in ("xcoordinates", LOSS):
        problem = numeric(name)
        if problem:
            return problem
    x = f["xcoordinates"]
    if x.ndim != 1 or x.shape[0] < 1:
        return f"dataset xcoordinates has shape {x.shape}, expected (nx,)"
    want = (x.shape[0],)
    if "ycoordinates" in f:
        problem = numeric("ycoordinates")
        if problem:
            return problem
        y = f["ycoordinates"]
        if y.ndim != 1 or y.shape[0] < 1:
            return f"dataset ycoordinates has shape {y.shape}, expected (ny,)"
        want = (x.shape[0], y.shape[0])
    for name in (LOSS, ACC, DONE, *extra):
        if name != LOSS and name not in f:
            if shape is not None:
                return f"dataset {name} is missing"
            continue
        problem = numeric(name)
        if problem:
            return problem
        if f[name].shape != want and not (reference and f[name].shape == want[::-1]):
            return f"dataset {name} has shape {f[name].shape}, expected {want} (from the coordinates)"
    if shape is not None:
        if want != tuple(shape):
            return f"it holds a grid of shape {want}, this run one of shape {tuple(shape)}"
        if not np.array_equal(f["xcoordinates"][...], xcoords):
            return "dataset xcoordinates does not hold this run's x coordinates"
        if ycoords is not None and not np.array_equal(f["ycoordinates"][...], ycoords):
            return "dataset ycoordinates does not hold this run's y coordinates"
    return None


def stored_identity(path: str | os.PathLike) -> dict[str, Any] | None:
    """The identity of an existing lossgrid HDF5 file (surface, summary), read without HDF5's
    lock; ``None`` if there is no such file, it is not HDF5, cannot be read or has no identity.
    An empty dict: an HDF5 file with ``train_loss`` but no identity (the reference code's)."""
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path) or not is_hdf5(path):
        return None
    try:
        with h5py.File(path, "r", locking=False) as f:
            if "identity" in f.attrs:
                identity = json_attr(f.attrs["identity"], None)
                return identity if isinstance(identity, dict) else None
            return {} if LOSS in f else None
    except (OSError, ValueError):
        return None


def load_surface(path: str | os.PathLike) -> Surface:
    """Read a surface file (ours, or the reference implementation's).

    A file that a lossgrid run is writing right now is read as a snapshot of
    the points done so far; ``Surface.writer`` then names the writer.
    """
    import h5py

    path = os.fspath(path)
    problem = input_file_problem(path)
    if problem:
        raise SurfaceFileError(f"Cannot read surface file {path}", problem, "pass a file written by lossgrid surface")
    holder = lock_holder(path)
    locking = reader_locking(holder)
    for attempt in range(3):
        try:
            f = h5py.File(path, "r", locking=locking)
        except (OSError, ValueError) as e:
            if is_lock_error(e):
                raise SurfaceFileError(f"Cannot read surface file {path}", "another program has it open for writing",
                                       "wait until it is done, then try again") from None
            raise SurfaceFileError(f"Cannot read surface file {path}", h5_reason(e),
                                   "pass an HDF5 file written by lossgrid surface") from None
        try:
            with f:
                return read_surface(f, path, holder, reference=is_reference_file(f, path))
        except SurfaceFileError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            if holder is None or attempt == 2:  # a snapshot may race with the writer: try again
                raise SurfaceFileError(f"Cannot read surface file {path}", h5_reason(e),
                                       "pass a file written by lossgrid surface") from None
            time.sleep(0.05)
    raise AssertionError("unreachable")


def is_reference_file(f: Any, path: str) -> bool:
    """Whether an open surface file is the reference implementation's (no lossgrid schema), whose 2D
    datasets :func:`reference_order` reads; a file with some of lossgrid's marks but no schema version
    is refused: its order cannot be decided."""
    if "schema_version" in f.attrs:
        return False
    marks = [f"dataset {DONE}"] * (DONE in f) + ["attribute identity"] * ("identity" in f.attrs)
    if marks:
        raise SurfaceFileError(f"Cannot tell how {path} orders its points",
                               f"it has lossgrid's {' and '.join(marks)} but no schema_version attribute, so it is "
                               "neither a whole lossgrid file ([ix, iy]) nor the reference implementation's "
                               "(np.meshgrid(x, y) order)", "recompute it with lossgrid surface")
    return True


def reference_order(values: np.ndarray, nx: int, ny: int) -> np.ndarray:
    """A reference implementation's 2D dataset indexed ``[ix, iy]``. The reference writes arrays of shape
    ``(nx, ny)`` but fills them in ``np.meshgrid(x, y).ravel()`` order: the point ``(x[j], y[i])`` at flat
    index ``i * nx + j``, so the flat values reshaped ``(ny, nx)`` are ``[iy, ix]`` (for square grids too)."""
    return np.asarray(values).reshape(ny, nx).T


def read_surface(f: Any, path: str, holder: dict[str, Any] | None, reference: bool = False) -> Surface:
    """The surface an open HDF5 file or group holds (``holder``: the process writing it, if any;
    ``reference``: a reference implementation's file, see :func:`reference_order`)."""
    problem = check_layout(f, reference=reference)
    if problem:
        raise SurfaceFileError(f"{path} is not a readable surface file", problem,
                               "pass a file written by lossgrid surface (or the reference implementation)")
    x = np.asarray(f["xcoordinates"][...], dtype=np.float64)
    y = np.asarray(f["ycoordinates"][...], dtype=np.float64) if "ycoordinates" in f else None
    shape = (len(x),) if y is None else (len(x), len(y))

    def values(name: str) -> np.ndarray:
        a = np.asarray(f[name][...], dtype=np.float64)
        return reference_order(a, *shape) if reference and y is not None else a

    # the mask first: a point marked done already had its values written
    done = f[DONE][...].astype(bool) if DONE in f else np.ones(shape, dtype=bool)
    loss = values(LOSS)
    if reference:  # the reference starts every point at -1 and computes those <= 0 (its own rule)
        done = loss > 0
    acc = values(ACC) if ACC in f else np.full(shape, np.nan)
    extra = _read_extra(f, shape, path, has_done=DONE in f, order=values if reference else None)
    attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
    if "runs" in attrs:
        attrs["runs"] = json.dumps(read_runs(f.attrs))
    return Surface(x, y, loss, acc, done, attrs, path, holder, extra)


def _read_extra(f: Any, shape: tuple[int, ...], path: str, has_done: bool,
                order: Any = None) -> dict[str, np.ndarray]:
    """The optional per-point datasets that match the grid (a reference file's read by ``order``, in
    either of its shapes); others are skipped with a warning, never making the losses unreadable.
    The reference marks points without eigenvalues by ``max_eig = -1, min_eig = 1`` (and has no
    ``done`` mask): those become NaN."""
    extra: dict[str, np.ndarray] = {}
    for name in EXTRA_DATASETS:
        if name not in f:
            continue
        d = f[name]
        fits = d.shape == shape or order is not None and d.shape == shape[::-1]
        if not hasattr(d, "dtype") or d.dtype.kind not in "fiu" or not fits:
            log.warning("%s: dataset %s (shape %s) does not match the grid %s; not read", path, name,
                        getattr(d, "shape", "?"), shape)
            continue
        extra[name] = order(name) if order is not None else np.asarray(d[...], dtype=np.float64)
    if not has_done and "max_eig" in extra and "min_eig" in extra:
        unset = (extra["max_eig"] == -1) & (extra["min_eig"] == 1)
        for name in ("max_eig", "min_eig"):
            extra[name] = np.where(unset, np.nan, extra[name])
    return extra


def _attr_value(v: Any) -> Any:
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).rstrip(b"\0").decode("utf-8", "replace")
    return v.item() if isinstance(v, np.generic) else v
