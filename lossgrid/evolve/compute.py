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
from ..data import as_eval_data
from ..engine import preflight
from ..engine.device import out_of_memory, resolve_device
from ..engine.directions import check_finite_directions, load_directions
from ..engine.fingerprint import data_fingerprint, model_fingerprint
from ..engine.losses import resolve_loss
from ..engine.params import ParamLayout, perturbed_tensors
from ..engine.runners import make_runner
from ..errors import ConfigError, is_out_of_memory
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
    directions = None
    if direction_spec.kind == "hessian" and dir_file is None and out_path is not None and os.path.exists(out_path):
        # Hessian eigenvectors differ in their last bits between thread counts and devices: a resumed
        # run uses the directions the file holds (its identity check still compares everything else)
        directions = _stored_evolution_directions(out_path, last, direction_spec, grid.ndim)
    if directions is None:
        directions = prepare_directions(last, direction_spec, grid.ndim, None, dir_file, data, loss_fn)
    if directions.ndim != grid.ndim:
        raise ConfigError(f"The grid is {grid.ndim}D but {directions.ndim} direction(s) were given",
                          hint="give --y for two directions, or drop it for one")
    check_finite_directions(directions)
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
        fingerprints.append(model_fingerprint(current))
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
                        loss_k, acc_k, _ = runner.evaluate_points(points[chunk].to(device))
                    except Exception as e:
                        if is_out_of_memory(e):
                            raise out_of_memory(e, runner.describe()) from None
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
