"""Evaluation sets, loaded into memory once as tensors.

Data specs:

* ``digits``, ``digits:train``, ``digits:test`` -- scikit-learn's bundled 8x8
  handwritten digits (1,797 images, shape ``[N, 1, 8, 8]`` scaled to [0, 1];
  a fixed 80/20 split).
* ``npz:FILE`` -- a NumPy archive with arrays ``x`` and ``y``; an archive
  without ``x`` is a record dict of all its arrays (``input_ids``,
  ``attention_mask``, ``labels`` ...; see *Records* below).
* ``cifar10:DIR[:test][:norm=NORM]`` -- the CIFAR-10 "python version" batches
  (``data_batch_1`` ... ``data_batch_5``, ``test_batch``), channels R, G, B,
  scaled to [0, 1] in float32 and normalized per channel exactly as the
  reference implementation does (``x / 255``, then ``(x - mean) / std`` in
  float32 with mean (125.3, 123.0, 113.9)/255 and std (63.0, 62.1, 66.7)/255),
  so that its published checkpoints see the inputs they were trained on.
  ``norm=`` names other constants: ``reference`` (the default), ``dataset``
  (the training set's own statistics, 0.4914/0.4822/0.4465 and
  0.2470/0.2435/0.2616), ``none`` (only ``/ 255``) or ``M1,M2,M3/S1,S2,S3``.
  The batches are pickles: they are read with a restricted unpickler that
  resolves only what such files hold (numpy arrays), so a tampered batch
  cannot run code.
* ``cifar100:DIR[:test][:label=fine|coarse][:norm=NORM]`` -- the CIFAR-100
  "python version" (``train``, ``test`` in ``cifar-100-python``), read the same
  way, with the 100 fine labels (default) or the 20 coarse ones. ``norm=``:
  ``dataset`` (the default: CIFAR-100's usual statistics, mean
  0.5071/0.4865/0.4409 and std 0.2673/0.2564/0.2762), ``reference`` (the
  CIFAR-10 constants above), ``none`` or ``M1,M2,M3/S1,S2,S3``.
* ``imagefolder:DIR[:size=H[xW]][:norm=NORM][:gray]`` -- one subdirectory of
  images per class, labels by sorted class name (torchvision's ``ImageFolder``),
  read with Pillow as RGB (one channel with ``:gray``), resized bilinearly to
  ``H x W`` when ``size`` is given (otherwise all images must share a size),
  scaled to [0, 1] and normalized: ``none`` (the default), ``imagenet``
  (0.485/0.456/0.406 and 0.229/0.224/0.225), ``reference`` or numbers.
* ``synthetic:SHAPE:N[:CLASSES]`` -- ``N`` seeded standard-normal inputs of
  shape ``SHAPE`` (e.g. ``3x32x32``) with uniformly random labels in
  ``[0, CLASSES)`` (default 10): for benchmarks and smoke tests, not landscapes.
  A set that needs more memory than is available is refused before allocating.
* ``package.module:function`` or ``file.py:function`` -- returns ``(x, y)``
  (``x`` a tensor/array, or a dict or tuple of them), a record dict of arrays,
  a tuple of more than two arrays, or a ``torch.utils.data.Dataset`` whose
  items are ``(x, y)`` pairs, longer tuples or dicts (stacked key by key).

Inputs and targets (:mod:`lossgrid.inputs`): the inputs are one tensor
(``model(x)``), a tuple of tensors (``model(*x)``) or a dict of tensors
(``model(**x)``), every part with the ``N`` samples on axis 0; the targets are
one tensor of ``N`` rows: class indices ``[N]``, token ids ``[N, T]`` (with an
ignore index such as -100 at padding) or float regression targets. Integer
targets become int64, floating ones float32.

Records: a source that gives several arrays rather than ``(x, y)`` is split by
convention. A dict: the targets are its first key among ``labels``, ``label``,
``targets``, ``target``, ``y``, the other keys are keyword inputs (only ``x``
left: a plain tensor input). A tuple: the last element is the targets, the
others positional inputs (two elements: ``(x, y)``).

Batch adapter: ``load_data(..., batch="module:function")`` (``--batch``, or
``file.py:function``, or a callable) replaces the convention. It is called once
with the whole collated set -- the record dict, the tuple, or ``(x, y)``, every
array as a tensor with the ``N`` samples on axis 0 -- and returns
``(inputs, targets)``::

    def adapt(batch):                       # npz:tokens.npz --batch adapt.py:adapt
        return {"input_ids": batch["ids"], "attention_mask": batch["mask"]}, batch["next_ids"]

Example:
    >>> data = load_data("digits", samples=100)
    >>> tuple(data.x.shape), data.description
    ((100, 1, 8, 8), 'digits (100 of 1797 samples, seed 0)')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import inputs as _inputs
from ._cifar import (
    CIFAR100_NORMS,
    CIFAR_MEAN,
    CIFAR_NORMS,
    CIFAR_STD,
    load_cifar10,
    load_cifar100,
    normalize_images,
    parse_cifar_spec,
    read_cifar_batch,
)
from ._files import error_text, input_file_problem, open_regular, truncated_zip_problem
from ._images import load_imagefolder
from ._memory import memory_problem
from ._records import TARGET_KEYS, collate_dataset, is_dataset, split_records, tensors_of
from ._spec import load_object
from .errors import ConfigError, DataLoadError
from .inputs import Inputs

__all__ = ["CIFAR100_NORMS", "CIFAR_MEAN", "CIFAR_NORMS", "CIFAR_STD", "TARGET_KEYS", "EvalData", "as_eval_data",
           "load_data",
           "normalize_images", "parse_cifar_spec", "read_cifar_batch", "synthetic"]

#: a batch adapter: ``module:function``, ``file.py:function`` or the function itself
BatchAdapter = str | Callable[[Any], Any]


@dataclass(frozen=True)
class EvalData:
    """An evaluation set in memory.

    Attributes:
        x: the model's inputs (:data:`lossgrid.inputs.Inputs`): a tensor, a tuple of
            tensors (positional arguments) or a dict of tensors (keyword arguments),
            each with the ``N`` samples on axis 0.
        y: the targets, ``N`` rows: class indices (int64 ``[N]``), token ids (int64
            ``[N, T]``, padding at an ignore index) or regression targets (float32).
        description: the data spec (and subset) as written into result files.
        population: the size of the set a ``--samples`` subset was drawn from.
    """

    x: Inputs
    y: torch.Tensor
    description: str
    #: the size of the set these samples were drawn from (``--samples``), ``None`` for a whole set:
    #: standard errors then estimate the error against that set's mean (finite population)
    population: int | None = None

    def __len__(self) -> int:
        return _inputs.num_samples(self.x)

    def subset(self, samples: int, seed: int = 0, name: str | None = None) -> EvalData:
        """``samples`` of the samples drawn with ``seed`` (the same rows of every input part
        and of the targets), in their original order; ``name`` is the set's spec in the
        description (default: this set's description)."""
        total = len(self)
        if samples < 1 or samples > total:
            raise DataLoadError(f"Cannot take {samples} samples from {name or self.description}",
                                f"it has {total} samples", f"pass --samples between 1 and {total}")
        idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:samples].sort().values
        return EvalData(_inputs.take(self.x, idx), self.y[idx].contiguous(),
                        f"{name or self.description} ({samples} of {total} samples, seed {seed})", total)


