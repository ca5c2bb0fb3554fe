"""Load the model whose landscape is plotted.

A model is a factory spec (``path/to/file.py:factory`` or
``package.module:factory`` returning an ``nn.Module``), or the bare name of a
zoo model (``resnet56``, ``wrn56_2_noshort``, ``vgg9``: see
:data:`lossgrid.zoo.ZOO`), plus an optional checkpoint holding a state_dict --
or a dict with a ``state_dict`` key, as the reference implementation saves its
``.t7`` files -- or, without a factory, a checkpoint that is a whole pickled
module or a TorchScript file.

Checkpoints written by old PyTorch load as well: the legacy (non-zip) format,
a ``module.`` prefix on every key (``nn.DataParallel``), and BatchNorm layers
without ``num_batches_tracked`` buffers (PyTorch < 0.4.1; those buffers keep
the model's value, as they play no part in evaluation).

What is safe to load: state_dicts (read with ``torch.load(weights_only=True)``,
numpy scalars and arrays allowed), safetensors files and TorchScript archives
never run Python code from the file. A whole pickled module does: it is
loaded only with ``trust_checkpoint=True`` (``--trust-checkpoint``); otherwise
the refusal names the Python objects the file refers to.

Example:
    >>> model, desc = load_model("lossgrid.zoo:mlp_digits")
    >>> desc
    'lossgrid.zoo:mlp_digits'
    >>> load_model("resnet56")[1]
    'resnet56'
"""

from __future__ import annotations

import pickle
import struct
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import zoo
from ._files import input_file_problem, truncated_zip_problem
from ._pickle import numpy_safe_globals
from ._spec import load_object
from .errors import ConfigError, MissingBackendError, ModelLoadError

STATE_KEYS = ("state_dict", "model_state_dict", "model")
#: buffers that checkpoints of old PyTorch lack and that loading may leave as they are
OPTIONAL_BUFFERS = ("num_batches_tracked",)
TRUST_HINT = "--trust-checkpoint"


def load_model(spec: str | None, checkpoint: str | None = None,
               trust_checkpoint: bool = False) -> tuple[nn.Module, str]:
    """Build the model and load its checkpoint; returns ``(model, description)``.

    ``trust_checkpoint`` allows checkpoints that are whole pickled modules, whose
    loading runs code named in the file: only for files you made or trust.
    """
    if spec is None and checkpoint is None:
        raise ModelLoadError("No model given",
                             hint="pass --model file.py:factory (or a zoo name such as resnet56) and/or "
                                  "--checkpoint FILE")
    if spec is not None:
        model = _from_factory(spec)
        if checkpoint is not None:
            load_state(model, read_state(checkpoint, trust_checkpoint), checkpoint)
        return model, spec if checkpoint is None else f"{spec} @ {checkpoint}"
    assert checkpoint is not None
    obj = read_checkpoint(checkpoint, trust_checkpoint)
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"Checkpoint {checkpoint} holds a state_dict, not a whole model",
                             "a state_dict needs the architecture to load into",
                             "also pass --model path/to/file.py:factory")
    return obj, checkpoint


def _from_factory(spec: str) -> nn.Module:
    if ":" not in spec:
        return _from_zoo(spec)

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


def _from_zoo(name: str) -> nn.Module:
    """The zoo model ``name`` (a ``--model`` without ':'), or an error naming close matches."""

    entry = zoo.ZOO.get(name)
    if entry is not None:
        return entry.build()
    close = zoo.registry.close_names(name)
    small = getattr(zoo.small, name, None)
    listing = "list the zoo with: python -c \"import lossgrid.zoo as z; print(*z.zoo_names())\""
    if name.endswith(".py"):
        hint = f"name the factory after a ':', as in {name}:factory"
    elif callable(small) and getattr(small, "__module__", None) == zoo.small.__name__:
        hint = f"pass it as lossgrid.zoo:{name}"
    elif close:
        hint = f"the closest names are {', '.join(close)}; {listing}"
    else:
        hint = listing
    raise ModelLoadError(f"No model named {name!r} in the zoo",
                         "a --model without ':' names a model of lossgrid.zoo.ZOO (the reference's CIFAR-10 "
                         "names: resnet56, resnet56_noshort, wrn56_2, vgg9, densenet121 ...)",
                         f"{hint}; a model of your own is path/to/file.py:factory or package.module:factory")


