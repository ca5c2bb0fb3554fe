"""Benchmark every backend/strategy/precision on one model and data set, in one run.

Each combination becomes one row: the runner is built with
:func:`~lossgrid.engine.runners.make_runner`, warmed up on one pass, then timed
evaluating a fixed set of grid points (two seeded, filter-normalized random
directions). A row reports throughput (grid points x samples per second; an
image evaluated at one grid point counts as one image), achieved TFLOP/s, the
share of this device's GEMM peak *measured in the same run* at the row's
precision, peak memory, the runner's chunk sizes, its loss error against the
first fp32 row at the same points and, with ``project``, the projected wall
time of a whole surface. Combinations that cannot run here (a missing package,
tf32 on a CPU) are rows with ``available: false`` and the reason.

Example:
    >>> import torch
    >>> from lossgrid.zoo import mlp_digits
    >>> x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    >>> result = run_bench(mlp_digits(), (x, y), backends=["torch"], strategies=["loop"], points=2)
    >>> [(r["backend"], r["strategy"], r["available"]) for r in result["rows"]]
    [('torch', 'loop', True)]
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..config import MAX_GRID_POINTS, PRECISIONS, DirectionSpec, EvalSpec
from ..data import EvalData, as_eval_data
from ..engine import preflight
from ..engine.device import resolve_device
from ..engine.directions import gaussian_directions
from ..engine.losses import LossFn, resolve_loss
from ..engine.params import perturbed_tensors
from ..engine.precision import check_precision, precision_error
from ..engine.runners import BACKENDS, STRATEGIES, make_runner
from ..engine.runners.timing import pass_width
from ..errors import ConfigError, LossgridError, is_out_of_memory
from ..exporters.session import cuda_provider_available, missing_cuda_provider
from ..inputs import take, to_device
from .machine import device_info, flops_per_sample, memory_peak, memory_reset, peak_gemm

log = logging.getLogger(__name__)

#: version of the result's layout; raise it when a key changes meaning or goes away
SCHEMA_VERSION = 1
DEFAULT_POINTS = 8
#: samples of a projected surface's points: a billion is far beyond any evaluation set
MAX_PROJECTED_SAMPLES = 10**9
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Projection:
    """A whole surface to project a row's throughput onto: ``NX x NY`` points of ``samples`` each."""

    nx: int
    ny: int
    samples: int

    @classmethod
    def parse(cls, text: str) -> "Projection":
        """Parse ``NXxNY:SAMPLES``, for example ``51x51:50000`` (whole numbers of at least 1)."""
        hint = "write NXxNY:SAMPLES, for example --project 51x51:50000"
        match = re.fullmatch(r"(\d+)x(\d+):(\d+)", str(text))
        if match is None:
            raise ConfigError(f"Cannot read projection {text!r}",
                              "it must be two grid sizes joined by 'x', a colon and a sample count, all whole "
                              "numbers", hint)
        nx, ny, samples = (int(g) for g in match.groups())
        if min(nx, ny, samples) < 1:
            raise ConfigError(f"Projection {text!r} has an empty grid or no samples",
                              "grid sizes and the sample count must be at least 1", hint)
        if samples > MAX_PROJECTED_SAMPLES:
            raise ConfigError(f"Projection {text!r} has more than {MAX_PROJECTED_SAMPLES:,} samples a point",
                              f"lossgrid projects surfaces of at most {MAX_PROJECTED_SAMPLES:,} samples a point", hint)
        if nx * ny > MAX_GRID_POINTS:
            raise ConfigError(f"Projection {text!r} has {nx * ny:,} grid points",
                              f"lossgrid evaluates at most {MAX_GRID_POINTS:,} grid points in one surface", hint)
        return cls(nx, ny, samples)

    @property
    def points(self) -> int:
        return self.nx * self.ny

    def seconds(self, points_x_samples_per_s: float) -> float:
        """Wall time of the whole surface at a throughput of ``points_x_samples_per_s``."""
        return self.points * self.samples / points_x_samples_per_s

    def __str__(self) -> str:
        return f"{self.nx}x{self.ny}:{self.samples}"


