"""The BatchNorm policy of a surface: running statistics as stored, or re-estimated per point.

``eval`` (the default, as the paper's reference code does): every grid point uses
the running mean and variance stored in the checkpoint. Far from the minimum
these no longer match the activations of the perturbed network, which makes the
loss there partly an artefact of stale statistics.

``recompute`` (as mode-connectivity work evaluates points between minima): at
every grid point the running statistics are reset and re-estimated from
``batches`` training batches -- a cumulative average (``momentum=None``) over
forward passes with the BatchNorm layers in training mode and every other
module in eval mode (dropout stays off) -- and the point is then evaluated in
eval mode with those statistics. Per point this costs ``batches`` extra forward
passes.

Only runners that evaluate one point at a time on a real ``nn.Module`` can do
this (``torch`` ``loop`` and ``static``); the K-wide and exported strategies
fold running statistics into their graphs and refuse the policy, saying why.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    >>> recalibrate(net, [torch.randn(16, 3)])
    >>> round(float(net[1].running_var.mean()) > 0, 0)
    1
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import inputs as inp
from ..config import BatchNormSpec
from ..data import EvalData
from ..errors import ConfigError
from ..inputs import Inputs
from .precision import precision_mode

#: runner strategies that can re-estimate BatchNorm statistics at every point
RECOMPUTE_STRATEGIES = ("torch/loop", "torch/static")


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


def recalibrate(model: nn.Module, batches: Sequence[Inputs]) -> None:
    """Reset the running statistics of every BatchNorm layer of ``model`` and re-estimate
    them as the plain average over ``batches`` (BatchNorm layers in training mode, all
    other modules in eval mode); the modules' modes and momenta are restored after.

    The statistics are updated in place (their storage does not move), so a CUDA graph
    that reads them stays valid. They are estimated in IEEE fp32 whatever the enclosing
    precision (no TF32 tensor cores, no autocast): every runner stores fp32 statistics.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in layers]
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
            m.train()
        with torch.no_grad(), precision_mode("fp32", layers[0].running_mean.device):
            for xb in batches:
                inp.call_model(model, xb)
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
        for m, training in modes:
            m.training = training


def check_recompute(model: nn.Module, dir_type: str) -> None:
    """Refuse ``--bn recompute`` where it cannot mean anything."""
    if not batchnorm_layers(model):
        raise ConfigError("--bn recompute was given but the model has no BatchNorm layer with running statistics",
                          "there is nothing to re-estimate", "drop --bn recompute")
    if dir_type == "states":
        raise ConfigError("--bn recompute cannot be combined with --dir-type states",
                          "states directions move the running statistics, which recompute replaces at every point",
                          "use --dir-type weights with --bn recompute")


def refuse_recompute(strategy: str) -> None:
    """The error of a runner that cannot re-estimate BatchNorm statistics per point."""
    raise ConfigError(f"The {strategy} strategy cannot re-estimate BatchNorm statistics per point (--bn recompute)",
                      "it evaluates many weight sets at once (vmap, K-wide) or a folded, exported graph, never "
                      "one module whose statistics can be reset and re-estimated between points",
                      f"use --backend torch --strategy loop or static with --bn recompute "
                      f"(supported: {', '.join(RECOMPUTE_STRATEGIES)})")


def recompute_batches(data: EvalData, spec: BatchNormSpec) -> list[Inputs]:
    """The inputs of the ``spec.batches`` batches that re-estimate the statistics: a seeded
    draw (``spec.seed``) of ``batches x batch_size`` samples of ``data`` (all of them if it
    holds fewer), the same at every point. A last batch of one sample joins the one before
    (BatchNorm in training mode needs two samples per channel)."""
    n = len(data)
    gen = torch.Generator().manual_seed(spec.seed)
    order = torch.randperm(n, generator=gen)[:spec.batches * spec.batch_size]
    if len(order) < 2:
        raise ConfigError(f"--bn recompute needs at least 2 samples, {data.description} has {len(order)}",
                          "BatchNorm estimates statistics over a batch", "pass --bn-data with more samples")
    bounds = list(range(0, len(order), spec.batch_size)) + [len(order)]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
        del bounds[-2]
    return [inp.take(data.x, order[a:b]) for a, b in zip(bounds, bounds[1:])]


def identity(spec: BatchNormSpec, batches: list[Inputs]) -> dict[str, object]:
    """What a surface file's identity holds of a ``recompute`` policy (it changes every value):
    the settings and a fingerprint of the batches' contents (not how the data was spelled)."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for batch in batches:
        for t in inp.tensors(batch):
            t = t.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"policy": spec.policy, "batches": spec.batches, "batch_size": spec.batch_size, "seed": spec.seed,
            "data_fingerprint": h.hexdigest()}
