"""Flatness and sharpness numbers of a trained model, in one JSON-able report for
model-audit pipelines (``lossgrid audit``).

Every quantity is of the **mean loss over the whole evaluation set**, with the
model in eval mode (BatchNorm uses its running statistics). Directions and balls
follow filter-wise normalization (Li et al. 2018): a filter (a slice along dim 0
of a tensor of two or more dimensions, a Linear row) is scaled by its own norm;
biases and BatchNorm parameters do not move (the surface's ``--xignore biasbn``).
The report's JSON schema is ``lossgrid/schemas/audit.schema.json``
(:func:`load_schema`); its fields, by section:

Header
    ``schema_version`` (int, :data:`SCHEMA_VERSION`), ``lossgrid_version``,
    ``model``, ``model2`` (description or null), ``data``, ``loss``, ``samples``
    (evaluation samples), ``parameters`` (all model parameters), ``seed``,
    ``device``, ``seconds`` (wall time of the audit), ``settings`` (the settings
    used: ``radii``, ``directions``, ``fit_alphas``, ``sharpness_radius``,
    ``ascent_steps``, ``hessian``, ``trace_samples``, ``batch_size``,
    ``barrier_points``, ``norm``, ``ignore``) and ``evaluation`` (the runner:
    ``backend``, ``strategy``, ``batch_size``).
``center``
    ``loss`` and ``accuracy`` (percent; null without class labels) at the model.
``sharpness``
    epsilon-sharpness: ``value`` = the largest loss increase found within the
    ball ``||delta_f|| <= radius * ||w_f||`` for every filter ``f``; ``relative``
    = ``100 * value / (1 + center loss)`` (Keskar et al. 2017); ``radius``;
    ``steps`` (projected gradient-ascent steps); ``loss_at_max`` (the loss at the
    point found); ``max_filter_fraction`` (how far the most-moved filter of that
    point is, as a share of its radius); ``lower_bound`` (always true: an ascent
    finds *a* high point, the true maximum over the ball can only be larger).
``random_directions``
    a list, one item per radius ``r``: ``radius``, ``directions``;
    ``mean_increase`` (the mean over directions of each direction's average loss
    increase at ``+r`` and ``-r``), ``std``, ``ci95_low``/``ci95_high`` (the 95%
    Student-t interval of that mean over directions; null with one direction),
    ``mean_increase_plus``/``mean_increase_minus`` (each side alone) and
    ``max_increase`` (the largest single increase).
``quadratic_fits``
    per random direction, a least-squares ``loss(alpha) = a alpha^2 + b alpha +
    c`` over ``alphas`` (``fit_alphas`` evenly spaced in ``[-r_max, r_max]``, the
    radii's ``+-r`` and 0): ``curvature_mean``/``curvature_std`` of ``2a`` (the
    second derivative along a filter-normalized direction), ``r2_median`` (median
    R^2), ``curvatures`` (per direction), ``directions``, ``alphas``.
``hessian`` (null with ``hessian=False``)
    of the mean loss w.r.t. all parameters: ``top_eig`` (Lanczos) with
    ``top_eig_residual`` (``||H v - lambda v||``) and ``lanczos_iterations``;
    ``trace`` with ``trace_stderr``, ``trace_samples`` and ``trace_method``
    (Hutch++); ``trace_over_top`` (``trace / top_eig``, an effective rank;
    null if ``top_eig`` is 0); ``hvp_count``.
``barrier`` (null without ``model2``)
    along ``theta(alpha) = (1 - alpha) theta_1 + alpha theta_2`` (every
    floating-point state entry interpolated, BatchNorm running statistics
    included, so that alpha = 1 is exactly ``model2``): ``value`` = max over
    ``alphas`` of ``loss(alpha) - ((1 - alpha) loss(0) + alpha loss(1))``,
    ``alpha`` where it is reached, ``loss_start``, ``loss_end``, and the curve
    (``alphas``, ``losses``, ``accuracies``).

Numbers that are not finite (a diverging loss) are written as null.

Example:
    >>> import torch
    >>> from lossgrid.data import load_data
    >>> data = load_data("digits", samples=64)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> report = audit(model, data, directions=2, trace_samples=6)
    >>> sorted(report["center"]), report["sharpness"]["lower_bound"]
    (['accuracy', 'loss'], True)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..config import DirectionSpec, EvalSpec
from ..data import EvalData, as_eval_data
from ..engine import preflight
from ..engine.device import resolve_device
from ..engine.directions import gaussian_directions
from ..engine.losses import LossFn, resolve_loss
from ..engine.params import ParamLayout, perturbed_tensors
from ..engine.runners import Runner, make_runner
from ..errors import ConfigError
from ..hessian.operator import hessian_operator, hessian_trace, lanczos_eigs
from . import measures
from .measures import finite_or_none

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: evenly spaced alphas in [-r_max, r_max] of every quadratic fit (the radii's +-r are added)
FIT_ALPHAS = 9
#: points of the interpolation curve between the two models
BARRIER_POINTS = 25
Progress = Callable[[int, int], None]


def audit(model: nn.Module, data: EvalData | tuple[torch.Tensor, torch.Tensor], loss: str | LossFn = "cross_entropy",
          model2: nn.Module | None = None, radii: Sequence[float] = (0.01, 0.05, 0.1), directions: int = 8,
          seed: int = 0, sharpness_radius: float = 0.01, ascent_steps: int = 5, hessian: bool = True,
          trace_samples: int = 32, batch_size: int | None = None, device: str = "cpu",
          progress: Progress | None = None, *, model_description: str | None = None,
          model2_description: str | None = None) -> dict[str, Any]:
    """Audit the flatness of ``model`` on ``data``: one JSON-able report (fields in the module docs).

    Args:
        model: the trained model (not modified).
        data: the evaluation set (an :class:`EvalData` or ``(x, y)`` tensors).
        loss: ``cross_entropy``, ``mse``, ``module:function`` or a callable.
        model2: a second model of the same architecture: adds the loss ``barrier``.
        radii: filter-normalized radii of the random-direction statistics.
        directions: seeded random filter-normalized directions (their seeds are
            drawn from ``numpy.random.SeedSequence(seed)``).
        seed: seeds the directions, the Lanczos start and the trace probes.
        sharpness_radius: the radius ``eps`` of the sharpness ball.
        ascent_steps: projected gradient-ascent steps of the sharpness (0: none).
        hessian: compute the top eigenvalue and the trace of the Hessian.
        trace_samples: Hessian-vector products of the Hutch++ trace estimate.
        batch_size: samples per forward pass (default: by input size).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        progress: called as ``progress(done, total)`` as work units finish.
        model_description, model2_description: how the models were specified.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> report = audit(model, (x, y), radii=(0.1,), directions=3, hessian=False)
        >>> len(report["random_directions"]), report["hessian"] is None
        (1, True)
    """

    t0 = time.perf_counter()
    data = as_eval_data(data)
    radii = _check_settings(radii, directions, sharpness_radius, ascent_steps, trace_samples, seed, hessian)
    dev = resolve_device(device)
    loss_fn, loss_desc = resolve_loss(loss)
    preflight.check_finite_model(model)
    if model2 is not None:
        preflight.check_finite_model(model2, "the second model (model2)")
    preflight.check_data(data, loss_fn)
    model = _copy_to(model, dev)
    preflight.probe(model, data, loss_fn, dev)
    eval_spec = EvalSpec(batch_size=batch_size, device=str(dev))
    point_alphas = _alphas(radii)[1]
    hessian_units = (41 + trace_samples) if hessian else 0  # Lanczos' default budget + residual, then the trace
    total = (1 + directions * len(point_alphas) + ascent_steps + (BARRIER_POINTS if model2 is not None else 0)
             + hessian_units)
    tick = _Ticker(progress, total)

    center, random_dirs, fits, sharpness, evaluation = _around_the_center(
        model, data, loss_fn, eval_spec, dev, seed, directions, radii, sharpness_radius, ascent_steps, tick,
        model_description)

    # the barrier along the linear interpolation (every floating-point state entry moves)
    barrier = None
    if model2 is not None:
        barrier = _barrier(model, _copy_to(model2, dev), data, loss_fn, eval_spec, tick, model_description or "")

    # the Hessian: top eigenvalue (Lanczos) and trace (Hutch++)
    hess = _hessian(model, data, loss_fn, batch_size, str(dev), seed, trace_samples, tick) if hessian else None
    tick.finish()
    return {
        "schema_version": SCHEMA_VERSION, "lossgrid_version": __version__,
        "model": model_description or type(model).__name__,
        "model2": (model2_description or type(model2).__name__) if model2 is not None else None,
        "data": data.description, "loss": loss_desc, "samples": len(data),
        "parameters": int(sum(p.numel() for p in model.parameters())), "seed": int(seed), "device": str(dev),
        "seconds": round(time.perf_counter() - t0, 3),
        "settings": {"radii": radii, "directions": int(directions), "fit_alphas": FIT_ALPHAS,
                     "sharpness_radius": float(sharpness_radius), "ascent_steps": int(ascent_steps),
                     "hessian": bool(hessian), "trace_samples": int(trace_samples), "batch_size": batch_size,
                     "barrier_points": BARRIER_POINTS, "norm": "filter", "ignore": "biasbn"},
        "evaluation": evaluation, "center": center, "sharpness": sharpness, "random_directions": random_dirs,
        "quadratic_fits": fits, "hessian": hess, "barrier": barrier,
    }


class _Ticker:
    """Feeds ``progress(done, total)`` from work units done in any phase."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        if progress:
            progress(0, total)

    def __call__(self, units: int) -> None:
        self.done = min(self.total, self.done + units)
        if self.progress:
            self.progress(self.done, self.total)

    def finish(self) -> None:
        self(self.total - self.done)



