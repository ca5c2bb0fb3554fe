"""``lossgrid surface``: compute a 1D or 2D loss surface into an HDF5 file."""

from __future__ import annotations

from typing import Any

import click

from ..config import (
    AUTO_BUDGET,
    BN_POLICIES,
    DIR_KINDS,
    DIR_TYPES,
    IGNORES,
    NORMS,
    PRECISIONS,
    AdaptiveSpec,
    BatchNormSpec,
    CurvatureSpec,
    DirectionSpec,
    EvalSpec,
    GridSpec,
    SurfaceJob,
)
from ..engine.runners import ALL_STRATEGIES, BACKENDS
from ..errors import ConfigError
from ._common import BATCH_HELP, LOSS_HELP, MODEL_HELP, echo_json, parse_axis, run_with_progress
from ._types import (
    DEVICE,
    MAX_BATCH,
    MAX_ITERATIONS,
    MAX_POINTS_PER_CALL,
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
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow checkpoints that are whole pickled models: loading them runs code named in the file. "
              "Only for files you made or trust. State dicts, safetensors and TorchScript need no trust.")
@click.option("--data", default="digits", show_default=True,
              help="digits[:train|:test], npz:FILE (x and y, or records such as input_ids/attention_mask/labels), "
              "cifar10:DIR[:test][:norm=reference|dataset|none|M,M,M/S,S,S], "
              "cifar100:DIR[:test][:label=fine|coarse][:norm=dataset|reference|none|M,M,M/S,S,S], "
              "imagefolder:DIR[:size=H[xW]][:norm=none|imagenet|reference|M,M,M/S,S,S][:gray], "
              "synthetic:SHAPE:N[:CLASSES] (seeded random inputs, for benchmarks), or module:function.")
@click.option("--samples", type=Count(1, None),
              help="Evaluate on a fixed, seeded subset of N samples (the same at every point: differences between "
              "points are far more precise than each value; every point's standard error is stored).")
@click.option("--anchor-stride", type=Count(2, 2048), metavar="K",
              help="With --samples or --target-se: evaluate every K-th point on each axis (and the last) exactly on "
              "all of --data "
              "and use these anchors, interpolated sample by sample, as control variates for the other points "
              "(unbiased; far smaller standard errors where the loss is large and spread).")
@click.option("--target-se", type=FiniteFloat(min=0, min_open=True), metavar="E",
              help="Choose the subset by a pilot, and grow it, until every point's loss has a standard error of at "
              "most E against the whole --data set.")
@click.option("--adaptive", is_flag=True,
              help="Evaluate a coarse grid, then only where interpolation is measured to be off by more than "
              "--adaptive-tol of the loss range; fill the rest by that interpolation (marked in the file and "
              "plots).")
@click.option("--adaptive-tol", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, metavar="SHARE", help="Accepted interpolation error, a share of the loss range.")
@click.option("--adaptive-coarse", type=Count(1, 2048), default=4, show_default=True, metavar="STRIDE",
              help="Stride of the first grid: larger evaluates fewer points on smooth surfaces but can miss features "
              "narrower than STRIDE/2 points.")
@click.option("--repeats", type=Count(1, MAX_REPEATS), default=1, show_default=True, metavar="R",
              help="R random direction pairs (seeds --seed ... --seed+R-1), each its own file OUT.seed<S>.h5; "
              "--out holds the per-point mean, spread (train_loss_std) and standard error over them.")
@click.option("--samples-seed", type=SEED, default=0, show_default=True)
@click.option("--loss", default="cross_entropy", show_default=True, help=LOSS_HELP)
@click.option("--x", "x", default="-1:1:51", show_default=True, callback=parse_axis, metavar="MIN:MAX:NUM")
@click.option("--y", "y", default=None, callback=parse_axis, metavar="MIN:MAX:NUM", help="Second axis (2D).")
@click.option("--dir-type", type=click.Choice(DIR_TYPES), default="weights", show_default=True)
@click.option("--dir-kind", type=click.Choice(DIR_KINDS), default="random", show_default=True,
              help="random: seeded Gaussian directions; hessian: the top-2 (top-1 in 1D) eigenvectors of the loss "
              "Hessian on --data, normalized by --xnorm/--ynorm (none keeps unit eigenvectors); their "
              "eigenvalues are stored with the directions.")
