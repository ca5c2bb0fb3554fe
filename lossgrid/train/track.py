"""Watch the loss landscape while a model trains: a hook for a plain PyTorch loop.

Every ``every`` epochs :meth:`Tracker.step` saves the model's state_dict to
``out_dir/checkpoints/epoch_NNNN.pt`` (the layout that ``lossgrid trajectory
--checkpoints 'out_dir/checkpoints/epoch_*.pt'`` reads), evaluates a small
landscape around the current weights with :func:`lossgrid.compute_surface`
(in memory, on a seeded subset of the data) and, with TensorBoard on, logs a
picture of it and a few numbers:

============================  ==========================================================
tag                           value
============================  ==========================================================
``lossgrid/center_loss``      mean loss at the current weights (the grid's origin)
``lossgrid/center_acc``       accuracy there, in percent (NaN without class labels)
``lossgrid/max_increase_x``   largest loss increase over the center along direction x
                              (the grid row ``y = 0`` in 2D)
``lossgrid/curvature_x``      second derivative at 0 of a quadratic fitted to the loss
                              at the ``fit_points`` coordinates of x nearest 0
``lossgrid/max_increase_y``,  the same along direction y (2D grids only)
``lossgrid/curvature_y``
``lossgrid/landscape``        image: the 1D curve, or the 2D filled contour
============================  ==========================================================

The directions are made once, at the first tracked step (seeded, filter-normalized
to the weights of that step), and the subset of samples is fixed, so the frames of
a run are comparable. The landscape is that of the model in eval mode (BatchNorm
running statistics, no dropout), as every lossgrid surface. The caller's model
(weights, gradients, train/eval mode) and the global random state are left as they
were, so tracking does not change how training proceeds.

A tracker never ends the training loop it watches: a step whose checkpoint,
landscape or TensorBoard log fails (a full disk, a model that does not fit the
data, weights gone NaN) warns with a :class:`TrackerWarning`, records the error
in its history entry and returns NaN numbers; the next step tries again. What
can be checked before training -- the settings, the model, the data, the output
directories -- is checked when the tracker is made, and raises
:class:`~lossgrid.errors.ConfigError`. Two runs are never mixed: an ``out_dir``
holding an earlier run's checkpoints (or TensorBoard events) is refused, or with
``if_exists="new"`` the run goes into a fresh ``out_dir/run-N``.

Example:
    >>> import torch
    >>> from lossgrid import Tracker, load_data
    >>> data = load_data("digits:train")
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with Tracker(model, data, "runs/mlp", tensorboard=True) as tracker:  # doctest: +SKIP
    ...     for epoch in range(1, 6):
    ...         for start in range(0, len(data), 64):
    ...             opt.zero_grad()
    ...             loss = torch.nn.functional.cross_entropy(model(data.x[start:start + 64]),
    ...                                                      data.y[start:start + 64])
    ...             loss.backward()
    ...             opt.step()
    ...         numbers = tracker.step(epoch)   # {"center_loss": ..., "curvature_x": ...}
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
import re
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import atomic_output, os_reason
from .._optional import require
from ..config import Axis, DirectionSpec, EvalSpec, GridSpec
from ..data import EvalData, as_eval_data, load_data
from ..engine.directions import Directions, gaussian_directions
from ..engine.losses import LossFn, resolve_loss
from ..errors import ConfigError, LossgridError
from ..surface.compute import compute_surface
from ..surface.file import Surface

log = logging.getLogger(__name__)

#: the grid of ``grid="2d"``: 9 x 9 points on [-1, 1]^2
GRID_2D = "-1:1:9"
#: the prefix of every TensorBoard tag; a number ``name`` is logged as ``lossgrid/name``
TAG_PREFIX = "lossgrid/"
#: the tag of the landscape image
IMAGE_TAG = TAG_PREFIX + "landscape"
#: file name of the checkpoint of an epoch inside ``out_dir/checkpoints``
CHECKPOINT_NAME = "epoch_{epoch:04d}.pt"
#: the names of those checkpoints, by which an earlier run is recognized
CHECKPOINT_RE = re.compile(r"^epoch_\d+\.pt$", re.ASCII)
#: part of the name of every TensorBoard event file (``events.out.tfevents.*``)
EVENTS_MARK = "tfevents"
#: what ``Tracker(if_exists=...)`` does where an earlier run is found
IF_EXISTS = ("refuse", "new")
#: the largest epoch a step takes (a checkpoint name beyond it is a counter gone wrong) and image side
MAX_EPOCH = 10**9
MAX_IMAGE_SIDE = 8192
#: the sub-directory of a new run with ``if_exists="new"``: ``run-2``, ``run-3``, ...
RUN_DIR = "run-{n}"
#: where a run writes: ``(out_dir, checkpoint directory, TensorBoard directory)``, ``None`` for one not written
Layout = tuple[str, str | None, str | None]


class TrackerWarning(UserWarning):
    """A tracked step failed (checkpoint, landscape or TensorBoard log); training goes on."""


class Tracker:
    """Checkpoints and a cheap loss landscape every ``every`` epochs of a training loop.

    Args:
        model: the model being trained; never modified (see the module docstring). It
            needs parameters: the landscape moves them along random directions.
        data: the evaluation set: an :class:`~lossgrid.EvalData`, ``(x, y)`` tensors,
            or a data spec such as ``"digits:train"`` (see :func:`lossgrid.load_data`).
        out_dir: the directory of ``checkpoints/`` (and ``tensorboard/``).
        every: track the epochs that are multiples of ``every``.
        grid: ``"MIN:MAX:NUM"`` for a 1D curve along one direction, ``"2d"`` for a
            9 x 9 surface on [-1, 1]^2, or a :class:`~lossgrid.GridSpec`. Every axis
            must hold 0 (the current weights) and at least 3 points.
        samples: evaluate on this many samples, a subset seeded by ``seed``
            (``None``: all of ``data``).
        seed: seed of the directions and of the subset of samples.
        loss: ``cross_entropy``, ``mse``, ``module:function`` or a callable.
        tensorboard: ``False``; ``True`` to log into ``out_dir/tensorboard``; or the
            log directory. Needs ``pip install "lossgrid[tensorboard]"``.
        checkpoint: save the state_dict at every tracked epoch.
        fit_points: how many coordinates nearest 0 the quadratic fit of each
            direction uses (3 or more).
        image_size: ``(width, height)`` of the landscape image in pixels.
        batch_size: samples per forward pass (``None``: lossgrid's default).
        if_exists: where the checkpoint directory already holds checkpoints of an
            earlier run (``epoch_*.pt``), or the TensorBoard directory event files:
            ``"refuse"`` raises a :class:`~lossgrid.errors.ConfigError` (the two runs
            would mix in one trajectory); ``"new"`` writes this run into the first
            ``run-N`` (N = 2, 3, ...) that exists neither in ``out_dir`` nor in a
            TensorBoard directory of its own, and logs where. Empty directories and
            other files do not count.

    Raises:
        ConfigError: when the tracker is made, for an invalid setting, a model without
            parameters, empty data or a different number of inputs and targets, an
            ``out_dir`` (or TensorBoard directory) that is a file or cannot be created,
            or an earlier run there (``if_exists="refuse"``).

    Attributes:
        out_dir: the directory this run writes into (``out_dir/run-N`` with ``if_exists="new"``).
        checkpoint_dir, log_dir: this run's checkpoint and TensorBoard directories (or ``None``).
        history: one dict per tracked epoch: ``{"epoch": E, **numbers}``, plus ``"error"``
            (what failed, and why) for a step that failed in part.
        checkpoints: the checkpoint files written, in order.
        directions: the fixed directions (``None`` before the first step).
        last_surface: the landscape of the last tracked step that had one.
    """

    def __init__(self, model: nn.Module, data: EvalData | tuple[torch.Tensor, torch.Tensor] | str,
                 out_dir: str | os.PathLike, *, every: int = 1, grid: str | GridSpec = "-1:1:11",
                 samples: int | None = 256, seed: int = 0, loss: str | LossFn = "cross_entropy",
                 tensorboard: bool | str | os.PathLike = False, checkpoint: bool = True, fit_points: int = 5,
                 image_size: tuple[int, int] = (480, 360), batch_size: int | None = None,
                 if_exists: str = "refuse") -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every={every!r} is invalid", "it is a number of epochs, 1 or more",
                              "pass every=1 to track every epoch")
        if isinstance(fit_points, bool) or not isinstance(fit_points, int) or fit_points < 3:
            raise ConfigError(f"fit_points={fit_points!r} is invalid", "a quadratic fit needs at least 3 points",
                              "pass fit_points=3 or more")
        if len(image_size) != 2 or not all(32 <= int(v) <= MAX_IMAGE_SIDE for v in image_size):
            raise ConfigError(f"image_size={image_size!r} is invalid",
                              f"it is (width, height), each 32 to {MAX_IMAGE_SIDE} pixels")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ConfigError(f"seed={seed!r} is invalid", "seeds are whole numbers from 0 to 2^63 - 1")
        if if_exists not in IF_EXISTS:
            raise ConfigError(f"if_exists={if_exists!r} is invalid", "it is 'refuse' or 'new'",
                              "pass if_exists='new' to write a second run into a new sub-directory")
        _check_model(model)
        self.model = model
        self.grid = parse_grid(grid)
        self.data = _subset(data, samples, seed)
        self.seed = seed
        self.loss = loss
        resolve_loss(loss)  # an unknown loss (or batch size) fails here, not at the end of the first epoch
        EvalSpec(batch_size=batch_size)
        self.every = every
        self.fit_points = fit_points
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size = batch_size
        self._writer_class: Any = None
        self._writer: Any = None
        if tensorboard:  # True, or a log directory
            # imported now, so that a missing extra fails before any training happens
            module = require("torch.utils.tensorboard", "tensorboard", "TensorBoard logging (Tracker(tensorboard=...))")
            self._writer_class = module.SummaryWriter
        self.out_dir, self.checkpoint_dir, self.log_dir = _place_run(os.fspath(out_dir), checkpoint, tensorboard,
                                                                     if_exists)
        self.directions: Directions | None = None
        self.last_surface: Surface | None = None
        self.history: list[dict[str, Any]] = []
        self.checkpoints: list[str] = []
        self._last_epoch: int | None = None

    def step(self, epoch: int, force: bool = False) -> dict[str, float]:
        """Track ``epoch`` if it is a multiple of ``every`` (or ``force``): save the
        checkpoint, evaluate the landscape, log to TensorBoard.

        Returns the numbers logged, by name (tag ``lossgrid/<name>``); an empty dict
        for an epoch that is not tracked. A failure of any part warns with a
        :class:`TrackerWarning`, is recorded in the history entry's ``"error"``, and
        the step returns normally (NaN numbers without a landscape): it never ends the
        training loop. An epoch that is not after the last tracked one is not tracked,
        with the same warning: its checkpoint would overwrite (or precede) this run's.

        Raises:
            ConfigError: ``epoch`` is not a whole number of 0 or more (a programming
                error in the loop, found at its first step).
        """
        epoch = _check_epoch(epoch)
        if not force and epoch % self.every:
            return {}
        errors: list[str] = []
        numbers = self._track(epoch, errors)
        self.history.append({"epoch": epoch, **numbers, **({"error": "; ".join(errors)} if errors else {})})
        if errors:
            warnings.warn(f"lossgrid Tracker, epoch {epoch}: {'; '.join(errors)}. Training goes on",
                          TrackerWarning, stacklevel=2)
        else:
            log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()))
        return numbers

    def close(self) -> None:
        """Flush and close the TensorBoard writer (if any); further steps reopen it.
        A failure warns (a :class:`TrackerWarning`) rather than raising."""
        writer, self._writer = self._writer, None
        errors: list[str] = []
        if writer is not None:
            _attempt("TensorBoard close", errors, writer.close)
        if errors:  # raising here would hide the exception that left the caller's ``with`` block, if any
            warnings.warn(f"lossgrid Tracker: {errors[0]}", TrackerWarning, stacklevel=2)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _track(self, epoch: int, errors: list[str]) -> dict[str, float]:
        """The parts of a step, each on its own: a failed checkpoint still gives the numbers."""
        if self._last_epoch is not None and epoch <= self._last_epoch:
            errors.append(f"not tracked, as epoch {epoch} is not after the last tracked epoch {self._last_epoch} "
                          "(its checkpoint would overwrite or precede theirs); number the epochs on across training "
                          "phases, or start a new Tracker")
            return _nan_numbers(self.grid.ndim)
        self._last_epoch = epoch
        if self.checkpoint_dir is not None:
            path = _attempt("checkpoint", errors, self._save_checkpoint, epoch)
            if path is not None:
                self.checkpoints.append(path)
        evaluated = _attempt("landscape", errors, self._evaluate)
        if evaluated is None:
            return _nan_numbers(self.grid.ndim)
        self.last_surface, numbers = evaluated
        if self._writer_class is not None:
            _attempt("TensorBoard log", errors, self._log, epoch, self.last_surface, numbers)
        return numbers

    def _save_checkpoint(self, epoch: int) -> str:
        assert self.checkpoint_dir is not None
        path = os.path.join(self.checkpoint_dir, CHECKPOINT_NAME.format(epoch=epoch))
        with atomic_output(path, "checkpoint") as tmp:  # a killed run never leaves half a checkpoint
            torch.save(self.model.state_dict(), tmp)
        return path

    def _evaluate(self) -> tuple[Surface, dict[str, float]]:
        surface = self._landscape()
        return surface, landscape_numbers(surface, self.fit_points)

    def _landscape(self) -> Surface:
        device = _device_of(self.model)
        # fork_rng: nothing below may draw from the global generators the training loop uses
        cuda = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            if self.directions is None:
                self.directions = gaussian_directions(self.model, DirectionSpec(seed=self.seed), ndim=self.grid.ndim)
            # evaluated on the model's own device, so compute_surface does not move the caller's model;
            # its runners work on a copy in eval mode, and its probe restores the train/eval mode it found.
            # The plain per-point loop: choosing a strategy (auto) would cost more than these few points
            return compute_surface(self.model, self.data, self.grid, directions=self.directions, loss=self.loss,
                                   eval_spec=EvalSpec(device=str(device), strategy="loop", batch_size=self.batch_size),
                                   model_description=f"{type(self.model).__name__} (tracked)")

    def _log(self, epoch: int, surface: Surface, numbers: dict[str, float]) -> None:
        if self._writer is None:
            self._writer = self._writer_class(log_dir=self.log_dir)
        for name, value in numbers.items():
            self._writer.add_scalar(TAG_PREFIX + name, value, epoch)
        image = landscape_image(surface, f"epoch {epoch}", self.image_size)
        self._writer.add_image(IMAGE_TAG, image, epoch, dataformats="HWC")
        self._writer.flush()  # readable by TensorBoard (and by tests) at once, not only after close()


def parse_grid(grid: str | GridSpec) -> GridSpec:
    """The tracker's grid from ``"MIN:MAX:NUM"`` (1D), ``"2d"`` or a :class:`GridSpec`;
    every axis must hold 0 and at least 3 points."""
    if isinstance(grid, GridSpec):
        spec = grid
    elif str(grid).strip().lower() == "2d":
        spec = GridSpec(Axis.parse(GRID_2D), Axis.parse(GRID_2D))
    else:
        spec = GridSpec(Axis.parse(str(grid)))
    for name, axis in (("x", spec.x), ("y", spec.y)):
        if axis is not None and (axis.num < 3 or not np.isclose(axis.coordinates(), 0.0, atol=1e-12).any()):
            raise ConfigError(f"The tracking grid's {name} axis {axis} does not fit",
                              "it needs 0 (the current weights) and at least 3 points for the sharpness numbers",
                              "use a symmetric axis with an odd number of points, for example -1:1:11")
    return spec


def landscape_numbers(surface: Surface, fit_points: int = 5) -> dict[str, float]:
    """Center loss and accuracy, and per direction the largest loss increase over
    the center and the curvature (second derivative at 0) of a quadratic fit to the
    ``fit_points`` coordinates nearest 0. Non-finite values are skipped; a number
    that cannot be computed is NaN."""
    center = _zero_index(surface.xcoordinates), (_zero_index(surface.ycoordinates) if surface.ndim == 2 else None)
    if surface.ndim == 1:
        lines = {"x": (surface.xcoordinates, surface.loss)}
        c_loss, c_acc = surface.loss[center[0]], surface.acc[center[0]]
    else:
        assert surface.ycoordinates is not None
        ix, iy = center[0], center[1]
        lines = {"x": (surface.xcoordinates, surface.loss[:, iy]), "y": (surface.ycoordinates, surface.loss[ix, :])}
        c_loss, c_acc = surface.loss[ix, iy], surface.acc[ix, iy]
    out = {"center_loss": float(c_loss), "center_acc": float(c_acc)}
    for name, (coords, loss) in lines.items():
        finite = np.isfinite(loss)
        out[f"max_increase_{name}"] = float(np.max(loss[finite]) - c_loss) if finite.any() else float("nan")
        out[f"curvature_{name}"] = _curvature(coords[finite], loss[finite], fit_points)
    return out


def _curvature(coords: np.ndarray, loss: np.ndarray, fit_points: int) -> float:
    """Second derivative of the least-squares quadratic through the points nearest 0."""
    if len(coords) < 3:
        return float("nan")
    near = np.argsort(np.abs(coords), kind="stable")[:fit_points]
    a2, _, _ = np.polyfit(coords[near], loss[near], 2)  # loss ~ a2 t^2 + a1 t + a0, so d2/dt2 = 2 a2
    return float(2.0 * a2)


def landscape_image(surface: Surface, title: str = "", size: tuple[int, int] = (480, 360)) -> np.ndarray:
    """The landscape drawn with matplotlib (without pyplot: no global figure state) as
    an ``[height, width, 3]`` uint8 RGB array: the loss curve (1D) or a filled contour
    (2D), the center (the current weights) marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    finite = np.isfinite(surface.loss)
    if not finite.any():
        ax.text(0.5, 0.5, "no finite loss", ha="center", va="center", transform=ax.transAxes)
    elif surface.ndim == 1:
        ax.plot(surface.xcoordinates, surface.loss, "-o", ms=3, lw=1.5)
        i = _zero_index(surface.xcoordinates)
        ax.plot(surface.xcoordinates[i], surface.loss[i], "r*", ms=10)
        ax.set_xlabel("x (filter-normalized direction)")
        ax.set_ylabel("loss")
    else:
        X, Y = np.meshgrid(surface.xcoordinates, surface.ycoordinates, indexing="ij")
        lo, hi = float(surface.loss[finite].min()), float(surface.loss[finite].max())
        levels = np.linspace(lo, hi if hi > lo else lo + 1.0, 15)  # a flat landscape still needs rising levels
        artist = ax.contourf(X, Y, np.ma.masked_invalid(surface.loss), levels=levels, cmap="viridis", extend="both")
        fig.colorbar(artist, ax=ax, label="loss")
        ax.plot(0.0, 0.0, "r*", ms=10)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _zero_index(coords: np.ndarray | None) -> int:
    assert coords is not None
    return int(np.argmin(np.abs(coords)))  # parse_grid made sure that 0 is on every axis


def _subset(data: EvalData | tuple[torch.Tensor, torch.Tensor] | str, samples: int | None, seed: int) -> EvalData:
    """``samples`` of ``data`` drawn with ``seed``, in their original order (as ``load_data`` does)."""
    data = load_data(data) if isinstance(data, str) else as_eval_data(data)
    _check_data(data)
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ConfigError(f"samples={samples!r} is invalid", "it is a number of samples, 1 or more",
                          "pass samples=256, or None for all of the data")
    if samples is None or samples >= len(data):
        return data
    return data.subset(samples, seed)


def _check_data(data: EvalData) -> None:
    """Refuse data that no model can be evaluated on; whether it fits the model shows at the first step."""
    count = len(data)
    if count == 0:
        raise ConfigError("The tracker's evaluation data is empty", hint="pass data with at least one sample")
    if tuple(data.y.shape[:1]) != (count,):
        raise ConfigError(f"The tracker's evaluation data holds {count} inputs but targets of shape "
                          f"{tuple(data.y.shape)}", "every input needs its target, row by row",
                          "pass inputs and targets with the same number of rows")


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"Cannot track a {type(model).__name__}", "the tracker needs the torch.nn.Module being "
                          "trained", "pass the model itself, not its state_dict or its output")
    if next(model.parameters(), None) is None:
        raise ConfigError(f"The model {type(model).__name__} has no parameters",
                          "the landscape moves the parameters along random directions: a model without any "
                          "(or with buffers only) has nothing to move",
                          "track the model whose parameters the optimizer trains")


