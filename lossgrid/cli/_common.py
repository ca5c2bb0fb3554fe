"""Shared CLI helpers: option parsing callbacks, progress bar, JSON output."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from ..config import Axis
from ..errors import ConfigError


def parse_axis(ctx: click.Context, param: click.Parameter, value: str | None) -> Axis | None:
    """Click callback: ``MIN:MAX:NUM`` -> :class:`Axis` (bad values exit 2)."""
    if value is None:
        return None
    try:
        return Axis.parse(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


class Progress:
    """A progress bar on stderr fed by the library's ``progress(done, total)`` callback."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled
        self.bar: Any = None
        self.last = 0
        self.t0 = 0.0
        self.start_done = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.t0, self.start_done, self.last = time.perf_counter(), done, done
            self.bar = click.progressbar(length=total, label=self.label, show_eta=True, show_pos=True,
                                         file=sys.stderr, item_show_func=self._rate)
            self.bar.__enter__()
            self.bar.update(done)
        self.bar.update(done - self.last)
        self.last = done

    def _rate(self, _: Any) -> str:
        dt = time.perf_counter() - self.t0
        return f"{(self.last - self.start_done) / dt:.1f} points/s" if dt > 0 else ""

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def run_with_progress(label: str, enabled: bool, fn: Callable[[Progress], Any]) -> Any:
    bar = Progress(label, enabled)
    try:
        return fn(bar)
    finally:
        bar.close()


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))
