"""Records: data sources that give several arrays, and how inputs and targets are told apart.

A source gives ``(x, y)``, a record dict (``{"input_ids": ..., "attention_mask":
..., "labels": ...}``), a tuple of more than two arrays, or a map-style Dataset
whose items are any of these (:func:`collate_dataset` stacks them key by key or
position by position). Without a batch adapter, :func:`split_records` applies
the convention: for a dict the targets are the first key of
:data:`TARGET_KEYS` and the other keys are keyword inputs; for a tuple the last
element is the targets and the others are positional inputs.

Example:
    >>> ids, labels = np.zeros((4, 3), dtype=np.int64), np.arange(4)
    >>> x, y = split_records({"input_ids": ids, "labels": labels}, "example")
    >>> list(x), y.tolist()
    (['input_ids'], [0, 1, 2, 3])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .errors import DataLoadError

#: the keys a record dict's targets are looked up under, in this order
TARGET_KEYS = ("labels", "label", "targets", "target", "y")
_ADAPTER_HINT = "or pass a batch adapter (--batch module:function) that returns (inputs, targets)"


def split_records(raw: Any, source: str) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a source's value by the convention (see the module docstring)."""
    if isinstance(raw, Mapping):
        key = next((k for k in TARGET_KEYS if k in raw), None)
        if key is None:
            raise DataLoadError(f"The records of {source} have no targets",
                                f"they hold {', '.join(map(str, raw))}; the targets are the first of "
                                f"{', '.join(TARGET_KEYS)}",
                                f"name the targets 'labels' (or save x and y), {_ADAPTER_HINT}")
        inputs = {k: v for k, v in raw.items() if k != key}
        if not inputs:
            raise DataLoadError(f"The records of {source} hold only targets ({key!r})",
                                "the other keys are the model's inputs, and there are none",
                                f"add the inputs, {_ADAPTER_HINT}")
        if list(inputs) == ["x"]:
            return inputs["x"], raw[key]
        return inputs, raw[key]
    if isinstance(raw, (tuple, list)):
        if len(raw) < 2:
            raise DataLoadError(f"The data of {source} is a tuple of {len(raw)}",
                                "the last element is the targets and the others the inputs, so it needs two or more",
                                f"return (x, y), {_ADAPTER_HINT}")
        if len(raw) == 2:
            return raw[0], raw[1]
        return tuple(raw[:-1]), raw[-1]
    raise DataLoadError(f"The data of {source} is a {type(raw).__name__}",
                        "it must be (x, y), a dict of arrays or a tuple (inputs..., targets)", _ADAPTER_HINT)


def is_dataset(obj: Any) -> bool:
    """A map-style dataset (``torch.utils.data.Dataset``, a list of items ...), not an array."""
    if isinstance(obj, (str, bytes, Mapping, tuple, torch.Tensor, np.ndarray)):
        return False
    return isinstance(obj, torch.utils.data.Dataset) or (hasattr(obj, "__getitem__") and hasattr(obj, "__len__"))


def collate_dataset(dataset: Any, what: str) -> Any:
    """Every item of ``dataset`` stacked into one value of the items' structure: a dict of
    ``[N, ...]`` tensors for dict items, a tuple of them for tuple items (nested alike);
    strings become lists."""
    try:
        n = len(dataset)
    except Exception as e:
        raise DataLoadError(f"Cannot read {what}", f"it has no length ({type(e).__name__}: {e})",
                            "return a map-style Dataset (with __len__ and __getitem__) or arrays") from None
    if n == 0:
        raise DataLoadError(f"{what[:1].upper()}{what[1:]} is empty", hint="return a dataset with samples")
    items = []
    for i in range(n):
        try:
            items.append(dataset[i])
        except Exception as e:  # user code
            raise DataLoadError(f"Cannot read item {i} of {what}", f"{type(e).__name__}: {e}",
                                "fix the dataset's __getitem__") from None
    if not isinstance(items[0], (Mapping, tuple, list)):
        raise DataLoadError(f"The items of {what} are {type(items[0]).__name__}s",
                            "each item must be an (input, target) pair, a tuple (inputs..., target) or a dict",
                            "return e.g. (x, y) or {'input_ids': ..., 'labels': ...} from __getitem__")
    return _collate(items, "", what, top=True)


def _collate(values: Sequence[Any], path: str, what: str, top: bool = False) -> Any:
    first = values[0]
    if isinstance(first, Mapping):
        for i, v in enumerate(values):
            if not isinstance(v, Mapping) or set(v) != set(first):
                keys = sorted(map(str, v)) if isinstance(v, Mapping) else type(v).__name__
                raise DataLoadError(f"The items of {what} differ in their keys{' at ' + path if path else ''}",
                                    f"item 0 has {sorted(map(str, first))}, item {i} has {keys}",
                                    "give every item the same keys")
        return {k: _collate([v[k] for v in values], f"{path}[{k!r}]", what) for k in first}
    if isinstance(first, (tuple, list)) and (top or _is_structure(first)):
        for i, v in enumerate(values):
            if not isinstance(v, (tuple, list)) or len(v) != len(first):
                got = len(v) if isinstance(v, (tuple, list)) else type(v).__name__
                raise DataLoadError(f"The items of {what} differ in their length{' at ' + path if path else ''}",
                                    f"item 0 has {len(first)} elements, item {i} has {got}",
                                    "give every item the same structure")
        return tuple(_collate([v[j] for v in values], f"{path}[{j}]", what) for j in range(len(first)))
    return _stack(values, path, what)


def _is_structure(seq: Any) -> bool:
    """A nested tuple of arrays/tensors (several values), not one array written as a list of numbers."""
    return isinstance(seq, tuple) and len(seq) > 0 and isinstance(seq[0], (torch.Tensor, np.ndarray, Mapping, tuple))


def _stack(values: Sequence[Any], path: str, what: str) -> Any:
    if all(isinstance(v, str) for v in values):
        return list(values)
    where = f"the items' {path}" if path else "the items"
    try:
        ts = [v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for v in values]
    except Exception as e:
        raise DataLoadError(f"Cannot stack {where} of {what}", f"{type(e).__name__}: {e}",
                            "return numbers, arrays or tensors from __getitem__") from None
    for i, t in enumerate(ts):
        if t.shape != ts[0].shape:
            raise DataLoadError(f"Cannot stack {where} of {what}",
                                f"item 0 has shape {tuple(ts[0].shape)}, item {i} has {tuple(t.shape)}",
                                "give every item the same shape (pad sequences to one length, with an ignore "
                                "index such as -100 in token targets)")
    try:
        return torch.stack(ts)
    except Exception as e:
        raise DataLoadError(f"Cannot stack {where} of {what}", f"{type(e).__name__}: {e}",
                            "give every item the same shape and dtype") from None


def tensors_of(raw: Any) -> Any:
    """``raw`` with every numeric NumPy array (in dicts and tuples, nested) as a tensor."""
    if isinstance(raw, Mapping):
        return {k: tensors_of(v) for k, v in raw.items()}
    if isinstance(raw, tuple):
        return tuple(tensors_of(v) for v in raw)
    if isinstance(raw, np.ndarray) and raw.dtype.kind in "biufc":
        try:
            return torch.as_tensor(raw)
        except (TypeError, RuntimeError):  # a dtype torch lacks (uint32 on old torch ...)
            return raw
    return raw
