"""Shared CLI helpers: option parsing callbacks, progress bar, JSON output."""

from __future__ import annotations

import json
import os
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


DATA_HELP = ("digits[:train|:test], npz:FILE (x and y, or records such as input_ids/attention_mask/labels), "
             "cifar10:DIR[:test][:norm=reference|dataset|none|M,M,M/S,S,S], "
             "cifar100:DIR[:test][:label=fine|coarse][:norm=dataset|reference|none|M,M,M/S,S,S], "
             "imagefolder:DIR[:size=H[xW]][:norm=none|imagenet|reference|M,M,M/S,S,S][:gray], "
             "synthetic:SHAPE:N[:CLASSES] (e.g. 3x32x32:50000, seeded random inputs, for benchmarks), "
             "or module:function.")


MODEL_HELP = ("A zoo name (resnet56, resnet56_noshort, ...: lossgrid zoo) or a factory: path/to/file.py:fn or "
              "package.module:fn.")
LOSS_HELP = ("cross_entropy, mse, token_cross_entropy[:ignore=N] (sequence models: logits [B, T, V], token ids "
             "[B, T], ignore index -100; the mean per token), or module:function returning per-sample losses.")
BATCH_HELP = ("module:function splitting the collated data set into (inputs, targets), inputs a tensor, a tuple "
              "(positional arguments) or a dict (keyword arguments). Without it: dicts with a 'labels' key, tuples "
              "(..., target) and (x, y) pairs follow the documented convention.")


def input_files(kw: dict[str, Any], **more: str | None) -> dict[str, str | None]:
    """The files a command reads (by option), which none of its outputs may be."""
    from ..surface.job import spec_file

    return {"--checkpoint": kw.get("checkpoint"), "--model": spec_file(kw.get("model")),
            "--data": spec_file(kw.get("data")), "--loss": spec_file(kw.get("loss")),
            "--batch": spec_file(kw.get("batch")), **more}


OVERWRITE_HELP = ("Replace an existing --out file (without it, an existing file is refused: it may hold an earlier "
                  "result).")


def check_outputs(outputs: dict[str, str | None], inputs: dict[str, str | None], overwrite: bool = False) -> None:
    """Refuse unwritable outputs, outputs that are inputs (or each other), and existing outputs
    unless ``overwrite``, before any work. ``outputs`` maps an option (``--out``) to its path
    (``None``: not given); a ``--plot`` path must name an image format matplotlib writes."""
    from .._files import check_output_path, refuse_input_as_output, same_file

    given = [(option, path) for option, path in outputs.items() if path is not None]
    for option, path in given:
        check_output_path(path, f"{option} file")
        refuse_input_as_output(path, inputs, option)
        if os.path.lexists(path) and not overwrite:
            raise ConfigError(f"{option} {path} exists", "it may hold an earlier result, which lossgrid replaces only "
                              "when asked", "choose another path, or pass --overwrite to replace it")
        if option == "--plot":
            check_image_format(path, option)
    for i, (a, pa) in enumerate(given):
        for b, pb in given[i + 1:]:
            if same_file(pa, pb) or os.path.abspath(pa) == os.path.abspath(pb):
                raise ConfigError(f"{a} and {b} name the same file {pa}", hint="give them different paths")


def write_json(path: str, obj: Any, what: str) -> None:
    """``obj`` as indented JSON, written atomically (never a half-written file in place)."""
    from .._files import atomic_output

    with atomic_output(path, what) as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def check_image_format(path: str, option: str) -> None:
    """Refuse, before any work, a picture path whose extension matplotlib cannot write."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in formats:
        raise ConfigError(f"{option} {path} has no image format matplotlib writes",
                          f"the extension is {'.' + ext if ext else 'missing'}",
                          f"end the path with one of {', '.join('.' + f for f in sorted(formats))}")