def as_eval_data(data: EvalData | tuple[Any, Any] | Any, description: str = "in-memory tensors") -> EvalData:
    """``data`` as an :class:`EvalData`: itself, or ``(inputs, targets)`` with inputs a tensor,
    an array, or a tuple or dict of them. Dtypes are kept as given (a float64 model gets
    float64 data)."""
    if isinstance(data, EvalData):
        return data
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise DataLoadError(f"Cannot use {type(data).__name__} as evaluation data",
                            "it is neither an EvalData nor an (inputs, targets) pair",
                            "pass load_data(...) or (x, y)")
    x, y = data
    if isinstance(x, Mapping):
        x = {str(k): torch.as_tensor(v) for k, v in x.items()}
    elif isinstance(x, (tuple, list)):
        x = tuple(torch.as_tensor(v) for v in x)
    else:
        x = torch.as_tensor(x)
    return EvalData(x, torch.as_tensor(y), description)


def load_data(spec: str, samples: int | None = None, sample_seed: int = 0,
              batch: BatchAdapter | None = None) -> EvalData:
    """Load the evaluation set named by ``spec``.

    Args:
        spec: a data spec (see the module docstring).
        samples: take a seeded random subset of this many samples (every input part alike).
        sample_seed: the seed of that subset.
        batch: a batch adapter (``module:function``, ``file.py:function`` or a callable)
            called once with the whole set, returning ``(inputs, targets)``; without
            it, records are split by the convention in the module docstring.

    Example:
        >>> load_data("synthetic:4x6:10").y.shape
        torch.Size([10])
    """
    spec = spec.strip()
    raw = _source(spec)
    if batch is None:
        x, y = split_records(raw, spec)
        source = spec
    else:
        fn, name = _resolve_adapter(batch)
        x, y = _adapt(fn, name, raw)
        source = f"{spec} --batch {name}"
    x, y = _as_tensors(x, y, source)
    data = EvalData(x, y, source)
    return data if samples is None else data.subset(samples, sample_seed, source)


