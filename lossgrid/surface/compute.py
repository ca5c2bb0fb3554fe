"""Compute a loss surface: directions, grid, runner, streamed into a surface file.

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
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..config import AdaptiveSpec, BatchNormSpec, CurvatureSpec, DirectionSpec, EvalSpec, GridSpec
from ..data import EvalData, as_eval_data
from ..engine import preflight
from ..engine.batchnorm import check_recompute, recompute_batches
from ..engine.batchnorm import identity as bn_identity
from ..engine.device import on_device, out_of_memory, resolve_device
from ..engine.directions import (
    SELECTION_KEYS,
    Directions,
    check_finite_directions,
    check_selection,
    load_directions,
    save_directions,
)
from ..engine.fingerprint import data_fingerprint, model_fingerprint
from ..engine.losses import LossFn, SampleValues, finite_population, resolve_loss, unit_counts
from ..engine.params import perturbed_tensors
from ..engine.runners import make_runner
from ..errors import ConfigError, is_out_of_memory
from ..hessian.curvature import DATASETS as CURVATURE_DATASETS
from ..hessian.curvature import curvature_of_points
from ..kernels import perturb
from .adaptive import AdaptiveGrid
from .anchors import AnchorGrid, ControlVariate, check_population
from .checks import check_precision_error, check_writable, stored_hessian_directions
from .directions import create_directions
from .distributed import Cluster, share_directions
from .file import Surface, SurfaceWriter

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
#: points of a run's first chunk evaluated again in IEEE fp32 when the run's precision is lower
PRECISION_CHECK_POINTS = 3
#: the dataset of every point's standard error of the loss
SE = "train_loss_se"
#: the dataset marking the points an adaptive grid filled by interpolation (1) rather than evaluated (0)
INTERPOLATED = "interpolated"


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
    data = as_eval_data(data)
    given = directions is not None  # by the caller, on every rank
    leader = cluster is None or cluster.leader
    out_path = os.fspath(out) if out is not None and leader else None  # rank 0 alone writes the file
    if out_path is not None:
        check_writable(out_path, dir_file)
    if cluster is not None:
        eval_spec = dataclasses.replace(eval_spec, device=cluster.device(eval_spec.device))
        progress = progress if leader else None
    device = resolve_device(eval_spec.device)
    loss_fn, loss_desc = resolve_loss(loss)
    preflight.check_finite_model(model)
    if model2 is not None:
        preflight.check_finite_model(model2, "the second model (--model2)")
    preflight.check_data(data, loss_fn)
    model = on_device(model, device)  # the caller's model stays where it is
    if model2 is not None:
        model2 = on_device(model2, device)
    preflight.probe(model, data, loss_fn, device, per_sample=anchor_stride is not None)
    model_fp, data_fp = model_fingerprint(model), data_fingerprint(data)
    if cluster is not None:
        cluster.chunks.clear()
        cluster.check_same(model_fp, data_fp)
    if directions is None and direction_spec.kind == "hessian" and dir_file is None and out_path is not None and leader:
        # Hessian eigenvectors differ in the last bits between thread counts and devices: resume on the
        # directions the file holds rather than on new ones that would not match its fingerprint
        directions = stored_hessian_directions(out_path, model, direction_spec, grid.ndim, model_fp, data_fp,
                                                loss_desc)
    if directions is None and leader:
        directions = prepare_directions(model, direction_spec, grid.ndim, model2, dir_file, data, loss_fn)
    if cluster is not None and not given:  # every rank evaluates rank 0's directions, bit for bit
        directions = share_directions(cluster, directions, model, direction_spec.dir_type)
    if directions.ndim != grid.ndim:
        raise ConfigError(f"The grid is {grid.ndim}D but {directions.ndim} direction(s) were given",
                          hint="give --y for two directions, or drop it for one")
    check_finite_directions(directions)
    if adaptive is not None and curvature is not None:
        raise ConfigError("--adaptive cannot be combined with --curvature",
                          "eigenvalues are not interpolated: every point of a curvature map is evaluated",
                          "drop one of them")
    bn_batches = None
    if batchnorm.recompute:
        check_recompute(model, directions.layout.dir_type)
        if curvature is not None:
            raise ConfigError("--curvature cannot be combined with --bn recompute",
                              "the Hessian at each point would use the stored BatchNorm statistics, not the "
                              "re-estimated ones", "compute the curvature map with --bn eval")
        bn_data = data if bn_data is None else bn_data
        bn_batches = recompute_batches(bn_data, batchnorm)
    anchors = None if anchor_stride is None else AnchorGrid(grid.shape, anchor_stride)
    if anchors is not None:
        population = check_population(data, population, loss_fn)
        if adaptive is not None or curvature is not None:
            raise ConfigError("--anchor-stride cannot be combined with --adaptive or --curvature",
                              "anchors correct subset estimates at every point; the others evaluate some points "
                              "(or each point) on their own terms", "drop one of them")
    runner = make_runner(eval_spec, model, directions.layout, data, loss_fn, model_description or "", bn_batches)
    exact_runner = None  # the anchors' runner on the whole set, while anchors are left to evaluate

    base = directions.layout.flatten(perturbed_tensors(model, directions.layout.dir_type)).to(device)
    dirs = directions.flat().to(device)
    identity = {
        "model": model_description or type(model).__name__,
        "model_fingerprint": model_fp,
        "data": data.description,
        "data_fingerprint": data_fp,
        "samples": len(data),
        "loss": loss_desc,
        "directions": directions.fingerprint(),
        "x": str(grid.x),
        "y": str(grid.y) if grid.y is not None else None,
        **{k: directions.meta.get(k) for k in ("dir_type", "kind", "xnorm", "xignore", "ynorm", "yignore")},
        # only when set: files written before the selection existed stay resumable
        **{k: directions.meta[k] for k in SELECTION_KEYS if directions.meta.get(k) is not None},
    }
    if eval_spec.precision != "fp32":  # fp32 files written before precisions existed stay resumable
        identity["precision"] = eval_spec.precision
    if curvature is not None:
        identity["curvature"] = dataclasses.asdict(curvature)
    if adaptive is not None:
        identity["adaptive"] = dataclasses.asdict(adaptive)
    if anchors is not None and population is not None:  # the anchors' values are of the whole set
        identity["anchor_stride"] = anchors.stride
        identity["population_fingerprint"] = data_fingerprint(population)
    if bn_batches is not None:  # eval files (also those of older versions) stay resumable
        identity["bn"] = bn_identity(batchnorm, bn_batches)
    identity.update(tags or {})
    attrs = {k: v for k, v in identity.items() if v is not None}
    if data.population is not None:  # the standard errors are against this set (files of other runs differ)
        identity["se_population"] = int(data.population)
        attrs["se_population"] = int(data.population)
    # train_loss_se estimates the error against this set's mean (0: an infinite population)
    attrs.setdefault("se_population", 0)
    if bn_data is not None and bn_batches is not None:
        attrs.update(bn_data=bn_data.description)
    attrs.update(precision=eval_spec.precision, bn=batchnorm.policy, lossgrid_version=__version__,
                 seed=int(directions.meta.get("seed", direction_spec.seed)),
                 dir_file=os.fspath(dir_file) if dir_file else "")
    xs = grid.x.coordinates()
    ys = grid.y.coordinates() if grid.y is not None else None
    points = torch.as_tensor(grid.points(), dtype=dirs.dtype)
    extra_names = (SE, *(CURVATURE_DATASETS if curvature is not None else ()),
                   *((INTERPOLATED,) if adaptive is not None else ()))
    writer = SurfaceWriter(out_path, xs, ys, identity, attrs, directions, overwrite, extra_names) if out_path else None
    surface = Surface(xs, ys, np.full(grid.shape, np.nan), np.full(grid.shape, np.nan),
                      np.zeros(grid.shape, dtype=bool), attrs, out_path,
                      extra={name: np.full(grid.shape, np.nan) for name in extra_names})
    if writer is not None:
        surface.loss, surface.acc, surface.done = writer.loss, writer.acc, writer.done
        surface.extra = writer.extra
        if writer.resumed:
            log.info("resuming %s: %d of %d points done", out_path, int(writer.done.sum()), writer.done.size)

    total = surface.done.size
    policy = AdaptiveGrid(grid.shape, adaptive, surface.done) if adaptive is not None and leader else None
    if leader:
        todo = (np.flatnonzero(~surface.done.ravel()) if policy is None
                else policy.next_points(surface.loss, surface.done))
        start_done = int(surface.done.sum())
    if cluster is not None:  # rank 0 holds the file: it says what is left
        todo, start_done = cluster.share((todo, start_done) if leader else None)
    done_count = start_done
    runner.set_directions(base, dirs)
    anchor_todo = np.intersect1d(todo, anchors.flat()) if anchors is not None else todo[:0]
    if anchors is not None:
        todo = np.setdiff1d(todo, anchors.flat())
    # auto runners size their timing to the job (an adaptive one: about twice its first round; with
    # anchors, the anchors on the subset too)
    runner.expect(len(todo) + (len(anchors.flat()) if anchors is not None and len(todo) else 0) if policy is None
                  else min(total - done_count, 2 * len(todo)))
    # with curvature every point costs many passes over the data: write each one as soon as it is done
    step = 1 if curvature is not None else runner.points_per_call
    precision_check: dict[str, Any] = {}
    check_data: EvalData | None = data  # what the precision check evaluates the first chunk on (None: no check)
    sample_evals, per_point = 0, len(data)  # samples evaluated in all, and per point of the current phase
    anchor_note: dict[str, Any] = {}
    t0 = time.perf_counter()

    def run_info() -> dict[str, Any]:
        seconds = time.perf_counter() - t0
        run = {**runner.describe(), "seconds": round(seconds, 4), "points": done_count - start_done,
               "samples": len(data)}
        run["points_x_samples_per_s"] = round(sample_evals / seconds, 1) if seconds > 0 else None
        if anchors is not None:
            run["anchors"] = {"stride": anchors.stride, "anchors": len(anchors.flat()),
                              "evaluated_exactly": int(len(anchor_todo)), **anchor_note}
        if precision_check:
            run["precision_check"] = precision_check
        if policy is not None:
            run["adaptive"] = policy.report()
        if cluster is not None:
            run["processes"] = cluster.world
            run["chunks_by_rank"] = {str(r): n for r, n in sorted(cluster.chunks.items())}
        surface.attrs["last_run"] = run
        return run

    def on_subset(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        loss_k, acc_k, se_k = runner.evaluate_points(points[chunk].to(device))
        return loss_k, acc_k, finite_population(se_k, len(data), data.population)

    measure: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]] = on_subset

    def compute(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        try:
            loss_k, acc_k, se_k = measure(chunk)
            extra = {SE: se_k}
            if curvature is not None:
                extra.update(curvature_of_points(
                    model, data, loss_fn, directions.layout, perturb(base, dirs, points[chunk].to(device)),
                    curvature, device, eval_spec.batch_size))
        except Exception as e:
            if is_out_of_memory(e):
                raise out_of_memory(e, (exact_runner or runner).describe()) from None
            raise
        return loss_k, acc_k, extra

    def commit(chunk: np.ndarray, result: tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]) -> None:
        nonlocal done_count, sample_evals
        loss_k, acc_k, extra = result
        if writer is not None:
            writer.write(chunk, loss_k, acc_k, extra)
        else:
            idx = np.unravel_index(chunk, grid.shape)
            surface.loss[idx], surface.acc[idx], surface.done[idx] = loss_k, acc_k, True
            for name, values in extra.items():
                surface.extra[name][idx] = values
        done_count += len(chunk)
        sample_evals += len(chunk) * per_point
        if eval_spec.precision != "fp32" and not precision_check and check_data is not None:  # after the write
            precision_check.update(check_precision_error(
                model, directions.layout, base, dirs, check_data, loss_fn, eval_spec,
                points[chunk[:PRECISION_CHECK_POINTS]].to(device), loss_k, bn_batches))
        if progress:
            progress(done_count, total)

    def evaluate(indices: np.ndarray) -> None:
        if cluster is not None:  # chunks claimed by every rank, committed by rank 0
            cluster.evaluate(indices, step, compute, commit, [n for n in extra_names if n != INTERPOLATED])
            return
        for start in range(0, len(indices), step):
            chunk = indices[start:start + step]
            commit(chunk, compute(chunk))

    def next_round() -> np.ndarray:
        todo = policy.next_points(surface.loss, surface.done) if policy is not None else None  # rank 0's
        return todo if cluster is None else cluster.share(todo)

    def exactly(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert exact_runner is not None and population is not None
        loss_k, acc_k, se_k = exact_runner.evaluate_points(points[chunk].to(device))
        return loss_k, acc_k, finite_population(se_k, len(population), len(population))

    def with_anchors() -> None:
        nonlocal measure, check_data, sample_evals, per_point, exact_runner
        assert anchors is not None and population is not None
        if len(anchor_todo):
            exact_runner = make_runner(eval_spec, model, directions.layout, population, loss_fn,
                                       model_description or "", bn_batches)
            try:
                exact_runner.set_directions(base, dirs)
                exact_runner.expect(len(anchor_todo))
                measure, check_data, per_point = exactly, population, len(population)
                evaluate(anchor_todo)
            finally:
                anchor_note["runner"] = exact_runner.describe()
                exact_runner.close()
                exact_runner = None
        elif eval_spec.precision != "fp32":
            anchor_note["precision_check"] = "not run: the anchors (checked on the whole set) were done before"
        rows = anchors.flat()
        exact = (surface.loss.ravel()[rows], surface.acc.ravel()[rows]) if leader else None
        if cluster is not None:  # rank 0 holds the anchors' values
            exact = cluster.share(exact)
        if not len(todo):
            return
        assert exact is not None
        try:  # every rank evaluates the anchors on the subset itself: a few points, no transfer
            kept = SampleValues.along_points([runner.evaluate_point_samples(points[rows[i:i + step]].to(device))[1]
                                              for i in range(0, len(rows), step)])
        except Exception as e:
            if is_out_of_memory(e):
                raise out_of_memory(e, runner.describe()) from None
            raise
        sample_evals += len(rows) * len(data)
        control = ControlVariate(anchors, *exact, kept, len(population), unit_counts(loss_fn, [population.y]).units)

        def estimated(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            _, values = runner.evaluate_point_samples(points[chunk].to(device))
            return control.estimate(chunk, values)

        # estimates are not the runner's losses: nothing for the precision check to compare
        measure, check_data, per_point = estimated, None, len(data)
        evaluate(todo)

    try:
        if progress and leader:
            progress(done_count, total)
        if anchors is not None:
            with_anchors()
        else:
            evaluate(todo)
        if adaptive is not None:
            while len(todo := next_round()):
                evaluate(todo)
            if leader:
                _fill_adaptive(policy, surface, writer)
    except BaseException:
        if writer is not None:
            writer.abort(run_info())  # logs the partial run where it can; every flushed chunk stays
        raise
    finally:
        runner.close()
    info = run_info()
    if writer is not None:
        writer.finish(info)
    return surface


def _fill_adaptive(policy: AdaptiveGrid, surface: Surface, writer: SurfaceWriter | None) -> None:
    """Fill the points an adaptive grid left unevaluated by its interpolation and mark them."""
    acc, _ = policy.fill(surface.acc, surface.done)
    loss, interpolated = policy.fill(surface.loss, surface.done)  # last: the report describes the loss
    if writer is not None:
        writer.store_filled(loss, acc, interpolated)
    else:
        surface.loss[interpolated], surface.acc[interpolated] = loss[interpolated], acc[interpolated]
        surface.extra[INTERPOLATED] = interpolated.astype(np.float64)
    log.info("adaptive grid: %d of %d points evaluated, %d interpolated", int(surface.done.sum()),
             surface.done.size, int(interpolated.sum()))


def prepare_directions(model: nn.Module, spec: DirectionSpec, ndim: int, model2: nn.Module | None = None,
                       dir_file: str | os.PathLike | None = None, data: EvalData | None = None,
                       loss_fn: LossFn | None = None) -> Directions:
    """The directions of a surface: read from ``dir_file`` if it exists (and checked against
    ``spec``'s selection), else made from ``spec`` (and written to ``dir_file``, if given)."""
    if dir_file is not None and os.path.exists(dir_file):
        log.info("reading directions from %s", dir_file)
        return check_selection(load_directions(dir_file, model, spec.dir_type, ndim), spec, dir_file, model)
    dirs = create_directions(model, spec, ndim, model2, data=data, loss=loss_fn)
    if dir_file is not None and not save_directions(dir_file, dirs, exclusive=True):
        log.info("%s was written by another run meanwhile; using it", dir_file)
        return check_selection(load_directions(dir_file, model, spec.dir_type, ndim), spec, dir_file, model)
    return dirs


