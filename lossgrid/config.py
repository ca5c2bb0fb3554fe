"""Configuration as data: frozen, validated dataclasses saved with every result.

Example:
    >>> from lossgrid.config import Axis
    >>> Axis.parse("-1:1:5").coordinates().tolist()
    [-1.0, -0.5, 0.0, 0.5, 1.0]
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError

#: default share of a job's time that ``auto`` may spend timing candidate strategies
AUTO_BUDGET = 0.03
#: the largest grid lossgrid accepts (2048 x 2048): its arrays take ~100 MB in memory
MAX_GRID_POINTS = 2048 * 2048
#: numeric precisions of an evaluation (see :mod:`lossgrid.engine.precision`)
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

NORMS = ("filter", "layer", "weight", "none")
IGNORES = ("biasbn", "none")
DIR_TYPES = ("weights", "states")
#: how directions are made: seeded Gaussian, or the top eigenvectors of the loss Hessian
DIR_KINDS = ("random", "hessian")


@dataclass(frozen=True)
class Axis:
    """One grid axis: ``num`` evenly spaced coordinates from ``min`` to ``max``."""

    min: float
    max: float
    num: int

    def __post_init__(self) -> None:
        if not isinstance(self.num, int) or isinstance(self.num, bool) or self.num < 1:
            raise ConfigError(
                f"Grid axis has {self.num!r} points",
                "the number of points must be a whole number of at least 1",
                "write the axis as MIN:MAX:NUM, for example -1:1:51",
            )
        if self.num > MAX_GRID_POINTS:
            raise ConfigError(f"Grid axis has {self.num:,} points",
                              f"lossgrid evaluates at most {MAX_GRID_POINTS:,} grid points",
                              "use fewer points, for example -1:1:51")
        for name in ("min", "max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"Grid axis {name} is {value!r}", "bounds must be finite numbers",
                                  "write the axis as MIN:MAX:NUM, for example -1:1:51")
        if not math.isfinite(float(self.max) - float(self.min)):
            raise ConfigError(f"Grid axis {self.min}:{self.max} is too wide", "its length overflows a float",
                              "use bounds of a sensible size, for example -1:1:51")
        if self.num > 1 and not self.min < self.max:
            raise ConfigError(
                f"Grid axis {self.min}:{self.max}:{self.num} is empty or reversed",
                "with more than one point MIN must be smaller than MAX",
                "swap the bounds, or use NUM=1 for a single coordinate",
            )
        if self.num == 1 and self.min != self.max:
            raise ConfigError(
                f"Grid axis {self.min}:{self.max}:1 has one point but two different bounds",
                "a single point has one coordinate",
                "write X:X:1 for one point, or give NUM >= 2",
            )

    @classmethod
    def parse(cls, text: str) -> "Axis":
        """Parse ``MIN:MAX:NUM`` (for example ``-1:1:51``)."""
        parts = str(text).strip().split(":")
        if len(parts) != 3:
            raise ConfigError(
                f"Cannot read grid axis {text!r}",
                "an axis has three parts separated by colons",
                "write MIN:MAX:NUM, for example --x=-1:1:51",
            )
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"Cannot read grid axis {text!r}", "MIN and MAX must be numbers",
                              "write MIN:MAX:NUM, for example --x=-1:1:51") from None
        try:
            num = int(parts[2])
        except ValueError:
            raise ConfigError(f"Cannot read grid axis {text!r}", "NUM must be a whole number",
                              "write MIN:MAX:NUM, for example --x=-1:1:51") from None
        return cls(lo, hi, num)

    def coordinates(self) -> np.ndarray:
        """The coordinates as float64, exactly ``np.linspace(min, max, num)``."""
        return np.linspace(self.min, self.max, self.num)

    def __str__(self) -> str:
        return f"{self.min:g}:{self.max:g}:{self.num}"


@dataclass(frozen=True)
class GridSpec:
    """A 1D (``y is None``) or 2D grid of direction coefficients."""

    x: Axis
    y: Axis | None = None

    def __post_init__(self) -> None:
        total = self.x.num * (self.y.num if self.y is not None else 1)
        if total > MAX_GRID_POINTS:
            raise ConfigError(f"The grid has {total:,} points", f"lossgrid evaluates at most {MAX_GRID_POINTS:,} "
                              "grid points in one surface (2048 x 2048)",
                              "use fewer points per axis (the paper's surfaces are 51 x 51)")

    @classmethod
    def parse(cls, x: str, y: str | None = None) -> "GridSpec":
        """Grid from ``MIN:MAX:NUM`` strings; 1D when ``y`` is ``None``."""
        return cls(Axis.parse(x), Axis.parse(y) if y is not None else None)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.x.num,) if self.y is None else (self.x.num, self.y.num)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def points(self) -> np.ndarray:
        """All coefficients, shape ``(npoints, ndim)``, in C order of the surface arrays."""
        if self.y is None:
            return self.x.coordinates()[:, None]
        xs, ys = np.meshgrid(self.x.coordinates(), self.y.coordinates(), indexing="ij")
        return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"Unknown {name} {value!r}", f"{name} must be one of {', '.join(choices)}",
                          f"pass one of: {', '.join(choices)}")


@dataclass(frozen=True)
class DirectionSpec:
    """How the plotting directions are made.

    Defaults are the paper's recommendation: filter normalization, bias and BN
    directions zeroed, parameters only (``weights``). ``ynorm``/``yignore`` of
    ``None`` mean "same as x".
    """

    dir_type: str = "weights"
    xnorm: str = "filter"
    xignore: str = "biasbn"
    ynorm: str | None = None
    yignore: str | None = None
    seed: int = 0
    #: ``random`` (Gaussian) or ``hessian`` (top eigenvectors of the loss Hessian on the data)
    kind: str = "random"
    #: perturb only the tensors matching these fnmatch globs (comma-separated; ``None``: all)
    params: str | None = None
    #: ... and not those matching these globs
    exclude: str | None = None
    #: ... and only parameters with ``requires_grad`` (buffers of ``states`` directions still move)
    trainable_only: bool = False

    def __post_init__(self) -> None:
        _check_choice("direction type", self.dir_type, DIR_TYPES)
        _check_choice("direction kind", self.kind, DIR_KINDS)
        _check_choice("x normalization", self.xnorm, NORMS)
        _check_choice("x ignore", self.xignore, IGNORES)
        if self.ynorm is not None:
            _check_choice("y normalization", self.ynorm, NORMS)
        if self.yignore is not None:
            _check_choice("y ignore", self.yignore, IGNORES)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"Seed {self.seed!r} is invalid", "the seed must be a non-negative integer",
                              "pass --seed 0 or another whole number")
        for name in ("params", "exclude"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.strip(" ,")):
                raise ConfigError(f"--{name} {value!r} names no tensor", "it is a comma-separated list of globs",
                                  f"write e.g. --{name} 'layer3.*,fc.*', or leave it out")

    @property
    def selects(self) -> bool:
        """Whether only some tensors move (``params``, ``exclude`` or ``trainable_only``)."""
        return self.params is not None or self.exclude is not None or self.trainable_only

    @property
    def y_norm(self) -> str:
        return self.xnorm if self.ynorm is None else self.ynorm

    @property
    def y_ignore(self) -> str:
        return self.xignore if self.yignore is None else self.yignore


@dataclass(frozen=True)
class EvalSpec:
    """How grid points are evaluated; does not change results beyond float rounding."""

    backend: str = "torch"
    strategy: str = "auto"
    points_per_call: int | None = None
    batch_size: int | None = None
    device: str = "cpu"
    #: share of the job's time that choosing a strategy (``auto``) may spend timing candidates
    auto_budget: float = AUTO_BUDGET
    #: ``fp32`` (IEEE), ``tf32`` (NVIDIA GPUs) or ``bf16``; never lowered by ``auto``
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.points_per_call is not None and self.points_per_call < 1:
            raise ConfigError(f"points_per_call={self.points_per_call} is invalid", "it must be at least 1",
                              "pass --points-per-call 1 or more, or leave it out for the default")
        if not (isinstance(self.auto_budget, (int, float)) and self.auto_budget >= 0):
            raise ConfigError(f"auto_budget={self.auto_budget!r} is invalid", "it is a share of the job, 0 or more",
                              "pass --auto-budget 0.03 (3%), 0 to never time, or a large value to always time")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"Unknown precision {self.precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} is invalid", "it must be at least 1",
                              "pass --batch-size 1 or more")


@dataclass(frozen=True)
class CurvatureSpec:
    """Extreme Hessian eigenvalues per grid point (convexity maps, ``--curvature``).

    ``iters`` Lanczos steps (one Hessian-vector product over the whole evaluation
    set each) give both ``max_eig`` and ``min_eig``; the run stops early when both
    are converged to ``tol`` (relative to the largest magnitude). ``params``
    restricts the Hessian to parameters matching fnmatch globs (comma-separated).
    """

    iters: int = 20
    tol: float = 1e-3
    seed: int = 0
    params: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.iters, int) or self.iters < 2:
            raise ConfigError(f"curvature iters={self.iters!r} is invalid",
                              "one Lanczos run needs at least 2 steps to bound both ends of the spectrum",
                              "pass --curvature-iters 2 or more (20 is the default)")
        if not (isinstance(self.tol, (int, float)) and self.tol > 0):
            raise ConfigError(f"curvature tol={self.tol!r} is invalid", "it is a relative tolerance above 0")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"curvature seed={self.seed!r} is invalid", "it must be a non-negative integer")


@dataclass(frozen=True)
class AdaptiveSpec:
    """Settings of an adaptive grid.

    Args:
        tol: largest accepted measured interpolation error, as a share of the loss
            range (max - min of the finite losses of the first two levels); the filled
            surface is then within ``2 * tol`` of the range everywhere, within ``tol``
            where the surface is smooth at the check spacing (module docstring).
        coarse: stride of the first grid on each axis (the last index is always in it).
            Larger strides evaluate fewer points on smooth surfaces, need more rounds, and
            can miss features narrower than ``coarse / 2`` points.
    """

    tol: float = 0.01
    coarse: int = 4

    def __post_init__(self) -> None:
        tol = self.tol
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)) \
                or not math.isfinite(float(tol)) or not 0.0 < float(tol) < 1.0:
            raise ConfigError(f"Adaptive tolerance {tol!r} is out of range",
                              "it is a share of the loss range, above 0 and below 1",
                              "use for example 0.01: fill errors are then measured within 1% of the range")
        coarse = self.coarse
        if isinstance(coarse, bool) or not isinstance(coarse, (int, np.integer)) or coarse < 1:
            raise ConfigError(f"Adaptive coarse stride {coarse!r} is not a positive whole number",
                              "it is the stride of the first grid on each axis",
                              "use for example 4 or 8 (1 evaluates every point)")
        object.__setattr__(self, "tol", float(tol))
        object.__setattr__(self, "coarse", int(coarse))


#: BatchNorm policies: running statistics as stored, or re-estimated at every grid point
BN_POLICIES = ("eval", "recompute")


@dataclass(frozen=True)
class BatchNormSpec:
    """What BatchNorm layers use at each grid point (:mod:`lossgrid.engine.batchnorm`).

    ``eval``: the running statistics stored with the model. ``recompute``: re-estimated
    at every point from ``batches`` batches of ``batch_size`` samples of ``data`` (a data
    spec; ``None``: the evaluation set), drawn once with ``seed``.
    """

    policy: str = "eval"
    batches: int = 10
    batch_size: int = 128
    data: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("BatchNorm policy", self.policy, BN_POLICIES)
        for name in ("batches", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"BatchNorm {name}={value!r} is invalid", "it must be a whole number of at least 1",
                                  f"pass --bn-{name.replace('_', '-')} 1 or more")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"BatchNorm seed={self.seed!r} is invalid", "it must be a non-negative integer")

    @property
    def recompute(self) -> bool:
        return self.policy == "recompute"


def to_json(obj: Any) -> str:
    """Serialise a (nested) config dataclass to canonical JSON."""

    def default(o: Any) -> Any:
        if dataclasses.is_dataclass(o):
            return dataclasses.asdict(o)
        raise TypeError(type(o).__name__)

    return json.dumps(obj, default=default, sort_keys=True)


def check_anchor_stride(stride: object) -> int:
    """``stride`` (``--anchor-stride``) as a whole number of at least 2, or a :class:`ConfigError`."""
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 2:
        raise ConfigError(f"--anchor-stride {stride!r} is invalid",
                          "it is the spacing of the exactly evaluated anchor points on each axis, 2 or more",
                          "use for example --anchor-stride 4 (every 4th point on each axis is an anchor)")
    return int(stride)


def check_anchored_adaptive(adaptive: AdaptiveSpec | None, anchor_stride: int | None) -> None:
    """With both, the anchors are the adaptive grid's coarse grid: its stride must be theirs."""
    if anchor_stride is not None and adaptive is not None and adaptive.coarse != anchor_stride:
        raise ConfigError(f"--adaptive-coarse {adaptive.coarse} differs from --anchor-stride {anchor_stride}",
                          "with both, the anchors are the adaptive grid's coarse grid",
                          f"drop --adaptive-coarse (it then follows the anchors), or pass {anchor_stride}")