def combinations(backends: Sequence[str] | None = None,
                 strategies: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """The (backend, strategy) pairs to time, in :data:`STRATEGIES` order.

    ``None`` means every backend / every real strategy: the ``auto`` pseudo
    backend and strategies, and the opt-in ``tensorrt/refit``, are rows only when named. Named strategies that do not
    belong to a named backend are left out for that backend.
    """
    unknown = [b for b in backends or () if b not in BACKENDS]
    if unknown:
        raise ConfigError(f"Unknown backend {unknown[0]!r}", hint=f"use one of {', '.join(BACKENDS)}")
    chosen_backends = list(backends) if backends else [b for b in BACKENDS if b != "auto"]
    pairs = []
    for backend in dict.fromkeys(chosen_backends):
        for strategy in STRATEGIES[backend]:
            # auto and the opt-in tensorrt/refit are rows only when named
            default = strategy not in ("auto", "refit") or backend == "auto"
            wanted = strategy in strategies if strategies else default
            if wanted:
                pairs.append((backend, strategy))
    if not pairs:
        raise ConfigError(f"No strategy {', '.join(strategies or ())} belongs to backend(s) "
                          f"{', '.join(chosen_backends)}",
                          hint="; ".join(f"{b}: {', '.join(STRATEGIES[b])}" for b in chosen_backends))
    return pairs


def plan_rows(backends: Sequence[str] | None, strategies: Sequence[str] | None, precisions: Sequence[str],
              combos: Sequence[tuple[str, str, str]] | None = None) -> list[dict[str, str]]:
    """The rows of a bench in order, ``{precision, backend, strategy}``: every pair of
    :func:`combinations` at each precision, or the ``combos`` given (each checked)."""
    if combos is None:
        pairs = combinations(backends, strategies)
        combos = [(p, b, s) for p in dict.fromkeys(precisions) for b, s in pairs]
    rows = []
    for precision, backend, strategy in combos:
        if precision not in PRECISIONS:
            check_precision(precision, "cpu")  # raises the ConfigError naming the choices
        if strategy not in STRATEGIES.get(backend, ()):
            combinations([backend], [strategy])  # raises the ConfigError naming the choices
        rows.append(dict(precision=precision, backend=backend, strategy=strategy))
    return rows


def grid_coefficients(points: int) -> torch.Tensor:
    """The fixed grid points of a bench, ``[points, 2]``: along a line from (-1, 0.5) to (1, -0.5)."""
    t = torch.linspace(-1.0, 1.0, points, dtype=torch.float64) if points > 1 else torch.zeros(1, dtype=torch.float64)
    return torch.stack([t, -0.5 * t], dim=1)


def run_bench(model: nn.Module, data: EvalData | tuple[torch.Tensor, torch.Tensor], device: str = "cpu",
              backends: Sequence[str] | None = None, strategies: Sequence[str] | None = None,
              precisions: Sequence[str] = ("fp32",), points: int = DEFAULT_POINTS, batch_size: int | None = None,
              points_per_call: int | None = None, project: str | Projection | None = None,
              progress: Progress | None = None, *, loss: str | LossFn = "cross_entropy", seed: int = 0,
              repeats: int = 1, budget_s: float | None = None, model_description: str = "",
              partial: Callable[[dict[str, Any]], None] | None = None,
              combos: Sequence[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """Time each backend/strategy/precision on ``model`` and ``data``; returns a JSON-able dict.

    Args:
        model: the model (not modified; its weights are the grid's origin).
        data: the evaluation set (an :class:`EvalData` or ``(x, y)``), on any device.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        backends, strategies: what to time (see :func:`combinations`); ``None``: all.
        precisions: ``fp32``, ``tf32``, ``bf16``; every combination is timed at each.
        points: grid points each row evaluates (the same points for every row).
        batch_size, points_per_call: passed to every runner (``None``: the runner's choice).
        project: ``NXxNY:SAMPLES``: each row also reports the projected seconds of that surface.
        progress: called as ``progress(rows_done, rows_total)``.
        loss: ``cross_entropy``, ``mse``, ``module:function`` or a callable.
        seed: seed of the two random directions.
        repeats: timed passes over the points per row; the best counts.
        budget_s: rows that would start after this many seconds are skipped (unavailable, with why).
        model_description: how the model was specified, stored in the header.
        partial: called before every row and after the last with the result so far (rows done,
            measured against the first GEMM peaks, and the keys ``running``: the row starting or
            ``None``, and ``pending``: the rows after it), so that a caller can keep what was
            measured should the process be killed in a row.
        combos: the rows to time, as ``(precision, backend, strategy)`` in this order (most
            wanted first, for a bench that may be stopped); overrides ``backends``,
            ``strategies`` and ``precisions``.

    The result has a header (device, torch version, cores, date, parameters,
    FLOPs per sample, ``peak_gemm`` per precision, ``schema_version``) and
    ``rows``; see :data:`ROW_KEYS` for the keys of an available row.
    """
    if points < 1 or repeats < 1:
        raise ConfigError(f"points={points}, repeats={repeats} is invalid", "a bench evaluates at least one grid "
                          "point at least once", "pass --points 1 or more and --repeats 1 or more")
    projection = Projection.parse(project) if isinstance(project, str) else project
    todo = plan_rows(backends, strategies, precisions, combos)
    dev = resolve_device(device)
    data = as_eval_data(data)
    loss_fn, loss_desc = resolve_loss(loss)
    preflight.check_finite_model(model)
    preflight.check_data(data, loss_fn)
    model = copy.deepcopy(model).to(dev).eval()  # the caller's model stays where it is
    preflight.probe(model, data, loss_fn, dev)
    directions = gaussian_directions(model, DirectionSpec(seed=seed), ndim=2)
    base = directions.layout.flatten(perturbed_tensors(model, "weights"))
    coeffs = grid_coefficients(points).to(dev, base.dtype)
    flat_dirs = directions.flat().to(dev)
    fps = flops_per_sample(model, to_device(take(data.x, slice(0, 1)), dev))
    n = len(data)
    header: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "lossgrid_version": __version__, **device_info(dev),
        "model": model_description or type(model).__name__,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "flops_per_sample": fps, "data": data.description, "samples": n, "points": points, "loss": loss_desc,
        "coefficients": coeffs.tolist(), "seed": seed, "batch_size": batch_size, "points_per_call": points_per_call,
        "project": None if projection is None else {"text": str(projection), "nx": projection.nx,
                                                    "ny": projection.ny, "samples": projection.samples},
    }
    # the GEMM peak is measured before and after the rows (the machine's speed drifts); the best counts
    peaks_before = {p: peak_gemm(p, dev) for p in dict.fromkeys(spec["precision"] for spec in todo)}
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for i, spec in enumerate(todo):
        if partial is not None:  # what is done, what runs now, what is left: kept if the process dies
            partial(_result(header, copy.deepcopy(rows), peaks_before, fps, projection, running=spec,
                            pending=todo[i + 1:]))
        if budget_s is not None and time.perf_counter() - t_start > budget_s:
            rows.append({**spec, "available": False,
                         "reason": f"skipped: the bench's time budget of {budget_s:g} s was spent"})
        else:
            rows.append(_row(EvalSpec(**spec, points_per_call=points_per_call, batch_size=batch_size,
                                      device=str(dev)),
                             model, directions.layout, data, loss_fn, (base, flat_dirs, coeffs), repeats,
                             model_description))
        log.info("bench row %d/%d: %s", i + 1, len(todo), rows[-1].get("reason") or rows[-1]["seconds"])
        if progress:
            progress(i + 1, len(todo))
    if partial is not None:
        partial(_result(header, copy.deepcopy(rows), peaks_before, fps, projection, running=None, pending=[]))
    return _result(header, rows, {p: _best_peak(peaks_before[p], peak_gemm(p, dev)) for p in peaks_before}, fps,
                   projection)


def _result(header: dict[str, Any], rows: list[dict[str, Any]], peaks: dict[str, dict[str, Any]], fps: float,
            projection: Projection | None, **extra: Any) -> dict[str, Any]:
    """The JSON result: ``header``, the GEMM peaks, ``rows`` finished against them (rates, share of peak,
    loss errors, projection) and ``extra`` keys (a partial result's ``running`` and ``pending`` rows)."""
    _finish_rows(rows, header["samples"], fps, peaks, projection)
    reference = next((f"{r['backend']}/{r['strategy']} fp32" for r in rows
                      if r["available"] and r["precision"] == "fp32"), None)
    return _json_safe({**header, "peak_gemm": peaks, "loss_reference": reference, **extra, "rows": rows})


#: the keys of an available row (unavailable rows have backend, strategy, precision, available, reason)
ROW_KEYS = ("backend", "strategy", "precision", "available", "reason", "ran", "seconds", "setup_seconds",
            "warmup_seconds", "points", "samples", "points_x_samples_per_s", "images_per_s", "achieved_tflops",
            "pct_of_peak", "peak_memory_bytes", "peak_memory_scope", "points_per_call", "batch_size",
            "max_rel_loss_error", "max_abs_loss_error", "projected_seconds", "loss", "acc", "runner")


def _row(spec: EvalSpec, model: nn.Module, layout: Any, data: EvalData, loss_fn: LossFn,
         points: tuple[torch.Tensor, torch.Tensor, torch.Tensor], repeats: int, description: str) -> dict[str, Any]:
    """Build, warm up and time one runner on ``points`` = ``(base, dirs, coeffs)``, called as the
    surface loop calls it (``set_directions``, then ``evaluate_points`` per chunk); a combination
    that cannot run gives its reason."""
    base, dirs, coeffs = points
    row: dict[str, Any] = {"backend": spec.backend, "strategy": spec.strategy, "precision": spec.precision,
                           "available": False, "reason": None}
    device = torch.device(spec.device)
    if spec.backend == "onnxruntime" and device.type == "cuda":
        # refuse before exporting the model: without the CUDA provider the export would be wasted

        if not cuda_provider_available():
            try:
                row["reason"] = str(missing_cuda_provider())
            except LossgridError as e:  # no ONNX Runtime at all
                row["reason"] = str(e)
            return row
    memory_reset(device)
    try:
        check_precision(spec.precision, device)
        t0 = time.perf_counter()
        runner = make_runner(spec, model, layout, data, loss_fn, description)
    except (LossgridError, ImportError) as e:
        row["reason"] = str(e)
        return row
    except Exception as e:  # a backend failing to set up (e.g. an engine build) is one row, not the bench
        return _failed(row, e, "set-up")
    try:
        setup = time.perf_counter() - t0
        info = runner.describe()
        ran_at = info.get("precision", "fp32")  # runners that predate precisions run fp32
        if spec.strategy != "auto" and ran_at != spec.precision:
            row["reason"] = (f"the {spec.backend}/{spec.strategy} runner does not run at {spec.precision} "
                             f"(it reports precision {ran_at})")
            return row
        runner.set_directions(base, dirs)
        runner.expect(len(coeffs))
        t0 = time.perf_counter()
        runner.evaluate_points(coeffs[:pass_width(spec.strategy, runner.points_per_call)])  # warm-up: lazy state
        warmup = time.perf_counter() - t0
        seconds, (loss, acc) = min((_timed_pass(runner, coeffs) for _ in range(repeats)), key=lambda t: t[0])
        info = runner.describe()
    except LossgridError as e:
        row["reason"] = str(e)
        return row
    except Exception as e:  # one failing backend is one row with its reason: the other rows stay measured
        return _failed(row, e, "evaluation")
    finally:
        runner.close()
    peak, scope = memory_peak(device)
    row.update(available=True, ran=f"{info.get('backend')}/{info.get('strategy')}", seconds=seconds,
               setup_seconds=setup, warmup_seconds=warmup, points=int(len(coeffs)),
               peak_memory_bytes=peak, peak_memory_scope=scope, points_per_call=info.get("points_per_call"),
               batch_size=info.get("batch_size"), loss=loss.tolist(), acc=acc.tolist(), runner=info)
    return row


def _failed(row: dict[str, Any], e: Exception, stage: str) -> dict[str, Any]:
    """``row`` marked unavailable by an unexpected failure: its type, first line and where it was raised."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if is_out_of_memory(e):
        row["reason"] = f"out of memory: {first or type(e).__name__}"
        return row
    log.warning("bench row %s/%s %s failed in %s: %s: %s", row["backend"], row["strategy"], row["precision"], stage,
                type(e).__name__, first)
    row["reason"] = f"failed in {stage}: {type(e).__name__}: {first}"
    row["traceback"] = traceback.format_exception(type(e), e, e.__traceback__, limit=-4)
    return row


def _timed_pass(runner: Any, coeffs: torch.Tensor) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    """Seconds to evaluate all grid points ``coeffs`` in the runner's chunks (as the surface loop calls it),
    and the results."""
    step = runner.points_per_call
    t0 = time.perf_counter()
    parts = [runner.evaluate_points(coeffs[start:start + step]) for start in range(0, len(coeffs), step)]
    seconds = time.perf_counter() - t0
    return seconds, (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _finish_rows(rows: list[dict[str, Any]], samples: int, fps: float, peaks: dict[str, dict[str, Any]],
                 projection: Projection | None) -> None:
    """Rates, TFLOP/s, share of peak, loss error against the first fp32 row, projection."""
    ref = next((r for r in rows if r["available"] and r["precision"] == "fp32"), None)
    for r in rows:
        if not r["available"]:
            continue
        rate = r["points"] * samples / r["seconds"] if r["seconds"] > 0 else math.inf
        tflops = rate * fps / 1e12
        peak = peaks.get(r["precision"], {}).get("tflops")
        r.update(samples=samples, points_x_samples_per_s=rate, images_per_s=rate, achieved_tflops=tflops,
                 pct_of_peak=100 * tflops / peak if peak else None,
                 projected_seconds=projection.seconds(rate) if projection is not None and rate > 0 else None)
        err = precision_error(np.asarray(r["loss"]), np.asarray(ref["loss"])) if ref is not None else {}
        r["max_rel_loss_error"] = err.get("max_rel_loss_error")
        r["max_abs_loss_error"] = err.get("max_abs_loss_error")


def _best_peak(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The better of two peak measurements, library by library."""
    out = dict(a)
    for key in ("torch_tflops", "onnxruntime_tflops", "tflops"):
        values = [v for v in (a.get(key), b.get(key)) if v is not None]
        out[key] = max(values) if values else None
    return out


def _json_safe(obj: Any) -> Any:
    """Plain JSON: tuples as lists, NumPy scalars as numbers, non-finite floats as ``None``."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)
