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
import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from .._files import check_output_path, same_file
from ..config import AdaptiveSpec, BatchNormSpec, CurvatureSpec, DirectionSpec, EvalSpec, GridSpec
from ..data import EvalData, as_eval_data
from ..errors import ConfigError, MissingBackendError, ResourceError, SurfaceFileError, is_out_of_memory
from ..inputs import tensors
from ..kernels import perturb
from . import preflight
from .adaptive import AdaptiveGrid
from .batchnorm import check_recompute, recompute_batches
from .batchnorm import identity as bn_identity
from .curvature import DATASETS as CURVATURE_DATASETS
from .curvature import curvature_of_points
from .directions import (
    SELECTION_KEYS,
    Directions,
    check_selection,
    create_directions,
    load_directions,
    same_selection,
    save_directions,
)
from .distributed import Cluster, share_directions
from .losses import LossFn, finite_population, resolve_loss
from .params import ParamLayout, perturbed_tensors
from .precision import precision_error
from .runners import TorchRunner, make_runner
from .surface_file import Surface, SurfaceWriter, stored_identity

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
DEVICE_TYPES = ("cpu", "cuda")
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
                    adaptive: AdaptiveSpec | None = None, cluster: Cluster | None = None) -> Surface:
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
            (``max_eig``/``min_eig``, :mod:`lossgrid.engine.curvature`); costs
            ``curvature.iters`` Hessian-vector products over the data per point.
        batchnorm: ``eval`` (running statistics as stored) or ``recompute`` (re-estimated
            at every point from batches of ``bn_data``, default ``data``;
            :mod:`lossgrid.engine.batchnorm`). Stored in the file.
        bn_data: the set whose batches re-estimate BatchNorm statistics (``recompute``).
        tags: settings of the calling job that decide the values (``target_se``), stored in
            the file's identity.
        adaptive: evaluate a coarse grid and refine only where interpolation is measured to be
            off (:mod:`lossgrid.engine.adaptive`); the other points are filled by interpolation
            and marked in the ``interpolated`` dataset (they are not ``done``).
        cluster: this process's place in a sharded job (:mod:`lossgrid.engine.distributed`):
            every rank evaluates chunks it claims; rank 0 makes the directions, holds ``out``
            and writes every result. ``None``: this process alone.
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
    model = model.to(device)
    if model2 is not None:
        model2 = model2.to(device)
    preflight.probe(model, data, loss_fn, device)
    model_fp, data_fp = _fingerprint(t for t in model.state_dict().values()), data_fingerprint(data)
    if cluster is not None:
        cluster.chunks.clear()
        cluster.check_same(model_fp, data_fp)
    if directions is None and direction_spec.kind == "hessian" and dir_file is None and out_path is not None and leader:
        # Hessian eigenvectors differ in the last bits between thread counts and devices: resume on the
        # directions the file holds rather than on new ones that would not match its fingerprint
        directions = _stored_hessian_directions(out_path, model, direction_spec, grid.ndim, model_fp, data_fp,
                                                loss_desc)
    if directions is None and leader:
        directions = prepare_directions(model, direction_spec, grid.ndim, model2, dir_file, data, loss_fn)
    if cluster is not None and not given:  # every rank evaluates rank 0's directions, bit for bit
        directions = share_directions(cluster, directions, model, direction_spec.dir_type)
    if directions.ndim != grid.ndim:
        raise ConfigError(f"The grid is {grid.ndim}D but {directions.ndim} direction(s) were given",
                          hint="give --y for two directions, or drop it for one")
    preflight.check_finite_directions(directions)
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
    runner = make_runner(eval_spec, model, directions.layout, data, loss_fn, model_description or "", bn_batches)

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
    # auto runners size their timing to the job (an adaptive one: about twice its first round)
    runner.expect(len(todo) if policy is None else min(total - done_count, 2 * len(todo)))
    # with curvature every point costs many passes over the data: write each one as soon as it is done
    step = 1 if curvature is not None else runner.points_per_call
    precision_check: dict[str, Any] = {}
    t0 = time.perf_counter()

    def run_info() -> dict[str, Any]:
        seconds = time.perf_counter() - t0
        run = {**runner.describe(), "seconds": round(seconds, 4), "points": done_count - start_done,
               "samples": len(data)}
        run["points_x_samples_per_s"] = round(run["points"] * len(data) / seconds, 1) if seconds > 0 else None
        if precision_check:
            run["precision_check"] = precision_check
        if policy is not None:
            run["adaptive"] = policy.report()
        if cluster is not None:
            run["processes"] = cluster.world
            run["chunks_by_rank"] = {str(r): n for r, n in sorted(cluster.chunks.items())}
        surface.attrs["last_run"] = run
        return run

    def compute(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        try:
            loss_k, acc_k, se_k = runner.evaluate_points(points[chunk].to(device))
            extra = {SE: finite_population(se_k, len(data), data.population)}
            if curvature is not None:
                extra.update(curvature_of_points(
                    model, data, loss_fn, directions.layout, perturb(base, dirs, points[chunk].to(device)),
                    curvature, device, eval_spec.batch_size))
        except Exception as e:
            if is_out_of_memory(e):
                raise _out_of_memory(e, runner.describe()) from None
            raise
        return loss_k, acc_k, extra

    def commit(chunk: np.ndarray, result: tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]) -> None:
        nonlocal done_count
        loss_k, acc_k, extra = result
        if writer is not None:
            writer.write(chunk, loss_k, acc_k, extra)
        else:
            idx = np.unravel_index(chunk, grid.shape)
            surface.loss[idx], surface.acc[idx], surface.done[idx] = loss_k, acc_k, True
            for name, values in extra.items():
                surface.extra[name][idx] = values
        done_count += len(chunk)
        if eval_spec.precision != "fp32" and not precision_check:  # after the write: never costs a point
            precision_check.update(_precision_check(
                model, directions.layout, base, dirs, data, loss_fn, eval_spec,
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

    try:
        if progress and leader:
            progress(done_count, total)
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


def _precision_check(model: nn.Module, layout: ParamLayout, base: torch.Tensor, dirs: torch.Tensor, data: EvalData,
                     loss_fn: LossFn, eval_spec: EvalSpec, coeffs: torch.Tensor, loss_k: np.ndarray,
                     bn_batches: list[Any] | None = None) -> dict[str, Any]:
    """Loss error of the run's precision against IEEE fp32 (the per-point torch loop)
    at the first points of a run: stored with the run, never hidden."""
    reference = None
    try:
        reference = TorchRunner(model, layout, data.x, data.y, loss_fn, batch_size=eval_spec.batch_size,
                                strategy="loop", device=base.device, precision="fp32", bn_batches=bn_batches)
        reference.set_directions(base, dirs)
        want = reference.evaluate_points(coeffs).loss
    except Exception as e:  # a check must not end a run whose points are fine (e.g. no memory for a 2nd copy)
        log.warning("could not measure the %s loss error against fp32: %s", eval_spec.precision, e)
        return {"precision": eval_spec.precision, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    finally:
        if reference is not None:
            reference.close()
    check = {"precision": eval_spec.precision, **precision_error(loss_k[:len(want)], want)}
    log.info("precision %s: max relative loss error %.3g against fp32 at %d point(s)", eval_spec.precision,
             check["max_rel_loss_error"], check["points"])
    return check


def _out_of_memory(e: BaseException, described: dict[str, Any]) -> ResourceError:
    k, batch = described.get("points_per_call"), described.get("batch_size")
    what = f"Out of memory while evaluating {k} grid point(s) per call"
    lower = f"lower --points-per-call (now {k})"
    if batch:
        what += f" in batches of {batch} samples"
        lower += f" or --batch-size (now {batch})"
    reason = str(e).strip().splitlines()[0] if str(e).strip() else "no memory left"
    return ResourceError(what, f"{type(e).__name__}: {reason}",
                         f"{lower}; the points done so far are saved: the same command with a lower setting resumes")


def resolve_device(name: str) -> torch.device:
    """A torch device that exists on this machine, or a :class:`ConfigError`."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"Unknown device {name!r}", str(e), "pass --device cpu, cuda or cuda:N") from None
    if device.type not in DEVICE_TYPES:
        raise ConfigError(f"Device {name!r} cannot evaluate a surface",
                          f"lossgrid runs on {', '.join(DEVICE_TYPES)} devices; {device.type} holds no data",
                          "pass --device cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None
               else "torch.cuda.is_available() is False: no GPU or no NVIDIA driver is visible")
        raise MissingBackendError(f"Device {name} was requested but no CUDA GPU is usable here", why,
                                  "pass --device cpu, or run on a machine with an NVIDIA GPU and driver, a CUDA "
                                  'build of torch (see pytorch.org) and, for the CUDA kernels, pip install '
                                  '"lossgrid[gpu]"')
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"Device {name} does not exist", f"{torch.cuda.device_count()} GPU(s) visible",
                          "pick an index below the GPU count")
    return device


def check_writable(path: str, dir_file: str | os.PathLike | None = None, what: str = "surface file") -> None:
    """Fail early (before any work) if ``path`` cannot be written, or is the ``dir_file`` it
    would be computed on."""
    check_output_path(path, what, SurfaceFileError)
    if dir_file is not None and same_file(path, dir_file):
        raise ConfigError(f"--out {path} is the same file as --dir-file {os.fspath(dir_file)}",
                          f"the {what} would replace the directions it is computed on",
                          f"choose another --out (the {what} stores its directions anyway)")


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


def _stored_hessian_directions(path: str, model: nn.Module, spec: DirectionSpec, ndim: int, model_fp: str,
                               data_fp: str, loss_desc: str) -> Directions | None:
    """The Hessian directions an existing surface file of the same model, data and direction
    settings holds, or ``None`` (no such file: the caller computes them)."""
    stored = stored_identity(path)
    if not stored:
        return None
    try:
        wanted = {"model_fingerprint": model_fp, "data_fingerprint": data_fp, "loss": loss_desc, "kind": "hessian",
                  "dir_type": spec.dir_type, "xnorm": spec.xnorm, "xignore": spec.xignore,
                  "ynorm": spec.y_norm if ndim == 2 else None, "yignore": spec.y_ignore if ndim == 2 else None}
        if any(stored.get(k) != v for k, v in wanted.items()):
            return None
        dirs = load_directions(path, model, spec.dir_type, ndim)
    except Exception as e:  # unreadable or foreign: the surface writer reports it properly
        log.info("not reusing the directions of %s: %s", path, e)
        return None
    if dirs.meta.get("kind") != "hessian" or int(dirs.meta.get("seed", -1)) != spec.seed:
        return None
    if not same_selection(model, dirs, spec):  # made for other tensors: this run computes its own
        return None
    log.info("resuming on the Hessian directions stored in %s", path)
    return dirs


def data_fingerprint(data: EvalData) -> str:
    """A hash of an evaluation set's values; for several or named inputs also of their
    structure (which argument is which), so that swapping two inputs is a different set."""
    from ..inputs import is_tensor, named_tensors

    digest = _fingerprint([*tensors(data.x), data.y])
    if is_tensor(data.x):  # as before inputs could be tuples or dicts: such files stay resumable
        return digest
    names = [name for name, _ in named_tensors(data.x)]
    return f"{digest}:{hashlib.blake2b(repr(names).encode(), digest_size=4).hexdigest()}"


def _fingerprint(tensors: Any) -> str:
    h = hashlib.blake2b(digest_size=8)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
