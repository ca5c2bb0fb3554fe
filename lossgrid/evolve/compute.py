"""Loss landscapes that evolve over training: one surface per checkpoint, on shared
directions, in one resumable HDF5 file.

The directions are made once, from the LAST checkpoint (or read from ``dir_file``),
and every checkpoint's surface is evaluated on them, so frames of an animation
show how the landscape around the training trajectory changes along fixed axes.

The file's layout and safety rules are described in :mod:`lossgrid.evolve.file`,
which holds its writer and reader (:class:`EvolutionWriter`, :func:`load_evolution`,
re-exported here).

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
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..config import DirectionSpec, EvalSpec, GridSpec
from ..data import EvalData, as_eval_data
from ..engine import preflight
from ..engine.device import memory_errors_explained, resolve_device
from ..engine.directions import Directions, check_finite_directions, load_directions
from ..engine.fingerprint import data_fingerprint, model_fingerprint
from ..engine.losses import LossFn, resolve_loss
from ..engine.params import ParamLayout, perturbed_tensors
from ..engine.runners import make_runner
from ..errors import ConfigError
from ..models import load_model
from ..surface.checks import check_writable
from ..surface.directions import prepare_directions
from ..surface.file import Surface
from .file import GROUP, KIND, Evolution, EvolutionWriter, load_evolution  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


# -- checkpoints -------------------------------------------------------------------------
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
            :func:`~lossgrid.surface.compute.compute_surface`; ``progress(done, total)``
            counts the points of all checkpoints.
        labels: names of the frames (default: the checkpoints' file names).
    """
    if not checkpoints:
        raise ConfigError("No checkpoint given", hint="pass --checkpoints 'run/epoch_*.pt'")
    data = as_eval_data(data)
    paths = [os.fspath(c) for c in checkpoints]
    labels = list(labels) if labels is not None else [checkpoint_label(p) for p in paths]
    out_path = os.fspath(out) if out is not None else None
    if out_path is not None:
        check_writable(out_path, dir_file, "evolution file")
    device = resolve_device(eval_spec.device)
    loss_fn, loss_desc = resolve_loss(loss)
    preflight.check_data(data, loss_fn)

    def load(i: int) -> Any:
        m, _ = load_model(model, paths[i], trust_checkpoint)
        preflight.check_finite_model(m, f"checkpoint {paths[i]}")
        return m.to(device)

    last = load(len(paths) - 1)
    preflight.probe(last, data, loss_fn, device)
    directions = _axes(last, data, loss_fn, grid, direction_spec, dir_file, out_path)
    fingerprints = _fingerprints(paths, last, load, directions.layout)
    identity = {"file_kind": KIND, "model": model or "checkpoint", "checkpoint_fingerprints": fingerprints,
                "data": data.description, "data_fingerprint": data_fingerprint(data),
                "samples": len(data),
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
    n = len(paths)
    writer = (EvolutionWriter(out_path, n, xs, ys, identity, attrs, directions, overwrite,
                              [{"label": labels[i], "checkpoint": paths[i], "index": i,
                                "model_fingerprint": fingerprints[i]} for i in range(n)])
              if out_path else None)
    frames = _Frames(writer, (n, *grid.shape), data, loss_fn, device, directions.flat().to(device),
                     torch.as_tensor(grid.points()), eval_spec, progress)
    try:
        if progress:
            progress(frames.done_count, frames.total)
        for i in range(n):
            frames.evaluate(i, lambda i=i: last if i == n - 1 else load(i), directions.layout, labels[i])
    except BaseException:
        if writer is not None:
            writer.abort(frames.run_info())
        raise
    info = frames.run_info()
    if writer is not None:
        writer.finish(info)
    surfaces = [Surface(xs, ys, frames.loss[i], frames.acc[i], frames.done[i],
                        {**attrs, "label": labels[i], "checkpoint": paths[i], "index": i}, out_path) for i in range(n)]
    return Evolution(surfaces, labels, paths, {**attrs, "last_run": info}, out_path)


def _axes(last: Any, data: EvalData, loss_fn: LossFn, grid: GridSpec, spec: DirectionSpec,
          dir_file: str | os.PathLike | None, out_path: str | None) -> Directions:
    """The shared directions, made from the last checkpoint (or read: ``dir_file``, a resumed Hessian file)."""
    directions = None
    if spec.kind == "hessian" and dir_file is None and out_path is not None and os.path.exists(out_path):
        # Hessian eigenvectors differ in their last bits between thread counts and devices: a resumed
        # run uses the directions the file holds (its identity check still compares everything else)
        directions = _stored_evolution_directions(out_path, last, spec, grid.ndim)
    if directions is None:
        directions = prepare_directions(last, spec, grid.ndim, None, dir_file, data, loss_fn)
    if directions.ndim != grid.ndim:
        raise ConfigError(f"The grid is {grid.ndim}D but {directions.ndim} direction(s) were given",
                          hint="give --y for two directions, or drop it for one")
    check_finite_directions(directions)
    return directions


def _fingerprints(paths: list[str], last: Any, load: Callable[[int], Any], layout: ParamLayout) -> list[str]:
    """Every checkpoint's fingerprint, each loaded once before the file is touched: the fingerprints are part of
    the file's identity, and a checkpoint of another architecture is refused now, not halfway."""
    fingerprints = []
    for i in range(len(paths)):
        current = last if i == len(paths) - 1 else load(i)
        if ParamLayout.from_model(current, layout.dir_type) != layout:
            raise ConfigError(f"Checkpoint {paths[i]} does not match the directions",
                              "its tensors differ in names or shapes from the last checkpoint's",
                              "pass checkpoints of one architecture")
        fingerprints.append(model_fingerprint(current))
    return fingerprints


class _Frames:
    """The frames' arrays (the file's, or in memory) and their evaluation, checkpoint by checkpoint."""

    def __init__(self, writer: EvolutionWriter | None, shape: tuple[int, ...], data: EvalData, loss_fn: LossFn,
                 device: torch.device, dirs: torch.Tensor, points: torch.Tensor, spec: EvalSpec,
                 progress: Callable[[int, int], None] | None) -> None:
        self.writer, self.data, self.loss_fn, self.device, self.dirs = writer, data, loss_fn, device, dirs
        self.points, self.spec, self.progress = points.to(dirs.dtype), spec, progress
        if writer is not None:
            self.loss, self.acc, self.done = writer.loss, writer.acc, writer.done
        else:
            self.loss, self.acc = np.full(shape, np.nan), np.full(shape, np.nan)
            self.done = np.zeros(shape, dtype=bool)
        self.total, self.done_count = self.done.size, int(self.done.sum())
        if writer is not None and writer.resumed:
            log.info("resuming %s: %d of %d points done", writer.path, self.done_count, self.total)
        self.start_count, self.t0 = self.done_count, time.perf_counter()
        self.described: dict[str, Any] = {}

    def run_info(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.t0
        return {**self.described, "seconds": round(seconds, 4), "points": self.done_count - self.start_count,
                "samples": len(self.data), "checkpoints": self.done.shape[0]}

    def evaluate(self, i: int, load: Callable[[], Any], layout: ParamLayout, label: str) -> None:
        """The points left of frame ``i`` (``load``: its model); what auto chose is kept for later frames."""
        todo = np.flatnonzero(~self.done[i].ravel())
        if not len(todo):
            return
        current = load()
        base = layout.flatten(perturbed_tensors(current, layout.dir_type)).to(self.device)
        runner = make_runner(self.spec, current, layout, self.data, self.loss_fn, label)
        try:
            runner.set_directions(base, self.dirs)
            runner.expect(self.total - self.done_count)  # auto sizes its timing to the whole remaining job
            for start in range(0, len(todo), runner.points_per_call):
                self._commit(i, todo[start:start + runner.points_per_call], runner)
            self.described = runner.describe()
        finally:
            runner.close()
        # what auto chose on the first checkpoint is kept for the others: no timing again
        if self.described.get("strategy") and "auto" in (self.spec.backend, self.spec.strategy):
            self.spec = dataclasses.replace(self.spec, backend=str(self.described["backend"]),
                                            strategy=str(self.described["strategy"]))

    def _commit(self, i: int, chunk: np.ndarray, runner: Any) -> None:
        with memory_errors_explained(runner):
            loss_k, acc_k, _ = runner.evaluate_points(self.points[chunk].to(self.device))
        if self.writer is not None:
            self.writer.write(i, chunk, loss_k, acc_k)
        else:
            idx = (i, *np.unravel_index(chunk, self.done.shape[1:]))
            self.loss[idx], self.acc[idx], self.done[idx] = loss_k, acc_k, True
        self.done_count += len(chunk)
        if self.progress:
            self.progress(self.done_count, self.total)


def _stored_evolution_directions(path: str, model: Any, spec: DirectionSpec, ndim: int) -> Any:
    """The Hessian directions of an existing evolution file with the same direction settings, or ``None``."""

    try:
        dirs = load_directions(path, model, spec.dir_type, ndim)
    except Exception as e:  # not ours or unreadable: the writer reports it properly
        log.info("not reusing the directions of %s: %s", path, e)
        return None
    same = dirs.meta.get("kind") == "hessian" and int(dirs.meta.get("seed", -1)) == spec.seed and all(
        dirs.meta.get(k) == v for k, v in (("xnorm", spec.xnorm), ("xignore", spec.xignore)))
    return dirs if same else None
