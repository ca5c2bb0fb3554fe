"""Perturbation and filter-wise normalization kernels.

Every backend module here exposes the same functions with the same contract:

* ``normalize_direction(d, w, norm)`` -> a new direction tensor, for one tensor
  of two or more dimensions (or a 1-D tensor treated as scalar filters).
* ``fold_conv_bn(w, b, gamma, beta, mean, var, eps)`` -> BatchNorm folded into
  the preceding convolution, for ``K`` grid points (leading ``[K]`` dimension).
* ``perturb(base, dirs, coeffs)`` -> ``base + coeffs @ dirs`` for many grid points:
  ``base`` is ``[P]``, ``dirs`` ``[D, P]``, ``coeffs`` ``[K, D]``, result ``[K, P]``.

:mod:`lossgrid.kernels.reference` (NumPy, float64) is the oracle;
:mod:`lossgrid.kernels.cpu` (torch, any device) is what the engine runs.
"""

from .cpu import EPS, fold_conv_bn, normalize_direction, perturb

__all__ = ["EPS", "fold_conv_bn", "normalize_direction", "perturb"]
