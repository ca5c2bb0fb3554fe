"""The plain per-point PyTorch loop: the reference every runner is checked
against, and the baseline of every benchmark.

It does what the reference implementation does for one grid point, minus the
disk and DataLoader overheads: load the perturbed state into the model, run the
evaluation set through it in batches, average the loss.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .losses import LossFn, cross_entropy
from .params import ParamLayout


def evaluate_points_reference(model: nn.Module, layout: ParamLayout, weights: torch.Tensor,
                              x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn = cross_entropy,
                              batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy (percent) of each row of ``weights[K, P]``, one at a time."""
    net = copy.deepcopy(model).eval()
    losses, accs = [], []
    for row in weights:
        state = net.state_dict()
        for name, value in layout.unflatten(row).items():
            state[name] = value.clone()
        net.load_state_dict(state)
        total, correct = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb, yb = x[start:start + batch_size], y[start:start + batch_size]
                out = net(xb)
                total += float(loss_fn(out, yb).double().sum())
                correct += int((out.argmax(dim=1) == yb).sum()) if not torch.is_floating_point(yb) else 0
        losses.append(total / len(x))
        accs.append(100.0 * correct / len(x) if not torch.is_floating_point(y) else np.nan)
    return np.array(losses), np.array(accs)
