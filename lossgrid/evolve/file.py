"""The evolution file: its layout, its writer and its reader (see :mod:`.evolve`).

File layout (``file_kind = "evolution"``, schema version 1)::

    /                      attrs: schema_version, file_kind, identity (JSON), labels and
                           checkpoints (JSON lists), the settings, runs (16 KiB log), seconds;
                           the direction settings (dir_type, seed, xnorm ...)
    /xdirection, /ydirection   the shared directions, as in a direction file (so the
                           file can serve as --dir-file of ``lossgrid surface``)
    /checkpoints/0000 ...  one group per checkpoint in training order, each a surface
                           in the reference layout (xcoordinates, ycoordinates,
                           train_loss, train_acc, done) with attrs label, checkpoint,
                           index, model_fingerprint and the settings

The per-checkpoint groups follow :mod:`~lossgrid.surface.file`'s rules and
reuse its machinery: the file is built in memory and moved into place complete; one
writer (``FILE.lock``); values flushed before the ``done`` mask that marks them; the
identity (fingerprints of every checkpoint, the data and the directions, grid, loss,
norms) checked on resume, so a killed run resumes where it stopped and a rerun with
the same settings computes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._files import input_file_problem, is_hdf5, remove_quietly, temp_sibling
from ..engine.directions import write_direction_groups
from ..engine.lock import WriterLock, lock_holder, reader_locking
from ..errors import SurfaceFileError
from ..surface.file import (
    ACC,
    DONE,
    LOSS,
    SCHEMA_VERSION,
    ResultWriter,
    Surface,
    check_layout,
    comparable_identity,
    h5_reason,
    is_lock_error,
    json_attr,
    log_run,
    read_runs,
    read_surface,
    write_runs,
)

# the public module's name, as before this module was split from it (``lossgrid -v`` shows it)
log = logging.getLogger("lossgrid.evolve.compute")

KIND = "evolution"
GROUP = "checkpoints"


@dataclass
class Evolution:
    """Surfaces around successive checkpoints on the same directions and grid."""

    surfaces: list[Surface]
    labels: list[str]
    checkpoints: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    #: the live writer (``pid``, ``host``, ``since``) when read while being written
    writer: dict[str, Any] | None = None

    @property
    def ndim(self) -> int:
        return self.surfaces[0].ndim

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.surfaces)

    def summary(self) -> dict[str, Any]:
        """Per checkpoint: label, minimum and center loss; completion of the whole file."""
        rows = [{"label": label, "checkpoint": ck, **{k: v for k, v in s.summary().items() if k != "file"}}
                for label, ck, s in zip(self.labels, self.checkpoints, self.surfaces)]
        return {"file": self.path, "checkpoints": rows, "points_done": sum(r["points_done"] for r in rows),
                "points_total": sum(r["points_total"] for r in rows)}


# -- the file -------------------------------------------------------------------------------
class EvolutionWriter(ResultWriter):
    """Creates or resumes an evolution file and streams each checkpoint's points into
    its group; the same safety rules as :class:`~lossgrid.surface.file.SurfaceWriter`."""

    _log = log

    def __init__(self, path: str, n: int, xs: np.ndarray, ys: np.ndarray | None, identity: dict[str, Any],
                 attrs: dict[str, Any], directions: Any, overwrite: bool, groups: list[dict[str, Any]]) -> None:
        self.path, self.f, self.partial, self.resumed = path, None, None, False
        self.shape = (len(xs),) if ys is None else (len(xs), len(ys))
        self.loss = np.full((n, *self.shape), np.nan)
        self.acc = np.full((n, *self.shape), np.nan)
        self.done = np.zeros((n, *self.shape), dtype=bool)
        self._started = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.lock = WriterLock(path).acquire()
        try:
            stale = temp_sibling(path, "partial", unique=False)
            remove_quietly(stale)  # left by a run killed while creating; we hold the lock
            refusal = self._resume(xs, ys, identity, n) if os.path.exists(path) else "absent"
            if refusal == "absent":
                self._create(stale, xs, ys, identity, attrs, directions, groups, publish=True)
            elif refusal is not None:
                what, why, replaceable = refusal
                if not replaceable:
                    raise SurfaceFileError(what, why, "choose another --out; lossgrid replaces only its own "
                                           "evolution files")
                if not overwrite:
                    raise SurfaceFileError(what, why, "pass --overwrite to replace it (the old file stays until "
                                           "the new one holds results), or choose another --out")
                self._create(stale, xs, ys, identity, attrs, directions, groups, publish=False)
        except BaseException:
            self.close()
            raise

    def _resume(self, xs: np.ndarray, ys: np.ndarray | None, identity: dict[str, Any], n: int) -> Any:
        """Open the existing file to resume it; or ``(what, why, replaceable)``."""
        import h5py

        if not is_hdf5(self.path):
            return f"Output {self.path} exists and is not an HDF5 file", "it is not an evolution file", False
        try:
            f = h5py.File(self.path, "r+", locking="best-effort")
        except (OSError, ValueError) as e:
            if is_lock_error(e):
                return (f"Evolution file {self.path} is open in another program",
                        "HDF5 reports it locked for writing", False)
            if not os.access(self.path, os.W_OK):
                return f"Output {self.path} cannot be written", h5_reason(e), False
            # replaceable only if it reads as an evolution file, or cannot be read as HDF5 at all
            return f"Evolution file {self.path} is corrupt", h5_reason(e), _kind_or_unreadable(self.path)
        refusal: tuple[str, str, bool] | None = None
        try:
            a, b = comparable_identity(json_attr(f.attrs.get("identity"), {})), comparable_identity(identity)
            if _attr_text(f.attrs.get("file_kind")) != KIND:
                refusal = (f"Output {self.path} is an HDF5 file but not an evolution file",
                           "its file_kind attribute is not 'evolution'", False)
            elif f.attrs.get("schema_version") != SCHEMA_VERSION or a != b:
                diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
                refusal = (f"Evolution file {self.path} was computed with different settings",
                           "differing: " + (", ".join(diff) if diff else "schema version"), True)
            for i in range(n if refusal is None else 0):
                name = f"{GROUP}/{i:04d}"
                problem = check_layout(f[name], self.shape, xs, ys) if name in f else f"group {name} is missing"
                if problem:
                    refusal = f"Evolution file {self.path} is corrupt", f"{name}: {problem}", True
                    break
                self.done[i] = f[name][DONE][...].astype(bool)
                self.loss[i], self.acc[i] = f[name][LOSS][...], f[name][ACC][...]
        except (OSError, KeyError, ValueError, TypeError) as e:
            refusal = f"Evolution file {self.path} is corrupt", h5_reason(e), True
        if refusal is not None:
            f.close()
            return refusal
        self.f, self.resumed = f, True
        return None

    def _create(self, tmp: str, xs: np.ndarray, ys: np.ndarray | None, identity: dict[str, Any],
                attrs: dict[str, Any], directions: Any, groups: list[dict[str, Any]], publish: bool) -> None:
        """Build the whole layout in memory, write it to ``tmp``; move it onto the path now
        (``publish``) or once the first chunk is in it."""

        def fill(f: Any) -> None:
            write_direction_groups(f, directions)  # direction settings as root attrs, then ours over them
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["identity"] = json.dumps(identity, sort_keys=True)
            f.attrs.update({k: v if isinstance(v, (int, float, str)) else json.dumps(v) for k, v in attrs.items()})
            write_runs(f, [], create=True)
            f.attrs["seconds"] = 0.0
            for i, meta in enumerate(groups):  # each group: the settings, its checkpoint, a surface layout
                g = f.create_group(f"{GROUP}/{i:04d}")
                g.attrs.update({k: v if isinstance(v, (int, float, str)) else json.dumps(v)
                                for k, v in {**attrs, **meta}.items()})
                g.create_dataset("xcoordinates", data=xs)
                if ys is not None:
                    g.create_dataset("ycoordinates", data=ys)
                g.create_dataset(LOSS, data=self.loss[i])
                g.create_dataset(ACC, data=self.acc[i])
                g.create_dataset(DONE, data=self.done[i].astype(np.uint8))

        self.done[...], self.loss[...], self.acc[...] = False, np.nan, np.nan
        self._publish(tmp, fill, publish, "evolution file")

    def write(self, i: int, flat_indices: np.ndarray, loss: np.ndarray, acc: np.ndarray) -> None:
        """Store checkpoint ``i``'s results at ``flat_indices``; values reach the disk before ``done``."""
        idx = np.unravel_index(flat_indices, self.shape)
        self.loss[i][idx], self.acc[i][idx] = loss, acc
        self._commit(self.f[f"{GROUP}/{i:04d}"], idx, {LOSS: self.loss[i], ACC: self.acc[i]}, self.done[i],
                     "evolution file")

    def finish(self, run_info: dict[str, Any]) -> None:
        """Append the run to the ``runs`` log (if it computed anything) and close."""
        try:
            if run_info.get("points"):
                log_run(self.f, {"started": self._started, **run_info})
        except (OSError, RuntimeError, ValueError, TypeError) as e:
            raise SurfaceFileError(f"Cannot record the run in evolution file {self.path}", h5_reason(e),
                                   "the computed points are saved; run the same command again to log it") from None
        finally:
            self.close()


