"""``lossgrid gallery``: the paper's comparisons (shortcuts, batch size) trained, measured and drawn."""

from __future__ import annotations

from typing import Any

import click

from ._common import Progress, echo_json
from ._options import device_option
from ._types import MAX_EPOCHS, MAX_REPEATS, Count


class _StageProgress:
    """One progress bar per stage (``train resnet56, seed 0``, ``surface ...``) on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stage: str | None = None
        self.bar: Progress | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self.close()
            self.stage, self.bar = stage, Progress(stage, True)
        assert self.bar is not None
        self.bar(done, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@click.command()
@click.option("--out", required=True, metavar="DIR",
              help="Output directory (index.html, gallery.json, seed_*/). One holding an earlier gallery is refused "
                   "unless --overwrite.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier gallery in --out once this one is complete (an interrupted or failed run "
                   "leaves it as it was). Other files there are never touched.")
@click.option("--data", "data_dir", metavar="CIFAR10_DIR",
              help="Train on CIFAR-10 in this folder (data_batch_1..5, test_batch) instead of the bundled digits.")
@click.option("--size", type=click.Choice(["ci", "full"]), default="full", show_default=True,
              help="ci: seconds, for tests; full: the figures (digits: a few minutes on 2 CPU cores).")
@click.option("--seeds", type=Count(1, MAX_REPEATS), default=1, show_default=True,
              help="Repeat everything for seeds 0 ... N-1 (the orderings are reported per seed).")
@click.option("--epochs", type=Count(1, MAX_EPOCHS), help="Override the size's epochs.")
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print gallery.json on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def gallery(out: str, data_dir: str | None, size: str, seeds: int, epochs: int | None, device: str,
            as_json: bool, quiet: bool, overwrite: bool) -> None:
    """Train ResNets with and without shortcuts at two depths, and one with a small and a
    large batch (Li et al. 2018's recipe); compute their filter-normalized 2D surfaces and
    render the paper's comparisons on shared scales, with index.html and gallery.json.

    \b
    Example:
      lossgrid gallery --out gallery            # digits, a few minutes on 2 CPU cores
      lossgrid gallery --out g --seeds 3        # are the orderings the same for 3 seeds?
    """
    from .._outdir import check_output_dir
    from ..gallery.build import is_gallery_file, run_gallery

    check_output_dir(out, "gallery", is_gallery_file, overwrite)  # before any work
    bar = _StageProgress(not quiet)
    try:
        result = run_gallery(out, size=size, data_dir=data_dir, seeds=seeds, epochs=epochs, device=device,
                             progress=bar, overwrite=overwrite)
    finally:
        bar.close()
    if as_json:
        echo_json(result)
        return
    _echo(result)


def _echo(result: dict[str, Any]) -> None:
    for seed in result["seeds"]:
        run = result["runs"][str(seed)]
        for key, label in (("deep_noshort_less_convex", "deep net without shortcuts less convex"),
                           ("large_batch_sharper", "large batch sharper")):
            v = run["verdicts"][key]
            values = ", ".join(f"{name} {value:.4g}" if value is not None else f"{name} n/a"
                               for name, value in v["values"].items())
            holds = {True: "yes", False: "NO", None: "n/a"}[v["holds"]]
            click.echo(f"seed {seed}: {label}: {holds} ({v['measure']}: {values})")
    click.echo(f"gallery in {result['seconds']} s; wrote {result['paths']['index']} and {result['paths']['json']}")
