"""Loss landscapes that evolve over training: one surface per checkpoint, on shared
directions, in one resumable HDF5 file.

The directions are made once, from the LAST checkpoint (or read from ``dir_file``),
and every checkpoint's surface is evaluated on them, so frames of an animation
show how the landscape around the training trajectory changes along fixed axes.

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

The per-checkpoint groups follow :mod:`~lossgrid.engine.surface_file`'s rules and
reuse its machinery: the file is built in memory and moved into place complete; one
writer (``FILE.lock``); values flushed before the ``done`` mask that marks them; the
identity (fingerprints of every checkpoint, the data and the directions, grid, loss,
norms) checked on resume, so a killed run resumes where it stopped and a rerun with
the same settings computes nothing.

Example:
    >>> from lossgrid import GridSpec, load_data
    >>> evo = compute_evolution("lossgrid.zoo:mlp_digits", ["run/epoch_1.pt", "run/epoch_2.pt"],
    ...                         load_data("digits", samples=64), GridSpec.parse("-1:1:5"),
    ...                         "evo.h5")                                  # doctest: +SKIP
    >>> [s.loss.shape for s in load_evolution("evo.h5").surfaces]    # doctest: +SKIP
    [(5,), (5,)]
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._files import (
    hdf5_image,
    input_file_problem,
    is_hdf5,
    remove_quietly,
    replace,
    same_file,
    temp_sibling,
    write_new_file,
)
from ..config import DirectionSpec, EvalSpec, GridSpec
from ..errors import ConfigError, SurfaceFileError, is_out_of_memory
from .lock import WriterLock, lock_holder
from .surface_file import (
    ACC,
    DONE,
    LOSS,
    SCHEMA_VERSION,
    Surface,
    _comparable,
    _h5_reason,
    _is_lock_error,
    _json_attr,
    _read,
    check_layout,
    read_runs,
    write_runs,
)
from .trajectory import natural_key, sort_checkpoints  # noqa: F401 - natural_key: part of this API

log = logging.getLogger(__name__)

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


# -- checkpoints -------------------------------------------------------------------------
def find_checkpoints(patterns: Iterable[str]) -> list[str]:
    """Expand glob patterns (or plain paths) into checkpoint files, natural-sorted, without duplicates."""
    found: dict[str, str] = {}
    for pattern in patterns:
        matches = [p for p in glob.glob(pattern) if os.path.isfile(p)] if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise ConfigError(f"No checkpoint matches {pattern!r}", "the pattern names no file",
                              "quote the pattern ('run/epoch_*.pt') and check its directory")
        for p in matches:
            problem = input_file_problem(p)
            if problem:
                raise ConfigError(f"Cannot read checkpoint {p}", problem, "check the --checkpoints paths")
            found.setdefault(os.path.realpath(p), p)
    return sort_checkpoints(found.values())


def checkpoint_label(path: str) -> str:
    """The label of a checkpoint in plots: its file name without the extension (``epoch_10``)."""
    return os.path.splitext(os.path.basename(path))[0]


# -- computing ------------------------------------------------------------------------------
def compute_evolution(model: str | None, checkpoints: Sequence[str], data: Any, grid: GridSpec,
                      out: str | os.PathLike | None = None, *, direction_spec: DirectionSpec = DirectionSpec(),
                      dir_file: str | os.PathLike | None = None, loss: str = "cross_entropy",
                      eval_spec: EvalSpec = EvalSpec(), overwrite: bool = False, trust_checkpoint: bool = False,
                      progress: Callable[[int, int], None] | None = None,
                      labels: Sequence[str] | None = None) -> Evolution:
    """The surface around each of ``checkpoints`` (in the order given) on shared directions.

    Args:
        model: factory spec (``file.py:fn``, ``package.module:fn``) or ``None`` for
            checkpoints that hold whole models; loaded with :func:`lossgrid.models.load_model`.
        checkpoints: checkpoint files in training order (see :func:`find_checkpoints`).
        data: the evaluation set (an :class:`~lossgrid.data.EvalData` or ``(x, y)`` tensors).
        grid: the 1D or 2D grid, the same for every checkpoint.
        out: the evolution file (resumed if it holds the same job); ``None``: in memory.
        direction_spec, dir_file: directions made from the LAST checkpoint, or read
            from ``dir_file`` if it exists (written there otherwise).
        loss, eval_spec, overwrite, trust_checkpoint, progress: as for
            :func:`~lossgrid.engine.surface.compute_surface`; ``progress(done, total)``
            counts the points of all checkpoints.
        labels: names of the frames (default: the checkpoints' file names).
    """
    import torch

    from .. import __version__
    from ..data import EvalData
    from ..models import load_model
    from . import preflight
    from .losses import resolve_loss
    from .params import ParamLayout, perturbed_tensors
    from .runners import make_runner
    from .surface import _directions, _fingerprint, _out_of_memory, check_writable, resolve_device

    if not checkpoints:
        raise ConfigError("No checkpoint given", hint="pass --checkpoints 'run/epoch_*.pt'")
    if not isinstance(data, EvalData):
        data = EvalData(torch.as_tensor(data[0]), torch.as_tensor(data[1]), "in-memory tensors")
    paths = [os.fspath(c) for c in checkpoints]
    labels = list(labels) if labels is not None else [checkpoint_label(p) for p in paths]
    out_path = os.fspath(out) if out is not None else None
    if out_path is not None:
        check_writable(out_path)
        if dir_file is not None and same_file(out_path, dir_file):
            raise ConfigError(f"--out {out_path} is the same file as --dir-file {os.fspath(dir_file)}",
                              "the evolution file would replace the directions it is computed on",
                              "choose another --out (an evolution file stores its directions anyway)")
    device = resolve_device(eval_spec.device)
    loss_fn, loss_desc = resolve_loss(loss)
    preflight.check_data(data, loss_fn)

    def load(i: int) -> Any:
        m, _ = load_model(model, paths[i], trust_checkpoint)
        preflight.check_finite_model(m, f"checkpoint {paths[i]}")
        return m.to(device)

    last = load(len(paths) - 1)
    preflight.probe(last, data, loss_fn, device)
    directions = None
    if direction_spec.kind == "hessian" and dir_file is None and out_path is not None and os.path.exists(out_path):
        # Hessian eigenvectors differ in their last bits between thread counts and devices: a resumed
        # run uses the directions the file holds (its identity check still compares everything else)
        directions = _stored_evolution_directions(out_path, last, direction_spec, grid.ndim)
    if directions is None:
        directions = _directions(last, direction_spec, grid.ndim, None, dir_file, data, loss_fn)
    if directions.ndim != grid.ndim:
        raise ConfigError(f"The grid is {grid.ndim}D but {directions.ndim} direction(s) were given",
                          hint="give --y for two directions, or drop it for one")
    preflight.check_finite_directions(directions)
    layout, dirs = directions.layout, directions.flat().to(device)
    # every checkpoint is loaded once before the file is touched: its fingerprint is part of
    # the file's identity, and one of another architecture is refused now, not halfway
    fingerprints = []
    for i in range(len(paths)):
        current = last if i == len(paths) - 1 else load(i)
        if ParamLayout.from_model(current, layout.dir_type) != layout:
            raise ConfigError(f"Checkpoint {paths[i]} does not match the directions",
                              "its tensors differ in names or shapes from the last checkpoint's",
                              "pass checkpoints of one architecture")
        fingerprints.append(_fingerprint(t for t in current.state_dict().values()))
    identity = {"file_kind": KIND, "model": model or "checkpoint", "checkpoint_fingerprints": fingerprints,
                "data": data.description, "data_fingerprint": _fingerprint([data.x, data.y]), "samples": len(data),
                "loss": loss_desc, "directions": directions.fingerprint(), "x": str(grid.x),
                "y": str(grid.y) if grid.y is not None else None,
                **{k: directions.meta.get(k) for k in ("dir_type", "kind", "xnorm", "xignore", "ynorm", "yignore")}}
    if eval_spec.precision != "fp32":
        identity["precision"] = eval_spec.precision
    attrs = {k: v for k, v in identity.items() if v is not None and k != "checkpoint_fingerprints"}
    attrs.update(precision=eval_spec.precision, lossgrid_version=__version__,
                 seed=int(directions.meta.get("seed", direction_spec.seed)), dir_file=os.fspath(dir_file or ""),
                 labels=json.dumps(labels), checkpoints=json.dumps(paths))
    xs, ys = grid.x.coordinates(), (grid.y.coordinates() if grid.y is not None else None)
    shape = grid.shape
    n = len(paths)
    writer = (EvolutionWriter(out_path, n, xs, ys, identity, attrs, directions, overwrite,
                              [{"label": labels[i], "checkpoint": paths[i], "index": i,
                                "model_fingerprint": fingerprints[i]} for i in range(n)])
              if out_path else None)
    if writer is not None:
        loss_a, acc_a, done_a = writer.loss, writer.acc, writer.done
    else:
        loss_a, acc_a = np.full((n, *shape), np.nan), np.full((n, *shape), np.nan)
        done_a = np.zeros((n, *shape), dtype=bool)
    total, done_count = done_a.size, int(done_a.sum())
    if writer is not None and writer.resumed:
        log.info("resuming %s: %d of %d points done", out_path, done_count, total)
    points = torch.as_tensor(grid.points(), dtype=dirs.dtype)
    spec, start_count, t0 = eval_spec, done_count, time.perf_counter()
    described: dict[str, Any] = {}

    def run_info() -> dict[str, Any]:
        seconds = time.perf_counter() - t0
        return {**described, "seconds": round(seconds, 4), "points": done_count - start_count,
                "samples": len(data), "checkpoints": n}

    try:
        if progress:
            progress(done_count, total)
        for i in range(n):
            todo = np.flatnonzero(~done_a[i].ravel())
            if not len(todo):
                continue
            current = last if i == n - 1 else load(i)
            base = layout.flatten(perturbed_tensors(current, layout.dir_type)).to(device)
            runner = make_runner(spec, current, layout, data, loss_fn, labels[i])
            try:
                runner.set_directions(base, dirs)
                runner.expect(total - done_count)  # auto sizes its timing to the whole remaining job
                for start in range(0, len(todo), runner.points_per_call):
                    chunk = todo[start:start + runner.points_per_call]
                    try:
                        loss_k, acc_k = runner.evaluate_points(points[chunk].to(device))
                    except Exception as e:
                        if is_out_of_memory(e):
                            raise _out_of_memory(e, runner.describe()) from None
                        raise
                    if writer is not None:
                        writer.write(i, chunk, loss_k, acc_k)
                    else:
                        idx = (i, *np.unravel_index(chunk, shape))
                        loss_a[idx], acc_a[idx], done_a[idx] = loss_k, acc_k, True
                    done_count += len(chunk)
                    if progress:
                        progress(done_count, total)
                described = runner.describe()
            finally:
                runner.close()
            # what auto chose on the first checkpoint is kept for the others: no timing again
            if described.get("strategy") and "auto" in (spec.backend, spec.strategy):
                spec = dataclasses.replace(spec, backend=str(described["backend"]),
                                           strategy=str(described["strategy"]))
    except BaseException:
        if writer is not None:
            writer.abort(run_info())
        raise
    info = run_info()
    if writer is not None:
        writer.finish(info)
    surfaces = []
    for i in range(n):
        group_attrs = {**attrs, "label": labels[i], "checkpoint": paths[i], "index": i}
        surfaces.append(Surface(xs, ys, loss_a[i], acc_a[i], done_a[i], group_attrs, out_path))
    return Evolution(surfaces, labels, paths, {**attrs, "last_run": info}, out_path)


# -- the file -------------------------------------------------------------------------------
class EvolutionWriter:
    """Creates or resumes an evolution file and streams each checkpoint's points into
    its group; the same safety rules as :class:`~lossgrid.engine.surface_file.SurfaceWriter`."""

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
            if _is_lock_error(e):
                return (f"Evolution file {self.path} is open in another program",
                        "HDF5 reports it locked for writing", False)
            if not os.access(self.path, os.W_OK):
                return f"Output {self.path} cannot be written", _h5_reason(e), False
            # replaceable only if it reads as an evolution file, or cannot be read as HDF5 at all
            return f"Evolution file {self.path} is corrupt", _h5_reason(e), _kind_or_unreadable(self.path)
        refusal: tuple[str, str, bool] | None = None
        try:
            a, b = _comparable(_json_attr(f.attrs.get("identity"), {})), _comparable(identity)
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
            refusal = f"Evolution file {self.path} is corrupt", _h5_reason(e), True
        if refusal is not None:
            f.close()
            return refusal
        self.f, self.resumed = f, True
        return None

    def _create(self, tmp: str, xs: np.ndarray, ys: np.ndarray | None, identity: dict[str, Any],
                attrs: dict[str, Any], directions: Any, groups: list[dict[str, Any]], publish: bool) -> None:
        """Build the whole layout in memory, write it to ``tmp``; move it onto the path now
        (``publish``) or once the first chunk is in it."""
        import h5py

        from .directions import write_direction_groups

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
        try:
            write_new_file(tmp, hdf5_image(fill))
            if publish:
                replace(tmp, self.path)
            else:
                self.partial = tmp
            self.f = h5py.File(self.path if publish else tmp, "r+", locking="best-effort")
        except (OSError, RuntimeError, ValueError) as e:
            remove_quietly(tmp)
            self.partial = None
            raise SurfaceFileError(f"Cannot create evolution file {self.path}", _h5_reason(e),
                                   "free some space or choose another --out") from None
        except BaseException:  # Ctrl-C while creating: no half-made file left behind
            remove_quietly(tmp)
            self.partial = None
            raise

    def write(self, i: int, flat_indices: np.ndarray, loss: np.ndarray, acc: np.ndarray) -> None:
        """Store checkpoint ``i``'s results at ``flat_indices``; values reach the disk before ``done``."""
        idx = np.unravel_index(flat_indices, self.shape)
        self.loss[i][idx], self.acc[i][idx] = loss, acc
        rows = slice(int(idx[0].min()), int(idx[0].max()) + 1)
        g = self.f[f"{GROUP}/{i:04d}"]
        try:
            g[LOSS][rows] = self.loss[i][rows]
            g[ACC][rows] = self.acc[i][rows]
            self.f.flush()
            done = self.done[i][rows].astype(np.uint8)
            done[(idx[0] - rows.start, *idx[1:])] = 1
            g[DONE][rows] = done
            self.f.flush()
            self.done[i][idx] = True
            if self.partial is not None:  # the replacement now holds results: swap it in
                replace(self.partial, self.path)
                self.partial = None
        except (OSError, RuntimeError) as e:
            raise SurfaceFileError(f"Cannot write to evolution file {self.path}", _h5_reason(e),
                                   "free some space, then run the same command again: the points saved so far "
                                   "are kept") from None

    def finish(self, run_info: dict[str, Any]) -> None:
        """Append the run to the ``runs`` log (if it computed anything) and close."""
        try:
            if run_info.get("points"):
                runs = read_runs(self.f.attrs) + [{"started": self._started, **run_info}]
                write_runs(self.f, runs)
                self.f.attrs.modify("seconds", float(sum(float(r.get("seconds") or 0.0) for r in runs)))
                self.f.flush()
        except (OSError, RuntimeError, ValueError, TypeError) as e:
            raise SurfaceFileError(f"Cannot record the run in evolution file {self.path}", _h5_reason(e),
                                   "the computed points are saved; run the same command again to log it") from None
        finally:
            self.close()

    def abort(self, run_info: dict[str, Any]) -> None:
        """Log the interrupted run where the file can take it, then close; never raises."""
        try:
            if self.f is not None and self.f.id.valid and self.partial is None:
                self.finish(run_info)
        except Exception as e:  # an error is already on its way up
            log.info("could not log the interrupted run: %s", e)
        finally:
            self.close()

    def close(self) -> None:
        """Close the file, drop an unpublished replacement, release the lock."""
        if self.f is not None:
            try:
                self.f.close()
            except Exception:  # noqa: BLE001 - closing after an I/O error
                pass
            self.f = None
        if self.partial is not None:
            remove_quietly(self.partial)
            self.partial = None
        self.lock.release()


def _stored_evolution_directions(path: str, model: Any, spec: DirectionSpec, ndim: int) -> Any:
    """The Hessian directions of an existing evolution file with the same direction settings, or ``None``."""
    from .directions import load_directions

    try:
        dirs = load_directions(path, model, spec.dir_type, ndim)
    except Exception as e:  # not ours or unreadable: the writer reports it properly
        log.info("not reusing the directions of %s: %s", path, e)
        return None
    same = dirs.meta.get("kind") == "hessian" and int(dirs.meta.get("seed", -1)) == spec.seed and all(
        dirs.meta.get(k) == v for k, v in (("xnorm", spec.xnorm), ("xignore", spec.xignore)))
    return dirs if same else None


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
    locking: bool | str = True if holder is None else "best-effort" if holder.get("pid") == os.getpid() else False
    try:
        with h5py.File(path, "r", locking=locking) as f:
            if _attr_text(f.attrs.get("file_kind")) != KIND or GROUP not in f:
                raise SurfaceFileError(f"{path} is not an evolution file", "it has no 'checkpoints' group or its "
                                       "file_kind is not 'evolution'", "pass a file written by lossgrid evolve "
                                       "(surface files are read with load_surface)")
            surfaces = [_read(f[f"{GROUP}/{name}"], path, holder) for name in sorted(f[GROUP], key=int)]
            attrs = {k: _attr_text(v) if isinstance(v, (bytes, np.bytes_)) else v for k, v in f.attrs.items()
                     if k != "runs"}
            attrs["runs"] = json.dumps(read_runs(f.attrs))
    except SurfaceFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise SurfaceFileError(f"Cannot read evolution file {path}", _h5_reason(e),
                               "pass a file written by lossgrid evolve") from None
    labels = [str(s.attrs.get("label", i)) for i, s in enumerate(surfaces)]
    checkpoints = [str(s.attrs.get("checkpoint", "")) for s in surfaces]
    return Evolution(surfaces, labels, checkpoints, attrs, path, holder)
