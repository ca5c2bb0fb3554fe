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

import logging
import os
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import nn

from ._files import atomic_output, os_reason
from ._optional import require
from .config import Axis, DirectionSpec, EvalSpec, GridSpec
from .data import EvalData, as_eval_data, load_data
from .engine.directions import Directions, create_directions
from .engine.losses import LossFn, resolve_loss
from .engine.surface import compute_surface
from .engine.surface_file import Surface
from .errors import ConfigError, LossgridError

log = logging.getLogger(__name__)

#: the grid of ``grid="2d"``: 9 x 9 points on [-1, 1]^2
GRID_2D = "-1:1:9"
#: the prefix of every TensorBoard tag; a number ``name`` is logged as ``lossgrid/name``
TAG_PREFIX = "lossgrid/"
#: the tag of the landscape image
IMAGE_TAG = TAG_PREFIX + "landscape"
#: file name of the checkpoint of an epoch inside ``out_dir/checkpoints``
CHECKPOINT_NAME = "epoch_{epoch:04d}.pt"


class Tracker:
    """Checkpoints and a cheap loss landscape every ``every`` epochs of a training loop.

    Args:
        model: the model being trained; never modified (see the module docstring).
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

    Attributes:
        history: one dict per tracked epoch: ``{"epoch": E, **numbers}``.
        checkpoints: the checkpoint files written, in order.
        directions: the fixed directions (``None`` before the first step).
        last_surface: the landscape of the last tracked step.
    """

    def __init__(self, model: nn.Module, data: EvalData | tuple[torch.Tensor, torch.Tensor] | str,
                 out_dir: str | os.PathLike, *, every: int = 1, grid: str | GridSpec = "-1:1:11",
                 samples: int | None = 256, seed: int = 0, loss: str | LossFn = "cross_entropy",
                 tensorboard: bool | str | os.PathLike = False, checkpoint: bool = True, fit_points: int = 5,
                 image_size: tuple[int, int] = (480, 360), batch_size: int | None = None) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every={every!r} is invalid", "it is a number of epochs, 1 or more",
                              "pass every=1 to track every epoch")
        if isinstance(fit_points, bool) or not isinstance(fit_points, int) or fit_points < 3:
            raise ConfigError(f"fit_points={fit_points!r} is invalid", "a quadratic fit needs at least 3 points",
                              "pass fit_points=3 or more")
        if len(image_size) != 2 or min(image_size) < 32:
            raise ConfigError(f"image_size={image_size!r} is invalid", "it is (width, height), each 32 pixels or more")
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
        self.out_dir = os.fspath(out_dir)
        self.checkpoint_dir = os.path.join(self.out_dir, "checkpoints") if checkpoint else None
        self.log_dir: str | None = None
        self._writer_class: Any = None
        self._writer: Any = None
        if tensorboard:  # True, or a log directory
            # imported now, so that a missing extra fails before any training happens
            module = require("torch.utils.tensorboard", "tensorboard", "TensorBoard logging (Tracker(tensorboard=...))")
            self._writer_class = module.SummaryWriter
            self.log_dir = (os.path.join(self.out_dir, "tensorboard") if tensorboard is True
                            else os.fspath(tensorboard))  # type: ignore[arg-type]
        for directory in (self.checkpoint_dir, self.log_dir):
            if directory is not None:
                _make_dir(directory)
        self.directions: Directions | None = None
        self.last_surface: Surface | None = None
        self.history: list[dict[str, Any]] = []
        self.checkpoints: list[str] = []

    def step(self, epoch: int, force: bool = False) -> dict[str, float]:
        """Track ``epoch`` if it is a multiple of ``every`` (or ``force``): save the
        checkpoint, evaluate the landscape, log to TensorBoard.

        Returns the numbers logged, by name (tag ``lossgrid/<name>``); an empty dict
        for an epoch that is not tracked.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch={epoch!r} is invalid", "epochs are whole numbers, 0 or more")
        if not force and epoch % self.every:
            return {}
        if self.checkpoint_dir is not None:
            self.checkpoints.append(self._save_checkpoint(epoch))
        try:
            surface = self._landscape()
        except LossgridError as e:  # e.g. the weights diverged: the tracker must not end the training loop
            log.warning("epoch %d: no landscape (%s)", epoch, e.what)
            numbers = {"center_loss": float("nan")}
            self.history.append({"epoch": epoch, **numbers, "error": e.what})
            return numbers
        numbers = landscape_numbers(surface, self.fit_points)
        self.last_surface = surface
        self.history.append({"epoch": epoch, **numbers})
        if self._writer_class is not None:
            self._log(epoch, surface, numbers)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in numbers.items()))
        return numbers

    def close(self) -> None:
        """Flush and close the TensorBoard writer (if any); further steps reopen it."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _save_checkpoint(self, epoch: int) -> str:
        assert self.checkpoint_dir is not None
        path = os.path.join(self.checkpoint_dir, CHECKPOINT_NAME.format(epoch=epoch))
        with atomic_output(path, "checkpoint") as tmp:  # a killed run never leaves half a checkpoint
            torch.save(self.model.state_dict(), tmp)
        return path

    def _landscape(self) -> Surface:
        device = _device_of(self.model)
        # fork_rng: nothing below may draw from the global generators the training loop uses
        cuda = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            if self.directions is None:
                self.directions = create_directions(self.model, DirectionSpec(seed=self.seed), ndim=self.grid.ndim)
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
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ConfigError(f"samples={samples!r} is invalid", "it is a number of samples, 1 or more",
                          "pass samples=256, or None for all of the data")
    if samples is None or samples >= len(data):
        return data
    return data.subset(samples, seed)


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _make_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Cannot create the directory {path}", os_reason(e),
                          "choose a writable out_dir (or TensorBoard log directory)") from None