def _around_the_center(model: nn.Module, data: EvalData, loss_fn: LossFn, eval_spec: EvalSpec, dev: torch.device,
                       seed: int, directions: int, radii: list[float], sharpness_radius: float, ascent_steps: int,
                       tick: _Ticker, description: str | None) -> tuple[dict[str, Any], ...]:
    """The center, the random-direction statistics and quadratic fits (one runner, all points in chunks), and
    the sharpness (projected ascent, gradients by autograd, the last point by the runner)."""
    fit_alphas, point_alphas = _alphas(radii)
    layout = ParamLayout.from_model(model, "weights")
    base = layout.flatten(perturbed_tensors(model, "weights")).to(dev)
    dirs = torch.cat([gaussian_directions(model, DirectionSpec(seed=s), 1).flat()
                      for s in _direction_seeds(seed, directions)]).to(dev)
    coeffs = torch.zeros(1 + directions * len(point_alphas), directions, dtype=dirs.dtype)
    for i in range(directions):  # row 0 is the center; then each direction's alphas in turn
        coeffs[1 + i * len(point_alphas):1 + (i + 1) * len(point_alphas), i] = torch.as_tensor(point_alphas)
    runner = make_runner(eval_spec, model, layout, data, loss_fn, description or "")
    log.info("audit: %d points along %d random directions", len(coeffs), directions)
    try:
        losses, accs = _evaluate(runner, base, dirs, coeffs, tick)
        center_loss = float(losses[0])
        curves = losses[1:].reshape(directions, len(point_alphas))
        center = {"loss": finite_or_none(center_loss), "accuracy": finite_or_none(accs[0])}
        random_dirs = _random_direction_stats(radii, point_alphas, curves, center_loss)
        fits = _quadratic_fits(point_alphas, curves, center_loss, fit_alphas)
        gradient = measures.LossGradient.build(model, layout, data.x, data.y, loss_fn,
                                               runner.batch_size or len(data), dev)

        def grad_step(w: torch.Tensor) -> tuple[float, torch.Tensor]:
            out = gradient(w)
            tick(1)
            return out

        log.info("audit: sharpness ascent, %d steps within radius %g", ascent_steps, sharpness_radius)
        found = measures.sharpness_ascent(grad_step, lambda w: float(runner.evaluate(w[None])[0][0]), layout,
                                          base, sharpness_radius, ascent_steps, center_loss)
        evaluation = {k: runner.describe().get(k) for k in ("backend", "strategy", "batch_size")}
    finally:
        runner.close()
    increase = found["loss_at_max"] - center_loss
    sharpness = {"value": finite_or_none(increase), "relative": finite_or_none(100 * increase / (1 + center_loss)),
                 "radius": float(sharpness_radius), "steps": int(ascent_steps),
                 "loss_at_max": finite_or_none(found["loss_at_max"]),
                 "max_filter_fraction": finite_or_none(found["max_filter_fraction"]), "lower_bound": True}
    return center, random_dirs, fits, sharpness, evaluation

