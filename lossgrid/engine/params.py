"""Flat layout of the tensors a direction perturbs.

A :class:`ParamLayout` lists, in state_dict order, the tensors that move along the
directions: the parameters (``weights`` type) or every floating-point entry of
the state_dict (``states`` type; integer buffers such as ``num_batches_tracked``
stay untouched). All of them are packed into one flat vector of length ``P`` so
that many grid points are one matrix product (:func:`lossgrid.kernels.perturb`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of the perturbed tensors."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dir_type: str

    @classmethod
    def from_model(cls, model: nn.Module, dir_type: str = "weights") -> "ParamLayout":
        """Layout of ``model`` for direction type ``weights`` or ``states``; a model with no tensor
        to move (no parameters, or no floating-point state) is refused."""
        entries = perturbed_tensors(model, dir_type)
        if not entries:
            raise ConfigError(f"The model {type(model).__name__} has no "
                              f"{'parameters' if dir_type == 'weights' else 'floating-point state'} to move",
                              "a loss landscape moves the model's weights along directions: there is nothing to move",
                              "pass a model with trainable weights (check the factory and the checkpoint)")
        return cls(tuple(entries), tuple(tuple(t.shape) for t in entries.values()), dir_type)

    @property
    def numels(self) -> list[int]:
        return [int(torch.Size(s).numel()) for s in self.shapes]

    @property
    def size(self) -> int:
        return sum(self.numels)

    def flatten(self, tensors: dict[str, torch.Tensor] | list[torch.Tensor]) -> torch.Tensor:
        """Concatenate tensors (a name->tensor dict or a list in layout order) into ``[P]``."""
        seq = [tensors[n] for n in self.names] if isinstance(tensors, dict) else list(tensors)
        if len(seq) != len(self.names):
            raise ConfigError(f"Expected {len(self.names)} tensors, got {len(seq)}")
        return torch.cat([t.detach().reshape(-1) for t in seq])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat[..., P]`` as ``{name: tensor[..., *shape]}`` (no copy)."""
        lead = flat.shape[:-1]
        out: dict[str, torch.Tensor] = {}
        for name, shape, piece in zip(self.names, self.shapes, torch.split(flat, self.numels, dim=-1)):
            out[name] = piece.view((*lead, *shape))  # also 0-D tensors of one point
        return out


def perturbed_tensors(model: nn.Module, dir_type: str) -> dict[str, torch.Tensor]:
    """The tensors of ``model`` a direction of type ``dir_type`` moves, in state_dict order."""
    if dir_type == "weights":
        return {n: p.detach() for n, p in model.named_parameters()}
    if dir_type == "states":
        seen: set[int] = set()
        out: dict[str, torch.Tensor] = {}
        for name, t in model.state_dict(keep_vars=True).items():
            if not torch.is_floating_point(t) or id(t) in seen:
                continue
            seen.add(id(t))
            out[name] = t.detach()
        return out
    raise ConfigError(f"Unknown direction type {dir_type!r}", hint="use weights or states")


def full_states(layout: ParamLayout, weights: torch.Tensor, fixed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every floating-point state entry of ``K`` grid points as ``{name: [K, ...]}``:
    the tensors of ``layout`` from ``weights[K, P]``, the rest (``fixed``, e.g. BN
    running statistics for ``weights`` directions) broadcast without copying."""
    k = weights.shape[0]
    moved = layout.unflatten(weights)
    return {n: moved[n] if n in moved else t.unsqueeze(0).expand(k, *t.shape) for n, t in fixed.items()}


def parse_globs(text: str | None) -> tuple[str, ...]:
    """Comma-separated fnmatch globs (``'layer3.*,fc.*'``) as a tuple; ``None`` or blank: ``()``."""
    return tuple(g.strip() for g in (text or "").split(",") if g.strip())


def select_names(names: Sequence[str], include: str | None = None, exclude: str | None = None,
                 frozen: Collection[str] = (), what: str = "tensor",
                 aliases: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The ``names`` (in order) matched by the ``include`` globs (all when ``None``), minus those
    matched by the ``exclude`` globs and those in ``frozen``. A glob may also name an alias of
    a tied tensor (``aliases``: other name -> the name in ``names``). A glob that matches no
    name, or a selection that leaves nothing, is a :class:`ConfigError` naming the candidates."""
    aliases = dict(aliases or {})
    spelled = {n: [n] for n in names}
    for other, target in aliases.items():
        if target in spelled:
            spelled[target].append(other)
    wanted, unwanted = parse_globs(include), parse_globs(exclude)

    def hits(glob: str) -> set[str]:
        return {n for n, forms in spelled.items() if any(fnmatch.fnmatchcase(f, glob) for f in forms)}

    shown = ", ".join(list(names)[:8]) + (", ..." if len(names) > 8 else "")
    for option, globs in (("--params", wanted), ("--exclude", unwanted)):
        for glob in globs:
            if not hits(glob):
                raise ConfigError(f"{option} {glob!r} matches no {what} of the model",
                                  f"its {what}s are {shown}" if names else f"the model has no {what}s",
                                  "check the spelling: globs are fnmatch patterns over state_dict names, "
                                  "comma-separated")
    keep = set().union(*(hits(g) for g in wanted)) if wanted else set(names)
    drop = set().union(*(hits(g) for g in unwanted)) if unwanted else set()
    chosen = tuple(n for n in names if n in keep and n not in drop and n not in frozen)
    if not chosen:
        rules = [f"--params {include!r}" if include else "", f"--exclude {exclude!r}" if exclude else "",
                 "trainable only" if frozen else ""]
        raise ConfigError(f"No {what} of the model is left to perturb ({', '.join(r for r in rules if r)})",
                          f"its {what}s are {shown}" if names else f"the model has no {what}s",
                          "pass fnmatch globs over these names, comma-separated, e.g. --params 'layer3.*,fc.*' "
                          "or --exclude '*.bn*'")
    return chosen