def _check_epoch(epoch: int) -> int:
    """``epoch`` as an ``int`` (Python, NumPy and 0-d tensor integers alike)."""
    try:
        value = -1 if isinstance(epoch, bool) else operator.index(epoch)
    except TypeError:
        value = -1
    if not 0 <= value <= MAX_EPOCH:
        raise ConfigError(f"epoch={epoch!r} is invalid", f"epochs are whole numbers from 0 to {MAX_EPOCH:,}",
                          "pass the loop's epoch counter, for example tracker.step(epoch) in range(epochs)")
    return value


def _nan_numbers(ndim: int) -> dict[str, float]:
    """The numbers of :func:`landscape_numbers`, all NaN: the result of a step without a landscape."""
    names = ["center_loss", "center_acc"] + [f"{kind}_{axis}" for axis in "xy"[:ndim]
                                             for kind in ("max_increase", "curvature")]
    return dict.fromkeys(names, float("nan"))


def _attempt(what: str, errors: list[str], action: Callable[..., Any], *args: Any) -> Any:
    """``action(*args)``; if it raises an ``Exception``, ``None`` and the reason added to
    ``errors``: also ``SystemExit`` from user code (a loss calling ``sys.exit``); ``KeyboardInterrupt``
    passes through."""
    try:
        return action(*args)
    except (Exception, SystemExit) as e:  # a tracked step never ends the caller's training loop (Ctrl-C does)
        reason = str(e) if isinstance(e, LossgridError) else f"{type(e).__name__}: {e}"
        errors.append(f"no {what} ({reason.rstrip('.')})")
        log.debug("the tracker's %s failed", what, exc_info=True)
        return None


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device  # _check_model made sure that there is one


