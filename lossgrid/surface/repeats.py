"""Several random direction pairs for one surface (``--repeats R``): one pair can mislead.

Repeat ``r`` uses direction seed ``seed + r`` and is an ordinary, resumable surface
file beside the output (``OUT.seed<S>.h5``, :func:`repeat_paths`); every lossgrid
command reads it. Once all of them are complete, the output itself is a summary
surface: per point the mean loss and accuracy over the repeats, the spread of the
loss across direction pairs (``train_loss_std``, sample standard deviation) and the
standard error of that mean (``train_loss_se`` = spread / sqrt(R)), written
atomically and rewritten whenever the command runs again. Its identity lists the
repeat files, their seeds and their direction fingerprints.

Example:
    >>> repeat_paths("surface.h5", [0, 1])
    ['surface.seed0.h5', 'surface.seed1.h5']
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._files import atomic_output
from ..engine.lock import WriterLock
from .file import SCHEMA_VERSION, Surface, load_surface

KIND = "repeats"


def repeat_paths(out: str | os.PathLike, seeds: Sequence[int]) -> list[str]:
    """The surface file of each repeat, beside ``out``."""
    stem, ext = os.path.splitext(os.fspath(out))
    return [f"{stem}.seed{seed}{ext or '.h5'}" for seed in seeds]


def summarize(surfaces: Sequence[Surface]) -> dict[str, np.ndarray]:
    """Per-point mean, spread and standard error of the loss (and mean accuracy) over repeats."""
    loss = np.stack([s.loss for s in surfaces])
    acc = np.stack([s.acc for s in surfaces])
    r = len(surfaces)
    std = loss.std(axis=0, ddof=1) if r > 1 else np.full(loss.shape[1:], np.nan)
    return {"train_loss": loss.mean(axis=0), "train_acc": acc.mean(axis=0), "train_loss_std": std,
            "train_loss_se": std / np.sqrt(r)}


def write_summary(out: str | os.PathLike, paths: Sequence[str], seeds: Sequence[int]) -> Surface:
    """Write the summary surface of the complete repeat files ``paths`` to ``out`` (atomically)."""
    import h5py

    surfaces = [load_surface(p) for p in paths]
    first = surfaces[0]
    values = summarize(surfaces)
    done = np.logical_and.reduce([s.done for s in surfaces])
    identity = {"file_kind": KIND, "repeats": len(paths), "seeds": list(map(int, seeds)),
                "files": [os.path.basename(p) for p in paths],
                "directions": [json.loads(s.attrs.get("identity", "{}")).get("directions") for s in surfaces]}
    attrs = {k: first.attrs[k] for k in ("precision", "bn", "se_population") if k in first.attrs}
    out = os.fspath(out)
    with WriterLock(out), atomic_output(out, "repeat summary") as tmp, h5py.File(tmp, "w") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["identity"] = json.dumps(identity, sort_keys=True)
        f.attrs["repeats"] = len(paths)
        for key, value in attrs.items():
            f.attrs[key] = value
        f.create_dataset("xcoordinates", data=first.xcoordinates)
        if first.ycoordinates is not None:
            f.create_dataset("ycoordinates", data=first.ycoordinates)
        for name, data in values.items():
            f.create_dataset(name, data=data)
        f.create_dataset("done", data=done.astype(np.uint8))
    return load_surface(out)


def spread_summary(surface: Surface) -> dict[str, Any]:
    """The JSON summary's numbers on how much the direction pairs disagree."""
    std = surface.extra.get("train_loss_std")
    if std is None or not np.isfinite(std).any():
        return {}
    return {"repeats": int(surface.attrs.get("repeats", 0)), "loss_std_max": float(np.nanmax(std)),
            "loss_std_mean": float(np.nanmean(std))}
