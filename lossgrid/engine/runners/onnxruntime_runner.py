"""The ONNX Runtime runner: K-wide graphs with weights as inputs, or one session
per grid point with the weights baked in as initializers.

* ``wide``: one session of the K-wide graph; every call feeds the weights of K
  grid points (BatchNorm already folded by our kernel) and one data batch.
  Best where weights are large next to activations (MLPs).
* ``baked`` (CPU only): per grid point, the K=1 graph with the weights as
  initializers, so ONNX Runtime can pre-pack convolution weights and fuse what
  it likes; the session costs some milliseconds to build but runs the whole
  evaluation set. Best for CNNs on CPU (measured 1.6x the per-point torch loop
  on ResNet-20). On a GPU a session per point is far too slow (building one
  costs as much as evaluating thousands of images), so it is refused there.

``wide`` runs through ONNX Runtime's IOBinding on every device: the evaluation
data stays in torch tensors on the runner's device, weight inputs and the logits
output are bound by address (``bind_input``/``bind_output`` with ``data_ptr()``)
and ``run_with_iobinding`` reads and writes them in place: no host copies.

On CUDA the session captures its run in a CUDA graph where ONNX Runtime allows
it (every node on the CUDA provider; otherwise it refuses the session, which is
logged and reported by :meth:`OnnxRuntimeRunner.describe`). A graph replays
fixed device addresses and shapes, so the data batch, the weight inputs and the
output live in fixed buffers that each call copies into (device to device), and
the last, partial batch is **padded** to the full batch size with copies of its
last sample (their outputs are dropped). Padding costs at most one batch's
compute per pass; a second session without graphs for that batch would hold a
second copy of ONNX Runtime's arena and capture nothing.

The CUDA execution provider is used only when asked for (``device="cuda"``) and
verified with ``session.get_providers()``: ONNX Runtime silently falls back to the
CPU otherwise, which :func:`~lossgrid.exporters.session.make_session` turns into a
:class:`~lossgrid.errors.MissingBackendError`.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError, MissingBackendError
from ...exporters.onnx import export_onnx, float_state
from ...exporters.session import make_session, onnxruntime_errors
from ...inputs import require_tensor
from ..losses import LossFn, Stats, concat_stats, evaluate_batches, unit_counts
from ..params import ParamLayout, full_states
from .base import Runner
from .batching import default_batch_size

log = logging.getLogger(__name__)
STRATEGIES = ("auto", "wide", "baked")
DEFAULT_POINTS = 8

#: NumPy element types of the torch dtypes a graph input or output may have (IOBinding takes NumPy types)
NUMPY_TYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
               torch.int64: np.int64, torch.int32: np.int32}


class OnnxRuntimeRunner(Runner):
    """Evaluate ``K`` weight sets per call with ONNX Runtime (see module docs).

    Args:
        model, layout, x, y, loss_fn: as for :class:`~lossgrid.engine.runners.torch_runner.TorchRunner`.
        batch_size: samples per run; ``None`` picks one from the input size.
        strategy: ``wide``, ``baked`` (CPU only) or ``auto`` (baked for
            convolutional models on the CPU, wide otherwise).
        points_per_call: K of the wide graph (grid points per run).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (needs onnxruntime-gpu).
        model_description: stored in the exported graph's manifest.
    """

    name = "onnxruntime"

    def __init__(self, model: nn.Module, layout: ParamLayout, x: Any, y: torch.Tensor,
                 loss_fn: LossFn, batch_size: int | None = None, strategy: str = "auto",
                 points_per_call: int | None = None, device: str = "cpu", model_description: str = "") -> None:

        if strategy not in STRATEGIES:
            raise ConfigError(f"Unknown onnxruntime strategy {strategy!r}", hint=f"use one of {', '.join(STRATEGIES)}")

        x = require_tensor(x, "The onnxruntime backend")
        self.backend_errors = onnxruntime_errors()  # they derive from Exception only: guard() names them
        if isinstance(model, torch.jit.ScriptModule):
            raise ConfigError("The onnxruntime backend cannot export a TorchScript model",
                              hint="load the model from its Python factory, or use --backend torch")
        self.device = device
        self.dev = torch.device(device)
        cuda = self.dev.type == "cuda"
        if strategy == "baked" and cuda:
            raise ConfigError("The onnxruntime strategy baked cannot run on a GPU",
                              "it builds a new session for every grid point, which on a GPU costs as much as "
                              "evaluating thousands of images",
                              "use --strategy wide (weights as inputs, one session) on CUDA")
        self.layout = layout
        self.loss_fn = loss_fn
        self.model = copy.deepcopy(model).cpu().eval()
        self.counts = unit_counts(loss_fn, [y])
        self.fixed = {n: t.to(self.dev) for n, t in float_state(self.model).items()}
        self.points_per_call = points_per_call or DEFAULT_POINTS
        conv_on_cpu = self._is_conv_model() and not cuda
        self.strategy = strategy if strategy != "auto" else ("baked" if conv_on_cpu else "wide")
        self.batch_size = batch_size or default_batch_size(x, self.dev,
                                                           self.points_per_call if self.strategy == "wide" else 1)
        self.reason = f"{strategy} requested" if strategy != "auto" else (
            "auto: baked sessions for convolutional models on the CPU, K-wide graph otherwise")
        k = self.points_per_call if self.strategy == "wide" else 1
        example = x[:2].cpu()
        self.export = export_onnx(self.model, example, k=k, description=model_description)
        self.wide = self.export.wide
        self.manifest = self.export.manifest
        self.cuda_graph = False
        self.graph_note = "no CUDA graph (CPU)" if not cuda else ""
        self.session: Any = None
        self._template: Any = None
        self._io: _Bound | None = None
        if self.strategy == "wide":
            self._open_wide(x[:2].cpu())
        else:
            self._template = _baked_template(self.export.model_bytes, self.manifest)
        self.batches = self._place_batches(x, y)

    def _is_conv_model(self) -> bool:
        return any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in self.model.modules())

    def _open_wide(self, example: torch.Tensor) -> None:
        """The session of the K-wide graph (with a CUDA graph where ONNX Runtime allows one) and its bindings."""
        if self.dev.type == "cuda":
            try:
                self.session = make_session(self.export.model_bytes, self.device, cuda_graph=True)
                self.cuda_graph, self.graph_note = True, "CUDA graph"
            except MissingBackendError:
                raise  # no CUDA provider, or a fallback to the CPU: never run elsewhere than asked
            except Exception as e:  # ONNX Runtime refuses graphs when some node would run on the CPU
                self.graph_note = f"no CUDA graph: ONNX Runtime refused it ({type(e).__name__}: " \
                                  f"{str(e).splitlines()[0] if str(e) else ''})"
                log.warning("onnxruntime/wide runs without a CUDA graph: %s", self.graph_note)
        if self.session is None:
            self.session = make_session(self.export.model_bytes, self.device)
        with torch.no_grad():  # the per-sample output shape and dtype, for the preallocated output buffers
            out = self.model(example)
        self._out_spec = (tuple(out.shape[1:]), out.dtype, example.dtype)
        self._bind_wide()

    def _bind_wide(self) -> None:
        """The session's bindings: fixed buffers under a CUDA graph, per-run addresses otherwise."""
        out_shape, out_dtype, data_dtype = self._out_spec
        self._io = _Bound(self.session, self.manifest, self.dev, out_shape, out_dtype,
                          self.batch_size if self.cuda_graph else None, data_dtype)

    def _place_batches(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[Any, torch.Tensor]]:
        """The evaluation set in batches on the runner's device; with a CUDA graph each
        batch is ``(x padded to batch_size, rows)`` so that every run has one shape."""
        xs = x.to(self.dev).contiguous().split(self.batch_size)
        ys = y.to(self.dev).split(self.batch_size)
        if not self.cuda_graph:
            return [(xb.contiguous(), yb) for xb, yb in zip(xs, ys)]
        out = []
        for xb, yb in zip(xs, ys):
            rows = xb.shape[0]
            if rows < self.batch_size:  # pad with copies of the last sample; their outputs are dropped
                xb = torch.cat([xb, xb[-1:].expand(self.batch_size - rows, *xb.shape[1:])])
            out.append(((xb.contiguous(), rows), yb))
        return out

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "strategy": self.strategy, "device": str(self.device),
                "strategy_reason": self.reason, "points_per_call": self.points_per_call,
                "batch_size": self.batch_size, "onnx_parity_max_abs_diff": self.export.max_abs_diff,
                "io_binding": self.strategy == "wide", "execution": self.graph_note or "eager"}

    # ------------------------------------------------------------------ public
    def evaluate(self, weights: torch.Tensor) -> Stats:
        """Loss (mean over samples), accuracy (percent) and the loss's standard error for ``weights[K, P]``."""
        threads = torch.get_num_threads()
        # torch's OpenMP workers spin after each op and would steal the cores ONNX
        # Runtime is using; the little torch work here (folding, losses) runs on one.
        torch.set_num_threads(1)
        try:
            with self.guard("ONNX Runtime failed on the evaluation data",
                            "check that the data matches the model's input shape"):
                with torch.inference_mode():
                    inputs = self._inputs(weights.to(self.dev))
                if self.strategy == "wide":
                    return self._wide(inputs, weights.shape[0])
                return self._baked(inputs, weights.shape[0])
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        self.session = self._template = self._io = None
        self.batches = []

    def _inputs(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """The graph's weight inputs ``{name: [K, ...]}`` (float32, on the runner's device)."""
        prepared = self.wide.prepare(full_states(self.layout, weights, self.fixed))
        return {n: prepared[n].float() for n in self.manifest.input_names}

    def _wide(self, inputs: dict[str, torch.Tensor], k: int) -> Stats:
        io = self._io
        assert io is not None, "a wide runner has its bindings"
        kk = self.manifest.k
        parts = []
        for start in range(0, k, kk):
            count = min(kk, k - start)
            io.set_weights({n: _pad(v[start:start + kk], kk) for n, v in inputs.items()})
            parts.append(evaluate_batches(self.batches, lambda xb, c=count: io.run(xb)[:c], self.loss_fn, count,
                                          self.counts, self.dev, self._keep))
        return concat_stats(parts)

    def _baked(self, inputs: dict[str, torch.Tensor], k: int) -> Stats:
        parts = []
        host = {n: v.cpu().numpy() for n, v in inputs.items()}
        for i in range(k):
            session = make_session(_bake(self._template, {n: v[i:i + 1] for n, v in host.items()}), self.device)

            def run(xb: torch.Tensor, session: Any = session) -> torch.Tensor:
                return torch.from_numpy(session.run([self.manifest.output], {self.manifest.data_input: xb.numpy()})[0])

            parts.append(evaluate_batches(self.batches, run, self.loss_fn, 1, self.counts, keep=self._keep))
        return concat_stats(parts)


class _Bound:
    """The K-wide session run through IOBinding on torch tensors of one device.

    ``fixed_batch=None``: every run binds the batch, the weights and a preallocated
    output (one per batch size) by address, without copies. ``fixed_batch=B`` (CUDA
    graphs): data, weights and output are fixed buffers bound once; runs copy into them.
    """

    def __init__(self, session: Any, manifest: Any, device: torch.device, out_shape: tuple[int, ...],
                 out_dtype: torch.dtype, fixed_batch: int | None, data_dtype: torch.dtype) -> None:
        self.session, self.manifest, self.device = session, manifest, device
        self.binding = session.io_binding()
        self.kind, self.index = device.type, device.index or 0
        self.out_shape, self.out_dtype, self.k = out_shape, out_dtype, manifest.k
        self.fixed = fixed_batch is not None
        self._outs: dict[int, torch.Tensor] = {}  # preallocated outputs by batch rows
        self._held: dict[str, torch.Tensor] = {}  # bound tensors kept alive while ONNX Runtime holds their address
        if fixed_batch is not None:
            shape = [fixed_batch, *(int(d) for d in manifest.data_shape[1:])]
            self._data = torch.empty(shape, dtype=data_dtype, device=device)
            self._bind(manifest.data_input, self._data)
            for entry in manifest.inputs:
                self._bind(entry["name"], torch.zeros([self.k, *entry["shape"]], dtype=torch.float32, device=device))
            self._bind_out(self._output(fixed_batch))

    def _bind(self, name: str, t: torch.Tensor) -> None:
        self._held[name] = t
        self.binding.bind_input(name, self.kind, self.index, NUMPY_TYPES[t.dtype], list(t.shape), t.data_ptr())

    def _bind_out(self, out: torch.Tensor) -> None:
        self.binding.bind_output(self.manifest.output, self.kind, self.index, NUMPY_TYPES[out.dtype],
                                 list(out.shape), out.data_ptr())

    def _output(self, rows: int) -> torch.Tensor:
        if rows not in self._outs:
            self._outs[rows] = torch.empty([self.k, rows, *self.out_shape], dtype=self.out_dtype, device=self.device)
        return self._outs[rows]

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """The weight inputs ``{name: [K, ...]}`` of the following runs."""
        for name, t in weights.items():
            if self.fixed:
                self._held[name].copy_(t)  # the graph replays this buffer's address
            else:
                self._bind(name, t.contiguous())

    def run(self, xb: Any) -> torch.Tensor:
        """Outputs ``[K, rows, ...]`` of one batch (a view of a reused buffer: consume before the next run)."""
        if self.fixed:
            x, rows = xb
            self._data.copy_(x)
            out = self._output(self._data.shape[0])  # the buffer bound once in __init__
        else:
            x, rows = xb, int(xb.shape[0])
            self._bind(self.manifest.data_input, x)
            out = self._output(rows)
            self._bind_out(out)
        if self.kind == "cuda":
            # ONNX Runtime runs on its own stream: the copies above, and the loss kernels
            # still reading the previous output, must be done first (its run ends synchronised)
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(self.binding)
        return out[:, :rows]


def _pad(v: torch.Tensor, k: int) -> torch.Tensor:
    """``v[:k]`` padded to ``k`` rows with copies of its last row (contiguous)."""
    if v.shape[0] < k:
        v = torch.cat([v, v[-1:].expand(k - v.shape[0], *v.shape[1:])])
    return v.contiguous()


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