def _place_run(out_dir: str, checkpoint: bool, tensorboard: bool | str | os.PathLike, if_exists: str) -> Layout:
    """This run's ``(out_dir, checkpoint dir, log dir)``, created: those asked for, or where they
    hold an earlier run, those of a new ``run-N`` (``if_exists="new"``) or a ConfigError."""
    _check_not_file(out_dir, "out_dir")
    if tensorboard and tensorboard is not True:
        _check_not_file(os.fspath(tensorboard), "TensorBoard log directory")  # type: ignore[arg-type]
    run = _layout(out_dir, checkpoint, tensorboard)
    earlier = _earlier_run(run[1], run[2])
    if earlier and if_exists == "refuse":
        raise ConfigError(earlier, "this run's checkpoints would overwrite the earlier ones one by one, and the "
                          "trajectory (and TensorBoard's curves) would mix the two runs",
                          "pass another out_dir, or if_exists=\"new\" to write this run into a new sub-directory "
                          "(run-2, run-3, ...), or remove the earlier run's files")
    if earlier:
        run = _new_run(out_dir, checkpoint, tensorboard)
        log.warning("%s: this run writes into %s", earlier, " and ".join(d for d in run[1:] if d))
    for directory in run[1:]:
        if directory is not None:
            _make_dir(directory)
    return run


