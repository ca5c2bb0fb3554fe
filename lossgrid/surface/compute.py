"""Compute a loss surface: the run opened (inputs, axes, the file), then its points in chunks (:mod:`.loop`).

Example:
    >>> import torch
    >>> from lossgrid import compute_surface, GridSpec, Axis
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> surf = compute_surface(model, (x, y), GridSpec(Axis(-1, 1, 5)))
    >>> surf.loss.shape
    (5,)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import (
    AdaptiveSpec,
    BatchNormSpec,
    CurvatureSpec,
    DirectionSpec,
    EvalSpec,
    GridSpec,
    check_anchored_adaptive,
)
from ..data import EvalData, as_eval_data
from ..engine import preflight
from ..engine.batchnorm import check_recompute, recompute_batches
from ..engine.device import on_device, resolve_device
from ..engine.directions import Directions, check_finite_directions
from ..engine.fingerprint import data_fingerprint, model_fingerprint
from ..engine.losses import LossFn, resolve_loss
from ..engine.params import perturbed_tensors
from ..engine.runners import make_runner
from ..errors import ConfigError
from ..hessian.curvature import DATASETS as CURVATURE_DATASETS
from .adaptive import AdaptiveGrid, fill_adaptive
from .anchors import AnchorGrid, check_population, evaluate_anchors, use_control_variates
from .checks import check_writable, stored_hessian_directions, surface_identity
from .directions import prepare_directions
from .distributed import Cluster, share_directions
from .file import INTERPOLATED, SE, Surface, SurfaceWriter
from .loop import ChunkLoop, Evaluation, Progress

__all__ = ["INTERPOLATED", "SE", "Progress", "compute_surface"]

log = logging.getLogger(__name__)


def compute_surface(model: nn.Module, data: EvalData | tuple[torch.Tensor, torch.Tensor], grid: GridSpec,
                    out: str | os.PathLike | None = None, *, directions: Directions | None = None,
                    direction_spec: DirectionSpec = DirectionSpec(), model2: nn.Module | None = None,
                    dir_file: str | os.PathLike | None = None, loss: str | LossFn = "cross_entropy",
                    eval_spec: EvalSpec = EvalSpec(), overwrite: bool = False,
                    progress: Progress | None = None, model_description: str | None = None,
                    curvature: CurvatureSpec | None = None, batchnorm: BatchNormSpec = BatchNormSpec(),
                    bn_data: EvalData | None = None, tags: dict[str, Any] | None = None,
                    adaptive: AdaptiveSpec | None = None, cluster: Cluster | None = None,
                    anchor_stride: int | None = None, population: EvalData | None = None) -> Surface:
    """Evaluate loss and accuracy of ``model`` on a 1D or 2D grid around it.

    Args:
        model: the trained model; its weights are the grid's origin.
        data: the evaluation set (an :class:`EvalData` or ``(x, y)`` tensors).
        grid: the grid of direction coefficients.
        out: the HDF5 surface file; re-running with the same settings resumes it.
            ``None`` keeps the surface in memory only.
        directions: ready-made directions; otherwise read from ``dir_file`` if it
            exists, else created from ``direction_spec`` (and written to ``dir_file``).
        model2: second checkpoint for a 1D interpolation (x=0 model, x=1 model2).
        loss: ``cross_entropy``, ``mse``, ``module:function`` or a callable.
        eval_spec: backend, strategy, batch size, points per call, device.
        overwrite: replace an existing ``out`` computed with other settings (or
            corrupt); the old file stays until the new one holds results. A file
            with the same settings is resumed either way.
        progress: called as ``progress(points_done, points_total)`` after each chunk.
        model_description: how the model was specified, stored in the file.
        curvature: also compute the extreme Hessian eigenvalues at every point
            (``max_eig``/``min_eig``, :mod:`lossgrid.hessian.curvature`); costs
            ``curvature.iters`` Hessian-vector products over the data per point.
        batchnorm: ``eval`` (running statistics as stored) or ``recompute`` (re-estimated
            at every point from batches of ``bn_data``, default ``data``;
            :mod:`lossgrid.engine.batchnorm`). Stored in the file.
        bn_data: the set whose batches re-estimate BatchNorm statistics (``recompute``).
        tags: settings of the calling job that decide the values (``target_se``), stored in
            the file's identity.
        adaptive: evaluate a coarse grid and refine only where interpolation is measured to be
            off (:mod:`lossgrid.surface.adaptive`); the other points are filled by interpolation
            and marked in the ``interpolated`` dataset (they are not ``done``).
        cluster: this process's place in a sharded job (:mod:`lossgrid.surface.distributed`):
            every rank evaluates chunks it claims; rank 0 makes the directions, holds ``out``
            and writes every result. ``None``: this process alone.
        anchor_stride: every ``anchor_stride``-th point on each axis (and the last) is evaluated
            exactly on ``population``, the others on ``data`` (a subset of it) with those anchors
            as control variates (:mod:`lossgrid.surface.anchors`).
        population: the whole set ``data`` was drawn from (``anchor_stride`` only).
    """
    check_modes(adaptive, curvature, anchor_stride, batchnorm)
    data = as_eval_data(data)
    leader = cluster is None or cluster.leader
    out_path = os.fspath(out) if out is not None and leader else None  # rank 0 alone writes the file
    if out_path is not None:
        check_writable(out_path, dir_file)
    if cluster is not None:
        eval_spec = dataclasses.replace(eval_spec, device=cluster.device(eval_spec.device))
        progress = progress if leader else None
    device = resolve_device(eval_spec.device)
    loss_fn, loss_desc = resolve_loss(loss)
    model, model2 = _checked_models(model, model2, data, loss_fn, device, per_sample=anchor_stride is not None)
    fingerprints = model_fingerprint(model), data_fingerprint(data)
    if cluster is not None:
        cluster.chunks.clear()
        cluster.check_same(*fingerprints)
    given = directions is not None  # by the caller, on every rank
    if directions is None and leader:
        directions = _leader_directions(model, model2, data, loss_fn, loss_desc, grid, direction_spec, dir_file,
                                        out_path, fingerprints)
    if cluster is not None and not given:  # every rank evaluates rank 0's directions, bit for bit
        directions = share_directions(cluster, directions, model, direction_spec.dir_type)
    if directions.ndim != grid.ndim:
        raise ConfigError(f"The grid is {grid.ndim}D but {directions.ndim} direction(s) were given",
                          hint="give --y for two directions, or drop it for one")
    check_finite_directions(directions)
    bn_batches = None
    if batchnorm.recompute:
        check_recompute(model, directions.layout.dir_type)
        bn_data = data if bn_data is None else bn_data
        bn_batches = recompute_batches(bn_data, batchnorm)
    # with an adaptive grid the anchors are its coarse level, and interpolated as it interpolates that level
    anchors = None if anchor_stride is None else AnchorGrid(grid.shape, anchor_stride, cubic=adaptive is not None)
    if anchors is not None:
        population = check_population(data, population, loss_fn)
    runner = make_runner(eval_spec, model, directions.layout, data, loss_fn, model_description or "", bn_batches)
    layout = directions.layout
    base = layout.flatten(perturbed_tensors(model, layout.dir_type)).to(device)
    dirs = directions.flat().to(device)
    points = torch.as_tensor(grid.points(), dtype=dirs.dtype)
    ev = Evaluation(model, data, loss_fn, layout, base, dirs, points, device, eval_spec, curvature, bn_batches)
    identity, attrs = surface_identity(
        model, data, grid, directions, eval_spec, fingerprints, loss_desc, model_description, direction_spec,
        dir_file, curvature=curvature, adaptive=adaptive, anchors=anchors,
        population=population if anchors is not None else None, batchnorm=batchnorm, bn_batches=bn_batches,
        bn_data=bn_data, tags=tags)
    extra_names = (SE, *(CURVATURE_DATASETS if curvature is not None else ()),
                   *((INTERPOLATED,) if adaptive is not None else ()))
    surface, writer = _open_surface(grid, out_path, identity, attrs, directions, overwrite, extra_names)
    loop = ChunkLoop(ev, runner, surface, writer, cluster, progress, extra_names)
    try:
        _run(loop, grid, adaptive, anchors, population,
             lambda: make_runner(eval_spec, model, layout, population, loss_fn, model_description or "", bn_batches))
    except BaseException:
        if writer is not None:
            writer.abort(loop.run_info())  # logs the partial run where it can; every flushed chunk stays
        raise
    finally:
        runner.close()
    info = loop.run_info()
    if writer is not None:
        writer.finish(info)
    return surface


def check_modes(adaptive: AdaptiveSpec | None, curvature: CurvatureSpec | None, anchor_stride: int | None,
                batchnorm: BatchNormSpec) -> None:
    """Refuse the modes that exclude each other, before any work."""
    if adaptive is not None and curvature is not None:
        raise ConfigError("--adaptive cannot be combined with --curvature",
                          "eigenvalues are not interpolated: every point of a curvature map is evaluated",
                          "drop one of them")
    if batchnorm.recompute and curvature is not None:
        raise ConfigError("--curvature cannot be combined with --bn recompute",
                          "the Hessian at each point would use the stored BatchNorm statistics, not the "
                          "re-estimated ones", "compute the curvature map with --bn eval")
    if anchor_stride is not None and curvature is not None:
        raise ConfigError("--anchor-stride cannot be combined with --curvature",
                          "anchors correct subset estimates of the loss; curvature is evaluated at each point "
                          "on its own terms", "drop one of them")
    check_anchored_adaptive(adaptive, anchor_stride)


def _checked_models(model: nn.Module, model2: nn.Module | None, data: EvalData, loss_fn: LossFn,
                    device: torch.device, per_sample: bool) -> tuple[nn.Module, nn.Module | None]:
    """The models checked and on ``device`` (copies where they live elsewhere: the caller's stay put), probed."""
    preflight.check_finite_model(model)
    if model2 is not None:
        preflight.check_finite_model(model2, "the second model (--model2)")
    preflight.check_data(data, loss_fn)
    model = on_device(model, device)
    if model2 is not None:
        model2 = on_device(model2, device)
    preflight.probe(model, data, loss_fn, device, per_sample=per_sample)
    return model, model2


def _leader_directions(model: nn.Module, model2: nn.Module | None, data: EvalData, loss_fn: LossFn, loss_desc: str,
                       grid: GridSpec, spec: DirectionSpec, dir_file: str | os.PathLike | None, out_path: str | None,
                       fingerprints: tuple[str, str]) -> Directions:
    """The run's axes, made (or read) by the process that writes the file."""
    if spec.kind == "hessian" and dir_file is None and out_path is not None:
        # Hessian eigenvectors differ in the last bits between thread counts and devices: resume on the
        # directions the file holds rather than on new ones that would not match its fingerprint
        stored = stored_hessian_directions(out_path, model, spec, grid.ndim, *fingerprints, loss_desc)
        if stored is not None:
            return stored
    return prepare_directions(model, spec, grid.ndim, model2, dir_file, data, loss_fn)


def _open_surface(grid: GridSpec, out_path: str | None, identity: dict[str, Any], attrs: dict[str, Any],
                  directions: Directions, overwrite: bool, extra_names: tuple[str, ...]
                  ) -> tuple[Surface, SurfaceWriter | None]:
    """The run's surface: in memory, or the arrays of its file (new, or resumed with the points done)."""
    xs = grid.x.coordinates()
    ys = grid.y.coordinates() if grid.y is not None else None
    writer = SurfaceWriter(out_path, xs, ys, identity, attrs, directions, overwrite, extra_names) if out_path else None
    surface = Surface(xs, ys, np.full(grid.shape, np.nan), np.full(grid.shape, np.nan),
                      np.zeros(grid.shape, dtype=bool), attrs, out_path,
                      extra={name: np.full(grid.shape, np.nan) for name in extra_names})
    if writer is not None:
        surface.loss, surface.acc, surface.done = writer.loss, writer.acc, writer.done
        surface.extra = writer.extra
        if writer.resumed:
            log.info("resuming %s: %d of %d points done", out_path, int(writer.done.sum()), writer.done.size)
    return surface, writer


def _run(loop: ChunkLoop, grid: GridSpec, adaptive: AdaptiveSpec | None, anchors: AnchorGrid | None,
         population: EvalData | None, exact_runner: Any) -> None:
    """The points left: rank 0 says which, every rank evaluates them (anchors first, exactly; then the other
    points, estimated from the anchors where there are some; then an adaptive grid's refinement rounds)."""
    surface, cluster = loop.surface, loop.cluster
    leader = cluster is None or cluster.leader
    total = surface.done.size
    policy = loop.policy = AdaptiveGrid(grid.shape, adaptive, surface.done) if adaptive is not None and leader else None
    todo = start_done = None
    if leader:
        todo = (np.flatnonzero(~surface.done.ravel()) if policy is None
                else policy.next_points(surface.loss, surface.done, _subset_se(loop)))
        start_done = int(surface.done.sum())
    if cluster is not None:  # rank 0 holds the file: it says what is left
        todo, start_done = cluster.share((todo, start_done) if leader else None)
    loop.start_done = loop.done_count = start_done
    loop.runner.set_directions(loop.ev.base, loop.ev.dirs)
    anchor_todo = np.intersect1d(todo, anchors.flat()) if anchors is not None else todo[:0]
    if anchors is not None:
        todo = np.setdiff1d(todo, anchors.flat())
        loop.anchors = {"stride": anchors.stride, "anchors": len(anchors.flat()),
                        "evaluated_exactly": int(len(anchor_todo))}
    loop.runner.expect(_expected_points(loop, policy, anchors, todo, anchor_todo))
    loop.t0 = time.perf_counter()  # the run's seconds count from here
    if loop.progress and leader:
        loop.progress(start_done, total)
    if anchors is not None:
        evaluate_anchors(loop, anchor_todo, population, exact_runner)
        if adaptive is not None and not len(todo):  # the anchors were the coarse grid: the first checks next
            todo = _next_round(loop)
        if len(todo):
            use_control_variates(loop, anchors, population)
    while len(todo):
        loop.evaluate(todo)
        todo = _next_round(loop) if adaptive is not None else todo[:0]
    if adaptive is not None and leader:
        fill_adaptive(policy, surface, loop.writer)


def _expected_points(loop: ChunkLoop, policy: AdaptiveGrid | None, anchors: AnchorGrid | None, todo: np.ndarray,
                     anchor_todo: np.ndarray) -> int:
    """The points the run's own runner is expected to evaluate, which sizes an auto runner's timing: all those
    left; with anchors, the anchors again on the subset; an adaptive grid's first two levels (always evaluated)
    and as many again for its refinement (rank 0 knows, every rank is told)."""
    if policy is not None:
        left = loop.surface.done.size - loop.start_done
        guess = min(left, max(2 * policy.first_levels_left(loop.surface.done), len(todo))) - len(anchor_todo)
    else:
        guess = len(todo)
    if loop.cluster is not None:
        guess = loop.cluster.share(guess if loop.cluster.leader else None)
    return max(0, guess) + (len(anchors.flat()) if anchors is not None and guess else 0)


def _next_round(loop: ChunkLoop) -> np.ndarray:
    """The next points an adaptive grid refines (rank 0's choice, shared)."""
    policy, surface = loop.policy, loop.surface
    todo = policy.next_points(surface.loss, surface.done, _subset_se(loop)) if policy is not None else None
    return todo if loop.cluster is None else loop.cluster.share(todo)


def _subset_se(loop: ChunkLoop) -> np.ndarray | None:
    """The standard errors an adaptive grid weighs its surpluses against: those of estimates from a subset
    of the set (``None`` on the whole set: its values are exact, their standard errors are those of the set
    as a sample of all data, which no refinement is about)."""
    return loop.surface.extra.get(SE) if loop.ev.data.population is not None else None
