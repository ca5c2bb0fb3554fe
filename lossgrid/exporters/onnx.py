"""Export a model to ONNX with its weights as graph inputs (K-wide), and check
the graph against plain PyTorch.

Example:
    >>> from lossgrid.zoo import mlp_digits
    >>> import torch
    >>> result = export_onnx(mlp_digits(), torch.randn(2, 1, 8, 8), k=4)   # doctest: +SKIP
    >>> result.max_abs_diff < 1e-4                                          # doctest: +SKIP
    True
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import atomic_output, input_file_problem
from .._optional import require
from ..errors import ExportError
from .manifest import METADATA_KEY, Manifest, read_manifest
from .session import make_session
from .wide import WideModel

log = logging.getLogger(__name__)
DEFAULT_OPSET = 17
DATA_INPUT, OUTPUT, LABELS = "input", "logits", "labels"
LOSS_OUTPUTS = ["loss", "correct"]


class _WithLoss(nn.Module):
    """The wide model plus per-sample cross-entropy and correctness outputs."""

    def __init__(self, wide: WideModel) -> None:
        super().__init__()
        self.wide = wide

    def forward(self, x: torch.Tensor, labels: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.wide(x, *inputs)  # [K, B, C]
        logp = torch.log_softmax(logits, dim=-1)
        index = labels.reshape(1, -1, 1).expand(logits.shape[0], -1, 1)
        loss = -torch.gather(logp, 2, index).squeeze(2)
        correct = (torch.argmax(logits, dim=-1) == labels.reshape(1, -1)).to(logits.dtype)
        return logits, loss, correct


@dataclass
class ExportResult:
    """An exported graph (serialized ``onnx.ModelProto``), its manifest, the parity
    check, and the wide model it was exported from (its ``prepare`` computes the
    graph's weight inputs from full states)."""

    model_bytes: bytes
    manifest: Manifest
    wide: WideModel
    max_abs_diff: float | None = None
    path: str | None = None


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The floating-point state_dict entries (what a wide model takes as weights)."""
    return {n: t for n, t in model.state_dict().items() if torch.is_floating_point(t)}


def full_state(model: nn.Module, k: int, overrides: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Every floating-point state entry as ``[k, ...]`` (``overrides`` replace some)."""
    return {n: overrides[n] if overrides and n in overrides else t.unsqueeze(0).expand(k, *t.shape)
            for n, t in float_state(model).items()}


def export_onnx(model: nn.Module, example: torch.Tensor, k: int = 1, path: str | os.PathLike | None = None,
                opset: int = DEFAULT_OPSET, fold_bn: bool = True, check: bool = True, tolerance: float = 1e-4,
                description: str = "", seed: int = 0, with_loss: bool = False) -> ExportResult:
    """Export ``model`` as a K-wide ONNX graph with weights as inputs.

    Args:
        model: the model (eval mode is set on a traced copy).
        example: a data batch ``[B, ...]`` fixing the per-sample shape; the batch
            dimension of the graph is dynamic.
        k: grid points per call (leading dimension of every weight input).
        path: where to write the ``.onnx`` file (optional).
        opset: ONNX opset.
        fold_bn: fold Conv -> BatchNorm pairs per point (inputs renamed ``|folded:``).
        check: run the graph with ONNX Runtime on random perturbed weights and
            compare with the plain model, point by point; raise above ``tolerance``
            (max abs difference relative to the logits' scale).
        description: how the model was specified, stored in the manifest.
        with_loss: also take class labels and output per-sample cross-entropy
            and correctness (``[K, batch]`` each).
    """
    onnx = require("onnx", "export", "ONNX export")
    wide = WideModel(model, k=k, fold_bn=fold_bn)
    state = full_state(model, k)
    inputs = wide.prepare(state)
    weights = [inputs[n].contiguous() for n in wide.input_names]
    module: nn.Module = wide
    args: tuple = (example, *weights)
    names, outputs = [DATA_INPUT, *wide.input_names], [OUTPUT]
    axes: dict[str, dict[int, str]] = {DATA_INPUT: {0: "batch"}, OUTPUT: {1: "batch"}}
    if with_loss:
        module, args = _WithLoss(wide), (example, torch.zeros(len(example), dtype=torch.int64), *weights)
        names, outputs = [DATA_INPUT, LABELS, *wide.input_names], [OUTPUT, *LOSS_OUTPUTS]
        axes.update({LABELS: {0: "batch"}, **{o: {1: "batch"} for o in LOSS_OUTPUTS}})
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, input_names=names,
                              output_names=outputs, dynamic_axes=axes, do_constant_folding=False)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}", f"{type(e).__name__}: {e}",
                          "check that the model is supported (see lossgrid.exporters) or use the torch backend"
                          ) from None
    proto = onnx.load_from_string(buf.getvalue())
    graph_inputs = {i.name for i in proto.graph.input}
    manifest = Manifest(
        k=k, data_input=DATA_INPUT, data_shape=["batch", *example.shape[1:]], data_dtype=str(example.dtype),
        output=OUTPUT,
        inputs=[{"name": n, "shape": list(wide.input_shapes[n])} for n in wide.input_names if n in graph_inputs],
        state_names=list(wide.state_names),
        folds=[{"conv": f.conv, "bn": f.bn, "eps": f.eps, "conv_has_bias": f.conv_has_bias, "bn_affine": f.bn_affine}
               for f in wide.folds.values()],
        model=description or type(model).__name__, opset=opset,
        label_input=LABELS if with_loss else None, loss_outputs=list(LOSS_OUTPUTS) if with_loss else [])
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, manifest.to_json()
    result = ExportResult(proto.SerializeToString(), manifest, wide)
    if check:
        result.max_abs_diff = check_parity(result.model_bytes, model, example, seed=seed, tolerance=tolerance,
                                           wide=wide)
    if path is not None:

        with atomic_output(path, "ONNX file") as tmp, open(tmp, "wb") as f:
            f.write(result.model_bytes)
        result.path = os.fspath(path)
    return result


