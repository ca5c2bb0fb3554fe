"""CIFAR-10 and CIFAR-100 "python version" batches, and per-channel image normalization.

The batches are pickles: :func:`read_cifar_batch` reads them with a restricted
unpickler that resolves only numpy arrays and scalars, so a tampered batch
cannot run code. Images are normalized as torchvision's ``ToTensor`` and
``Normalize`` compute it (:func:`normalize_images`), so that models see the
inputs they were trained on.

The checks every file-reading loader shares live here too: a path is opened
only if it is a regular file (:func:`special_file_problem`, :func:`open_regular`;
a FIFO or a device would block the reader or never end), and a set that would
not fit in the available memory is refused before it is allocated
(:func:`memory_problem`).

Example:
    >>> parse_cifar_spec("/data/cifar-10-batches-py:test")[:2]
    ('/data/cifar-10-batches-py', 'test')
    >>> parse_cifar100_spec("/data/cifar-100-python:label=coarse")[:3]
    ('/data/cifar-100-python', 'train', 'coarse')
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._files import error_text, input_file_problem, open_regular
from ._memory import memory_problem
from ._pickle import NUMPY_DATA_GLOBALS, restricted_load
from .errors import DataLoadError

Norm = tuple[tuple[float, ...], tuple[float, ...]]

#: per-channel (R, G, B) mean and std by name; ``reference`` is the loss-landscape reference code's
CIFAR_NORMS: dict[str, Norm] = {
    "reference": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "dataset": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
CIFAR_MEAN, CIFAR_STD = CIFAR_NORMS["reference"]

#: the same names for CIFAR-100: ``dataset`` (the default) is its training set's usual statistics
CIFAR100_NORMS: dict[str, Norm] = {
    "dataset": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "reference": CIFAR_NORMS["reference"],
    "none": CIFAR_NORMS["none"],
}


def normalize_images(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 images ``[N, C, H, W]`` to float32 ``(x / 255 - mean) / std``, each step in float32
    (as torchvision's ToTensor and Normalize compute it)."""
    m = np.asarray(mean, dtype=np.float32)[None, :, None, None]
    s = np.asarray(std, dtype=np.float32)[None, :, None, None]
    x = images.astype(np.float32) / np.float32(255)
    x -= m
    x /= s
    return x


def parse_norm(text: str, names: dict[str, Norm], channels: int = 3) -> Norm:
    """``norm=`` value: a name in ``names`` or ``M1,M2,M3/S1,S2,S3`` (``channels`` values each)."""
    if text in names:
        return names[text]
    example = "/".join([",".join(["M"] * channels), ",".join(["S"] * channels)])
    hint = f"use norm={', norm='.join(names)} or norm={example} (values for inputs in [0, 1])"
    mean_text, slash, std_text = text.partition("/")
    try:
        mean = tuple(float(v) for v in mean_text.split(","))
        std = tuple(float(v) for v in std_text.split(","))
    except ValueError:
        raise DataLoadError(f"Cannot read normalization {text!r}", "it is neither a name nor numbers",
                            hint) from None
    if (not slash or len(mean) != channels or len(std) != channels or not all(np.isfinite(mean + std))
            or min(std) <= 0):
        count = {1: "one mean and one positive standard deviation", 3: "three means and three positive "
                 "standard deviations"}.get(channels, f"{channels} means and {channels} positive standard deviations")
        raise DataLoadError(f"Cannot read normalization {text!r}", f"it needs {count}", hint)
    return mean, std


def parse_cifar_spec(arg: str) -> tuple[str, str, Norm]:
    """``DIR[:train|:test][:norm=NORM]`` -> directory, split, (mean, std)."""
    directory, *options = arg.split(":")
    split, norm = "train", CIFAR_NORMS["reference"]
    for option in options:
        if option in ("train", "test"):
            split = option
        elif option.startswith("norm="):
            norm = parse_norm(option[len("norm="):], CIFAR_NORMS)
        else:
            raise DataLoadError(f"Unknown CIFAR-10 option {option!r}",
                                "after the directory come :train or :test and :norm=NORM",
                                "use cifar10:DIR, cifar10:DIR:test or cifar10:DIR:test:norm=dataset")
    return directory, split, norm


def parse_cifar100_spec(arg: str) -> tuple[str, str, str, Norm]:
    """``DIR[:train|:test][:label=fine|coarse][:norm=NORM]`` -> directory, split, label kind, (mean, std)."""
    directory, *options = arg.split(":")
    split, label, norm = "train", "fine", CIFAR100_NORMS["dataset"]
    for option in options:
        if option in ("train", "test"):
            split = option
        elif option in ("label=fine", "label=coarse"):
            label = option[len("label="):]
        elif option.startswith("norm="):
            norm = parse_norm(option[len("norm="):], CIFAR100_NORMS)
        else:
            raise DataLoadError(f"Unknown CIFAR-100 option {option!r}",
                                "after the directory come :train or :test, :label=fine or :label=coarse, "
                                "and :norm=NORM",
                                "use cifar100:DIR, cifar100:DIR:test or cifar100:DIR:test:label=coarse:norm=reference")
    return directory, split, label, norm


def _check_directory(directory: str, what: str, hint: str) -> None:
    if not os.path.isdir(directory):
        why = "it is a file, not a directory" if os.path.exists(directory) else "it does not exist"
        raise DataLoadError(f"Cannot read {what} directory {directory!r}", why, hint)


