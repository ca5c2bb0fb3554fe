"""The contract every runner keeps.

A runner evaluates the loss and accuracy of many weight sets on one evaluation
set that it holds (on its device, in its batches). The surface loop only ever
talks to a runner through this interface:

* ``evaluate(weights)``: ``weights`` is ``[K, P]`` (flat, in the order of a
  :class:`~lossgrid.engine.params.ParamLayout`; any device); returns a
  :class:`~lossgrid.engine.losses.Stats` ``(loss, acc, loss_se)`` of float64
  NumPy arrays of length ``K``: the mean loss over all samples (or the loss's
  units: tokens), the accuracy in percent (NaN when the task has no class
  labels) and the loss's standard error over the samples (NaN where it cannot
  be estimated).
* ``set_directions(base, dirs)`` then ``evaluate_points(coeffs)``: the same for
  grid coefficients ``coeffs[K, D]`` around ``base[P]`` along ``dirs[D, P]``;
  by default the weights are built with :func:`lossgrid.kernels.perturb` and
  passed to ``evaluate``, a runner with its own weight buffers writes them there.
* ``evaluate_point_samples(coeffs)``: the same and every sample's values
  (:class:`~lossgrid.engine.losses.SampleValues`), for estimators that combine
  points sample by sample (:mod:`lossgrid.surface.anchors`). Runners pass their
  ``_keep`` list to the batch functions of :mod:`lossgrid.engine.losses`.
* ``points_per_call``: how many points per ``evaluate`` call suit the runner
  (the surface loop's chunk size); ``batch_size``: samples per forward pass.
* ``describe()``: a JSON-able dict with at least ``backend``, ``strategy``,
  ``device``, ``points_per_call`` and ``batch_size`` (stored with every run).
* ``expect(points)``: told once how many points are left, before the first call
  (runners that time or capture something size that work to the job).
* ``close()``: release device memory, sessions, engines and graphs at once;
  a closed runner is not used again. Runners are also context managers.

Errors: a failure of the model on the data is an
:class:`~lossgrid.errors.EvaluationError`; out-of-memory errors pass through
unchanged so that the surface loop can name the settings to lower
(:meth:`Runner.guard` does both).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from ...errors import ConfigError, EvaluationError, LossgridError, is_out_of_memory
from ...kernels import perturb
from ..losses import SampleValues, Stats

T = TypeVar("T")
#: what a model, a loss or a backend raises when it fails on the data (torch raises RuntimeError)
FAILURES: tuple[type[Exception], ...] = (RuntimeError, ValueError, TypeError, IndexError)


class Runner(abc.ABC):
    """Base class of every runner (see the module docs for the contract)."""

    #: the backend's name (``torch``, ``onnxruntime``, ``tensorrt``, ``auto``)
    name: str = ""
    strategy: str = ""
    points_per_call: int = 1
    batch_size: int | None = None
    #: where the batch functions append per-sample values during evaluate_point_samples
    _keep: list[SampleValues] | None = None
    #: exception types of the backend's library that do not derive from :data:`FAILURES`
    #: (ONNX Runtime's derive from ``Exception``); :meth:`guard` turns them into EvaluationError
    backend_errors: tuple[type[Exception], ...] = ()

    @abc.abstractmethod
    def evaluate(self, weights: torch.Tensor) -> Stats:
        """Loss (mean over samples), accuracy (percent) and the loss's standard error for ``weights[K, P]``."""

    @abc.abstractmethod
    def describe(self) -> dict[str, object]:
        """What runs and how (JSON-able), stored in the surface file's run log."""

    def set_directions(self, base: torch.Tensor, dirs: torch.Tensor) -> None:
        """The origin ``base[P]`` and the directions ``dirs[D, P]`` of the following
        :meth:`evaluate_points` calls (flat, in layout order)."""
        self._origin, self._directions = base, dirs

    def evaluate_points(self, coeffs: torch.Tensor) -> Stats:
        """Loss, accuracy and standard error at grid coefficients ``coeffs[K, D]`` (see :meth:`set_directions`)."""

        if getattr(self, "_directions", None) is None:
            raise ConfigError("set_directions() must be called before evaluate_points()")
        return self.evaluate(perturb(self._origin, self._directions, coeffs.to(self._directions.device)))

    def evaluate_point_samples(self, coeffs: torch.Tensor) -> tuple[Stats, SampleValues]:
        """:meth:`evaluate_points` and the per-sample losses and correct counts of every point."""
        self._keep = []
        try:
            stats = self.evaluate_points(coeffs)
            kept = self._keep
        finally:
            self._keep = None
        return stats, SampleValues.along_points(kept, coeffs.shape[0])

    def expect(self, points: int) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Told how many grid points are left before the first :meth:`evaluate`."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release what the runner holds (device buffers, sessions, graphs)."""

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def guard(self, what: str, hint: str = "check that the data matches the model's input shape and the loss "
                                           "matches its outputs") -> Iterator[None]:
        """Turn a failure of the model on the data into :class:`EvaluationError`
        (out-of-memory errors and lossgrid's own errors pass through). Besides Python's
        usual errors, the backend's own exception types count (:attr:`backend_errors`)."""
        try:
            yield
        except LossgridError:
            raise
        except (*FAILURES, *self.backend_errors) as e:
            if is_out_of_memory(e):  # the surface loop names the settings to lower
                raise
            raise EvaluationError(what, f"{type(e).__name__}: {e}", hint) from e


Factory = Callable[[], Runner]