def read_checkpoint(path: str, trust: bool = False) -> Any:
    """The object stored in a checkpoint file, loaded without running code from it
    (unless ``trust``): a state_dict or dict, a TorchScript module, or -- trusted
    only -- a whole pickled module."""
    problem = input_file_problem(path)
    if problem:
        raise ModelLoadError(f"Cannot read checkpoint {path}", problem, "check the --checkpoint/--model2 path")
    truncated = truncated_zip_problem(path)
    if truncated:
        raise ModelLoadError(f"Checkpoint {path} is incomplete", truncated,
                             "copy the checkpoint again from where it was saved (or save it again)")
    if _is_safetensors(path):
        return _read_safetensors(path)
    if _is_torchscript(path):
        try:
            return torch.jit.load(path, map_location="cpu")
        except Exception as e:
            raise ModelLoadError(f"Cannot load TorchScript file {path}", _first_line(e),
                                 "re-save it with torch.jit.save") from None

    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return _torch_load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise ModelLoadError(f"Checkpoint {path} is corrupt or not a torch file", _first_line(e),
                                 "pass a file written by torch.save") from None
        refusal = e
    except Exception as e:  # torch raises RuntimeError, EOFError, BadZipFile, ValueError... on bad files
        raise ModelLoadError(f"Checkpoint {path} is corrupt or not a torch file", _first_line(e),
                             "pass a file written by torch.save, torch.jit.save or safetensors") from None
    named = _unsafe_globals(path, refusal)
    if not named:  # the unpickler refused, but no class or function can be named: garbage, not a model
        raise ModelLoadError(f"Checkpoint {path} is corrupt or not a torch file", _first_line(refusal),
                             "pass a file written by torch.save, torch.jit.save or safetensors")
    if not trust:
        raise ModelLoadError(
            f"Checkpoint {path} holds Python objects, not only tensors: {named}",
            "loading such a file (a whole pickled model, say) runs code that the file names, "
            "which could do anything to this machine",
            f"if you made this file or trust its source, pass {TRUST_HINT}; better, re-save the weights alone "
            "with torch.save(model.state_dict(), path) and pass the architecture with --model")
    try:
        return _torch_load(path, weights_only=False)
    except Exception as e:
        raise ModelLoadError(f"Checkpoint {path} is corrupt or cannot be unpickled here", f"{type(e).__name__}: {e}",
                             "pass a file written by torch.save or torch.jit.save (with the classes it names "
                             "importable)") from None


def _torch_load(path: str, weights_only: bool) -> Any:
    """``torch.load`` to the CPU; files pickled by Python 2 are retried with latin-1 strings.

    Python 2 pickled its byte strings (numpy scalars' raw data, for one) with the same
    opcodes as text, which torch decodes as UTF-8 by default; latin-1 maps each byte to
    one character, and numpy turns such strings back into the original bytes.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except UnicodeDecodeError:
        with warnings.catch_warnings():
            # torch warns that pickle arguments need weights_only=False, yet passes the encoding on
            warnings.filterwarnings("ignore", message="pickle_load_args only works")
            return torch.load(path, map_location="cpu", weights_only=weights_only, encoding="latin1")


def _unsafe_globals(path: str, error: Exception) -> str:
    """The non-tensor objects a checkpoint refers to, read without unpickling it ("" if none can be named)."""
    names: list[str] = []
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # older torch, or the legacy (non-zip) format: the error names the first one
        text = str(error)
        marker = "GLOBAL "
        if marker in text:
            names = [text.split(marker, 1)[1].split()[0]]
    if not names:
        return ""
    return ", ".join(sorted(names)[:6]) + (f" (+{len(names) - 6} more)" if len(names) > 6 else "")


def _is_safetensors(path: str) -> bool:
    """The safetensors layout: an 8-byte little-endian header length, then a JSON object."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= 100_000_000


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as e:

        raise MissingBackendError("Reading safetensors checkpoints needs the package 'safetensors'", str(e),
                                  "install it with: pip install safetensors") from None
    try:
        return load_file(path, device="cpu")
    except Exception as e:  # SafetensorError, OSError, json errors on a broken header
        raise ModelLoadError(f"Checkpoint {path} is not a valid safetensors file", _first_line(e),
                             "pass a file written by safetensors.torch.save_file") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())


def read_state(path: str, trust: bool = False) -> Mapping[str, torch.Tensor]:
    """The state dict a checkpoint holds (of a whole pickled module: its ``state_dict()``)."""
    obj = read_checkpoint(path, trust)
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
    BatchNorm ``num_batches_tracked`` buffers missing from ``state`` (checkpoints of
    PyTorch < 0.4.1) keep the model's value; any other missing key is an error.
    """
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    absent_optional = [k for k in own if k not in state and k.rpartition(".")[2] in OPTIONAL_BUFFERS]
    if absent_optional:
        state = {**state, **{k: own[k] for k in absent_optional}}
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
        hint = "pass the checkpoint of this architecture, or the factory it was trained with"
        if any(k.startswith("layers.") for k in unexpected) and any(k.startswith("layer1.") for k in missing):
            hint += ("; checkpoints of lossgrid.zoo:resnet20/resnet56 saved before the zoo took the reference "
                     "code's names load with --model lossgrid.zoo:resnet20_v0 (or resnet56_v0)")
        raise ModelLoadError(f"The state_dict in {source} does not match the model", "; ".join(parts), hint)
    model.load_state_dict(state)


def _first(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
