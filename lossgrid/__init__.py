"""lossgrid: fast, filter-normalized loss landscapes of neural networks.

The public API is re-exported here lazily, so ``import lossgrid`` stays light
(no torch, h5py or matplotlib until a name is used).

Example:
    >>> import lossgrid
    >>> data = lossgrid.load_data("digits", samples=64)
    >>> model, _ = lossgrid.load_model("lossgrid.zoo:mlp_digits")
    >>> surf = lossgrid.compute_surface(model, data, lossgrid.GridSpec.parse("-1:1:3"))
    >>> surf.summary()["points_done"]
    3
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Axis": "lossgrid.config",
    "GridSpec": "lossgrid.config",
    "DirectionSpec": "lossgrid.config",
    "EvalSpec": "lossgrid.config",
    "LossgridError": "lossgrid.errors",
    "ConfigError": "lossgrid.errors",
    "ModelLoadError": "lossgrid.errors",
    "DataLoadError": "lossgrid.errors",
    "DirectionError": "lossgrid.errors",
    "SurfaceFileError": "lossgrid.errors",
    "EvaluationError": "lossgrid.errors",
    "MissingBackendError": "lossgrid.errors",
    "ExportError": "lossgrid.errors",
    "ResourceError": "lossgrid.errors",
    "EvalData": "lossgrid.data",
    "load_data": "lossgrid.data",
    "load_model": "lossgrid.models",
    "Directions": "lossgrid.engine.directions",
    "create_directions": "lossgrid.surface.directions",
    "load_directions": "lossgrid.engine.directions",
    "save_directions": "lossgrid.engine.directions",
    "compute_surface": "lossgrid.surface.compute",
    "Surface": "lossgrid.surface.file",
    "load_surface": "lossgrid.surface.file",
    "plot_surface": "lossgrid.plot",
    "CurvatureSpec": "lossgrid.config",
    "hessian_operator": "lossgrid.hessian.operator",
    "lanczos_eigs": "lossgrid.hessian.operator",
    "hessian_trace": "lossgrid.hessian.operator",
    "spectral_density": "lossgrid.hessian.report",
    "audit": "lossgrid.audits.report",
    "compute_trajectory": "lossgrid.trajectory.compute",
    "load_trajectory": "lossgrid.trajectory.compute",
    "compute_evolution": "lossgrid.evolve.compute",
    "load_evolution": "lossgrid.evolve.compute",
    "run_bench": "lossgrid.bench.run",
    "Tracker": "lossgrid.train.track",
    "train_model": "lossgrid.train.recipe",
    "run_gallery": "lossgrid.gallery.build",
    "AdaptiveSpec": "lossgrid.config",
    "BatchNormSpec": "lossgrid.config",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lossgrid' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