def _kind_or_unreadable(path: str) -> bool:
    """Whether a file that cannot be opened for writing is an evolution file, or unreadable HDF5."""
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            return _attr_text(f.attrs.get("file_kind")) == KIND
    except (OSError, ValueError):
        return True


def _attr_text(value: Any) -> str:
    return bytes(value).decode("utf-8", "replace") if isinstance(value, (bytes, np.bytes_)) else str(value)


def load_evolution(path: str | os.PathLike) -> Evolution:
    """Read an evolution file: one :class:`Surface` per checkpoint, with labels.

    A file being written is read as a snapshot (``Evolution.writer`` names the writer).
    """
    import h5py

    path = os.fspath(path)
    problem = input_file_problem(path)
    if problem:
        raise SurfaceFileError(f"Cannot read evolution file {path}", problem, "pass a file written by lossgrid evolve")
    holder = lock_holder(path)
    locking = reader_locking(holder)
    try:
        with h5py.File(path, "r", locking=locking) as f:
            if _attr_text(f.attrs.get("file_kind")) != KIND or GROUP not in f:
                raise SurfaceFileError(f"{path} is not an evolution file", "it has no 'checkpoints' group or its "
                                       "file_kind is not 'evolution'", "pass a file written by lossgrid evolve "
                                       "(surface files are read with load_surface)")
            surfaces = [read_surface(f[f"{GROUP}/{name}"], path, holder) for name in sorted(f[GROUP], key=int)]
            attrs = {k: _attr_text(v) if isinstance(v, (bytes, np.bytes_)) else v for k, v in f.attrs.items()
                     if k != "runs"}
            attrs["runs"] = json.dumps(read_runs(f.attrs))
    except SurfaceFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise SurfaceFileError(f"Cannot read evolution file {path}", h5_reason(e),
                               "pass a file written by lossgrid evolve") from None
    labels = [str(s.attrs.get("label", i)) for i, s in enumerate(surfaces)]
    checkpoints = [str(s.attrs.get("checkpoint", "")) for s in surfaces]
    return Evolution(surfaces, labels, checkpoints, attrs, path, holder)
