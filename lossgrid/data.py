"""Evaluation sets, loaded into memory once as tensors.

Data specs:

* ``digits``, ``digits:train``, ``digits:test`` -- scikit-learn's bundled 8x8
  handwritten digits (1,797 images, shape ``[N, 1, 8, 8]`` scaled to [0, 1];
  a fixed 80/20 split).
* ``npz:FILE`` -- a NumPy archive with arrays ``x`` and ``y``.
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
* ``synthetic:SHAPE:N[:CLASSES]`` -- ``N`` seeded standard-normal inputs of
  shape ``SHAPE`` (e.g. ``3x32x32``) with uniformly random labels in
  ``[0, CLASSES)`` (default 10): for benchmarks and smoke tests, not landscapes.
* ``package.module:function`` or ``file.py:function`` -- returns ``(x, y)``
  tensors or arrays, or a ``torch.utils.data.Dataset`` of ``(x, y)`` pairs.

Example:
    >>> data = load_data("digits", samples=100)
    >>> tuple(data.x.shape), data.description
    ((100, 1, 8, 8), 'digits (100 of 1797 samples, seed 0)')
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._files import input_file_problem
from .errors import DataLoadError

#: per-channel (R, G, B) mean and std by name; ``reference`` is the loss-landscape reference code's
CIFAR_NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "reference": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "dataset": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
CIFAR_MEAN, CIFAR_STD = CIFAR_NORMS["reference"]


@dataclass(frozen=True)
class EvalData:
    """An evaluation set in memory."""

    x: torch.Tensor
    y: torch.Tensor
    description: str

    def __len__(self) -> int:
        return int(self.x.shape[0])


def load_data(spec: str, samples: int | None = None, sample_seed: int = 0) -> EvalData:
    """Load the evaluation set named by ``spec``; ``samples`` takes a seeded subset."""
    spec = spec.strip()
    if spec == "digits" or spec.startswith("digits:"):
        x, y = _digits(spec.partition(":")[2] or "all")
    elif spec.startswith("npz:"):
        x, y = _npz(spec[4:])
    elif spec.startswith("cifar10:"):
        x, y = _cifar10(spec[len("cifar10:"):])
    elif spec.startswith("synthetic:"):
        x, y = synthetic(spec[len("synthetic:"):])
    elif ":" in spec:
        x, y = _from_object(spec)
    else:
        raise DataLoadError(f"Unknown data spec {spec!r}",
                            "it is not a built-in set and not of the form module:function",
                            "use digits, npz:FILE, cifar10:DIR, synthetic:SHAPE:N, or package.module:function")
    x, y = _as_tensors(x, y, spec)
    total = len(x)
    if samples is None:
        return EvalData(x, y, spec)
    if samples < 1 or samples > total:
        raise DataLoadError(f"Cannot take {samples} samples from {spec}", f"it has {total} samples",
                            f"pass --samples between 1 and {total}")
    gen = torch.Generator().manual_seed(sample_seed)
    idx = torch.randperm(total, generator=gen)[:samples].sort().values
    return EvalData(x[idx].contiguous(), y[idx].contiguous(),
                    f"{spec} ({samples} of {total} samples, seed {sample_seed})")


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


def _npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    problem = input_file_problem(path)
    if problem:
        raise DataLoadError(f"Cannot read data file {path}", problem, "pass npz:FILE with an existing .npz archive")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise DataLoadError(f"{path} has no array {missing[0]!r}",
                                    f"it holds {', '.join(f.files) or 'nothing'}",
                                    "save the inputs as x and the targets as y: np.savez(path, x=..., y=...)")
            return f["x"], f["y"]
    except DataLoadError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise DataLoadError(f"Cannot read data file {path}", str(e),
                            "pass an .npz archive written by numpy.savez") from None


def _cifar10(arg: str) -> tuple[np.ndarray, np.ndarray]:
    directory, split, (mean, std) = parse_cifar_spec(arg)
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}[split]
    if not os.path.isdir(directory):
        why = "it is a file, not a directory" if os.path.exists(directory) else "it does not exist"
        raise DataLoadError(f"Cannot read CIFAR-10 directory {directory!r}", why,
                            "point to the extracted cifar-10-batches-py directory")
    xs, ys = [], []
    for name in names:
        data, labels = read_cifar_batch(os.path.join(directory, name))
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return normalize_images(np.concatenate(xs), mean, std), np.concatenate(ys)


def normalize_images(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 images ``[N, C, H, W]`` to float32 ``(x / 255 - mean) / std``, each step in float32
    (as torchvision's ToTensor and Normalize compute it)."""
    m = np.asarray(mean, dtype=np.float32)[None, :, None, None]
    s = np.asarray(std, dtype=np.float32)[None, :, None, None]
    x = images.astype(np.float32) / np.float32(255)
    x -= m
    x /= s
    return x


