"""The torch ``static`` strategy: fixed buffers, weights rewritten in place, CUDA-graph replay.

With tens of thousands of samples per grid point one point already fills a GPU,
so batching points buys nothing; what a point costs beyond its forward passes
is the weight update, the kernel launches and the synchronisations. This runner
removes those:

* every perturbed tensor of the model (parameters, or the whole floating state
  for ``states`` directions) is a **view into one flat buffer** ``[P]``; the
  weight kernel (:mod:`lossgrid.kernels`: CuPy on a GPU when installed, torch
  otherwise) writes ``theta + a*d1 + b*d2`` straight into it, one launch per point;
* the evaluation set stays **resident on the device**, split once into chunks
  (thousands of images on a GPU);
* on CUDA the whole pass over the chunks -- forwards, per-sample losses, the
  loss sum and the correct count -- is **captured once in a CUDA graph** and
  replayed after each weight update; results of a call's points are gathered on
  the device and read back with one synchronisation per call;
* 4-D convolution weights are laid out channels-last inside the flat buffer
  (the directions are permuted the same way once), so that convolutions run
  channels-last without copying weights.

On the CPU the same code runs eagerly (no graphs), which is what the CPU test
suite checks against the per-point reference. ``precision`` (``fp32`` IEEE,
``tf32``, ``bf16``) applies to capture and replay alike.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from ... import inputs as inp
from ... import kernels
from ...errors import ConfigError, is_out_of_memory
from ...inputs import Inputs
from ..batchnorm import recalibrate
from ..losses import LossFn, SampleValues, Stats, finish_stats, point_batch_stats, unit_counts
from ..params import ParamLayout, perturbed_tensors
from ..precision import check_precision, precision_mode
from .base import Runner
from .batching import default_batch_size

log = logging.getLogger(__name__)


class StaticRunner(Runner):
    """Evaluate grid points with the model's weights as views of one flat buffer (see module docs).

    Args:
        model: the model (copied; the caller's model is never modified).
        layout: which tensors the flat weights hold.
        x, y: the evaluation set (moved to ``device`` once).
        loss_fn: per-sample loss.
        batch_size: samples per chunk; ``None``: thousands on a GPU, about 2^19
            input values on the CPU.
        points_per_call: grid points per ``evaluate`` call (one sync per call).
        device: torch device.
        precision: ``fp32`` (IEEE), ``tf32`` (CUDA only) or ``bf16``.
        cuda_graphs: capture and replay CUDA graphs (default: on CUDA devices).
        bn_batches: inputs of the batches that re-estimate BatchNorm running statistics at
            every point (``--bn recompute``; run eagerly, in place, before each point's pass).
    """

    name = "torch"
    strategy = "static"

    def __init__(self, model: nn.Module, layout: ParamLayout, x: Inputs, y: torch.Tensor, loss_fn: LossFn,
                 batch_size: int | None = None, points_per_call: int | None = None,
                 device: str | torch.device = "cpu", precision: str = "fp32", cuda_graphs: bool | None = None,
                 bn_batches: list[Inputs] | None = None) -> None:
        self.device = torch.device(device)
        check_precision(precision, self.device)
        if isinstance(model, torch.jit.ScriptModule):
            raise ConfigError("The static strategy cannot run a TorchScript model",
                              "its tensors cannot be re-pointed into a flat buffer",
                              "use --strategy loop, or load the model from its Python factory")
        cuda = self.device.type == "cuda"
        if cuda_graphs and not cuda:
            raise ConfigError("CUDA graphs need a CUDA device", hint="leave cuda_graphs unset on the CPU")
        self.precision = precision
        self.layout = layout
        self.loss_fn = loss_fn
        self.model = copy.deepcopy(model).to(self.device).eval()
        self.channels_last = (inp.is_tensor(x) and x.dim() == 4
                              and any(isinstance(m, nn.Conv2d) for m in self.model.modules()))
        x, y = inp.to_device(x, self.device), y.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.batch_size = batch_size or default_batch_size(x, self.device)
        self.batches = inp.batches(x, y, self.batch_size)
        self.counts = unit_counts(loss_fn, [yb for _, yb in self.batches])
        self.bn_batches = [inp.to_device(b, self.device) for b in bn_batches or []]
        self.bn_note = {"bn": "recompute", "bn_batches": len(self.bn_batches)} if self.bn_batches else {}
        self.points_per_call = points_per_call or 8
        self.flat, self.perm = self._bind_flat()
        self.kern: Any = kernels.for_device(self.device) if cuda else kernels.cpu
        self.use_graphs = cuda if cuda_graphs is None else bool(cuda_graphs)
        self.graph_note = "CUDA graphs" if self.use_graphs else "eager (no CUDA device)"
        self._graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self._base: torch.Tensor | None = None
        self._dirs: torch.Tensor | None = None

    # -- the flat buffer ----------------------------------------------------------
    def _bind_flat(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Re-point the perturbed tensors into one flat buffer; returns it and the
        permutation ``perm`` with ``physical = logical[perm]`` (``None``: identity)."""
        current = perturbed_tensors(self.model, self.layout.dir_type)
        owners: dict[int, list[tuple[nn.Module, str, bool]]] = {}
        for module in self.model.modules():
            for attr, p in module._parameters.items():
                if p is not None:
                    owners.setdefault(id(p), []).append((module, attr, True))
            for attr, b in module._buffers.items():
                if b is not None:
                    owners.setdefault(id(b), []).append((module, attr, False))
        flat = torch.empty(self.layout.size, dtype=torch.float32, device=self.device)
        perm_parts, offset, permuted = [], 0, False
        for name, shape, numel in zip(self.layout.names, self.layout.shapes, self.layout.numels):
            original = self._owned_tensor(name)
            if original.dtype != torch.float32:
                raise ConfigError(f"The static strategy needs float32 weights; {name} is {original.dtype}",
                                  hint="convert the model to float32, or use --strategy loop")
            piece = flat[offset:offset + numel]
            index = torch.arange(offset, offset + numel, device=self.device)
            if self.channels_last and len(shape) == 4:
                out_c, in_c, kh, kw = shape
                view = piece.view(out_c, kh, kw, in_c).permute(0, 3, 1, 2)
                index = index.view(shape).permute(0, 2, 3, 1).reshape(-1)
                permuted = True
            else:
                view = piece.view(shape)
            view.copy_(current[name])
            for module, attr, is_param in owners[id(original)]:
                if is_param:
                    module._parameters[attr].data = view  # a tied Parameter is re-pointed once for all owners
                else:
                    module._buffers[attr] = view
            perm_parts.append(index)
            offset += numel
        return flat, (torch.cat(perm_parts) if permuted else None)

    def _owned_tensor(self, name: str) -> torch.Tensor:
        prefix, _, attr = name.rpartition(".")
        module = self.model.get_submodule(prefix) if prefix else self.model
        tensor = module._parameters.get(attr)
        return tensor if tensor is not None else module._buffers[attr]

    def _physical(self, logical: torch.Tensor) -> torch.Tensor:
        """Logical-order flat values ``[..., P]`` in the buffer's order."""
        return logical if self.perm is None else logical.index_select(-1, self.perm)

    # -- the contract ---------------------------------------------------------------
    def set_directions(self, base: torch.Tensor, dirs: torch.Tensor) -> None:
        super().set_directions(base, dirs)
        self._base = self._physical(base.to(self.device, torch.float32)).contiguous()
        self._dirs = self._physical(dirs.to(self.device, torch.float32)).contiguous()

    def evaluate_points(self, coeffs: torch.Tensor) -> Stats:
        """Loss and accuracy at grid coefficients ``coeffs[K, D]``: the kernel writes each
        point's weights into the flat buffer in place."""
        if self._dirs is None:
            raise ConfigError("set_directions() must be called before evaluate_points()")
        coeffs = coeffs.to(self.device, torch.float32)
        out = self.flat.view(1, -1)
        return self._run(coeffs.shape[0], lambda i: self.kern.perturb(self._base, self._dirs, coeffs[i:i + 1], out=out))

    def evaluate(self, weights: torch.Tensor) -> Stats:
        """Loss and accuracy for ready-made weights ``[K, P]`` (copied into the buffer)."""
        weights = weights.to(self.device, torch.float32)
        return self._run(weights.shape[0], lambda i: self.flat.copy_(self._physical(weights[i])))

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "strategy": self.strategy, "device": str(self.device),
                "strategy_reason": "static requested", "points_per_call": self.points_per_call,
                "batch_size": self.batch_size, "precision": self.precision, "channels_last": self.channels_last,
                "kernels": kernels.kernel_name(self.kern), "execution": self.graph_note,
                **self.bn_note}

    def close(self) -> None:
        """Release the graphs, the data, the weight buffer and the model copy at once."""
        self._graphs.clear()
        self.batches, self.bn_batches = [], []
        self._dirs = self._base = self.perm = None
        self.flat = torch.empty(0, device=self.device)
        self.model = nn.Module()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- evaluation -----------------------------------------------------------------
    def _run(self, k: int, write: Any) -> Stats:
        sums = torch.empty(k, 3, dtype=torch.float64, device=self.device)  # losses, squares, loss x units
        correct = torch.zeros(k, dtype=torch.int64, device=self.device)
        labelled = True
        with torch.no_grad(), self.guard("The model failed on the evaluation data"):
            for i in range(k):
                write(i)  # in IEEE fp32 whatever the run's precision: the weights themselves are exact
                if self.bn_batches:  # in place: a captured graph reads the new statistics
                    recalibrate(self.model, self.bn_batches)
                with precision_mode(self.precision, self.device):
                    if self._keep is not None:  # per-sample values: eager, outside any graph
                        total, right = self._pass(self.batches, self._keep)
                    else:
                        total, right = self._replay() if self.use_graphs else self._pass(self.batches)
                sums[i] = total
                if right is None:
                    labelled = False
                else:
                    correct[i] = right
        # the one synchronisation
        return finish_stats(sums[:, 0], sums[:, 1], sums[:, 2], correct if labelled else None, self.counts)

    def _pass(self, batches: list[tuple[Any, torch.Tensor]], keep: list[SampleValues] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sums of losses, squared losses and losses x units (``[3]``) and the correct count of
        the current weights over ``batches``, on the device (``keep``: the point's per-sample
        values appended to it)."""
        total = torch.zeros(3, dtype=torch.float64, device=self.device)
        correct: torch.Tensor | None = torch.zeros((), dtype=torch.int64, device=self.device)
        kept: list[SampleValues] | None = [] if keep is not None else None
        for xb, yb in batches:
            *parts, right = point_batch_stats(self.loss_fn, inp.forward(self.model, xb), yb, kept)
            total += torch.stack(parts)
            correct = None if right is None or correct is None else correct + right
        if keep is not None and kept is not None:
            keep.append(SampleValues.along_samples(kept))
        return total, correct

    def _replay(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = tuple(id(yb) for _, yb in self.batches)
        if key not in self._graphs:
            captured = self._capture(self.batches)
            if captured is None:
                return self._pass(self.batches)
            self._graphs[key] = captured
        graph, total, correct = self._graphs[key]
        graph.replay()
        return total, (None if correct.numel() == 0 else correct)

    def _capture(self, batches: list[tuple[torch.Tensor, torch.Tensor]]
                 ) -> tuple[Any, torch.Tensor, torch.Tensor] | None:
        """Capture one pass over ``batches`` in a CUDA graph (after a warm-up on a side
        stream, which also runs cuDNN's algorithm choice outside the graph); ``None``
        and eager execution from then on when the model cannot be captured."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(side):
                self._pass(batches)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            pool = next(iter(self._graphs.values()))[0].pool() if self._graphs else None
            with torch.cuda.graph(graph, pool=pool):
                total, correct = self._pass(batches)
                if correct is None:
                    correct = torch.empty(0, dtype=torch.int64, device=self.device)
        except RuntimeError as e:  # a host sync or a data-dependent shape inside the forward
            if is_out_of_memory(e):  # not a capture problem: the surface loop names the settings to lower
                raise
            torch.cuda.synchronize(self.device)
            self.use_graphs = False
            self.graph_note = f"eager: CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0]})"
            log.warning("the static runner runs without CUDA graphs: %s", self.graph_note)
            return None
        return graph, total, correct
