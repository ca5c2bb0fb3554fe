"""``lossgrid bench``: time every backend/strategy/precision on a model and data set."""

from __future__ import annotations

import os
from typing import Any

import click

from ..config import MAX_GRID_POINTS, PRECISIONS
from ..engine.runners import ALL_STRATEGIES, BACKENDS
from ._common import OVERWRITE_HELP, check_outputs, echo_json, input_files, write_json
from ._options import device_option, model_data_options
from ._types import MAX_BATCH, MAX_POINTS_PER_CALL, MAX_REPEATS, Count


def parse_project(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Click callback: ``NXxNY:SAMPLES`` -> :class:`~lossgrid.bench.run.Projection` (bad text exits 2)."""
    if value is None:
        return None
    from ..bench.run import Projection
    from ..errors import ConfigError

    try:
        return Projection.parse(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


@click.command()
@model_data_options("resnet20", "Time on a fixed, seeded subset of N samples.")
@device_option()
@click.option("--backend", "backends", type=click.Choice(BACKENDS), multiple=True,
              help="Backend to time (repeatable; default: every backend but auto).")
@click.option("--strategy", "strategies", type=click.Choice(ALL_STRATEGIES), multiple=True,
              help="Strategy to time (repeatable; default: every strategy but auto).")
@click.option("--precision", "precisions", type=click.Choice(PRECISIONS), multiple=True, default=("fp32",),
              show_default=True, help="Precision to time (repeatable).")
@click.option("--points", type=Count(1, MAX_GRID_POINTS), default=8, show_default=True,
              help="Grid points each row evaluates (the same points for every row).")
@click.option("--batch-size", type=Count(1, MAX_BATCH), help="Samples per forward pass (default: the runner's).")
@click.option("--points-per-call", type=Count(1, MAX_POINTS_PER_CALL),
              help="Grid points per runner call (default: the runner's).")
@click.option("--repeats", type=Count(1, MAX_REPEATS), default=1, show_default=True,
              help="Timed passes per row; the best counts.")
@click.option("--project", callback=parse_project, metavar="NXxNY:SAMPLES",
              help="Also project the wall time of a whole surface, e.g. 51x51:50000.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout instead of a table.")
@click.option("--out", metavar="FILE.json", help="Also write the JSON result to this file (atomically).")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
def bench(**kw: Any) -> None:
    """Time every backend/strategy/precision on one model and data set.

    Each row reports points x samples per second, TFLOP/s and the share of
    this device's GEMM peak measured in the same run, peak memory, the chunk
    sizes, the loss error against the first fp32 row and, with --project, the
    projected time of a whole surface. Combinations that cannot run here are
    listed with the reason.

    \b
    Example:
      lossgrid bench --model lossgrid.zoo:resnet_digits --data digits:test \\
          --backend torch --backend onnxruntime --project 51x51:1797
    """
    from ..bench.run import run_bench
    from ..data import load_data
    from ..models import load_model

    out = kw["out"]
    check_outputs({"--out": out}, input_files(kw), kw["overwrite"])  # before any work
    model, description = load_model(kw["model"], kw["checkpoint"], kw["trust_checkpoint"])
    data = load_data(kw["data"], kw["samples"], batch=kw["batch"])

    def progress(done: int, total: int) -> None:  # rows take seconds to minutes each: one line per row
        click.echo(f"bench: {done}/{total} rows done", err=True)

    result = run_bench(model, data, kw["device"], kw["backends"] or None, kw["strategies"] or None,
                       kw["precisions"], kw["points"], kw["batch_size"], kw["points_per_call"], kw["project"],
                       None if kw["quiet"] else progress, loss=kw["loss"], repeats=kw["repeats"],
                       model_description=description)
    if out is not None:
        write_json(out, result, "bench JSON")
    if kw["as_json"]:
        echo_json(result)
    else:
        click.echo(format_table(result))
        if out is not None:
            click.echo(f"wrote {os.fspath(out)}")


def format_table(result: dict[str, Any]) -> str:
    """The bench result as a plain-text table (one line per row, reasons for unavailable ones)."""
    lines = [f"{result['model']}: {result['parameters']:,} parameters, {result['flops_per_sample'] / 1e6:.3g} "
             f"MFLOP/sample; {result['samples']:,} samples x {result['points']} points on {result['device']} "
             f"({result['device_name']}, {result['cores']} cores), torch {result['torch_version']}"]
    peaks = []
    for precision, p in result["peak_gemm"].items():
        if p.get("tflops") is None:
            continue
        libs = ", ".join(f"{lib} {p[f'{lib}_tflops']:.3g}" for lib in ("torch", "onnxruntime")
                         if p.get(f"{lib}_tflops") is not None)
        peaks.append(f"{precision} {p['tflops']:.3g} TFLOP/s ({libs})")
    lines.append("GEMM peak, this run: " + ("; ".join(peaks) or "-"))
    project = result.get("project")
    head = ["backend/strategy", "prec", "pts x smp/s", "TFLOP/s", "%peak", "peak mem", "K", "batch", "loss err"]
    if project:
        head.append(project["text"])
    table = [head]
    reasons: list[str] = []  # each distinct reason once, numbered
    for r in result["rows"]:
        name = f"{r['backend']}/{r['strategy']}" + (f" ({r['ran']})" if r.get("ran") and r["strategy"] == "auto"
                                                     else "")
        if not r["available"]:
            if r["reason"] not in reasons:
                reasons.append(r["reason"])
            table.append([name, r["precision"], f"unavailable [{reasons.index(r['reason']) + 1}]"])
            continue
        mem = r["peak_memory_bytes"] / 2 ** 20
        cells = [name, r["precision"], f"{r['points_x_samples_per_s']:,.0f}", _num(r["achieved_tflops"]),
                 _num(r["pct_of_peak"], ".1f"), f"{mem:,.0f} MiB" + ("*" if r["peak_memory_scope"].startswith(
                     "process") else ""), str(r["points_per_call"]), str(r["batch_size"]),
                 _num(r["max_rel_loss_error"], ".1e")]
        if project:
            cells.append(_duration(r.get("projected_seconds")))
        table.append(cells)
    widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(len(head))]
    for row in table:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip())
    if any(r.get("peak_memory_scope", "").startswith("process") for r in result["rows"]):
        lines.append("* peak RSS of the whole process so far (the CPU has no per-row count)")
    lines.append(f"loss err: max relative against {result['loss_reference'] or '(no fp32 row)'} at the same points")
    lines.extend(f"[{i}] {reason}" for i, reason in enumerate(reasons, 1))
    return "\n".join(lines)


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "-" if value is None else format(value, fmt)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
