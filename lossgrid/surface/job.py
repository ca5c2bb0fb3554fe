"""Run a :class:`~lossgrid.config.SurfaceJob`: load model and data from specs,
then :func:`~lossgrid.surface.compute.compute_surface`."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import numpy as np

from .._files import refuse_input_as_output, remove_quietly
from ..config import SurfaceJob
from ..data import EvalData, load_data
from ..engine.losses import resolve_loss
from ..errors import SurfaceFileError
from ..hessian.curvature import convexity_ratio
from ..models import load_model
from .checks import check_writable
from .compute import SE, Progress, compute_surface
from .directions import prepare_directions
from .distributed import Cluster, share_directions
from .file import Surface, stored_identity
from .repeats import KIND as REPEATS_KIND
from .repeats import repeat_paths, spread_summary, write_summary
from .sampling import SampleChoice, choose_samples, grown_samples

log = logging.getLogger(__name__)


def run_surface_job(job: SurfaceJob, progress: Progress | None = None, cluster: Cluster | None = None
                    ) -> dict[str, Any]:
    """Compute the surface described by ``job``; returns a JSON-ready summary.

    Inputs are validated (output path, model, checkpoint, data) before the
    surface file is touched, so bad input never damages an existing file.
    With ``job.repeats > 1`` every direction pair is its own surface file beside
    ``job.out`` (:mod:`lossgrid.surface.repeats`) and ``job.out`` their summary; with
    ``job.target_se`` the subset is chosen by a pilot and grown until every point
    meets it (:mod:`lossgrid.surface.sampling`). With a ``cluster`` (torchrun) every rank runs
    this; rank 0 alone writes files and its summary is the one that counts.
    """
    t0 = time.perf_counter()
    seeds = [job.directions.seed + r for r in range(job.repeats)]
    outs = [job.out] if job.repeats == 1 else repeat_paths(job.out, seeds)
    leader = cluster is None or cluster.leader
    for out in dict.fromkeys([job.out, *outs]) if leader else ():  # rank 0 alone writes files
        check_writable(out)
        refuse_input_as_output(out, input_files(job))
    if job.repeats > 1 and leader:
        _check_summary_target(job)
    model, model_desc = load_model(job.model, job.checkpoint, job.trust_checkpoint)
    model2 = None
    if job.model2 is not None:
        model2, _ = load_model(job.model, job.model2, job.trust_checkpoint)
        model_desc += f" -> {job.model2}"
    population = None
    if job.anchor_stride is None:
        data = load_data(job.data, job.samples, job.samples_seed, batch=job.batch)
    else:  # the same subset as above, and the whole set for the anchors
        population = load_data(job.data, batch=job.batch)
        data = population.subset(job.samples, job.samples_seed) if job.samples is not None else population
    bn_data = None
    if job.batchnorm.recompute and job.batchnorm.data is not None:
        bn_data = load_data(job.batchnorm.data, batch=job.batch)
    common = dict(model2=model2, dir_file=job.dir_file, loss=job.loss, eval_spec=job.evaluation,
                  overwrite=job.overwrite, progress=progress, model_description=model_desc,
                  curvature=job.curvature, batchnorm=job.batchnorm, bn_data=bn_data, adaptive=job.adaptive,
                  cluster=cluster, anchor_stride=job.anchor_stride, population=population)
    choice: SampleChoice | None = None
    runs = []
    for seed, out in zip(seeds, outs):
        spec = dataclasses.replace(job.directions, seed=seed)
        if job.target_se is None:
            surface = compute_surface(model, data, job.grid, out, direction_spec=spec, **common)
        else:
            surface, choice = _surface_at_target(job, model, data, spec, out, choice, common)
        runs.append(surface.attrs.get("last_run", {}))
    if job.repeats > 1 and leader:
        surface = write_summary(job.out, outs, seeds)
    run = runs[-1]
    summary = {**surface.summary(), "seconds": round(time.perf_counter() - t0, 3),
               "eval_seconds": round(sum(r.get("seconds") or 0 for r in runs), 4),
               "points_computed": sum(r.get("points") or 0 for r in runs),
               "points_x_samples_per_s": run.get("points_x_samples_per_s"), "samples": run.get("samples", len(data)),
               "backend": run.get("backend"), "strategy": run.get("strategy"),
               "strategy_reason": run.get("strategy_reason"), "backend_choice": run.get("backend_choice"),
               **_curvature_summary(surface), **_se_summary(surface), **spread_summary(surface)}
    if choice is not None:
        summary["target_se"] = choice.as_dict()
    if run.get("adaptive"):
        summary["adaptive"] = run["adaptive"]
    if run.get("anchors"):
        summary["anchors"] = {k: v for k, v in run["anchors"].items() if k != "runner"}
    if job.repeats > 1:
        summary["repeat_files"] = outs
    return summary


def _surface_at_target(job: SurfaceJob, model: Any, data: EvalData, spec: Any, out: str,
                       choice: SampleChoice | None, common: dict[str, Any]) -> tuple[Surface, SampleChoice]:
    """The surface on the smallest seeded subset whose points all meet ``job.target_se``: a
    pilot picks the size (or the output file's, when resuming), the run's standard errors
    confirm it or grow it (the file is then computed again on the larger subset)."""
    assert job.target_se is not None
    loss_fn, _ = resolve_loss(job.loss)
    cluster = common["cluster"]
    leader = cluster is None or cluster.leader
    directions = prepare_directions(model, spec, job.grid.ndim, common["model2"], job.dir_file, data, loss_fn) \
        if leader else None
    if cluster is not None:
        directions = share_directions(cluster, directions, model, spec.dir_type)
    population = len(data)
    if choice is None and leader:
        choice = choose_samples(model, data, job.grid, directions, loss_fn, job.target_se, job.samples_seed,
                                job.evaluation, job.anchor_stride, cubic=job.adaptive is not None)
    n = (_stored_samples(out, job.target_se, job.anchor_stride) or choice.samples) if leader and choice is not None \
        else 0
    if cluster is not None:  # rank 0 decides the subset, from its pilot and its file
        choice, n = cluster.share((choice, n) if leader else None)
    assert choice is not None
    options = dict(common)
    while True:
        subset = data.subset(n, job.samples_seed) if n < population else dataclasses.replace(data,
                                                                                            population=population)
        surface = compute_surface(model, subset, job.grid, out, directions=directions,
                                  tags={"target_se": job.target_se}, **options)
        bigger = grown_samples(_evaluated_se(surface), n, population, job.target_se) if leader else None
        if cluster is not None:
            bigger = cluster.share(bigger)
        if bigger is None:
            return surface, dataclasses.replace(choice, samples=n)
        log.info("a point's standard error exceeds %g with %d samples: computing again on %d", job.target_se, n,
                 bigger)
        n, options["overwrite"] = bigger, True  # our own file of this run, on a larger subset


def _evaluated_se(surface: Surface) -> np.ndarray:
    """The standard errors of the points evaluated (an adaptive grid's interpolated points carry an
    interpolation allowance that no larger subset would shrink)."""
    se = surface.extra.get(SE)
    return np.full(1, np.nan) if se is None else se[surface.done.astype(bool)]


def _stored_samples(out: str, target: float, anchor_stride: int | None = None) -> int | None:
    """The subset size of an existing surface file computed for the same target and anchors
    (to resume it)."""
    identity = stored_identity(out) or {}
    if identity.get("target_se") != target or not isinstance(identity.get("samples"), int) \
            or identity.get("anchor_stride") != anchor_stride:
        return None
    return int(identity["samples"])


def _check_summary_target(job: SurfaceJob) -> None:
    """A repeats run writes ``job.out`` as its summary: over an earlier summary, or -- with
    ``--overwrite`` -- over a surface file; never over anything else. A summary there now is
    removed (it is rewritten from the repeat files at the end, never left stale)."""

    if not os.path.exists(job.out):
        return
    identity = stored_identity(job.out)
    if identity is not None and identity.get("file_kind") == REPEATS_KIND:
        remove_quietly(job.out)
        return
    if identity is None:
        raise SurfaceFileError(f"Output {job.out} exists and is not a surface file",
                               "--repeats writes its summary there, which would replace the file",
                               "choose another --out; lossgrid replaces only its own surface files")
    if not job.overwrite:
        raise SurfaceFileError(f"Output {job.out} exists and is not a repeats summary",
                               "--repeats writes its summary there, which would replace the surface file",
                               "pass --overwrite to replace it, or choose another --out")


def _se_summary(surface: Any) -> dict[str, Any]:
    """The largest standard error of a point's loss."""
    se = surface.extra.get(SE)
    if se is None or not np.isfinite(se[surface.done.astype(bool)]).any():
        return {}
    return {"loss_se_max": float(np.nanmax(se[surface.done.astype(bool)]))}


def _curvature_summary(surface: Any) -> dict[str, Any]:
    """Largest and smallest eigenvalue and the largest |min/max| ratio over the points done."""
    if "max_eig" not in surface.extra:
        return {}

    done = surface.done.astype(bool)
    hi, lo = surface.extra["max_eig"][done], surface.extra["min_eig"][done]
    ratio = convexity_ratio(lo, hi)
    finite = ratio[np.isfinite(ratio)]
    return {"max_eig_max": float(np.nanmax(hi)) if hi.size else None,
            "min_eig_min": float(np.nanmin(lo)) if lo.size else None,
            "convexity_ratio_max": float(finite.max()) if finite.size else None}


def input_files(job: SurfaceJob) -> dict[str, str | None]:
    """The files a job reads, by option: none of them may be its ``--out``."""
    return {"--checkpoint": job.checkpoint, "--model2": job.model2, "--model": spec_file(job.model),
            "--data": spec_file(job.data), "--loss": spec_file(job.loss), "--batch": spec_file(job.batch),
            "--bn-data": spec_file(job.batchnorm.data),
            "--dir-file": job.dir_file if job.dir_file and os.path.exists(job.dir_file) else None}


def spec_file(spec: str | None) -> str | None:
    """The file named by a spec: ``npz:FILE``, ``path/file.py:name``; ``None`` for the others."""
    if not spec:
        return None
    if spec.startswith("npz:"):
        return spec[4:]
    target = spec.rpartition(":")[0]
    return target if target.endswith(".py") or os.sep in target else None