@click.option("--xnorm", type=click.Choice(NORMS), default="filter", show_default=True)
@click.option("--ynorm", type=click.Choice(NORMS), default=None, help="Default: same as --xnorm.")
@click.option("--xignore", type=click.Choice(IGNORES), default="biasbn", show_default=True)
@click.option("--yignore", type=click.Choice(IGNORES), default=None, help="Default: same as --xignore.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Direction seed.")
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
@click.option("--dir-file", metavar="FILE", help="Directions file: read if it exists, else written.")
@click.option("--out", required=True, metavar="FILE.h5", help="Surface file (resumed if it exists).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing surface file computed with other settings (it stays until the new one holds "
              "results). A file with the same settings is resumed either way.")
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True,
              help="auto: time every backend/strategy on this model and data, keep the fastest.")
@click.option("--strategy", type=click.Choice(ALL_STRATEGIES), default="auto",
              show_default=True, help="torch: loop | vmap | wide (K-wide model) | static (weights in one buffer "
              "written in place, CUDA graphs on a GPU); onnxruntime: wide (K-wide graph) | baked (per-point "
              "sessions, CPU); tensorrt: inputs | refit; auto: timed.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="fp32: IEEE (TF32 off); tf32: TF32 tensor cores (NVIDIA GPUs); bf16: bfloat16 autocast (GPUs, CPUs "
              "with native bf16); fp16: float16 autocast (NVIDIA GPUs). A lower "
              "precision stores its loss error against fp32 at the first points; auto never lowers it.")
@click.option("--auto-budget", type=FiniteFloat(min=0), default=AUTO_BUDGET, show_default=True, metavar="SHARE",
              help="auto: the share of the job's time that timing candidates may cost; a smaller job keeps the "
              "default without timing (0: never time, 1000: always).")
@click.option("--points-per-call", type=Count(1, MAX_POINTS_PER_CALL), help="Grid points per runner call (default 8).")
@click.option("--batch-size", type=Count(1, MAX_BATCH), help="Samples per forward pass (default: by input size).")
@click.option("--device", type=DEVICE, default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
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
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
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
    try:
        grid = GridSpec(kw["x"], kw["y"])
    except ConfigError as e:  # each axis parsed, together too large: a bad pair of options
        raise click.BadParameter(str(e), param_hint="--x/--y") from None
    job = SurfaceJob(
        out=kw["out"], grid=grid, model=kw["model"], checkpoint=kw["checkpoint"],
        model2=kw["model2"], data=kw["data"], samples=kw["samples"], samples_seed=kw["samples_seed"],
        loss=kw["loss"],
        directions=DirectionSpec(kw["dir_type"], kw["xnorm"], kw["xignore"], kw["ynorm"], kw["yignore"], kw["seed"],
                                 kw["dir_kind"], kw["params"], kw["exclude"], kw["trainable_only"]),
        dir_file=kw["dir_file"],
        evaluation=EvalSpec(kw["backend"], kw["strategy"], kw["points_per_call"], kw["batch_size"], kw["device"],
                            kw["auto_budget"], kw["precision"]),
        overwrite=kw["overwrite"], trust_checkpoint=kw["trust_checkpoint"],
        curvature=CurvatureSpec(iters=kw["curvature_iters"], params=kw["curvature_params"]) if kw["curvature"]
        else None,
        batchnorm=BatchNormSpec(kw["bn"], kw["bn_batches"], kw["bn_batch_size"], kw["bn_data"]),
        batch=kw["batch"], target_se=kw["target_se"], repeats=kw["repeats"], anchor_stride=kw["anchor_stride"],
        adaptive=AdaptiveSpec(kw["adaptive_tol"], kw["adaptive_coarse"]) if kw["adaptive"] else None,
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
