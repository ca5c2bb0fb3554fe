"""The lifecycle every writer of lossgrid's HDF5 result files shares (surface files,
evolution files): publishing a new file atomically, committing a chunk (values first, then
the ``done`` mask), the fixed-size ``runs`` log, abort and close.

After creation a writer changes only raw values and, in place, the fixed-size ``runs``
and ``seconds`` attributes, so neither a kill at any moment nor a full disk leaves a file
that cannot be opened.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import numpy as np

from .._files import hdf5_image, os_reason, remove_quietly, replace, write_new_file
from ..errors import SurfaceFileError
from .lock import WriterLock

log = logging.getLogger(__name__)

DONE = "done"
#: bytes reserved for the ``runs`` log, a fixed-length string rewritten in place
RUNS_CAPACITY = 16384


class ResultWriter:
    """The end of a writer's life, shared by :class:`SurfaceWriter` and the evolution
    file's writer: a subclass sets ``f`` (the open file or ``None``), ``partial`` (an
    unpublished replacement or ``None``) and ``lock``, and defines :meth:`finish`."""

    f: Any
    partial: str | None
    lock: WriterLock
    _log = log  # where abort() says why an interrupted run went unlogged

    def finish(self, run_info: dict[str, Any]) -> None:
        raise NotImplementedError

    def _publish(self, tmp: str, fill: Any, publish: bool, what: str) -> None:
        """Build the file in memory (``fill(f)``), write it to ``tmp`` and open it: moved onto
        the path now (``publish``) or kept as ``partial`` until the first chunk is in it. On
        any failure (Ctrl-C included) ``tmp`` is removed: no half-made file is left behind."""
        import h5py

        path = self.path  # type: ignore[attr-defined]
        try:
            write_new_file(tmp, hdf5_image(fill))
            if publish:
                replace(tmp, path)
            else:
                self.partial = tmp
            self.f = h5py.File(path if publish else tmp, "r+", locking="best-effort")
        except (OSError, RuntimeError, ValueError) as e:
            remove_quietly(tmp)
            self.partial = None
            raise SurfaceFileError(f"Cannot create {what} {path}", h5_reason(e),
                                   "free some space or choose another --out") from None
        except BaseException:
            remove_quietly(tmp)
            self.partial = None
            raise

    def _commit(self, group: Any, idx: tuple[np.ndarray, ...], values: dict[str, np.ndarray], done: np.ndarray,
                what: str) -> None:
        """Write the rows of ``group``'s datasets that the points ``idx`` touch (from the in-memory
        ``values`` arrays), flush, then mark the points in the ``done`` mask and flush again: a
        point marked done on disk always has its values. The first chunk of a replacement file
        moves it into place."""
        rows = slice(int(idx[0].min()), int(idx[0].max()) + 1)
        try:
            for name, array in values.items():
                self._dataset(group, name)[rows] = array[rows]
            self.f.flush()
            marks = done[rows].astype(np.uint8)  # the rows being written, with this chunk marked
            marks[(idx[0] - rows.start, *idx[1:])] = 1
            self._dataset(group, DONE)[rows] = marks
            self.f.flush()
            done[idx] = True
            if self.partial is not None:  # the replacement now holds results: swap it in
                replace(self.partial, self.path)  # type: ignore[attr-defined]
                self.partial = None
        except (OSError, RuntimeError) as e:
            raise SurfaceFileError(f"Cannot write to {what} {self.path}", h5_reason(e),  # type: ignore[attr-defined]
                                   "free some space (or fix the disk), then run the same command again: "
                                   "the points saved so far are kept") from None

    def _dataset(self, group: Any, name: str) -> Any:
        """``group[name]``, looked up once per open file: a lookup costs about as much as writing a small
        chunk (a tiny model's surface spent a seventh of its time in them)."""
        cache = self.__dict__.get("_datasets")
        if cache is None or cache["file"] is not self.f:  # a file opened anew: its own handles
            cache = self.__dict__["_datasets"] = {"file": self.f}
        key = (group.name, name)
        if key not in cache:
            cache[key] = group[name]
        return cache[key]

    def abort(self, run_info: dict[str, Any]) -> None:
        """Log the interrupted run if the file can take it, then close; never raises."""
        try:
            if self.f is not None and self.f.id.valid and self.partial is None:
                self.finish(run_info)
        except Exception as e:  # an error is already on its way up
            self._log.info("could not log the interrupted run: %s", e)
        finally:
            self.close()

    def close(self) -> None:
        """Close the file, drop an unpublished replacement and release the lock."""
        self.__dict__.pop("_datasets", None)
        if self.f is not None:
            with contextlib.suppress(Exception):
                if self.f.id.valid:
                    self.f.close()
            self.f = None
        if self.partial is not None:
            remove_quietly(self.partial)
            self.partial = None
        self.lock.release()


def is_lock_error(e: BaseException) -> bool:
    """Whether h5py failed because another process holds the file's HDF5 lock."""
    text = str(e)
    return "unable to lock file" in text or getattr(e, "errno", None) == 11


def h5_reason(e: BaseException) -> str:
    """An h5py or OS error in a user's words (a full disk as such), one line."""
    text = str(e)
    if "errno = 28" in text or getattr(e, "errno", None) == 28:
        return "No space left on device"
    if isinstance(e, OSError) and e.strerror:
        return os_reason(e)
    line = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return line


def json_attr(value: Any, default: Any) -> Any:
    """A JSON-encoded HDF5 attribute decoded, or ``default`` when absent or unreadable."""
    if value is None:
        return default
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", "replace")
    try:
        return json.loads(str(value))
    except ValueError:
        return default


# -- the runs log ----------------------------------------------------------------
def read_runs(attrs: Any) -> list[dict[str, Any]]:
    """The ``runs`` log of a file's attributes (an empty list if absent or unreadable)."""
    runs = json_attr(attrs.get("runs"), [])
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []


def write_runs(f: Any, runs: list[dict[str, Any]], create: bool = False) -> None:
    """Store the log as a fixed-length string of :data:`RUNS_CAPACITY` bytes, in place.

    A rewrite of the same size changes no file structure (nothing to allocate,
    so it cannot fail for space or leave a broken header when killed). Past the
    capacity, the oldest runs but the first are dropped and counted.
    """
    text = _fit_runs(runs)
    value = np.array(text.encode("utf-8").ljust(RUNS_CAPACITY, b"\0"), dtype=f"S{RUNS_CAPACITY}")
    if create:
        if "runs" in f.attrs:
            del f.attrs["runs"]
        f.attrs.create("runs", value, dtype=f"S{RUNS_CAPACITY}")
    else:
        f.attrs.modify("runs", value)


def log_run(f: Any, run: dict[str, Any]) -> None:
    """Append ``run`` to the ``runs`` log of the open file ``f``, set ``seconds`` to the
    total of the log, and flush."""
    runs = read_runs(f.attrs) + [run]
    write_runs(f, runs)
    f.attrs.modify("seconds", float(sum(float(r.get("seconds") or 0.0) for r in runs)))
    f.flush()


def _fit_runs(runs: list[dict[str, Any]]) -> str:
    text = json.dumps(runs)
    kept = list(runs)
    dropped = 0
    while len(text.encode("utf-8")) > RUNS_CAPACITY and len(kept) > 2:
        kept.pop(1)
        dropped += 1
        text = json.dumps([kept[0], {"omitted_runs": dropped}, *kept[1:]])
    if len(text.encode("utf-8")) > RUNS_CAPACITY:
        text = json.dumps([{"omitted_runs": len(runs)}])
    return text


def runs_attr_needs_upgrade(f: Any) -> bool:
    """Whether the runs log is missing or not yet the fixed-size string that is rewritten in place."""
    if "runs" not in f.attrs:
        return True
    dtype = f.attrs.get_id("runs").dtype
    return not (dtype.kind == "S" and dtype.itemsize == RUNS_CAPACITY)
