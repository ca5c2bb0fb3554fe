"""The axes of a run: seeded Gaussian directions, the interpolation towards a second model,
or the top eigenvectors of the loss Hessian (``kind="hessian"``).

Example:
    >>> import torch
    >>> from lossgrid.config import DirectionSpec
    >>> model = torch.nn.Linear(3, 2)
    >>> dirs = create_directions(model, DirectionSpec(seed=1), ndim=2)
    >>> [tuple(t.shape) for t in dirs.x]
    [(2, 3), (2,)]
"""

from __future__ import annotations

import logging
import os
from typing import Any

from torch import nn

from ..config import DirectionSpec
from ..data import EvalData
from ..engine.directions import Directions, check_selection, gaussian_directions, load_directions, save_directions
from ..engine.losses import LossFn
from ..errors import DirectionError
from ..hessian.axes import hessian_directions

log = logging.getLogger(__name__)

def create_directions(model: nn.Module, spec: DirectionSpec = DirectionSpec(), ndim: int = 2,
                      model2: nn.Module | None = None, data: Any = None, loss: Any = "cross_entropy") -> Directions:
    """Make the plotting directions for ``model``.

    Args:
        model: the trained model (the grid's origin), on its device.
        spec: direction settings (type, norms, ignore, seed, kind).
        ndim: 1 for a curve, 2 for a surface.
        model2: if given, the x direction is ``theta2 - theta1`` unnormalized, so
            that x=0 is ``model`` and x=1 is ``model2``.
        data, loss: the evaluation set and loss whose Hessian gives the directions
            of ``spec.kind == "hessian"`` (unused otherwise).
    """
    if spec.kind != "hessian":
        return gaussian_directions(model, spec, ndim, model2)
    if model2 is not None:
        raise DirectionError("Hessian directions cannot be combined with an interpolation (--model2)",
                             hint="drop --model2, or use --dir-kind random")
    if data is None:
        raise DirectionError("Hessian directions need the evaluation data",
                             hint="pass data= to create_directions (the CLI does this)")
    return hessian_directions(model, spec, ndim, data, loss)


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
