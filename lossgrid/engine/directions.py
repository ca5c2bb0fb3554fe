"""Plotting directions: random Gaussian with filter-wise normalization or the interpolation
between two checkpoints (the Hessian's eigenvectors are made in :mod:`lossgrid.surface.directions`);
saved to and loaded from HDF5, and checked for finite values.

Example:
    >>> import torch
    >>> from lossgrid.config import DirectionSpec
    >>> model = torch.nn.Linear(3, 2)
    >>> dirs = gaussian_directions(model, DirectionSpec(seed=1), ndim=2)
    >>> [tuple(t.shape) for t in dirs.x]
    [(2, 3), (2,)]
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import hdf5_image, input_file_problem, os_reason, publish_bytes
from ..config import DIR_TYPES, DirectionSpec
from ..errors import ConfigError, DirectionError
from ..kernels import normalize_direction
from .params import ParamLayout, perturbed_tensors, select_names

log = logging.getLogger(__name__)

#: attributes read back with the directions (``explained_variance_ratio``: the PCA plane of a trajectory)
META_KEYS = ("dir_type", "seed", "kind", "xnorm", "xignore", "ynorm", "yignore", "eigenvalues",
             "explained_variance_ratio", "params", "exclude", "trainable_only")
#: what to do with a file that does not hold directions (never: delete it; it may be a file of the user's)
NEW_DIRECTIONS_HINT = ("pass a direction file written by lossgrid (or the reference code), or a --dir-file path "
                       "that does not exist yet to make new directions there")
#: the direction settings that say which tensors move (stored only when set)
SELECTION_KEYS = ("params", "exclude", "trainable_only")


@dataclass
class Directions:
    """One (``y is None``) or two directions over the tensors of ``layout``."""

    layout: ParamLayout
    x: list[torch.Tensor]
    y: list[torch.Tensor] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    def flat(self) -> torch.Tensor:
        """Directions packed as ``[D, P]`` for :func:`lossgrid.kernels.perturb`."""
        rows = [self.layout.flatten(self.x)]
        if self.y is not None:
            rows.append(self.layout.flatten(self.y))
        return torch.stack(rows)

    def fingerprint(self) -> str:
        """A hash of the direction values, to tell whether two surfaces share axes."""
        import hashlib

        h = hashlib.sha256()
        h.update(json.dumps([self.layout.names, self.layout.shapes]).encode())
        h.update(self.flat().detach().cpu().double().numpy().tobytes())
        return h.hexdigest()[:16]


def random_direction(weights: dict[str, torch.Tensor], norm: str, ignore: str,
                     generator: torch.Generator) -> list[torch.Tensor]:
    """One seeded Gaussian direction, normalized tensor by tensor.

    Tensors of at most one dimension (biases, BN affine and running stats) get a
    zero direction when ``ignore == "biasbn"``; otherwise they are normalized as
    scalar filters. A value is drawn for every tensor either way, so the random
    stream (and hence the direction) does not depend on ``norm`` or ``ignore``.

    ``generator`` is a CPU generator: values are drawn and normalized on the CPU, then
    moved to each tensor's device, so that a seed gives the same directions, bit for
    bit, whatever device the model is on (CUDA generators draw other streams).
    """
    out = []
    for w in weights.values():
        d = torch.randn(w.shape, generator=generator, dtype=w.dtype)
        if w.dim() <= 1 and ignore == "biasbn":
            d.zero_()
        else:
            d = normalize_direction(d, w.detach().cpu(), norm)
        out.append(d.to(w.device))
    return out


def _warn_fixed_statistics(model: nn.Module, model2: nn.Module) -> None:
    """Warn when the two models' floating-point buffers (BatchNorm's running statistics) differ: a ``weights``
    interpolation moves the parameters only, so x=1 is the second model's weights with the first model's
    statistics, not the second model (the reference implementation's ``dir_type weights`` does the same)."""
    params = {n for n, _ in model.named_parameters()}
    theirs = perturbed_tensors(model2, "states")
    differ = [n for n, t in perturbed_tensors(model, "states").items() if n not in params and n in theirs
              and not torch.equal(t, theirs[n].to(t.device, t.dtype))]
    if differ:
        log.warning("%d buffer(s) differ between the two models (%s%s) and stay the first model's along the whole "
                    "line (--dir-type weights moves parameters only): x=1 is the second model's weights with the "
                    "first model's running statistics, not the second model. Pass --dir-type states to move them "
                    "too, or --bn recompute to re-estimate them at every point", len(differ), ", ".join(differ[:3]),
                    ", ..." if len(differ) > 3 else "")


def gaussian_directions(model: nn.Module, spec: DirectionSpec = DirectionSpec(), ndim: int = 2,
                        model2: nn.Module | None = None) -> Directions:
    """Seeded Gaussian directions for ``model``, normalized by ``spec`` (``spec.kind`` is not read:
    :func:`lossgrid.create_directions` dispatches the Hessian kind).

    Args:
        model: the trained model (the grid's origin), on its device.
        spec: direction settings (type, norms, ignore, seed, selection).
        ndim: 1 for a curve, 2 for a surface.
        model2: if given, the x direction is ``theta2 - theta1`` unnormalized, so
            that x=0 is ``model`` and x=1 is ``model2``.
    """
    layout = ParamLayout.from_model(model, spec.dir_type)
    weights = perturbed_tensors(model, spec.dir_type)
    gen = torch.Generator().manual_seed(spec.seed)  # on the CPU whatever the model's device (random_direction)
    meta: dict[str, Any] = {"dir_type": spec.dir_type, "seed": spec.seed}
    if model2 is not None:
        other = perturbed_tensors(model2, spec.dir_type)
        mismatch = [n for n in weights if n not in other or other[n].shape != weights[n].shape]
        if mismatch or len(other) != len(weights):
            extra = [n for n in other if n not in weights]
            raise DirectionError(
                "The second model does not match the first",
                f"mismatched tensors: {', '.join((mismatch + extra)[:5])}",
                "interpolate between two checkpoints of the same architecture",
            )
        x = [other[n].to(w.device, w.dtype) - w for n, w in weights.items()]
        meta.update(kind="interpolation", xnorm="none", xignore="none")
        if spec.dir_type == "weights":
            _warn_fixed_statistics(model, model2)
    else:
        x = random_direction(weights, spec.xnorm, spec.xignore, gen)
        meta.update(kind="random", xnorm=spec.xnorm, xignore=spec.xignore)
    y = None
    if ndim == 2:
        y = random_direction(weights, spec.y_norm, spec.y_ignore, gen)
        meta.update(ynorm=spec.y_norm, yignore=spec.y_ignore)
    if spec.selects:  # drawn for every tensor above: the moving ones get the values they would get anyway
        if model2 is not None:
            raise DirectionError("--params/--exclude/--trainable-only cannot be combined with an interpolation",
                                 "x=1 would no longer be the second model", "drop the selection or --model2")
        moving = set(selected_tensors(model, spec))
        for direction in (x, y):
            for name, d in zip(weights, direction or []):
                if name not in moving:
                    d.zero_()
        if not any(bool(d.any()) for direction in (x, y) for d in direction or []):
            raise DirectionError(f"The selected tensors ({', '.join(sorted(moving)[:5])}) get zero directions",
                                 "with --xignore biasbn every tensor of at most one dimension (biases, norm "
                                 "weights) gets a zero direction, so the surface would be flat",
                                 "select weight matrices or filters too, or pass --xignore none")
        meta.update(selection_meta(spec))
    return Directions(layout, x, y, meta)


def check_finite_directions(directions: Directions) -> None:
    """Refuse NaN or infinite direction values (a corrupt direction file, an overflowing norm)."""
    for axis, tensors in (("x", directions.x), ("y", directions.y)):
        for name, t in zip(directions.layout.names, tensors or []):
            bad = int(t.numel() - torch.isfinite(t).sum().item()) if torch.is_floating_point(t) else 0
            if bad:
                raise DirectionError(f"The {axis} direction holds {bad} NaN or infinite value(s) in {name}",
                                     "the surface along it would be NaN everywhere",
                                     "make new directions (a --dir-file path that does not exist yet), or check "
                                     "the checkpoints of an interpolation")


def selected_tensors(model: nn.Module, spec: DirectionSpec) -> tuple[str, ...]:
    """The tensors of ``model`` that directions of ``spec`` move (``--params``, ``--exclude``,
    ``--trainable-only``), in layout order."""
    names = list(perturbed_tensors(model, spec.dir_type))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad} if spec.trainable_only else set()
    return select_names(names, spec.params, spec.exclude, frozen, aliases=tensor_aliases(model))


