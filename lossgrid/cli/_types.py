"""The CLI's option types: finite numbers in stated ranges, counts with upper bounds.

Every numeric option of every command takes one of these, so that NaN, infinities and
absurd sizes stop at the command line (exit 2, the option named) instead of failing
minutes later, or allocating more than the machine has.

Example:
    >>> FINITE.convert("0.5", None, None)
    0.5
    >>> Count(1, 10).convert("11", None, None)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    click.exceptions.BadParameter: 11 is not in the range 1<=x<=10.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import click

#: seeds are 64-bit: torch's generators take at most 2^64 - 1, NumPy's less; 2^63 - 1 fits every one
MAX_SEED = 2**63 - 1
#: grid points of one call, samples of one batch, epochs of one run: far beyond any useful value, far below
#: what would allocate the machine away
MAX_POINTS_PER_CALL = 4096
MAX_BATCH = 2**24
MAX_EPOCHS = 10**6
MAX_REPEATS = 1000
MAX_ITERATIONS = 100_000


class FiniteFloat(click.FloatRange):
    """A float in ``[min, max]`` (open ends as asked) that is a number: NaN and infinities are refused."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class Count(click.IntRange):
    """A whole number in ``[min, max]``: a count or a size with an upper bound."""

    name = "count"


#: any finite float (a colour-scale bound, say)
FINITE = FiniteFloat()
SEED = Count(0, MAX_SEED)


def max_processes() -> int:
    """The most processes ``--nproc`` may start here: one per CPU core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Device(click.ParamType):
    """A torch device name lossgrid evaluates on: ``cpu``, ``cuda`` or ``cuda:N`` (whether this machine
    has it is checked when the command runs: a missing GPU is not a misspelled option)."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not re.fullmatch(r"cpu|cuda(:\d{1,4})?", text, re.ASCII):
            self.fail(f"{text!r} is not a device lossgrid runs on: use cpu, cuda or cuda:N", param, ctx)
        return text


DEVICE = Device()
