"""``lossgrid surface``: compute a 1D or 2D loss surface into an HDF5 file."""

from __future__ import annotations

from typing import Any

import click

from ..config import (
    BN_POLICIES,
    AdaptiveSpec,
    BatchNormSpec,
    CurvatureSpec,
    SurfaceJob,
)
from ._common import BATCH_HELP, DATA_HELP, LOSS_HELP, MODEL_HELP, echo_json, run_with_progress
from ._options import (
    TRUST_HELP,
    direction_options,
    direction_spec_of,
    eval_options,
    eval_spec_of,
    grid_of,
    grid_options,
    report_options,
)
from ._types import (
    MAX_BATCH,
    MAX_ITERATIONS,
    MAX_REPEATS,
    SEED,
    Count,
    FiniteFloat,
    max_processes,
)


@click.command()
@click.option("--model", "model", metavar="SPEC", help=MODEL_HELP)
@click.option("--checkpoint", metavar="FILE",
              help="state_dict (or {'state_dict': ...}), pickled module or TorchScript.")
@click.option("--model2", metavar="FILE", help="Second checkpoint: 1D interpolation, x=0 model, x=1 model2.")
@click.option("--trust-checkpoint", is_flag=True, help=TRUST_HELP)
@click.option("--data", default="digits", show_default=True, help=DATA_HELP)
@click.option("--samples", type=Count(1, None),
              help="Evaluate on a fixed, seeded subset of N samples (the same at every point: differences between "
              "points are far more precise than each value; every point's standard error is stored).")
@click.option("--anchor-stride", type=Count(2, 2048), metavar="K",
              help="With --samples or --target-se: evaluate every K-th point on each axis (and the last) exactly on "
              "all of --data "
              "and use these anchors, interpolated sample by sample, as control variates for the other points "
              "(unbiased; far smaller standard errors where the loss is large and spread). With --adaptive the "
              "anchors are also its first grid, and only the points it refines are estimated.")
@click.option("--target-se", type=FiniteFloat(min=0, min_open=True), metavar="E",
              help="Choose the subset by a pilot, and grow it, until every point's loss has a standard error of at "
              "most E against the whole --data set.")
@click.option("--adaptive", is_flag=True,
              help="Evaluate a coarse grid, then only where interpolation is measured to be off by more than "
              "--adaptive-tol of the loss range; fill the rest by that interpolation (marked in the file and "
              "plots).")
@click.option("--adaptive-tol", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, metavar="SHARE", help="Accepted interpolation error, a share of the loss range.")
@click.option("--adaptive-coarse", type=Count(1, 2048), metavar="STRIDE",
              help="Stride of the first grid: larger evaluates fewer points on smooth surfaces but can miss features "
              "narrower than STRIDE/2 points.  [default: 4; with --anchor-stride K: K, the anchors are the first "
              "grid]")
@click.option("--repeats", type=Count(1, MAX_REPEATS), default=1, show_default=True, metavar="R",
              help="R random direction pairs (seeds --seed ... --seed+R-1), each its own file OUT.seed<S>.h5; "
              "--out holds the per-point mean, spread (train_loss_std) and standard error over them.")
@click.option("--samples-seed", type=SEED, default=0, show_default=True)
@click.option("--loss", default="cross_entropy", show_default=True, help=LOSS_HELP)
@grid_options("-1:1:51")
@direction_options(
    kind_help="random: seeded Gaussian directions; hessian: the top-2 (top-1 in 1D) eigenvectors of the loss Hessian "
    "on --data, normalized by --xnorm/--ynorm (none keeps unit eigenvectors); their eigenvalues are stored with the "
    "directions.",
    dir_file_help="Directions file: read if it exists, else written.")
@click.option("--params", "params", metavar="GLOB",
              help="Perturb only the tensors matching these fnmatch globs (comma-separated), e.g. 'layer3.*,fc.*'; "
              "the others get zero directions.")