def _source(spec: str) -> Any:
    """What ``spec`` names, before inputs and targets are told apart: ``(x, y)``, a record
    dict or tuple, each array still as the source gave it."""
    if spec == "digits" or spec.startswith("digits:"):
        return _digits(spec.partition(":")[2] or "all")
    if spec.startswith("npz:"):
        return _npz(spec[len("npz:"):])
    if spec.startswith("cifar10:"):
        return load_cifar10(spec[len("cifar10:"):])
    if spec.startswith("cifar100:"):
        return load_cifar100(spec[len("cifar100:"):])
    if spec.startswith("imagefolder:"):

        return load_imagefolder(spec[len("imagefolder:"):])
    if spec.startswith("synthetic:"):
        return synthetic(spec[len("synthetic:"):])
    if ":" in spec:
        return _from_object(spec)
    raise DataLoadError(f"Unknown data spec {spec!r}",
                        "it is not a built-in set and not of the form module:function",
                        "use digits, npz:FILE, cifar10:DIR, cifar100:DIR, imagefolder:DIR, synthetic:SHAPE:N, "
                        "or package.module:function")


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    if split not in ("all", "train", "test"):
        raise DataLoadError(f"Unknown digits split {split!r}", hint="use digits, digits:train or digits:test")
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    if split == "all":
        return x, y
    order = np.random.RandomState(0).permutation(len(x))
    cut = int(0.8 * len(x))
    idx = np.sort(order[:cut] if split == "train" else order[cut:])
    return x[idx], y[idx]


#: how an .npz archive (a zip file, possibly empty) and a lone .npy array begin
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"
_NPZ_HINT = "save the inputs as x and the targets as y: np.savez(path, x=..., y=...)"


def _npz(path: str) -> tuple[np.ndarray, np.ndarray] | dict[str, np.ndarray]:
    """``(x, y)`` of an archive with ``x``, else the record dict of all its arrays."""
    problem = input_file_problem(path)
    if problem:
        raise DataLoadError(f"Cannot read data file {path}", problem, "pass npz:FILE with an existing .npz archive")
    try:
        with open_regular(path) as fh:
            _check_npz_magic(fh.read(len(_NPY_MAGIC)), path)
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as f:
                return _npz_arrays(f, path)
    except DataLoadError:
        raise
    except Exception as e:  # a damaged archive raises zipfile, zlib, numpy and memory errors alike
        raise DataLoadError(f"Cannot read data file {path}", error_text(e),
                            "pass an .npz archive written by numpy.savez") from None


