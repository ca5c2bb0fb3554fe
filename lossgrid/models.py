"""Load the model whose landscape is plotted.

A model is a factory spec (``path/to/file.py:factory`` or
``package.module:factory`` returning an ``nn.Module``) plus an optional
checkpoint holding a state_dict -- or a dict with a ``state_dict`` key, as the
reference implementation saves -- or, without a factory, a checkpoint that is a
whole pickled module or a TorchScript file.

Example:
    >>> model, desc = load_model("lossgrid.zoo:mlp_digits")
    >>> desc
    'lossgrid.zoo:mlp_digits'
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, ModelLoadError

STATE_KEYS = ("state_dict", "model_state_dict", "model")


def load_model(spec: str | None, checkpoint: str | None = None) -> tuple[nn.Module, str]:
    """Build the model and load its checkpoint; returns ``(model, description)``."""
    if spec is None and checkpoint is None:
        raise ModelLoadError("No model given", hint="pass --model file.py:factory and/or --checkpoint FILE")
    if spec is not None:
        model = _from_factory(spec)
        if checkpoint is not None:
            load_state(model, _read_state(checkpoint), checkpoint)
        return model, spec if checkpoint is None else f"{spec} @ {checkpoint}"
    assert checkpoint is not None
    obj = _read_checkpoint(checkpoint)
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"Checkpoint {checkpoint} holds a state_dict, not a whole model",
                             "a state_dict needs the architecture to load into",
                             "also pass --model path/to/file.py:factory")
    return obj, checkpoint


def _from_factory(spec: str) -> nn.Module:
    from ._spec import load_object

    try:
        factory = load_object(spec, what="model")
    except ConfigError as e:
        raise ModelLoadError(e.what, e.why, e.hint) from None
    if isinstance(factory, nn.Module):
        return factory
    if not callable(factory):
        raise ModelLoadError(f"Model spec {spec} is not callable",
                             hint="point to a function or class returning an nn.Module")
    try:
        model = factory()
    except Exception as e:  # user code
        raise ModelLoadError(f"Model factory {spec} failed", f"{type(e).__name__}: {e}",
                             "fix the factory; it is called without arguments") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"Model factory {spec} returned {type(model).__name__}",
                             "it must return a torch.nn.Module", "return the network from the factory")
    return model


def _read_checkpoint(path: str) -> Any:
    if not os.path.isfile(path):
        raise ModelLoadError(f"Checkpoint {path} does not exist", hint="check the --checkpoint path")
    if _is_torchscript(path):
        try:
            return torch.jit.load(path, map_location="cpu")
        except Exception as e:
            raise ModelLoadError(f"Cannot load TorchScript file {path}", str(e).splitlines()[0],
                                 "re-save it with torch.jit.save") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:
        if isinstance(first, (EOFError, RuntimeError, zipfile.BadZipFile)) and "weights_only" not in str(first):
            raise ModelLoadError(f"Checkpoint {path} is corrupt or not a torch file", str(first).splitlines()[0],
                                 "pass a file written by torch.save") from None
    # Not loadable as plain tensors: a whole pickled module (runs the file's pickled code).
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ModelLoadError(f"Checkpoint {path} is corrupt or not a torch file", f"{type(e).__name__}: {e}",
                             "pass a file written by torch.save or torch.jit.save") from None


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())


def _read_state(path: str) -> Mapping[str, torch.Tensor]:
    obj = _read_checkpoint(path)
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in STATE_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
            if isinstance(inner, nn.Module):
                return inner.state_dict()
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ModelLoadError(f"Checkpoint {path} holds no state_dict",
                         f"found {type(obj).__name__}" + (f" with keys {', '.join(map(str, list(obj)[:5]))}"
                                                         if isinstance(obj, Mapping) else ""),
                         "save model.state_dict(), or {'state_dict': model.state_dict()}")


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` strictly, naming the first mismatched keys on failure.

    A ``module.`` prefix on every key (as ``nn.DataParallel`` saves) is removed.
    """
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing in {source}: {_first(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_first(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch (checkpoint vs model): {', '.join(shapes[:3])}")
        raise ModelLoadError(f"The state_dict in {source} does not match the model", "; ".join(parts),
                             "pass the checkpoint of this architecture, or the factory it was trained with")
    model.load_state_dict(state)


def _first(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