def tensor_aliases(model: nn.Module) -> dict[str, str]:
    """Other names of tied tensors (``head.weight`` sharing ``embed.weight``) -> the name the
    layout uses (the first in the state_dict), so that globs may name either."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            aliases[name] = first[id(t)]
        else:
            first[id(t)] = name
    return aliases


def check_selection(dirs: Directions, spec: DirectionSpec, source: str | os.PathLike,
                    model: nn.Module) -> Directions:
    """``dirs`` read from ``source`` if they move the tensors ``spec`` selects on ``model``;
    else a :class:`DirectionError` (a direction file made for another selection)."""
    if not same_selection(model, dirs, spec):
        stored = {k: dirs.meta.get(k) for k in SELECTION_KEYS if dirs.meta.get(k) not in (None, False)}
        raise DirectionError(f"The directions in {os.fspath(source)} were made for another selection of tensors",
                             f"they were made with {stored or 'every tensor'}, this run asks for "
                             f"{selection_meta(spec) or 'every tensor'}",
                             "pass the same --params/--exclude/--trainable-only as when the file was written, "
                             "or another --dir-file")
    return dirs


def same_selection(model: nn.Module, dirs: Directions, spec: DirectionSpec) -> bool:
    """Whether ``dirs`` (by their stored selection settings) move the same tensors of ``model``
    as ``spec`` selects (equal sets, however the globs are spelled)."""
    stored = {k: dirs.meta.get(k) for k in SELECTION_KEYS if dirs.meta.get(k) not in (None, False)}
    if stored == selection_meta(spec):
        return True
    made = DirectionSpec(dir_type=dirs.layout.dir_type, params=stored.get("params"), exclude=stored.get("exclude"),
                         trainable_only=bool(stored.get("trainable_only", False)))
    try:
        return set(selected_tensors(model, made)) == set(selected_tensors(model, spec))
    except ConfigError:
        return False


def selection_meta(spec: DirectionSpec) -> dict[str, Any]:
    """The selection settings of ``spec`` that are set, as stored with the directions."""
    values = {"params": spec.params, "exclude": spec.exclude, "trainable_only": spec.trainable_only or None}
    return {k: v for k, v in values.items() if v is not None}


def save_directions(path: str | os.PathLike, dirs: Directions, exclusive: bool = False) -> bool:
    """Write directions to HDF5: groups ``xdirection``/``ydirection``, datasets
    ``"0"``, ``"1"``, ... in layout order (as the reference implementation), with
    the tensor names in the group attribute ``names``. Written to a temporary
    file and moved into place, so an existing file is never left half-written.

    With ``exclusive``, an existing file is kept (another run may have just
    written it) and ``False`` is returned; otherwise ``True``.
    """
    path = os.fspath(path)
    try:
        return publish_bytes(path, hdf5_image(lambda f: write_direction_groups(f, dirs)), exclusive)
    except OSError as e:
        raise DirectionError(f"Cannot write direction file {path}", os_reason(e),
                             "free some space or choose a writable --dir-file path") from None


def write_direction_groups(f: Any, dirs: Directions) -> None:
    """Write ``dirs`` into an open HDF5 file or group (direction or surface file)."""
    for key, value in dirs.meta.items():
        f.attrs[key] = value
    for gname, tensors in (("xdirection", dirs.x), ("ydirection", dirs.y)):
        if tensors is None:
            continue
        g = f.create_group(gname)
        g.attrs["names"] = list(dirs.layout.names)
        for i, t in enumerate(tensors):
            g.create_dataset(str(i), data=t.detach().cpu().numpy())


def load_directions(path: str | os.PathLike, model: nn.Module, dir_type: str | None = None,
                    ndim: int | None = None) -> Directions:
    """Read a direction file and check it against ``model`` (names and shapes).

    ``dir_type`` defaults to the one stored in the file; ``ndim`` (1 or 2) picks
    how many directions to use (a 2D file can drive a 1D curve).
    """
    import h5py

    problem = input_file_problem(path)
    if problem:
        raise DirectionError(f"Cannot read direction file {path}", problem, "check the --dir-file path")
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise DirectionError(f"Cannot read direction file {path}", str(e).splitlines()[0] if str(e) else None,
                             NEW_DIRECTIONS_HINT) from None
    with f:
        meta = {k: (v.item() if isinstance(v, np.generic) else v.tolist() if isinstance(v, np.ndarray) else v)
                for k, v in f.attrs.items() if k in META_KEYS}
        stored_type = meta.get("dir_type", dir_type or "weights")
        if stored_type not in DIR_TYPES:
            raise DirectionError(f"Direction file {path} has dir_type {stored_type!r}",
                                 f"expected one of {', '.join(DIR_TYPES)}", "pass a file written by lossgrid")
        if dir_type is not None and dir_type != stored_type:
            raise DirectionError(f"Direction file {path} holds '{stored_type}' directions, not '{dir_type}'",
                                 hint=f"pass --dir-type {stored_type} or another --dir-file")
        layout = ParamLayout.from_model(model, stored_type)
        weights = perturbed_tensors(model, stored_type)
        if not isinstance(f.get("xdirection"), h5py.Group):
            raise DirectionError(f"Direction file {path} has no 'xdirection' group",
                                 hint=NEW_DIRECTIONS_HINT)
        have_y = isinstance(f.get("ydirection"), h5py.Group)
        if ndim == 2 and not have_y:
            raise DirectionError(f"Direction file {path} holds one direction but a 2D grid needs two",
                                 hint="drop --y, or use another --dir-file")
        groups = ["xdirection"] + (["ydirection"] if (ndim == 2 or (ndim is None and have_y)) else [])
        loaded = [_read_group(f[g], g, layout, weights, path) for g in groups]
    return Directions(layout, loaded[0], loaded[1] if len(loaded) > 1 else None, meta)


def _read_group(group: Any, gname: str, layout: ParamLayout, weights: dict[str, torch.Tensor],
                path: Any) -> list[torch.Tensor]:
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in np.atleast_1d(group.attrs.get("names", []))]
    names = names or list(layout.names)
    if len(group) != len(layout.names) or names != list(layout.names):
        diff = [f"{a} != {b}" for a, b in zip(names, layout.names) if a != b][:3]
        raise DirectionError(
            f"Direction file {path} does not match the model",
            f"it has {len(group)} tensors, the model {len(layout.names)}"
            + (f"; first differences: {', '.join(diff)}" if diff else ""),
            "use the model the directions were made for, or another --dir-file",
        )
    out = []
    for i, (name, w) in enumerate(weights.items()):
        where = f"Direction file {path}: dataset {gname}/{i} ({name})"
        if str(i) not in group:
            found = ", ".join(sorted(group)[:6])
            raise DirectionError(f"{where} is missing", f"the group holds {found}",
                                 NEW_DIRECTIONS_HINT)
        dset = group[str(i)]
        if not hasattr(dset, "dtype") or dset.dtype.kind not in "fiu":
            raise DirectionError(f"{where} holds {getattr(dset, 'dtype', type(dset).__name__)}",
                                 "directions are arrays of floating-point numbers",
                                 NEW_DIRECTIONS_HINT)
        arr = np.asarray(dset[()], dtype=np.float64 if dset.dtype.kind != "f" else dset.dtype)
        if tuple(arr.shape) != tuple(w.shape):
            raise DirectionError(f"{where} has shape {arr.shape}, the model {tuple(w.shape)}",
                                 hint="use the matching model")
        out.append(torch.from_numpy(np.ascontiguousarray(arr)).to(device=w.device, dtype=w.dtype))
    return out
