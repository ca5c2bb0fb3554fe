"""Fingerprints: short hashes that tell whether a file was computed on the same model, data or axes.

Example:
    >>> import torch
    >>> fingerprint([torch.zeros(2)]) == fingerprint([torch.zeros(2)]) != fingerprint([torch.ones(2)])
    True
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ..data import EvalData
from ..inputs import is_tensor, named_tensors, tensors


def fingerprint(values: Any) -> str:
    """A hash of tensors' dtypes, shapes and bytes, in order."""
    h = hashlib.blake2b(digest_size=8)
    for t in values:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """The fingerprint of a model's state (parameters and buffers)."""
    return fingerprint(t for t in model.state_dict().values())


def data_fingerprint(data: EvalData) -> str:
    """A hash of an evaluation set's values; for several or named inputs also of their
    structure (which argument is which), so that swapping two inputs is a different set."""
    digest = fingerprint([*tensors(data.x), data.y])
    if is_tensor(data.x):  # as before inputs could be tuples or dicts: such files stay resumable
        return digest
    names = [name for name, _ in named_tensors(data.x)]
    return f"{digest}:{hashlib.blake2b(repr(names).encode(), digest_size=4).hexdigest()}"
