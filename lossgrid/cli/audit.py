"""``lossgrid audit``: flatness/sharpness numbers of a model for audit pipelines.

Prints a readable report (or JSON with ``--json``), optionally writes the JSON
atomically to ``--out``, then checks the ``--fail-if`` conditions.

Exit codes:
    0  the report was written and no ``--fail-if`` condition is true;
    3  a ``--fail-if`` condition is true (the report is printed and written
       first; each true condition is named on stderr). A condition that reads a
       field without a finite value (not measured, or the loss was not finite)
       counts as true, whatever the order of its operands: an unknown value
       never passes a gate;
    1  an error (a model, data or file problem, an unknown field in
       ``--fail-if``): a message, no traceback;
    2  bad options (including a ``--fail-if`` that is not a valid expression).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import click

from ._common import (
    OVERWRITE_HELP,
    check_outputs,
    echo_json,
    input_files,
    run_with_progress,
    write_json,
)
from ._options import device_option, model_data_options
from ._types import MAX_BATCH, MAX_ITERATIONS, SEED, Count, FiniteFloat

EXIT_GATE_FAILED = 3


def parse_conditions(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    """Click callback: each ``--fail-if`` expression parsed up front (bad syntax exits 2)."""
    from ..audits.gate import parse_condition
    from ..errors import ConfigError

    try:
        return tuple(parse_condition(v) for v in value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


@click.command()
@model_data_options("lossgrid.zoo:resnet_digits", "Audit on a fixed, seeded subset of N samples.")
@click.option("--model2", metavar="FILE",
              help="Second checkpoint of the same architecture: adds the loss barrier along the interpolation.")
@click.option("--radius", "radii", type=FiniteFloat(min=0, min_open=True), multiple=True,
              default=(0.01, 0.05, 0.1), show_default=True, metavar="R",
              help="Filter-normalized radius of the random-direction statistics (repeatable).")
@click.option("--directions", type=Count(1, MAX_ITERATIONS), default=8, show_default=True,
              help="Seeded random filter-normalized directions.")
@click.option("--sharpness-radius", type=FiniteFloat(min=0, min_open=True), default=0.01, show_default=True,
              metavar="R", help="Radius eps of the sharpness ball (||delta_f|| <= eps ||w_f|| per filter).")
@click.option("--ascent-steps", type=Count(0, MAX_ITERATIONS), default=5, show_default=True,
              help="Projected gradient-ascent steps of the sharpness estimate.")
@click.option("--trace-samples", type=Count(4, MAX_ITERATIONS), default=32, show_default=True,
              help="Hessian-vector products of the Hutch++ trace estimate.")
@click.option("--no-hessian", is_flag=True, help="Skip the Hessian (top eigenvalue, trace).")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of the directions, the Lanczos start and the trace probes.")
@click.option("--batch-size", type=Count(1, MAX_BATCH), help="Samples per forward pass (default: by input size).")
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--out", metavar="FILE.json", help="Also write the JSON report to this file (atomically).")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
@click.option("--fail-if", "conditions", multiple=True, callback=parse_conditions, metavar="EXPR",
              help="Exit 3 if EXPR holds, e.g. 'top_eig > 500' or 'sharpness >= 0.2 and acc < 90' (repeatable: "
              "any true condition fails). Fields by dotted path or alias: loss, acc, sharpness, top_eig, trace, "
              "trace_ratio, curvature, barrier. A field without a finite value makes its condition true.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def audit(**kw: Any) -> None:
    """Audit the flatness of a model: sharpness, random-direction loss increases,
    curvature fits, Hessian top eigenvalue and trace, loss barrier (--model2).

    \b
    Exit codes: 0 report written, no --fail-if condition true;
                3 a --fail-if condition is true (named on stderr, report still written);
                1 error (message, no traceback); 2 bad options.

    \b
    Example:
      lossgrid audit --model lossgrid.zoo:resnet_digits --checkpoint net.pt \\
          --data digits:train --fail-if 'top_eig > 500' --out audit.json
    """
    from ..audits.gate import check_fields, evaluate, missing_values
    from ..audits.report import audit as run_audit
    from ..audits.report import gate_fields
    from ..data import load_data
    from ..models import load_model

    out = kw["out"]
    check_outputs({"--out": out}, input_files(kw, **{"--model2": kw["model2"]}), kw["overwrite"])  # before any work
    # unknown fields fail now, not after minutes of work
    fields = gate_fields(len(set(kw["radii"])), not kw["no_hessian"], kw["model2"] is not None)
    for condition in kw["conditions"]:
        _explain_left_out(condition, fields, kw)
        check_fields(condition, fields)
    model, description = load_model(kw["model"], kw["checkpoint"], kw["trust_checkpoint"])
    model2 = None
    if kw["model2"] is not None:
        model2, _ = load_model(kw["model"], kw["model2"], kw["trust_checkpoint"])
    data = load_data(kw["data"], kw["samples"], batch=kw["batch"])

    report = run_with_progress("audit", not kw["quiet"], lambda bar: run_audit(
        model, data, kw["loss"], model2=model2, radii=kw["radii"], directions=kw["directions"], seed=kw["seed"],
        sharpness_radius=kw["sharpness_radius"], ascent_steps=kw["ascent_steps"], hessian=not kw["no_hessian"],
        trace_samples=kw["trace_samples"], batch_size=kw["batch_size"], device=kw["device"], progress=bar,
        model_description=description, model2_description=kw["model2"]))
    if out is not None:
        write_json(out, report, "audit JSON")
    if kw["as_json"]:
        echo_json(report)
    else:
        click.echo(format_report(report))
        if out is not None:
            click.echo(f"wrote {os.fspath(out)}")
    failed = [c for c in kw["conditions"] if evaluate(c, report)]
    for condition in failed:
        missing = missing_values(condition, report)
        why = f" (no finite value for {', '.join(missing)}: counted as true)" if missing else ""
        click.echo(f"audit: --fail-if condition is true: {condition}{why}", err=True)
    if failed:
        sys.stderr.flush()
        click.get_current_context().exit(EXIT_GATE_FAILED)


def format_report(r: dict[str, Any]) -> str:
    """The audit report as readable text (the JSON holds the same numbers and more)."""
    s = r["settings"]
    lines = [f"audit of {r['model']} on {r['data']} ({r['samples']:,} samples, {r['parameters']:,} parameters), "
             f"loss {r['loss']}, seed {r['seed']}, {r['device']}, {r['seconds']:.1f} s",
             f"center      loss {_g(r['center']['loss'])}   accuracy {_g(r['center']['accuracy'], '.2f')}%"]
    sh = r["sharpness"]
    lines.append(f"sharpness   {_g(sh['value'])} (a lower bound of the max loss increase; relative "
                 f"{_g(sh['relative'])}%) within filter radius {sh['radius']:g}, {sh['steps']} ascent steps, "
                 f"loss there {_g(sh['loss_at_max'])}")
    lines.append(f"random directions ({s['directions']}, filter-normalized): mean loss increase at +-r, 95% CI")
    for d in r["random_directions"]:
        lines.append(f"  r={d['radius']:<8g} {_g(d['mean_increase'])}  [{_g(d['ci95_low'])}, {_g(d['ci95_high'])}]"
                     f"  max {_g(d['max_increase'])}")
    q = r["quadratic_fits"]
    lines.append(f"quadratic fits: curvature 2a = {_g(q['curvature_mean'])} +- {_g(q['curvature_std'])} (std), "
                 f"median R^2 {_g(q['r2_median'], '.3f')}")
    h = r["hessian"]
    if h is None:
        lines.append("hessian     (skipped: --no-hessian)")
    else:
        lines.append(f"hessian     top eigenvalue {_g(h['top_eig'])} (residual {_g(h['top_eig_residual'], '.2g')}, "
                     f"{h['lanczos_iterations']} Lanczos steps); trace {_g(h['trace'])} +- {_g(h['trace_stderr'])} "
                     f"({h['trace_method']}, {h['trace_samples']} HVPs); trace/top {_g(h['trace_over_top'])}")
    b = r["barrier"]
    if b is not None:
        lines.append(f"barrier     {_g(b['value'])} at alpha {b['alpha']:.3g} (loss {_g(b['loss_start'])} -> "
                     f"{_g(b['loss_end'])}, {len(b['alphas'])} points) to {r['model2']}")
    return "\n".join(lines)


def _g(value: float | None, fmt: str = ".4g") -> str:
    return "-" if value is None else format(value, fmt)


def _explain_left_out(condition: Any, fields: list[str], kw: dict[str, Any]) -> None:
    """A --fail-if field this report leaves out because of the options: say which option, rather than
    that the field is unknown."""
    from ..audits.report import gate_fields
    from ..errors import ConfigError

    for path in condition.fields:
        if path in fields:
            continue
        section = path.split(".", 1)[0]
        if section == "hessian" and kw["no_hessian"]:
            raise ConfigError(f"--fail-if '{condition}' reads '{path}', which --no-hessian leaves out of the report",
                              "a condition on a value that is not measured could never pass",
                              "drop --no-hessian, or that condition")
        if section == "barrier" and kw["model2"] is None:
            raise ConfigError(f"--fail-if '{condition}' reads '{path}', which only an audit with --model2 measures",
                              "the loss barrier lies between two checkpoints",
                              "pass --model2 with the second checkpoint, or drop that condition")
        first = re.sub(r"^random_directions\.\d+\.", "random_directions.0.", path)
        if section == "random_directions" and first != path and first in gate_fields(1, True, True):
            count = len(set(kw["radii"]))
            raise ConfigError(f"--fail-if '{condition}' reads '{path}', beyond the {count} --radius "
                              f"value{'s' if count != 1 else ''} of this audit",
                              "random_directions has one entry per radius",
                              "pass more --radius values, or an index below their count")
