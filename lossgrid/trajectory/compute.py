"""Optimization trajectories: the PCA plane of a run's checkpoints (Li et al. 2018, sec. 7).

Each checkpoint ``theta_i`` becomes ``d_i = theta_i - theta_final``. The two
directions are the top principal components of the matrix of all ``d_i`` -- the
final model included, as a row of zeros, as the reference code does -- centered,
exactly as ``sklearn.decomposition.PCA(n_components=2)``; they are unit vectors
(no filter normalization) and their signs follow scikit-learn's rule (the entry
of largest magnitude is positive). Each checkpoint's coordinates are the least
squares fit of its uncentered ``d_i`` on the two directions (dot products, as
the directions are orthonormal), so the final model sits at (0, 0); the norm of
what the plane misses is reported as its residual.

``ignore="biasbn"`` sets every tensor of at most one dimension (biases,
BatchNorm weights and, for ``states``, running statistics) to zero in every
``d_i`` -- kept as zeros, not dropped, as the reference does -- so those entries
of the directions are zero too.

Streaming: parameters are never all in memory. A first pass builds the ``n x n``
Gram matrix ``K = D D^T`` of the differences in float64 from blocks of rows that
fit in ``memory_bytes`` (one pass over the files if every row fits; otherwise a
block is kept while the later rows stream past it, ``n + n^2/(2B)`` reads for
blocks of ``B`` rows). PCA is the eigendecomposition of the centered Gram
``H K H``; the directions are weighted sums of the ``d_i``, formed in a second
pass (the rows still in memory are not read again); coordinates and residuals
follow from ``K`` alone.

Example:
    >>> traj = compute_trajectory(model, checkpoint_paths("run/epoch_*.pt"))  # doctest: +SKIP
    >>> save_trajectory("traj.h5", traj)                                     # doctest: +SKIP
    >>> path_grid(traj)                                                       # doctest: +SKIP
    ('-3.61:0.602:31', '-0.822:1.1:31')
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import input_file_problem, same_file
from ..config import DIR_TYPES, IGNORES, EvalSpec
from ..data import as_eval_data
from ..engine.device import on_device, resolve_device
from ..engine.directions import Directions
from ..engine.fingerprint import data_fingerprint, model_fingerprint
from ..engine.losses import resolve_loss
from ..engine.params import ParamLayout, perturbed_tensors
from ..engine.runners import make_runner
from ..errors import ConfigError
from ..models import load_state, read_state
from ..surface.file import Surface, load_surface
from .file import (  # noqa: F401 - the trajectory file, re-exported: part of this API
    TRAJECTORY_SCHEMA,
    Trajectory,
    _is_trajectory_file,
    _read_directions,
    load_trajectory,
    save_trajectory,
)

log = logging.getLogger(__name__)

#: float64 working memory for checkpoint rows held at once by :func:`compute_trajectory`
MEMORY_BYTES = 1 << 30


class _Rows:
    """Reads checkpoints as float64 rows ``d_i = theta_i - theta_final`` (1-D tensors zeroed for biasbn)."""

    def __init__(self, model: nn.Module, dir_type: str, ignore: str, trust: bool,
                 progress: Callable[[int, int], None] | None) -> None:
        self.model, self.dir_type, self.trust, self.progress = model, dir_type, trust, progress
        self.layout = ParamLayout.from_model(model, dir_type)
        offsets = np.cumsum([0, *self.layout.numels])
        self.zeroed = [(int(offsets[i]), int(offsets[i + 1])) for i, s in enumerate(self.layout.shapes)
                       if ignore == "biasbn" and len(s) <= 1]
        self.final = np.zeros(self.layout.size)
        self.reads, self.total = 0, 0

    def fill(self, out: np.ndarray) -> None:
        """Write the model's current tensors, flat and as float64, into ``out``."""
        start = 0
        for t in perturbed_tensors(self.model, self.dir_type).values():
            n = t.numel()
            out[start:start + n] = t.detach().reshape(-1).to("cpu", torch.float64).numpy()
            start += n

    def read_into(self, path: str, out: np.ndarray) -> None:
        """Load ``path`` into the model (strict, safe rules) and write its row ``d_i`` into ``out``."""
        load_state(self.model, read_state(path, self.trust), path)
        self.fill(out)
        out -= self.final
        for a, b in self.zeroed:
            out[a:b] = 0.0
        self.reads += 1
        if self.progress:
            self.progress(self.reads, self.total)


