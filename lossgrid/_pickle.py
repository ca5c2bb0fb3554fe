"""Pickles without code execution.

Unpickling calls whatever function the file names, so a downloaded pickle can
run any command. Data files that happen to be pickles (the CIFAR python
batches) are read with :class:`RestrictedUnpickler`, which resolves only the
functions and types such files hold, and torch checkpoints are read with
``torch.load(weights_only=True)`` plus :func:`numpy_safe_globals` (numpy
arrays, scalars and dtypes: plain data).

Example:
    >>> import io, pickle
    >>> buf = io.BytesIO(pickle.dumps({"labels": [1, 2]}, protocol=2))
    >>> restricted_load(buf, NUMPY_DATA_GLOBALS)
    {'labels': [1, 2]}
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Callable
from typing import IO, Any

import numpy as np


def _reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


def _scalar() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import scalar as fn  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar as fn
    return fn


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; only latin-1."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


#: what pickled numpy arrays and scalars (any protocol, written by Python 2 or 3) refer to
NUMPY_DATA_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy.core.multiarray", "scalar"): _scalar(),
    ("numpy._core.multiarray", "scalar"): _scalar(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the ``(module, name)`` pairs in ``allowed``."""

    def __init__(self, file: IO[bytes], allowed: dict[tuple[str, str], Any], **kw: Any) -> None:
        super().__init__(file, **kw)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"the file refers to {module}.{name}, which a data file has no "
                                         "reason to hold (loading it could run code)") from None


def restricted_load(file: IO[bytes], allowed: dict[tuple[str, str], Any], encoding: str = "ASCII") -> Any:
    """``pickle.load`` resolving only ``allowed`` globals; anything else raises ``UnpicklingError``."""
    return RestrictedUnpickler(file, allowed, encoding=encoding).load()


def numpy_safe_globals() -> list[Any]:
    """numpy data types to allow in ``torch.load(weights_only=True)`` (checkpoints often hold
    accuracies as numpy scalars): arrays, scalars and dtypes, nothing that runs code."""
    out: list[Any] = [_reconstruct(), _scalar(), np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n != "StringDType"]
    return out