def _layout(out_dir: str, checkpoint: bool, tensorboard: bool | str | os.PathLike, run: str | None = None) -> Layout:
    """``(out_dir, checkpoint dir, log dir)``, in the sub-directory ``run`` of each given directory."""
    def inside(directory: str) -> str:
        return directory if run is None else os.path.join(directory, run)

    base = inside(out_dir)
    logs = os.path.join(base, "tensorboard") if tensorboard is True else None
    if tensorboard and tensorboard is not True:
        logs = inside(os.fspath(tensorboard))  # type: ignore[arg-type]
    return base, os.path.join(base, "checkpoints") if checkpoint else None, logs


def _earlier_run(checkpoint_dir: str | None, log_dir: str | None) -> str:
    """What an earlier run left where this one would write (checkpoints, TensorBoard events); "" if nothing."""
    found = []
    for directory, kind, is_run_file in ((checkpoint_dir, "checkpoint", CHECKPOINT_RE.match),
                                         (log_dir, "TensorBoard event", lambda name: EVENTS_MARK in name)):
        names = sorted(n for n in _names(directory) if is_run_file(n)) if directory else []
        if names:
            found.append(f"{directory} already holds {len(names)} {kind} file{'s' if len(names) > 1 else ''} of "
                         f"an earlier run ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    return " and ".join(found)


def _new_run(out_dir: str, checkpoint: bool, tensorboard: bool | str | os.PathLike) -> Layout:
    """The layout in the first ``run-N`` that exists in none of the given directories, claimed."""
    for n in itertools.count(2):
        run = _layout(out_dir, checkpoint, tensorboard, RUN_DIR.format(n=n))
        if any(d is not None and os.path.lexists(d) for d in run):
            continue
        # made new, not reused: of two trackers started at the same moment, the second takes the next number
        if _make_dir(run[1] or run[2] or run[0], new=True):
            return run
    raise AssertionError("unreachable")


def _names(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:  # absent (nothing there yet), or a file (refused by _make_dir)
        return []


def _check_not_file(path: str, what: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"The tracker's {what} {path} is a file", "the tracker writes directories of files into it",
                          f"pass a directory (new or existing) as the {what}")


def _make_dir(path: str, new: bool = False) -> bool:
    """Create ``path`` (with its parents); ``new``: ``False`` if it exists already."""
    try:
        os.makedirs(path, exist_ok=not new)
    except FileExistsError:
        if new:
            return False
        raise ConfigError(f"Cannot create the directory {path}", "a file of that name exists",
                          "choose another out_dir (or TensorBoard log directory)") from None
    except OSError as e:
        raise ConfigError(f"Cannot create the directory {path}", os_reason(e),
                          "choose a writable out_dir (or TensorBoard log directory)") from None
    return True