def compute_trajectory(model: nn.Module, checkpoints: Sequence[str], final: str | None = None,
                       dir_type: str = "weights", ignore: str = "biasbn", trust_checkpoint: bool = False,
                       progress: Callable[[int, int], None] | None = None, *,
                       memory_bytes: int = MEMORY_BYTES) -> Trajectory:
    """PCA directions of a training run and each checkpoint's place on them.

    Args:
        model: the architecture; each checkpoint's weights are loaded into it
            (state_dicts and safetensors safely; whole pickled models only with
            ``trust_checkpoint``). On return it holds the final checkpoint's weights.
        checkpoints: the run's checkpoint files in training order (see
            :func:`lossgrid.checkpoints.checkpoint_paths`). ``final`` (default: the last one) is a row
            of the PCA even when not among them.
        dir_type: ``weights`` (parameters) or ``states`` (every floating state entry,
            BatchNorm statistics included).
        ignore: ``biasbn`` (1-D tensors set to zero) or ``none``.
        progress: called as ``progress(files_read, files_to_read)``.
        memory_bytes: float64 working memory in all: the rows held at once, the
            final's row, the two components (at least 7 rows whatever its value).

    Example:
        >>> traj = compute_trajectory(model, ["e1.pt", "e2.pt", "e3.pt"])  # doctest: +SKIP
        >>> traj.coords[-1]                                                # doctest: +SKIP
        array([0., 0.])
    """
    if dir_type not in DIR_TYPES or ignore not in IGNORES:
        raise ConfigError(f"Unknown dir_type {dir_type!r} or ignore {ignore!r}",
                          hint=f"use dir_type {' or '.join(DIR_TYPES)}, ignore {' or '.join(IGNORES)}")
    paths = [os.fspath(p) for p in checkpoints]
    if not paths:
        raise ConfigError("No checkpoints given", hint="pass the run's checkpoint files (--checkpoints 'run/*.pt')")
    final = os.fspath(final) if final is not None else paths[-1]
    problem = input_file_problem(final)
    if problem:
        raise ConfigError(f"Cannot read the final checkpoint {final}", problem, "check the --final path")
    if not any(same_file(p, final) for p in paths):
        paths.append(final)  # the reference's matrix always holds the final model (a row of zeros)
    if len(paths) < 3:
        raise ConfigError(f"{len(paths)} checkpoint(s) cannot span a plane",
                          "two principal components need at least three checkpoints (the final one included)",
                          "save checkpoints more often during training")
    rows = _Rows(model, dir_type, ignore, trust_checkpoint, progress)
    final_state = read_state(final, trust_checkpoint)
    load_state(model, final_state, final)
    final_fingerprint = model_fingerprint(model)
    rows.fill(rows.final)
    moving = [i for i, p in enumerate(paths) if not same_file(p, final)]  # the final's rows are zero
    size = max(rows.layout.size, 1)
    # rows in memory: a block, a few streamed rows, the final's row, the two components, one temporary
    held = int(memory_bytes) // (8 * size)
    stream = max(1, min(32, held // 4))
    block = max(1, held - stream - 4)
    r = len(moving)
    starts = list(range(0, r, block))
    rows.total = sum(r - a for a in starts) + (starts[-1] if starts else 0)
    log.info("trajectory: %d rows of %d values, blocks of %d rows, %d reads", len(paths), size, block, rows.total)

    gram = np.zeros((len(paths), len(paths)))
    buf = np.empty((min(block, r), size))
    sbuf = np.empty((min(stream, r), size))
    kept: list[int] = []
    b = buf[:0]
    for a in starts:  # pass 1: K = D D^T, a block against itself, then the later rows streamed past it
        kept = moving[a:a + block]
        for k, i in enumerate(kept):
            rows.read_into(paths[i], buf[k])
        b = buf[:len(kept)]
        gram[np.ix_(kept, kept)] = b @ b.T
        for s in range(a + block, r, stream):
            later = moving[s:s + stream]
            for k, j in enumerate(later):
                rows.read_into(paths[j], sbuf[k])
            cross = b @ sbuf[:len(later)].T
            gram[np.ix_(kept, later)] = cross
            gram[np.ix_(later, kept)] = cross.T

    weights, ratio = _pca_weights(gram)
    comps = weights[kept].T @ buf[:len(kept)]  # pass 2: components as weighted sums; the last block is in memory
    in_memory = set(kept)
    others = [i for i in moving if i not in in_memory]
    for s in range(0, len(others), stream):
        part = others[s:s + stream]
        for k, j in enumerate(part):
            rows.read_into(paths[j], sbuf[k])
        for k in range(2):  # one row at a time: a temporary of one row, not two
            comps[k] += weights[part, k] @ sbuf[:len(part)]
    del buf, sbuf, b  # the rows go before the directions are made
    # sign as scikit-learn (largest entry positive) and exact unit norm; coords by least squares, from K alone
    scale = np.sign(comps[np.arange(2), np.argmax(np.abs(comps), axis=1)]) / np.linalg.norm(comps, axis=1)
    scale[scale == 0] = 1.0
    comps *= scale[:, None]
    weights = weights * scale
    kw = gram @ weights
    coords = np.linalg.solve(weights.T @ kw, kw.T).T
    residuals = np.sqrt(np.clip(np.diag(gram) - np.sum(coords * kw, axis=1), 0.0, None))
    load_state(model, final_state, final)
    directions = _as_directions(model, rows.layout, comps, ignore, ratio)
    return Trajectory(directions, paths, coords, residuals, ratio, os.path.realpath(final), final_fingerprint)


def _pca_weights(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``W[n, 2]`` with components ``D^T W`` (up to sign and norm) and the explained variance ratios."""
    n = len(gram)
    centering = np.eye(n) - 1.0 / n
    centered = centering @ gram @ centering  # the Gram matrix of the centered rows (as PCA centers)
    values, vectors = np.linalg.eigh(centered)
    total = float(np.trace(centered))  # n - 1 times the total variance
    top = values[::-1][:2]
    if not total > 0:
        raise ConfigError("All checkpoints hold the same weights", "their differences are zero",
                          "pass the checkpoints of a training run")
    if top[1] <= 1e-12 * top[0]:
        raise ConfigError("The checkpoints lie on a line, not in a plane",
                          "the second principal component explains no variance",
                          "pass more checkpoints of the run, or plot a 1D interpolation (lossgrid surface --model2)")
    u = vectors[:, ::-1][:, :2]
    u = u - u.mean(axis=0)  # exactly orthogonal to the ones vector: D^T u = C^T u
    return u / np.sqrt(top), top / total


def _as_directions(model: nn.Module, layout: ParamLayout, comps: np.ndarray, ignore: str,
                   ratio: np.ndarray) -> Directions:
    ref = perturbed_tensors(model, layout.dir_type)
    made = []
    for row in comps:
        pieces = layout.unflatten(torch.from_numpy(np.ascontiguousarray(row)))
        made.append([pieces[n].to(device=w.device, dtype=w.dtype).clone() for n, w in ref.items()])
    meta = {"dir_type": layout.dir_type, "kind": "pca", "xnorm": "none", "xignore": ignore, "ynorm": "none",
            "yignore": ignore, "explained_variance_ratio": [float(v) for v in ratio]}
    return Directions(layout, made[0], made[1], meta)


def path_grid(traj: Trajectory, margin: float = 0.2, num: int = 31) -> tuple[str, str]:
    """``--x``/``--y`` axis texts (``MIN:MAX:NUM``) covering every checkpoint and (0, 0),
    widened by ``margin`` times each axis's extent.

    Example:
        >>> path_grid(traj, margin=0.2, num=31)  # doctest: +SKIP
        ('-3.61:0.602:31', '-0.822:1.1:31')
    """
    if not margin >= 0 or num < 2:
        raise ConfigError(f"path_grid(margin={margin}, num={num})", "margin must be >= 0 and num >= 2")
    lows = np.minimum(traj.coords.min(axis=0), 0.0)
    highs = np.maximum(traj.coords.max(axis=0), 0.0)
    spans = highs - lows
    fallback = float(spans.max()) if spans.max() > 0 else 1.0
    axes = []
    for lo, hi, span in zip(lows, highs, spans):
        pad = margin * (span if span > 0 else fallback) or 0.05 * fallback
        axes.append(f"{_round(lo - pad, np.floor):g}:{_round(hi + pad, np.ceil):g}:{num}")
    return axes[0], axes[1]


def _round(value: float, how: Callable[[float], float]) -> float:
    """``value`` to 3 significant digits, rounded outwards by ``how`` (floor or ceil)."""
    if value == 0:
        return 0.0
    step = 10.0 ** (np.floor(np.log10(abs(value))) - 2)
    return float(how(value / step) * step)


def path_losses(model: nn.Module, data: Any, traj: Trajectory, loss: Any = "cross_entropy",
                eval_spec: EvalSpec = EvalSpec(), surface: Any = None) -> np.ndarray:
    """Loss at every checkpoint's projected coordinates, evaluated by the surface engine
    (the same runner and weight kernel as :func:`~lossgrid.surface.compute.compute_surface`)
    around ``model``, which must hold the final checkpoint's weights.

    With ``surface`` (a :class:`~lossgrid.surface.file.Surface` or its path),
    the surface must share directions, model, data and loss, so that the values
    agree with its contour; otherwise a :class:`ConfigError`.

    Example:
        >>> losses = path_losses(model, load_data("digits"), traj)  # doctest: +SKIP
    """
    data = as_eval_data(data)
    loss_fn, loss_desc = resolve_loss(loss)
    layout = traj.directions.layout
    own = ParamLayout.from_model(model, layout.dir_type)
    if (own.names, own.shapes) != (layout.names, layout.shapes):
        raise ConfigError("The trajectory's directions do not match the model",
                          "their tensor names or shapes differ", "pass the architecture the trajectory was made for")
    if surface is not None:
        attrs = (surface if isinstance(surface, Surface) else load_surface(os.fspath(surface))).attrs
        check_same_plane(attrs, traj)
        found = {"model": model_fingerprint(model),
                 "data": data_fingerprint(data), "loss": loss_desc}
        stored = {"model": attrs.get("model_fingerprint"), "data": attrs.get("data_fingerprint"),
                  "loss": attrs.get("loss")}
        differ = [k for k in found if stored[k] is not None and stored[k] != found[k]]
        if differ:
            raise ConfigError(f"The surface was computed with another {' and '.join(differ)}",
                              "path losses agree with the contour only on the surface's own model, data and loss",
                              "pass the surface's --model/--checkpoint (the final model), --data, --samples "
                              "and --loss")
        precision = str(attrs.get("precision") or "fp32")
        if precision != eval_spec.precision:  # the path's losses in the contour's own precision
            eval_spec = dataclasses.replace(eval_spec, precision=precision)
    device = resolve_device(eval_spec.device)
    model = on_device(model, device)  # the caller's model stays where it is
    runner = make_runner(eval_spec, model, layout, data, loss_fn, "trajectory")
    try:
        base = layout.flatten(perturbed_tensors(model, layout.dir_type)).to(device)
        dirs = traj.directions.flat().to(device)
        runner.set_directions(base, dirs)
        points = torch.as_tensor(traj.coords, dtype=dirs.dtype)
        runner.expect(len(points))
        out = [runner.evaluate_points(points[s:s + runner.points_per_call].to(device))[0]
               for s in range(0, len(points), runner.points_per_call)]
    finally:
        runner.close()
    return np.concatenate(out).astype(np.float64)


def check_same_plane(surface_attrs: dict[str, Any], traj: Trajectory) -> None:
    """Refuse (:class:`ConfigError`) a surface that was not computed on the trajectory's directions,
    or not around its final model (the path's origin)."""
    stored = surface_attrs.get("directions")
    mine = traj.directions.fingerprint()
    if stored != mine:
        raise ConfigError("The trajectory and the surface are on different directions",
                          f"direction fingerprints {mine} (trajectory) and {stored or 'unknown'} (surface)",
                          "compute the surface with --dir-file on this trajectory file (lossgrid trajectory "
                          "prints the command)")
    centre = surface_attrs.get("model_fingerprint")
    if traj.final_fingerprint and centre and centre != traj.final_fingerprint:
        raise ConfigError("The surface is not centred on the trajectory's final model",
                          f"the path's coordinates are measured from {traj.final}, the surface was computed "
                          "around another model (model fingerprints differ)",
                          f"compute the surface with --checkpoint {traj.final} (lossgrid trajectory prints the "
                          "command)")