def parse_cifar_spec(arg: str) -> tuple[str, str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """``DIR[:train|:test][:norm=NORM]`` -> directory, split, (mean, std)."""
    directory, *options = arg.split(":")
    split, norm = "train", CIFAR_NORMS["reference"]
    for option in options:
        if option in ("train", "test"):
            split = option
        elif option.startswith("norm="):
            norm = _parse_norm(option[len("norm="):])
        else:
            raise DataLoadError(f"Unknown CIFAR-10 option {option!r}",
                                "after the directory come :train or :test and :norm=NORM",
                                "use cifar10:DIR, cifar10:DIR:test or cifar10:DIR:test:norm=dataset")
    return directory, split, norm


def _parse_norm(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if text in CIFAR_NORMS:
        return CIFAR_NORMS[text]
    hint = f"use norm={', norm='.join(CIFAR_NORMS)} or norm=M1,M2,M3/S1,S2,S3 (values for inputs in [0, 1])"
    mean_text, slash, std_text = text.partition("/")
    try:
        mean = tuple(float(v) for v in mean_text.split(","))
        std = tuple(float(v) for v in std_text.split(","))
    except ValueError:
        raise DataLoadError(f"Cannot read normalization {text!r}", "it is neither a name nor numbers",
                            hint) from None
    if not slash or len(mean) != 3 or len(std) != 3 or not all(np.isfinite(mean + std)) or min(std) <= 0:
        raise DataLoadError(f"Cannot read normalization {text!r}",
                            "it needs three means and three positive standard deviations", hint)
    return mean, std


def read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 3072]`` (uint8) and labels ``[N]`` of one CIFAR python batch,
    unpickled without running code (only numpy arrays are resolved)."""
    from ._pickle import NUMPY_DATA_GLOBALS, restricted_load

    def fail(why: str) -> DataLoadError:
        return DataLoadError(f"Cannot read CIFAR-10 batch {path}", why,
                             "point to the extracted cifar-10-batches-py directory, as downloaded")

    problem = input_file_problem(path)
    if problem:
        raise fail(problem)
    try:
        with open(path, "rb") as fh:
            batch = restricted_load(fh, NUMPY_DATA_GLOBALS, encoding="bytes")
    except pickle.UnpicklingError as e:
        raise fail(str(e)) from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as e:
        raise fail(f"{type(e).__name__}: {e}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise fail("it is not a dict with b'data' and b'labels' entries")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise fail(f"b'data' is {type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}, "
                   "expected a uint8 array of shape (N, 3072)")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise fail("b'labels' is not a list of integers") from None
    if labels.shape != (data.shape[0],):
        raise fail(f"b'labels' holds {labels.shape} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise fail(f"b'labels' holds values from {labels.min()} to {labels.max()}, expected 0..9")
    return data, labels


#: at most this many input values in a synthetic set (16 GiB of float32)
MAX_SYNTHETIC_VALUES = 1 << 32


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
    values = n * int(np.prod(shape))
    if n < 1 or classes < 1 or any(d < 1 for d in shape) or values > MAX_SYNTHETIC_VALUES:
        raise DataLoadError(f"Synthetic data {arg!r} is out of range",
                            f"N, CLASSES and every dimension must be at least 1 and N x SHAPE at most "
                            f"{MAX_SYNTHETIC_VALUES:,} values (got {values:,})", hint)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=gen), torch.randint(0, classes, (n,), generator=gen)


def _from_object(spec: str) -> tuple[Any, Any]:
    from ._spec import load_object
    from .errors import ConfigError

    try:
        fn = load_object(spec, what="data")
        result = fn() if callable(fn) else fn
    except ConfigError as e:
        raise DataLoadError(e.what, e.why, e.hint) from None
    except Exception as e:  # user code
        raise DataLoadError(f"Data function {spec} failed", f"{type(e).__name__}: {e}",
                            "fix the function or pass another data spec") from None
    if isinstance(result, tuple) and len(result) == 2:
        return result
    if isinstance(result, torch.utils.data.Dataset) or hasattr(result, "__getitem__"):
        try:
            pairs = [result[i] for i in range(len(result))]
            xs = torch.stack([torch.as_tensor(p[0]) for p in pairs])
            ys = torch.as_tensor(np.asarray([np.asarray(p[1]) for p in pairs]))
        except Exception as e:
            raise DataLoadError(f"Cannot materialise the dataset returned by {spec}", f"{type(e).__name__}: {e}",
                                "return a Dataset of (input, target) pairs of equal shapes") from None
        return xs, ys
    raise DataLoadError(f"Data function {spec} returned {type(result).__name__}",
                        "it must return (x, y) or a Dataset of (x, y) pairs", "change its return value")


def _as_tensors(x: Any, y: Any, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    except Exception as e:
        raise DataLoadError(f"Data {spec} is not numeric", str(e), "return arrays or tensors") from None
    if xt.dim() == 0 or yt.dim() == 0 or xt.shape[0] != yt.shape[0] or xt.shape[0] == 0:
        raise DataLoadError(f"Data {spec} has inputs of shape {tuple(xt.shape)} and targets of shape {tuple(yt.shape)}",
                            "x and y need the same, non-zero number of samples along the first axis",
                            "check the arrays")
    if not torch.is_floating_point(xt) and xt.dtype not in (torch.int64, torch.int32):
        xt = xt.float()
    if torch.is_floating_point(xt) and xt.dtype != torch.float32:
        xt = xt.float()
    if not torch.is_floating_point(yt):
        yt = yt.long()
    elif yt.dtype != torch.float32:
        yt = yt.float()
    return xt.contiguous(), yt.contiguous()