@click.option("--exclude", metavar="GLOB", help="Do not perturb the tensors matching these globs, e.g. '*.bn*'.")
@click.option("--trainable-only", is_flag=True, help="Perturb only parameters with requires_grad (frozen ones stay).")
@click.option("--bn", "bn", type=click.Choice(BN_POLICIES), default="eval", show_default=True,
              help="BatchNorm: eval uses the stored running statistics; recompute re-estimates them at every grid "
              "point from --bn-batches batches of --bn-data (torch loop/static only).")
@click.option("--bn-batches", type=Count(1, MAX_ITERATIONS), default=10, show_default=True, metavar="N")
@click.option("--bn-batch-size", type=Count(1, MAX_BATCH), default=128, show_default=True, metavar="B")
@click.option("--bn-data", metavar="SPEC", help="Data for --bn recompute (default: --data), e.g. digits:train.")
@click.option("--batch", "batch", metavar="SPEC", help=BATCH_HELP)
@click.option("--out", required=True, metavar="FILE.h5", help="Surface file (resumed if it exists).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing surface file computed with other settings (it stays until the new one holds "
              "results). A file with the same settings is resumed either way.")
@eval_options()
@click.option("--curvature", is_flag=True,
              help="Also compute the extreme Hessian eigenvalues at every point (datasets max_eig/min_eig, the "
              "paper's convexity map; plot with --kind curvature). Costs --curvature-iters Hessian-vector "
              "products over the data per point.")
@click.option("--curvature-iters", type=Count(2, MAX_ITERATIONS), default=20, show_default=True,
              help="Lanczos steps per point for --curvature (both ends of the spectrum from one run).")
@click.option("--curvature-params", metavar="GLOB",
              help="--curvature on the parameters matching fnmatch globs only (comma-separated), e.g. 'fc.*'.")
@click.option("--nproc", type=Count(1, max_processes()), default=1, show_default=True, metavar="N",
              help="Shard the grid over N processes on this machine (as torchrun --standalone --nproc-per-node N "
              "-m lossgrid surface ... does; with --device cuda one GPU each). Across nodes: torchrun.")
@report_options()
def surface(**kw: Any) -> None:
    """Compute a filter-normalized loss surface around a model.

    \b
    Example:
      lossgrid surface --model lossgrid.zoo:resnet_digits --checkpoint net.pt \\
          --data digits --x=-1:1:51 --y=-1:1:51 --out surface.h5
    """
    if kw["curvature_params"] and not kw["curvature"]:
        raise click.BadParameter("it applies to --curvature, which is not given", param_hint="--curvature-params")
    ctx = click.get_current_context()
    for name, flag, on in (("bn_data", "--bn recompute", kw["bn"] == "recompute"),
                           ("bn_batches", "--bn recompute", kw["bn"] == "recompute"),
                           ("bn_batch_size", "--bn recompute", kw["bn"] == "recompute"),
                           ("adaptive_tol", "--adaptive", kw["adaptive"]),
                           ("adaptive_coarse", "--adaptive", kw["adaptive"])):
        given = ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
        if given and not on:
            raise click.BadParameter(f"it applies to {flag}, which is not given",
                                     param_hint="--" + name.replace("_", "-"))
    grid = grid_of(kw)
    job = SurfaceJob(
        out=kw["out"], grid=grid, model=kw["model"], checkpoint=kw["checkpoint"],
        model2=kw["model2"], data=kw["data"], samples=kw["samples"], samples_seed=kw["samples_seed"],
        loss=kw["loss"],
        directions=direction_spec_of(kw),
        dir_file=kw["dir_file"],
        evaluation=eval_spec_of(kw),
        overwrite=kw["overwrite"], trust_checkpoint=kw["trust_checkpoint"],
        curvature=CurvatureSpec(iters=kw["curvature_iters"], params=kw["curvature_params"]) if kw["curvature"]
        else None,
        batchnorm=BatchNormSpec(kw["bn"], kw["bn_batches"], kw["bn_batch_size"], kw["bn_data"]),
        batch=kw["batch"], target_se=kw["target_se"], repeats=kw["repeats"], anchor_stride=kw["anchor_stride"],
        adaptive=AdaptiveSpec(kw["adaptive_tol"], kw["adaptive_coarse"] or kw["anchor_stride"] or 4)
        if kw["adaptive"] else None,
    )
    from ..surface import distributed
    from ..surface.job import run_surface_job

    if kw["nproc"] > 1:
        if distributed.launched():
            raise click.BadParameter("this process is already one of a torchrun job", param_hint="--nproc")
        ctx.exit(distributed.launch_local(kw["nproc"], _without_nproc(_arguments())))
    cluster = distributed.Cluster.join(job.evaluation.device) if distributed.launched() else None
    try:
        summary = run_with_progress("surface", not kw["quiet"] and (cluster is None or cluster.leader),
                                    lambda bar: run_surface_job(job, bar, cluster))
    finally:
        if cluster is not None:
            cluster.leave()
    if cluster is not None and not cluster.leader:
        return  # rank 0 reports for the job
    if cluster is not None:
        summary["processes"] = cluster.world
    if kw["as_json"]:
        echo_json(summary)
    else:
        _echo_summary(summary)