def _check_settings(radii: Sequence[float], directions: int, sharpness_radius: float, ascent_steps: int,
                    trace_samples: int, seed: int, hessian: bool) -> list[float]:
    radii = sorted({float(r) for r in radii})
    if not radii or not all(math.isfinite(r) and r > 0 for r in radii):
        raise ConfigError(f"Invalid radii {radii}", "radii are positive, finite filter-normalized distances",
                          "pass radii such as 0.01 0.05 0.1")
    checks = [(isinstance(directions, int) and directions >= 1, f"directions={directions!r}", "at least 1"),
              (math.isfinite(sharpness_radius) and sharpness_radius > 0, f"sharpness_radius={sharpness_radius!r}",
               "a positive number"),
              (isinstance(ascent_steps, int) and ascent_steps >= 0, f"ascent_steps={ascent_steps!r}", "0 or more"),
              (not hessian or trace_samples >= 4, f"trace_samples={trace_samples!r}", "at least 4 (Hutch++)"),
              (isinstance(seed, int) and seed >= 0, f"seed={seed!r}", "a non-negative integer")]
    for ok, what, need in checks:
        if not ok:
            raise ConfigError(f"Invalid audit setting {what}", f"it must be {need}", "change the setting")
    return radii


def _copy_to(model: nn.Module, device: torch.device) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(device).eval()


