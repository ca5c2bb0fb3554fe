"""The ONNX Runtime runner: K-wide graphs with weights as inputs, or one session
per grid point with the weights baked in as initializers.

* ``wide``: one session of the K-wide graph; every call feeds the weights of K
  grid points (BatchNorm already folded by our kernel) and one data batch.
  Best where weights are large next to activations (MLPs).
* ``baked``: per grid point, the K=1 graph with the weights as initializers, so
  ONNX Runtime can pre-pack convolution weights and fuse what it likes; the
  session costs some milliseconds to build but runs the whole evaluation set.
  Best for CNNs on CPU (FACTS.md: 1.6x the per-point torch loop on ResNet-20).

The CUDA execution provider is used only when asked for (``device="cuda"``) and
verified with ``session.get_providers()``: ONNX Runtime silently falls back to the
CPU otherwise, which we turn into a :class:`MissingBackendError`.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError
from ...exporters.session import make_session
from ..losses import LossFn, evaluate_batches
from ..params import ParamLayout, full_states
from .base import Runner

log = logging.getLogger(__name__)
STRATEGIES = ("auto", "wide", "baked")
DEFAULT_POINTS = 8


class OnnxRuntimeRunner(Runner):
    """Evaluate ``K`` weight sets per call with ONNX Runtime (see module docs)."""

    name = "onnxruntime"

    def __init__(self, model: nn.Module, layout: ParamLayout, x: torch.Tensor, y: torch.Tensor,
                 loss_fn: LossFn, batch_size: int | None = None, strategy: str = "auto",
                 points_per_call: int | None = None, device: str = "cpu", model_description: str = "") -> None:
        from ...exporters.onnx import export_onnx, float_state
        from .torch_runner import auto_batch_size

        if strategy not in STRATEGIES:
            raise ConfigError(f"Unknown onnxruntime strategy {strategy!r}", hint=f"use one of {', '.join(STRATEGIES)}")
        if isinstance(model, torch.jit.ScriptModule):
            raise ConfigError("The onnxruntime backend cannot export a TorchScript model",
                              hint="load the model from its Python factory, or use --backend torch")
        self.device = device
        self.layout = layout
        self.loss_fn = loss_fn
        self.model = copy.deepcopy(model).cpu().eval()
        self.n = int(x.shape[0])
        self.batch_size = batch_size or auto_batch_size(x)
        self.batches = [(xb.contiguous().numpy(), yb) for xb, yb in zip(x.cpu().split(self.batch_size),
                                                                         y.cpu().split(self.batch_size))]
        self.fixed = float_state(self.model)
        self.points_per_call = points_per_call or DEFAULT_POINTS
        self.strategy = "baked" if strategy == "auto" and self._is_conv_model() else strategy
        if self.strategy == "auto":
            self.strategy = "wide"
        self.reason = f"{strategy} requested" if strategy != "auto" else (
            "auto: baked sessions for convolutional models, K-wide graph otherwise")
        k = self.points_per_call if self.strategy == "wide" else 1
        example = x[:2].cpu()
        self.export = export_onnx(self.model, example, k=k, description=model_description)
        self.wide = self.export.wide
        self.manifest = self.export.manifest
        if self.strategy == "wide":
            self.session = make_session(self.export.model_bytes, device)
        else:
            self._template = _baked_template(self.export.model_bytes, self.manifest)

    def _is_conv_model(self) -> bool:
        return any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in self.model.modules())

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "strategy": self.strategy, "device": str(self.device),
                "strategy_reason": self.reason, "points_per_call": self.points_per_call,
                "batch_size": self.batch_size, "onnx_parity_max_abs_diff": self.export.max_abs_diff}

    # ------------------------------------------------------------------ public
    def evaluate(self, weights: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Loss (mean over samples) and accuracy (percent) for ``weights[K, P]``."""
        threads = torch.get_num_threads()
        # torch's OpenMP workers spin after each op and would steal the cores ONNX
        # Runtime is using; the little torch work here (folding, losses) runs on one.
        torch.set_num_threads(1)
        try:
            with self.guard("ONNX Runtime failed on the evaluation data",
                            "check that the data matches the model's input shape"):
                with torch.inference_mode():
                    inputs = self._inputs(weights.cpu())
                if self.strategy == "wide":
                    return self._wide(inputs, weights.shape[0])
                return self._baked(inputs, weights.shape[0])
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        self.session = self._template = None
        self.batches = []

    def _inputs(self, weights: torch.Tensor) -> dict[str, np.ndarray]:
        prepared = self.wide.prepare(full_states(self.layout, weights, self.fixed))
        return {n: prepared[n].contiguous().numpy() for n in self.manifest.input_names}

    def _stats(self, run: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        return evaluate_batches(self.batches, lambda xb: torch.from_numpy(run(xb))[:k], self.loss_fn, k, self.n)

    def _wide(self, inputs: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        kk = self.manifest.k
        loss, acc = np.empty(k), np.empty(k)
        for start in range(0, k, kk):
            part = {n: _pad(v[start:start + kk], kk) for n, v in inputs.items()}
            count = min(kk, k - start)

            def run(xb: np.ndarray, part: dict = part) -> np.ndarray:
                return self.session.run([self.manifest.output], {self.manifest.data_input: xb, **part})[0]

            loss[start:start + count], acc[start:start + count] = self._stats(run, count)
        return loss, acc

    def _baked(self, inputs: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        loss, acc = np.empty(k), np.empty(k)
        for i in range(k):
            session = make_session(_bake(self._template, {n: v[i:i + 1] for n, v in inputs.items()}), self.device)

            def run(xb: np.ndarray, session: Any = session) -> np.ndarray:
                return session.run([self.manifest.output], {self.manifest.data_input: xb})[0]

            loss[i:i + 1], acc[i:i + 1] = self._stats(run, 1)
        return loss, acc


def _pad(v: np.ndarray, k: int) -> np.ndarray:
    if v.shape[0] == k:
        return v
    return np.concatenate([v, np.repeat(v[-1:], k - v.shape[0], axis=0)])


def _baked_template(model_bytes: bytes, manifest: Any) -> Any:
    """The K=1 graph with its weight inputs turned into (empty) initializers."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(model_bytes)
    names = set(manifest.input_names)
    keep = [i for i in proto.graph.input if i.name not in names]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    for entry in manifest.inputs:
        proto.graph.initializer.append(numpy_helper.from_array(np.zeros([1, *entry["shape"]], np.float32),
                                                               entry["name"]))
    return proto


def _bake(template: Any, values: dict[str, np.ndarray]) -> bytes:
    for init in template.graph.initializer:
        if init.name in values:
            init.raw_data = np.ascontiguousarray(values[init.name], dtype=np.float32).tobytes()
    return template.SerializeToString()
