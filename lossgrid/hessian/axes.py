"""The top eigenvectors of the loss Hessian as plotting directions (``--dir-kind hessian``).

Example:
    >>> import torch
    >>> from lossgrid.config import DirectionSpec
    >>> model = torch.nn.Linear(3, 2)
    >>> data = (torch.randn(64, 3), torch.arange(64) % 2)
    >>> dirs = hessian_directions(model, DirectionSpec(kind="hessian"), 2, data)
    >>> dirs.meta["kind"], len(dirs.meta["eigenvalues"])
    ('hessian', 2)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import DirectionSpec
from ..engine.directions import Directions, selected_tensors, selection_meta
from ..engine.params import ParamLayout, perturbed_tensors
from ..errors import DirectionError
from ..kernels import normalize_direction
from .operator import hessian_operator, lanczos_eigs


def hessian_directions(model: nn.Module, spec: DirectionSpec, ndim: int, data: Any,
                       loss: Any = "cross_entropy") -> Directions:
    """The top ``ndim`` eigenvectors of the Hessian of the mean loss over ``data`` as
    directions (x: the largest eigenvalue, y: the second), seeded Lanczos.

    Eigenvectors are over the parameters; for ``states`` directions the buffers
    (BatchNorm statistics) get zero. Each eigenvector then goes through the same
    per-tensor rules as a random direction: ``xnorm``/``ynorm`` (``filter``
    rescales it filter by filter to the weights' norms; ``none`` keeps the unit
    eigenvector) and ``xignore``/``yignore`` (``biasbn`` zeroes 1-D tensors). The
    eigenvalues are kept in ``meta["eigenvalues"]`` (and in direction files).
    """
    layout = ParamLayout.from_model(model, spec.dir_type)
    weights = perturbed_tensors(model, spec.dir_type)
    device = next(iter(weights.values())).device
    moving = selected_tensors(model, spec) if spec.selects else None
    params = None if moving is None else tuple(n for n, _ in model.named_parameters() if n in set(moving))
    if params == ():
        raise DirectionError("Hessian directions need at least one selected parameter",
                             "the selection keeps only buffers", "widen --params or --exclude")
    op = hessian_operator(model, data, loss, device=str(device), params=params)
    eig = lanczos_eigs(op, k=ndim, which="top", seed=spec.seed)
    sizes = dict(zip(op.names, (int(weights[n].numel()) for n in op.names)))
    rules = [(spec.xnorm, spec.xignore), (spec.y_norm, spec.y_ignore)]
    made = []
    for vector, (norm, ignore) in zip(eig.vectors, rules):
        pieces = dict(zip(op.names, torch.split(vector.to(device), list(sizes.values()))))
        direction = []
        for name, w in weights.items():
            d = pieces[name].view(w.shape).to(w.dtype) if name in pieces else torch.zeros_like(w)
            if w.dim() <= 1 and ignore == "biasbn":
                d = torch.zeros_like(w)
            elif name in pieces:
                d = normalize_direction(d, w, norm)
            direction.append(d)
        made.append(direction)
    meta: dict[str, Any] = {"dir_type": spec.dir_type, "seed": spec.seed, "kind": "hessian", "xnorm": spec.xnorm,
                            "xignore": spec.xignore, "eigenvalues": [float(v) for v in eig.values],
                            **selection_meta(spec)}
    if ndim == 2:
        meta.update(ynorm=spec.y_norm, yignore=spec.y_ignore)
    return Directions(layout, made[0], made[1] if ndim == 2 else None, meta)