def _arguments() -> list[str]:
    """The command's own arguments (``surface ...``), as given."""
    from . import ARGS

    if ARGS is None or "surface" not in ARGS:
        raise click.UsageError("--nproc starts the lossgrid command again in each process: run it as "
                               "`lossgrid surface ... --nproc N` (or use torchrun)")
    return list(ARGS)


def _without_nproc(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _echo_summary(s: dict[str, Any]) -> None:
    bad = s.get("nonfinite_points")
    if bad:
        click.echo(f"warning: {bad} point(s) have a NaN or infinite loss (the model diverges there)", err=True)
    where = ", ".join(f"{c:g}" for c in s["min_at"]) if s.get("min_at") else "-"
    click.echo(f"wrote {s['file']}: {s['points_done']}/{s['points_total']} points, "
               f"min loss {s['min_loss']} at ({where}), center loss {s['center_loss']}")
    rate = s.get("points_x_samples_per_s")
    click.echo(f"{s['points_computed']} points in {s['eval_seconds']} s"
               + (f" = {rate:,.0f} points x samples/s" if rate else "")
               + f" ({s['backend']}/{s['strategy']})")
    if s.get("backend_choice"):
        click.echo(s["backend_choice"])
    if s.get("target_se"):
        t = s["target_se"]
        click.echo(f"target standard error {t['target_se']:g}: {t['samples']:,} of {t['population']:,} samples "
                   f"(pilot: {t['pilot_points']} points on {t['pilot_samples']} samples)")
    if s.get("adaptive"):
        a = s["adaptive"]
        err = a.get("max_check_error")
        click.echo(f"adaptive grid: {a['points_evaluated']:,} of {a['points_total']:,} points evaluated "
                   f"({100 * a['share_evaluated']:.1f}%), the rest interpolated; largest measured interpolation "
                   f"error {'-' if err is None else f'{100 * err:.2g}%'} of the loss range "
                   f"(tolerance {100 * a['tol']:g}%)")
    if s.get("anchors"):
        a = s["anchors"]
        click.echo(f"anchors: {a['anchors']:,} points (every K-th per axis, K={a['stride']}) exact on all "
                   f"samples ({a['evaluated_exactly']:,} evaluated in this run), the others on the subset with them "
                   "as control variates")
    if s.get("loss_se_max") is not None:
        click.echo(f"largest standard error of a point's loss: {s['loss_se_max']:.3g}")
    if s.get("repeats"):
        click.echo(f"{s['repeats']} direction pairs: per-point spread of the loss up to {s['loss_std_max']:.3g} "
                   f"(mean {s['loss_std_mean']:.3g}); files {', '.join(s['repeat_files'])}")
    if s.get("max_eig_max") is not None:
        click.echo(f"curvature: max_eig up to {s['max_eig_max']:.4g}, min_eig down to {s['min_eig_min']:.4g}, "
                   f"|min/max| up to {s['convexity_ratio_max']:.3g}"
                   if s.get("convexity_ratio_max") is not None else
                   f"curvature: max_eig up to {s['max_eig_max']:.4g}, min_eig down to {s['min_eig_min']:.4g}")
