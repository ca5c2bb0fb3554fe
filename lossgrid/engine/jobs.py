"""Run a :class:`~lossgrid.config.SurfaceJob`: load model and data from specs,
then :func:`~lossgrid.engine.surface.compute_surface`."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from .._files import refuse_input_as_output
from ..config import SurfaceJob
from ..data import load_data
from ..models import load_model
from .surface import Progress, check_writable, compute_surface


def run_surface_job(job: SurfaceJob, progress: Progress | None = None) -> dict[str, Any]:
    """Compute the surface described by ``job``; returns a JSON-ready summary.

    Inputs are validated (output path, model, checkpoint, data) before the
    surface file is touched, so bad input never damages an existing file.
    """
    t0 = time.perf_counter()
    check_writable(job.out)
    refuse_input_as_output(job.out, input_files(job))
    model, model_desc = load_model(job.model, job.checkpoint, job.trust_checkpoint)
    model2 = None
    if job.model2 is not None:
        model2, _ = load_model(job.model, job.model2, job.trust_checkpoint)
        model_desc += f" -> {job.model2}"
    data = load_data(job.data, job.samples, job.samples_seed, batch=job.batch)
    bn_data = None
    if job.batchnorm.recompute and job.batchnorm.data is not None:
        bn_data = load_data(job.batchnorm.data, batch=job.batch)
    surface = compute_surface(model, data, job.grid, job.out, direction_spec=job.directions, model2=model2,
                              dir_file=job.dir_file, loss=job.loss, eval_spec=job.evaluation,
                              overwrite=job.overwrite, progress=progress, model_description=model_desc,
                              curvature=job.curvature, batchnorm=job.batchnorm, bn_data=bn_data)
    run = surface.attrs.get("last_run", {})
    return {**surface.summary(), "seconds": round(time.perf_counter() - t0, 3),
            "eval_seconds": run.get("seconds"), "points_computed": run.get("points"),
            "points_x_samples_per_s": run.get("points_x_samples_per_s"), "samples": len(data),
            "backend": run.get("backend"), "strategy": run.get("strategy"),
            "strategy_reason": run.get("strategy_reason"), "backend_choice": run.get("backend_choice"),
            **_curvature_summary(surface)}


def _curvature_summary(surface: Any) -> dict[str, Any]:
    """Largest and smallest eigenvalue and the largest |min/max| ratio over the points done."""
    if "max_eig" not in surface.extra:
        return {}
    from .curvature import convexity_ratio

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