def _direction_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent direction seeds derived from ``seed`` (stable across versions of NumPy)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)]


def _alphas(radii: list[float]) -> tuple[list[float], list[float]]:
    """The fit's evenly spaced alphas, and every nonzero alpha evaluated on each direction."""
    fit = np.linspace(-radii[-1], radii[-1], FIT_ALPHAS).tolist()
    points = sorted({round(a, 12) for a in fit + radii + [-r for r in radii]} - {0.0})
    return fit, points


def _evaluate(runner: Runner, base: torch.Tensor, dirs: torch.Tensor, coeffs: torch.Tensor,
              tick: _Ticker) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy at every row of ``coeffs`` along ``dirs``, ``points_per_call`` at a time."""
    runner.set_directions(base, dirs)
    runner.expect(len(coeffs))
    losses, accs = np.empty(len(coeffs)), np.empty(len(coeffs))
    step = runner.points_per_call
    for start in range(0, len(coeffs), step):
        chunk = coeffs[start:start + step].to(dirs.device)
        losses[start:start + len(chunk)], accs[start:start + len(chunk)], _ = runner.evaluate_points(chunk)
        tick(len(chunk))
    return losses, accs


def _random_direction_stats(radii: list[float], alphas: list[float], curves: np.ndarray,
                            center_loss: float) -> list[dict[str, Any]]:
    out = []
    for r in radii:
        plus = curves[:, alphas.index(round(r, 12))] - center_loss
        minus = curves[:, alphas.index(round(-r, 12))] - center_loss
        both = measures.mean_ci95((plus + minus) / 2)
        finite = np.concatenate([plus, minus])
        finite = finite[np.isfinite(finite)]
        out.append({"radius": r, "directions": int(curves.shape[0]), "mean_increase": both["mean"],
                    "std": both["std"], "ci95_low": both["ci95_low"], "ci95_high": both["ci95_high"],
                    "mean_increase_plus": measures.mean_ci95(plus)["mean"],
                    "mean_increase_minus": measures.mean_ci95(minus)["mean"],
                    "max_increase": finite_or_none(finite.max()) if finite.size else None})
    return out


def _quadratic_fits(alphas: list[float], curves: np.ndarray, center_loss: float,
                    fit_alphas: list[float]) -> dict[str, Any]:
    xs = np.array([0.0, *alphas])  # every evaluated alpha of a direction, the center included
    fits = [measures.quadratic_fit(xs, np.concatenate([[center_loss], row])) for row in curves]
    curv = np.array([c for c, _ in fits])
    r2 = np.array([r for _, r in fits])
    stats = measures.mean_ci95(curv)
    return {"directions": int(curves.shape[0]), "alphas": [float(a) for a in xs],
            "curvature_mean": stats["mean"], "curvature_std": stats["std"],
            "r2_median": finite_or_none(np.median(r2[np.isfinite(r2)])) if np.isfinite(r2).any() else None,
            "curvatures": [finite_or_none(c) for c in curv]}


def _barrier(model: nn.Module, model2: nn.Module, data: EvalData, loss_fn: LossFn, eval_spec: EvalSpec,
             tick: _Ticker, description: str) -> dict[str, Any]:
    log.info("audit: loss barrier over %d points", BARRIER_POINTS)
    spec = DirectionSpec(dir_type="states")  # BN running statistics move too: alpha = 1 is model2 exactly
    interp = gaussian_directions(model, spec, 1, model2)
    base = interp.layout.flatten(perturbed_tensors(model, "states")).to(interp.x[0].device)
    alphas = np.linspace(0.0, 1.0, BARRIER_POINTS)
    runner = make_runner(eval_spec, model, interp.layout, data, loss_fn, description)
    try:
        losses, accs = _evaluate(runner, base, interp.flat(), torch.as_tensor(alphas)[:, None], tick)
    finally:
        runner.close()
    excess = losses - ((1 - alphas) * losses[0] + alphas * losses[-1])
    at = int(np.nanargmax(excess)) if np.isfinite(excess).any() else 0
    return {"value": finite_or_none(excess[at]), "alpha": float(alphas[at]), "loss_start": finite_or_none(losses[0]),
            "loss_end": finite_or_none(losses[-1]), "alphas": [float(a) for a in alphas],
            "losses": [finite_or_none(v) for v in losses], "accuracies": [finite_or_none(v) for v in accs]}


def _hessian(model: nn.Module, data: EvalData, loss_fn: LossFn, batch_size: int | None, device: str, seed: int,
             trace_samples: int, tick: _Ticker) -> dict[str, Any]:

    log.info("audit: Hessian top eigenvalue (Lanczos) and trace (Hutch++, %d HVPs)", trace_samples)
    op = hessian_operator(model, data, loss_fn, batch_size=batch_size, device=device, progress=lambda _: tick(1))
    eig = lanczos_eigs(op, k=1, which="top", seed=seed)
    trace = hessian_trace(op, samples=trace_samples, method="hutch++", seed=seed)
    top = float(eig.values[0])
    return {"top_eig": finite_or_none(top), "top_eig_residual": finite_or_none(eig.residuals[0]),
            "lanczos_iterations": int(eig.iterations), "trace": finite_or_none(trace.value),
            "trace_stderr": finite_or_none(trace.stderr), "trace_samples": int(trace.samples),
            "trace_method": trace.method, "trace_over_top": finite_or_none(trace.value / top) if top else None,
            "hvp_count": int(op.hvp_count)}


def schema_path() -> str:
    """The path of the report's JSON schema (``lossgrid/schemas/audit.schema.json``)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas",
                        "audit.schema.json")


def load_schema() -> dict[str, Any]:
    """The report's JSON schema (draft 2020-12) as a dict."""
    with open(schema_path(), encoding="utf-8") as fh:
        return json.load(fh)


def gate_fields(radii: int, hessian: bool = True, barrier: bool = False) -> list[str]:
    """The numeric field paths a report will have (for checking ``--fail-if`` before
    any work), read from the schema: ``radii`` items of ``random_directions``;
    ``hessian``/``barrier`` sections only when they are computed."""
    schema = load_schema()
    skip = {name for name, on in (("hessian", hessian), ("barrier", barrier)) if not on}
    out: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        types = node.get("type", [])
        types = [types] if isinstance(types, str) else types
        if "number" in types or "integer" in types:
            out.append(path)
        if "object" in types:
            for key, sub in node.get("properties", {}).items():
                if not path and key in skip:
                    continue
                walk(sub, f"{path}.{key}" if path else key)
        if "array" in types and node.get("items", {}).get("type") == "object":
            for i in range(radii):
                walk(node["items"], f"{path}.{i}")

    walk(schema, "")
    return out