@dataclass(frozen=True)
class SurfaceJob:
    """Everything a ``lossgrid surface`` run needs, as data (specs, not objects)."""

    def _check_anchors(self) -> None:
        check_anchor_stride(self.anchor_stride)
        if self.samples is None and self.target_se is None:
            raise ConfigError("--anchor-stride needs --samples N or --target-se E",
                              "anchors correct the estimates of points evaluated on a subset; without one every "
                              "point is exact already",
                              "add --samples N (for example an eighth of the set), or --target-se E to size it")
        if self.curvature is not None:
            raise ConfigError("--anchor-stride cannot be combined with --curvature",
                              "anchors correct subset estimates of the loss; curvature is evaluated at each point "
                              "on its own terms", "drop one of them")
        check_anchored_adaptive(self.adaptive, self.anchor_stride)

    out: str
    grid: GridSpec
    model: str | None = None
    checkpoint: str | None = None
    model2: str | None = None
    data: str = "digits"
    samples: int | None = None
    samples_seed: int = 0
    loss: str = "cross_entropy"
    directions: DirectionSpec = DirectionSpec()
    dir_file: str | None = None
    evaluation: EvalSpec = EvalSpec()
    overwrite: bool = False
    #: allow checkpoints that are whole pickled modules (their loading runs code)
    trust_checkpoint: bool = False
    #: extreme Hessian eigenvalues at every point (``max_eig``/``min_eig`` datasets)
    curvature: CurvatureSpec | None = None
    #: BatchNorm running statistics as stored (``eval``) or re-estimated per point
    batchnorm: BatchNormSpec = BatchNormSpec()
    #: ``module:function`` splitting the collated data set into ``(inputs, targets)``
    batch: str | None = None
    #: choose (and grow) the subset of --data until every point's standard error is at most this
    target_se: float | None = None
    #: direction pairs (seeds ``seed ... seed + repeats - 1``), summarized per point
    repeats: int = 1
    #: evaluate a coarse grid and refine only where interpolation is off (``None``: every point)
    adaptive: AdaptiveSpec | None = None
    #: with ``samples``: every this-many-th point per axis exact on all of --data, the control
    #: variates of the subset's points (``None``: no anchors)
    anchor_stride: int | None = None

    def __post_init__(self) -> None:
        if self.target_se is not None and not (isinstance(self.target_se, (int, float))
                                               and math.isfinite(self.target_se) and self.target_se > 0):
            raise ConfigError(f"--target-se {self.target_se!r} is invalid", "it is a standard error above 0",
                              "pass e.g. --target-se 0.01")
        if self.target_se is not None and self.samples is not None:
            raise ConfigError("--target-se and --samples both choose the subset", "give one of them",
                              "drop --samples: --target-se picks the subset size (seeded by --samples-seed)")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ConfigError(f"--repeats {self.repeats!r} is invalid", "it is a number of direction pairs, 1 or more")
        if self.repeats > 1 and (self.dir_file or self.model2 or self.directions.kind != "random"):
            raise ConfigError("--repeats needs random directions drawn per seed",
                              "a --dir-file, an interpolation (--model2) or Hessian directions give one pair only",
                              "drop --repeats, or --dir-file/--model2/--dir-kind hessian")
        if self.repeats > 1 and self.adaptive is not None:
            raise ConfigError("--repeats cannot be combined with --adaptive",
                              "each direction pair would evaluate other points, and a per-point mean would mix "
                              "evaluated and interpolated values", "drop one of them")
        if self.adaptive is not None and self.curvature is not None:
            raise ConfigError("--adaptive cannot be combined with --curvature",
                              "eigenvalues are not interpolated: every point of a curvature map is evaluated",
                              "drop one of them")
        if self.anchor_stride is not None:
            self._check_anchors()
        if self.target_se is not None and self.directions.kind == "hessian":
            raise ConfigError("--target-se cannot be combined with --dir-kind hessian",
                              "the pilot and the surface would each compute the Hessian directions",
                              "give --samples N instead, or use random directions")
