"""``lossgrid export`` and ``lossgrid inspect``: ONNX graphs with weights as inputs."""

from __future__ import annotations

import click

from ._common import MODEL_HELP, echo_json
from ._types import MAX_POINTS_PER_CALL, Count, FiniteFloat


@click.command()
@click.option("--model", "model", metavar="SPEC", help=MODEL_HELP)
@click.option("--checkpoint", metavar="FILE", help="state_dict, {'state_dict': ...}, or a pickled module.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow a checkpoint that is a whole pickled model (loading it runs code named in the file).")
@click.option("--out", required=True, metavar="FILE.onnx", help="The ONNX file (an existing file is refused).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out that is an export of lossgrid's (any other file is never replaced).")
@click.option("--points-per-call", "k", type=Count(1, MAX_POINTS_PER_CALL), default=1, show_default=True,
              help="K: grid points per call (leading dimension of every weight input).")
@click.option("--opset", type=Count(13, 30), default=17, show_default=True)
@click.option("--data", default="digits", show_default=True, help="Data spec giving an example input batch.")
@click.option("--no-fold-bn", is_flag=True, help="Keep BatchNorm nodes instead of folding them per point.")
@click.option("--tolerance", type=FiniteFloat(min=0, min_open=True), default=1e-4, show_default=True,
              help="Fail if ONNX Runtime and PyTorch differ by more (relative to the logits' scale).")
@click.option("--with-loss", is_flag=True,
              help="Also take class labels; output per-sample cross-entropy and correctness.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
def export(model: str | None, checkpoint: str | None, trust_checkpoint: bool, out: str, k: int, opset: int, data: str,
           no_fold_bn: bool, tolerance: float, with_loss: bool, as_json: bool, overwrite: bool) -> None:
    """Export a model to ONNX with its weights as graph inputs, K grid points per call,
    checked against PyTorch on random perturbed weights."""
    from .._files import check_output_path, refuse_input_as_output
    from ..data import load_data
    from ..exporters.onnx import export_onnx
    from ..inputs import require_tensor
    from ..models import load_model
    from ..surface.job import spec_file

    check_output_path(out, "ONNX file")
    refuse_input_as_output(out, {"--checkpoint": checkpoint, "--model": spec_file(model), "--data": spec_file(data)})
    _check_replaceable(out, overwrite)
    net, desc = load_model(model, checkpoint, trust_checkpoint)
    example = require_tensor(load_data(data).x, "The ONNX exporter",
                             "export a wrapper module that takes one tensor, or evaluate the model with "
                             "lossgrid surface --backend torch")[:4]
    result = export_onnx(net, example, k=k, path=out, opset=opset, fold_bn=not no_fold_bn, tolerance=tolerance,
                         description=desc, with_loss=with_loss)
    summary = {"file": result.path, "points_per_call": k, "weight_inputs": len(result.manifest.inputs),
               "folded_batchnorms": len(result.manifest.folds), "max_abs_diff": result.max_abs_diff,
               "opset": opset, "bytes": len(result.model_bytes), "loss_outputs": result.manifest.loss_outputs}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"wrote {out}: K={k}, {summary['weight_inputs']} weight inputs, "
                   f"{summary['folded_batchnorms']} BatchNorms folded, max abs diff vs PyTorch "
                   f"{result.max_abs_diff:.2g}")


def _check_replaceable(out: str, overwrite: bool) -> None:
    """An existing --out is replaced only with --overwrite, and only if it is an export of lossgrid's."""
    import os

    from ..errors import ConfigError, LossgridError
    from ..exporters.onnx import load_onnx

    if not os.path.lexists(out):
        return
    if not overwrite:
        raise ConfigError(f"--out {out} exists", "lossgrid replaces files only when asked",
                          "choose another path, or pass --overwrite to replace an earlier export")
    try:
        load_onnx(out)
    except LossgridError:
        raise ConfigError(f"--out {out} exists and is not an ONNX export of lossgrid's",
                          "--overwrite replaces only earlier exports, never other files",
                          "choose another --out path") from None


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
def inspect(file: str) -> None:
    """Print the lossgrid manifest of an exported ONNX FILE as JSON."""
    import dataclasses

    from ..exporters.onnx import load_onnx

    _, manifest = load_onnx(file)
    echo_json(dataclasses.asdict(manifest))
