"""``lossgrid hessian``: extreme eigenvalues, trace and spectral density of the
Hessian of the loss over a whole evaluation set."""

from __future__ import annotations

import os
from typing import Any

import click

from ._common import Progress, check_outputs, echo_json, input_files, write_json
from ._options import device_option, model_data_options
from ._types import MAX_BATCH, MAX_ITERATIONS, SEED, Count, FiniteFloat

TRACE_METHODS = ("hutch++", "hutchinson")  # the library's lossgrid.hessian.operator.TRACE_METHODS (kept light)


class _HvpProgress(Progress):
    """The shared progress bar, counting Hessian-vector products against a planned budget."""

    def __init__(self, enabled: bool) -> None:
        super().__init__("hessian", enabled)
        self.total = 1

    def hvp(self, done: int) -> None:
        self(min(done, self.total), self.total)  # Lanczos may stop before the planned budget

    def _rate(self, _: Any) -> str:
        text = super()._rate(_)
        return text.replace("points/s", "HVPs/s")


@click.command()
@model_data_options("resnet20", "Use a fixed, seeded subset of N samples.",
                    "H is taken over ALL of it (or of --samples).")
@click.option("--params", "params", metavar="GLOB",
              help="Parameters to differentiate: fnmatch globs over parameter names, comma-separated "
              "(e.g. 'layer3.*' or 'fc.weight,fc.bias'). Default: all that require grad.")
@click.option("--top-k", type=Count(0, MAX_ITERATIONS), default=1, show_default=True,
              help="Largest eigenvalues to find (Lanczos; 0: none).")
@click.option("--bottom-k", type=Count(0, MAX_ITERATIONS), default=0, show_default=True,
              help="Smallest (most negative) eigenvalues to find.")
@click.option("--trace", is_flag=True, help="Estimate the trace of the Hessian.")
@click.option("--trace-samples", type=Count(4, MAX_ITERATIONS), default=64, show_default=True,
              help="HVPs spent on the trace.")
@click.option("--trace-method", type=click.Choice(TRACE_METHODS), default="hutch++", show_default=True,
              help="hutch++ with --top-k: the eigenvalues' Lanczos basis is its low-rank part (no extra HVP) and "
              "probes run until the standard error reaches --trace-rse, at most --trace-samples.")
@click.option("--trace-rse", type=FiniteFloat(0, 1, min_open=True), default=0.05, show_default=True, metavar="SHARE",
              help="With --top-k and hutch++: stop drawing probes once the trace's standard error is at most this "
              "share of the trace.")
@click.option("--eig-tol", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=1e-4, show_default=True,
              metavar="TOL", help="Lanczos stops once every requested eigenpair's residual bound is at most TOL "
              "times the largest eigenvalue's magnitude (with --trace and hutch++: times each top eigenvalue's).")
@click.option("--density", is_flag=True,
              help="Spectral density by stochastic Lanczos quadrature (4 runs x 40 steps).")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of every random vector (same seed, same machine: identical results).")
@click.option("--batch-size", type=Count(1, MAX_BATCH), help="Samples per pass of an HVP (default: by input size).")
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout instead of a table.")
@click.option("--out", metavar="FILE.json", help="Also write the JSON result to this file (atomically).")
@click.option("--plot", metavar="FILE.png",
              help="Plot the spectral density (log scale) to this file; implies --density.")
@click.option("--overwrite", is_flag=True,
              help="Replace existing --out and --plot files (without it, existing files are refused).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def hessian(**kw: Any) -> None:
    """Curvature of the loss: top/bottom Hessian eigenvalues, trace, spectral density.

    H is the Hessian of the mean loss over the whole evaluation set (every
    Hessian-vector product is one pass over the data) with the model in eval
    mode: BatchNorm uses its running statistics.

    \b
    Example:
      lossgrid hessian --model lossgrid.zoo:resnet_digits --checkpoint net.pt \\
          --data digits:test --top-k 3 --bottom-k 1 --trace --density --plot density.png
    """
    from .._files import atomic_output
    from ..data import load_data
    from ..hessian.operator import hessian_operator, planned_hvps
    from ..hessian.report import curvature_summary, plot_density
    from ..models import load_model

    check_outputs({"--out": kw["out"], "--plot": kw["plot"]}, input_files(kw), kw["overwrite"])  # before any work
    density = kw["density"] or kw["plot"] is not None
    model, description = load_model(kw["model"], kw["checkpoint"], kw["trust_checkpoint"])
    data = load_data(kw["data"], kw["samples"], batch=kw["batch"])
    bar = _HvpProgress(not kw["quiet"])
    try:
        op = hessian_operator(model, data, kw["loss"], kw["params"], kw["batch_size"], kw["device"],
                              progress=bar.hvp)
        trace_samples = kw["trace_samples"] if kw["trace"] else 0
        bar.total = planned_hvps(op.size, kw["top_k"], kw["bottom_k"], trace_samples, density)
        summary, dens = curvature_summary(op, kw["top_k"], kw["bottom_k"], trace_samples, kw["trace_method"],
                                          density, kw["seed"], kw["eig_tol"], kw["trace_rse"])
    finally:
        bar.close()
    result = {"model": description, "data": data.description, "samples": len(data), "loss": kw["loss"],
              "params": kw["params"] or "all that require grad", "device": kw["device"], **summary}
    if kw["plot"] is not None and dens is not None:
        with atomic_output(kw["plot"], "density plot") as tmp:
            plot_density(dens, tmp, f"Hessian spectral density: {os.path.basename(description)} "
                         f"on {len(data)} samples")
    if kw["out"] is not None:
        write_json(kw["out"], result, "hessian JSON")
    if kw["as_json"]:
        echo_json(result)
        return
    click.echo(format_summary(result))
    for option in ("plot", "out"):
        if kw[option] is not None:
            click.echo(f"wrote {os.fspath(kw[option])}")


def format_summary(r: dict[str, Any]) -> str:
    """The result as a short plain-text report."""
    lines = [f"{r['model']} on {r['data']}: {r['samples']:,} samples, loss {r['loss_value']:.6g}, "
             f"|grad| {r['grad_norm']:.3g}",
             f"parameters: {r['parameters']:,} in {r['parameter_tensors']} tensor(s) ({r['params']}), {r['dtype']}",
             f"note: {r['note']}"]
    for which in ("top", "bottom"):
        if which in r:
            e = r[which]
            lines.append(f"{which} eigenvalues ({e['iterations']} Lanczos steps):")
            lines.extend(f"  {i:>3}  {v:>14.6g}   residual {res:.2g}"
                         for i, (v, res) in enumerate(zip(e["values"], e["residuals"]), 1))
    if "trace" in r:
        t = r["trace"]
        lines.append(f"trace ({t['method']}, {t['samples']} HVPs): {t['value']:.6g} +- {t['stderr']:.2g} "
                     f"(mean eigenvalue {t['mean_eigenvalue']:.3g})")
    if "density" in r:
        d = r["density"]
        lines.append(f"density (SLQ, {d['runs']} runs x {d['iters']} steps, sigma {d['sigma']:.2g}): "
                     f"support [{d['min']:.4g}, {d['max']:.4g}], mean eigenvalue {d['mean']:.3g}")
    lines.append(f"{r['hvp_count']} Hessian-vector products in {r['seconds']} s")
    return "\n".join(lines)
