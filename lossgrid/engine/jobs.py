"""Run a :class:`~lossgrid.config.SurfaceJob`: load model and data from specs,
then :func:`~lossgrid.engine.surface.compute_surface`."""

from __future__ import annotations

import time
from typing import Any

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
    check_writable(job.out, job.overwrite)
    model, model_desc = load_model(job.model, job.checkpoint)
    model2 = None
    if job.model2 is not None:
        if job.model is not None:
            model2, _ = load_model(job.model, job.model2)
        else:
            model2, _ = load_model(None, job.model2)
        model_desc += f" -> {job.model2}"
    data = load_data(job.data, job.samples, job.samples_seed)
    surface = compute_surface(model, data, job.grid, job.out, direction_spec=job.directions, model2=model2,
                              dir_file=job.dir_file, loss=job.loss, eval_spec=job.evaluation,
                              overwrite=job.overwrite, progress=progress, model_description=model_desc)
    run = surface.attrs.get("last_run", {})
    return {**surface.summary(), "seconds": round(time.perf_counter() - t0, 3),
            "eval_seconds": run.get("seconds"), "points_computed": run.get("points"),
            "points_x_samples_per_s": run.get("points_x_samples_per_s"), "samples": len(data),
            "backend": run.get("backend"), "strategy": run.get("strategy"),
            "strategy_reason": run.get("strategy_reason"), "backend_choice": run.get("backend_choice")}