def load_cifar10(arg: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalized images ``[N, 3, 32, 32]`` (float32) and labels of ``cifar10:ARG``."""
    directory, split, (mean, std) = parse_cifar_spec(arg)
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}[split]
    _check_directory(directory, "CIFAR-10", "point to the extracted cifar-10-batches-py directory")
    xs, ys = [], []
    for name in names:
        data, labels = read_cifar_batch(os.path.join(directory, name))
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    _check_memory(sum(x.shape[0] for x in xs), "CIFAR-10", directory)
    return normalize_images(np.concatenate(xs), mean, std), np.concatenate(ys)


def load_cifar100(arg: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalized images ``[N, 3, 32, 32]`` (float32) and fine (0..99) or coarse (0..19) labels."""
    directory, split, label, (mean, std) = parse_cifar100_spec(arg)
    _check_directory(directory, "CIFAR-100", "point to the extracted cifar-100-python directory")
    data, labels = read_cifar_batch(os.path.join(directory, split), label_key=f"{label}_labels",
                                    classes=100 if label == "fine" else 20, dataset="CIFAR-100")
    _check_memory(data.shape[0], "CIFAR-100", directory)
    return normalize_images(data.reshape(-1, 3, 32, 32), mean, std), labels


def _check_memory(images: int, dataset: str, directory: str) -> None:
    """Refuse before normalizing ``images`` images that would not fit in memory: a batch's
    arrays can be declared in a few bytes of pickle and allocated only when touched."""
    problem = memory_problem(images * 3072 * 5)  # per value: the uint8 copy and the float32 result
    if problem:
        raise DataLoadError(f"Cannot load {images:,} {dataset} images from {directory!r}", problem,
                            "free memory, or check that the batch files are the ones downloaded")


def read_cifar_batch(path: str, label_key: str = "labels", classes: int = 10,
                     dataset: str = "CIFAR-10") -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 3072]`` (uint8) and labels ``[N]`` (``b'<label_key>'``, in ``0..classes-1``) of
    one CIFAR python batch, unpickled without running code (only numpy arrays are resolved).

    CIFAR-10 batches hold ``b'labels'``; CIFAR-100's ``train`` and ``test`` hold
    ``b'fine_labels'`` (100 classes) and ``b'coarse_labels'`` (20 superclasses).
    """
    folder = "cifar-10-batches-py" if dataset == "CIFAR-10" else "cifar-100-python"

    def fail(why: str) -> DataLoadError:
        return DataLoadError(f"Cannot read {dataset} batch {path}", why,
                             f"point to the extracted {folder} directory, as downloaded")

    problem = input_file_problem(path)
    if problem:
        raise fail(problem)
    batch, problem = _unpickle(path)
    if problem:
        raise fail(problem)
    key = label_key.encode()
    if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
        raise fail(f"it is not a dict with b'data' and {key!r} entries")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise fail(f"b'data' is {type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}, "
                   "expected a uint8 array of shape (N, 3072)")
    return data, _labels(batch[key], key, data.shape[0], classes, fail)


def _unpickle(path: str) -> tuple[Any, str | None]:
    """The object pickled in ``path`` (only numpy arrays resolved), or ``None`` and why not.

    A pickled dtype carries numpy's flags: a uint8 flagged as holding Python objects still
    equals ``np.uint8``, but every copy of its array raises, and so does freeing it, which
    Python prints on stderr as if lossgrid had crashed. Such arrays are refused, and whatever
    a failed or refused load leaves behind is freed here, with that report silenced.
    """

    with _free_errors_silenced():
        try:
            with open_regular(path) as fh:
                batch = restricted_load(fh, NUMPY_DATA_GLOBALS, encoding="bytes")
        except pickle.UnpicklingError as e:
            return None, str(e)
        except Exception as e:  # a damaged pickle raises nearly any type (LookupError, SystemError, MemoryError ...)
            return None, error_text(e)  # leaving the except clause frees what the unpickler built
        problem = _tampered_dtype(batch)
        if problem:
            del batch
            return None, problem
    return batch, None


def _tampered_dtype(batch: Any) -> str | None:
    for key, value in batch.items() if isinstance(batch, dict) else ():
        if isinstance(value, np.ndarray) and value.dtype.flags != np.dtype(value.dtype.str).flags:
            return (f"{key!r} has a tampered dtype ({value.dtype} with flags {value.dtype.flags}, numpy's has "
                    f"{np.dtype(value.dtype.str).flags})")
    return None


@contextlib.contextmanager
def _free_errors_silenced() -> Iterator[None]:
    """Drop the RuntimeErrors numpy raises while freeing an array of a tampered dtype (Python
    reports an error raised while freeing through ``sys.unraisablehook``); pass on the rest."""
    hook = sys.unraisablehook

    def report(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, RuntimeError):
            hook(unraisable)

    sys.unraisablehook = report
    try:
        yield
    finally:
        sys.unraisablehook = hook


def _labels(values: Any, key: bytes, n: int, classes: int, fail: Callable[[str], DataLoadError]) -> np.ndarray:
    """``values`` as int64 labels ``[n]`` in ``0..classes-1``. The range is checked before the
    conversion, so a value beyond int64 is reported rather than wrapped around."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iu" or values.shape != (n,):
            raise fail(f"{key!r} is {values.dtype} of shape {values.shape}, expected {n} integers")
    elif not isinstance(values, (list, tuple)) or not all(isinstance(v, (int, np.integer)) for v in values):
        raise fail(f"{key!r} is not a list of integers")
    elif len(values) != n:
        raise fail(f"{key!r} holds {len(values)} labels for {n} images")
    if n:
        low, high = (values.min(), values.max()) if isinstance(values, np.ndarray) else (min(values), max(values))
        if low < 0 or high > classes - 1:
            raise fail(f"{key!r} holds values from {low} to {high}, expected 0..{classes - 1}")
    return np.asarray(values, dtype=np.int64)
