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

from typing import Any

from torch import nn

from ..config import DirectionSpec
from ..engine.directions import Directions, gaussian_directions
from ..errors import DirectionError
from ..hessian.axes import hessian_directions


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