def _check_npz_magic(head: bytes, path: str) -> None:
    truncated = truncated_zip_problem(path)
    if truncated:
        raise DataLoadError(f"Data file {path} is incomplete", truncated, "copy the archive again, or save it again "
                            "with numpy.savez")
    if head.startswith(_NPY_MAGIC):
        raise DataLoadError(f"Data file {path} is a single .npy array, not an .npz archive",
                            "npz: needs the inputs and the targets, as arrays x and y of one archive", _NPZ_HINT)
    if not head.startswith(_ZIP_MAGIC):
        raise DataLoadError(f"Cannot read data file {path}", "it is not an .npz archive (a zip file)",
                            "pass an .npz archive written by numpy.savez")


def _npz_arrays(f: Any, path: str) -> tuple[np.ndarray, np.ndarray] | dict[str, np.ndarray]:
    # the sizes the archive declares bound what reading it allocates: a compressed
    # archive of a few kB can expand to more than memory holds
    problem = memory_problem(sum(info.file_size for info in f.zip.infolist()))
    if problem:
        raise DataLoadError(f"Cannot load data file {path}", problem, "free memory or save a smaller set")
    if not f.files:
        raise DataLoadError(f"{path} holds no arrays", hint=_NPZ_HINT)
    if "x" in f.files and "y" not in f.files:
        raise DataLoadError(f"{path} has no array 'y'", f"it holds {', '.join(f.files)}", _NPZ_HINT)
    arrays = {name: f[name] for name in (("x", "y") if "x" in f.files else f.files)}
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):  # numpy returns a member without the .npy header as bytes
            raise DataLoadError(f"Cannot read data file {path}", f"its member {name!r} is not a .npy array",
                                "pass an .npz archive written by numpy.savez")
    return (arrays["x"], arrays["y"]) if "x" in f.files else arrays


#: where the available memory is unknown, at most this many input values in a synthetic set (16 GiB of float32)
MAX_SYNTHETIC_VALUES = 1 << 32
_INT64_MAX = int(np.iinfo(np.int64).max)


