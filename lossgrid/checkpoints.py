"""Checkpoints of a training run: found by glob, ordered by the numbers in their names.

Example:
    >>> sort_checkpoints(["run/epoch_10.pt", "run/final.pt", "run/epoch_2.pt", "run/init.pt"])[:3]
    ['run/init.pt', 'run/epoch_2.pt', 'run/epoch_10.pt']
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ._files import input_file_problem
from .errors import ConfigError

log = logging.getLogger(__name__)


def checkpoint_paths(patterns: str | Sequence[str]) -> list[str]:
    """Files matching the glob(s) ``patterns``, sorted by the numbers in their file
    names (``epoch_2`` before ``epoch_10``; names without numbers first), duplicates dropped.

    Example:
        >>> checkpoint_paths("run/epoch_*.pt")  # doctest: +SKIP
        ['run/epoch_1.pt', 'run/epoch_2.pt', 'run/epoch_10.pt']
    """
    patterns = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
    found: dict[str, str] = {}
    empty = []
    for pattern in patterns:
        pattern = os.fspath(pattern)
        if not glob.has_magic(pattern) and os.path.exists(pattern) and input_file_problem(pattern):
            raise ConfigError(f"Cannot read checkpoint {pattern}", input_file_problem(pattern),
                              "check the --checkpoints paths")
        hits = [p for p in glob.glob(pattern) if os.path.isfile(p)] if glob.has_magic(pattern) else (
            [pattern] if os.path.isfile(pattern) else [])
        if not hits:
            empty.append(pattern)
        for p in hits:
            found.setdefault(os.path.realpath(p), p)
    if empty:
        raise ConfigError(f"No checkpoint file matches {', '.join(repr(p) for p in empty)}",
                          "a pattern matched no file" + (f" (cwd {os.getcwd()})" if not os.path.isabs(empty[0])
                                                         else ""),
                          "quote the glob so that lossgrid expands it, e.g. --checkpoints 'run/epoch_*.pt', "
                          "and check the directory")
    return sort_checkpoints(found.values())


#: a number in a file name: ASCII digits only (``²`` or ``٣`` are characters of the name, not numbers)
NUMBER = re.compile(r"(\d+)", re.ASCII)


def natural_key(path: str) -> tuple[Any, ...]:
    """Sort key of a checkpoint: by the numbers in its file name (``epoch_2`` before ``epoch_10``);
    names without a number come first if they start with ``init`` or ``start`` (``init.pt``), after
    all numbered ones otherwise (``final.pt``, ``best.pt``), then by name."""
    stem = os.path.splitext(os.path.basename(path))[0]
    numbers = tuple(int(n) for n in NUMBER.findall(stem))
    group = 1 if numbers else 0 if stem.lower().startswith(("init", "start")) else 2
    return group, numbers, [int(p) if NUMBER.fullmatch(p) else p for p in NUMBER.split(path)]


def sort_checkpoints(paths: Iterable[str]) -> list[str]:
    """Checkpoints in training order by :func:`natural_key`; warns when numbered names are mixed
    with unnumbered ones taken as the latest (``final.pt``)."""
    ordered = sorted(paths, key=natural_key)
    unnumbered = [p for p in ordered if natural_key(p)[0] == 2]
    if unnumbered and len(unnumbered) < len(ordered):
        log.warning("checkpoint names without a number (%s) are ordered after the numbered ones; pass "
                    "--final or name them by epoch if that is not their place", ", ".join(unnumbered[:3]))
    return ordered


def epoch_of(path: str) -> int | None:
    """The last number in a checkpoint's file name (``model_12.t7`` -> 12), or ``None``."""
    numbers = NUMBER.findall(os.path.splitext(os.path.basename(path))[0])
    return int(numbers[-1]) if numbers else None


def find_checkpoints(patterns: Iterable[str]) -> list[str]:
    """Expand glob patterns (or plain paths) into checkpoint files, natural-sorted, without duplicates."""
    found: dict[str, str] = {}
    for pattern in patterns:
        matches = [p for p in glob.glob(pattern) if os.path.isfile(p)] if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise ConfigError(f"No checkpoint matches {pattern!r}", "the pattern names no file",
                              "quote the pattern ('run/epoch_*.pt') and check its directory")
        for p in matches:
            problem = input_file_problem(p)
            if problem:
                raise ConfigError(f"Cannot read checkpoint {p}", problem, "check the --checkpoints paths")
            found.setdefault(os.path.realpath(p), p)
    return sort_checkpoints(found.values())