def random_point_states(model: nn.Module, k: int, seed: int = 0, scale: float = 0.1) -> dict[str, torch.Tensor]:
    """``k`` randomly perturbed full states (relative Gaussian noise; variances kept positive)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in full_state(model, 1).items():
        base = t[0]
        noise = torch.randn((k, *base.shape), generator=gen, dtype=base.dtype)
        v = base.unsqueeze(0) + scale * noise * (base.abs().mean() + 1e-3)
        out[name] = v.abs() + 1e-3 if name.endswith("running_var") else v
    return out


def check_parity(model_bytes: bytes, model: nn.Module, example: torch.Tensor, seed: int = 0,
                 tolerance: float = 1e-4, wide: WideModel | None = None) -> float:
    """Max abs difference between ONNX Runtime and the plain model on random
    perturbed weights, relative to the logits' scale; raises above ``tolerance``.
    ``wide`` is the wide model the graph was exported from (traced again if omitted)."""
    from torch.func import functional_call

    onnx = require("onnx", "export", "ONNX export")
    manifest = read_manifest(onnx.load_from_string(model_bytes))
    k = manifest.k
    states = random_point_states(model, k, seed)
    if wide is None:
        wide = WideModel(model, k=k, fold_bn=bool(manifest.folds))
    feeds = {manifest.data_input: example.numpy()}
    prepared = wide.prepare(states)
    feeds.update({n: prepared[n].contiguous().numpy() for n in manifest.input_names})
    session = make_session(model_bytes, "cpu")
    with torch.no_grad():
        want_t = torch.stack([functional_call(model.eval(), {n: v[i] for n, v in states.items()}, (example,))
                              for i in range(k)])
    want = want_t.numpy()
    if manifest.label_input:
        labels = torch.arange(len(example)) % want.shape[-1]
        feeds[manifest.label_input] = labels.numpy()
        got, loss, correct = session.run([manifest.output, *manifest.loss_outputs], feeds)
        want_loss = torch.nn.functional.cross_entropy(want_t.flatten(0, 1), labels.repeat(k), reduction="none")
        if not np.allclose(loss.ravel(), want_loss.numpy(), rtol=1e-4, atol=1e-5) or not np.array_equal(
                correct.ravel(), (want_t.argmax(-1) == labels).float().numpy().ravel()):
            raise ExportError("The exported loss outputs disagree with PyTorch's cross-entropy",
                              hint="export without --with-loss and compute losses on the host")
    else:
        got = session.run([manifest.output], feeds)[0]
    diff = float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want))))
    log.info("ONNX parity: max abs diff %.3g (relative to logit scale) over %d points", diff, k)
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportError(f"The exported graph disagrees with PyTorch (max abs diff {diff:.3g} > {tolerance:g})",
                          "an operation is exported with different semantics",
                          "report this model; use --backend torch meanwhile")
    return diff


def load_onnx(path: str) -> tuple[Any, Manifest]:
    """Load an ONNX file written by :func:`export_onnx` and its manifest."""

    onnx = require("onnx", "export", "ONNX loading")
    problem = input_file_problem(path)
    if problem:
        raise ExportError(f"Cannot read ONNX file {path}", problem, "pass a file written by lossgrid export")
    try:
        proto = onnx.load(path)
    except Exception as e:
        raise ExportError(f"Cannot read ONNX file {path}", str(e).splitlines()[0] if str(e) else type(e).__name__,
                          "pass a file written by lossgrid export") from None
    return proto, read_manifest(proto, path)