def synthetic(arg: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``SHAPE:N[:CLASSES]`` -> ``N`` seeded normal inputs of ``SHAPE`` (``3x32x32``) and random labels."""
    parts = arg.split(":")
    hint = "write synthetic:SHAPE:N[:CLASSES], e.g. synthetic:3x32x32:50000 or synthetic:784:2048:10"
    try:
        if len(parts) not in (2, 3):
            raise ValueError("expected SHAPE:N or SHAPE:N:CLASSES")
        shape = tuple(int(d) for d in parts[0].lower().split("x"))
        n = int(parts[1])
        classes = int(parts[2]) if len(parts) == 3 else 10
    except ValueError as e:
        raise DataLoadError(f"Cannot read the synthetic data spec {arg!r}", str(e), hint) from None
    if n < 1 or not 1 <= classes <= _INT64_MAX or any(d < 1 for d in shape):
        raise DataLoadError(f"Synthetic data {arg!r} is out of range",
                            f"N and every dimension must be at least 1, CLASSES from 1 to {_INT64_MAX:,}", hint)
    need = n * math.prod(shape) * 4 + n * 8  # float32 inputs, int64 labels
    problem = memory_problem(need, limit_if_unknown=MAX_SYNTHETIC_VALUES * 4)
    if problem:
        raise DataLoadError(f"Synthetic data {arg!r} is too large", problem, "lower N or the shape; " + hint)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=gen), torch.randint(0, classes, (n,), generator=gen)


def _from_object(spec: str) -> Any:

    try:
        fn = load_object(spec, what="data")
        result = fn() if callable(fn) else fn
    except ConfigError as e:
        raise DataLoadError(e.what, e.why, e.hint) from None
    except Exception as e:  # user code
        raise DataLoadError(f"Data function {spec} failed", f"{type(e).__name__}: {e}",
                            "fix the function or pass another data spec") from None
    if isinstance(result, (tuple, Mapping)):
        return result
    if is_dataset(result):
        return collate_dataset(result, f"the dataset returned by {spec}")
    raise DataLoadError(f"Data function {spec} returned {type(result).__name__}",
                        "it must return (x, y), a dict of arrays, a tuple (inputs..., targets) or a Dataset",
                        "change its return value")


def _resolve_adapter(batch: BatchAdapter) -> tuple[Callable[[Any], Any], str]:
    if callable(batch):
        module = getattr(batch, "__module__", None)
        name = getattr(batch, "__qualname__", None) or type(batch).__name__
        return batch, f"{module}:{name}" if module else name

    try:
        fn = load_object(str(batch), what="batch adapter")
    except ConfigError as e:
        raise DataLoadError(e.what, e.why, e.hint) from None
    if not callable(fn):
        raise DataLoadError(f"Batch adapter {batch} is a {type(fn).__name__}, not a function",
                            hint="name a function that takes the collated set and returns (inputs, targets)")
    return fn, str(batch)


def _adapt(fn: Callable[[Any], Any], name: str, raw: Any) -> tuple[Any, Any]:
    """``fn(raw)`` (with every array as a tensor), checked to be ``(inputs, targets)``."""
    try:
        result = fn(tensors_of(raw))
    except Exception as e:  # user code
        raise DataLoadError(f"Batch adapter {name} failed", f"{type(e).__name__}: {e}",
                            "fix the function; it receives the whole set (a dict, a tuple or (x, y) of tensors "
                            "with the samples on axis 0) and returns (inputs, targets)") from None
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        got = f"a {type(result).__name__} of {len(result)}" if isinstance(result, (tuple, list)) \
            else type(result).__name__
        raise DataLoadError(f"Batch adapter {name} returned {got}",
                            "it must return a pair (inputs, targets): inputs a tensor, a tuple or a dict of "
                            "tensors, targets one tensor",
                            "return e.g. ({'input_ids': ids, 'attention_mask': mask}, labels)")
    return result[0], result[1]


def _as_tensors(x: Any, y: Any, spec: str) -> tuple[Inputs, torch.Tensor]:
    try:
        xt = _inputs.as_inputs(x, what=f"the inputs of {spec}")
    except DataLoadError as e:
        raise DataLoadError(e.what[:1].upper() + e.what[1:], e.why, e.hint) from None
    try:
        yt = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    except Exception as e:
        raise DataLoadError(f"The targets of {spec} are not numeric", f"{type(e).__name__}: {e}",
                            "return arrays or tensors") from None
    n = _inputs.num_samples(xt)
    if yt.dim() == 0 or yt.shape[0] != n or n == 0:
        raise DataLoadError(f"Data {spec} has inputs {_inputs.sample_shape(xt)} with N = {n} and targets of "
                            f"shape {tuple(yt.shape)}",
                            "inputs and targets need the same, non-zero number of samples along the first axis",
                            "check the arrays")
    if yt.dtype == getattr(torch, "uint64", None):  # would wrap around to negative values in int64
        top = int(yt.cpu().numpy().max())  # torch has no max() for uint64
        if top > _INT64_MAX:
            raise DataLoadError(f"The targets of {spec} do not fit int64",
                                f"they are uint64 up to {top:,}; class indices and token ids are int64, at most "
                                f"{_INT64_MAX:,}", "store the targets as int64")
    if not torch.is_floating_point(yt):
        yt = yt.long()
    elif yt.dtype != torch.float32:
        yt = yt.float()
    return xt, yt.contiguous()
