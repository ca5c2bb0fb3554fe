"""The zoo registry: the reference code's CIFAR-10 model names, each with its input and counts.

The names are exactly those of the loss-landscape reference implementation
(``resnet56``, ``resnet56_noshort``, ``wrn56_2``, ``vgg9``, ``densenet121`` ...),
so a published checkpoint's folder name says which entry to pass to ``--model``.
``reference_params`` is the number of parameters the reference's definition has;
the zoo's models match it (tests check each one).

Example:
    >>> entry = ZOO["wrn56_2_noshort"]
    >>> entry.input_shape, entry.normalization, entry.reference_params
    ((3, 32, 32), 'reference', 3401770)
    >>> "resnet110" in zoo_names()
    True
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from ..errors import ConfigError
from .cifar import densenet121, resnet_4stage, resnet_cifar, vgg9


@dataclass(frozen=True)
class ZooEntry:
    """One registered model.

    Attributes:
        name: the registry name (the reference code's name for it).
        factory: builds the model with fresh random weights; called without arguments.
        input_shape: shape of one input sample, channels first.
        num_classes: number of outputs.
        normalization: name in :data:`lossgrid.data.CIFAR_NORMS` of the per-channel
            input normalization the reference trained with (``cifar10:DIR:norm=NAME``).
        description: one line for listings.
        reference_params: parameter count of the reference implementation's definition.
    """

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int
    normalization: str
    description: str
    reference_params: int

    def build(self) -> nn.Module:
        """A fresh instance of the model (random weights)."""
        return self.factory()


def _entry(name: str, factory: Callable[[], nn.Module], description: str, params: int) -> ZooEntry:
    return ZooEntry(name, factory, (3, 32, 32), 10, "reference", description, params)


def _resnet(depth: int, shortcuts: bool, width: int, params: int, name: str | None = None) -> ZooEntry:
    n = (depth - 2) // 6
    if width == 1:
        name = name or f"resnet{depth}{'' if shortcuts else '_noshort'}"
        title = f"ResNet-{depth}"
    else:
        name = name or f"wrn{depth}_{width}{'' if shortcuts else '_noshort'}"
        title = f"Wide-ResNet-{depth} (k={width})"
    kind = "with shortcuts" if shortcuts else "without shortcuts"
    widths = "/".join(str(w * width) for w in (16, 32, 64))
    return _entry(name, partial(resnet_cifar, depth, shortcuts, width),
                  f"{title} {kind}: 3 stages x {n} basic blocks, widths {widths}", params)


def _resnet4(depth: int, shortcuts: bool, params: int) -> ZooEntry:
    name = f"resnet{depth}{'' if shortcuts else '_noshort'}"
    kind = "with shortcuts" if shortcuts else "without shortcuts"
    blocks = "bottleneck" if depth >= 50 else "basic"
    return _entry(name, partial(resnet_4stage, depth, shortcuts),
                  f"ResNet-{depth} {kind} ({blocks} blocks, widths 64-512) for 32x32 inputs", params)


_ENTRIES = [
    _resnet(20, True, 1, 272_474),
    _resnet(20, False, 1, 269_722),
    _resnet(32, False, 1, 464_154),
    _resnet(44, False, 1, 658_586),
    # the reference's name for its depth-50 CIFAR ResNet (16 channels first), not the 4-stage ResNet-50
    _resnet(50, False, 1, 755_802, name="resnet50_16_noshort"),
    _resnet(56, True, 1, 855_770),
    _resnet(56, False, 1, 853_018),
    _resnet(110, True, 1, 1_730_714),
    _resnet(110, False, 1, 1_727_962),
    _resnet(56, True, 2, 3_412_394),
    _resnet(56, False, 2, 3_401_770),
    _resnet(56, True, 4, 13_628_234),
    _resnet(56, False, 4, 13_586_506),
    _resnet(56, True, 8, 54_470_282),
    _resnet(56, False, 8, 54_304_906),
    _resnet(110, False, 2, 6_893_482),
    _resnet(110, False, 4, 27_537_226),
    _entry("vgg9", vgg9, "VGG-9: 7 conv-BN-ReLU layers (64-256 channels, 3 max pools), "
           "Linear-BN-ReLU, Linear", 2_789_706),
    _entry("densenet121", densenet121, "DenseNet-121: dense blocks of 6/12/24/16 bottleneck layers, growth 32",
           6_956_298),
    _resnet4(18, True, 11_173_962),
    _resnet4(18, False, 11_000_138),
    _resnet4(34, True, 21_282_122),
    _resnet4(34, False, 21_108_298),
    _resnet4(50, True, 23_520_842),
    _resnet4(50, False, 20_744_266),
    _resnet4(101, True, 42_512_970),
    _resnet4(101, False, 39_736_394),
    _resnet4(152, True, 58_156_618),
    _resnet4(152, False, 55_380_042),
]

#: the registered models by name
ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}


def zoo_names() -> list[str]:
    """The registered names, in registry order (paper models first)."""
    return list(ZOO)


def close_names(name: str, n: int = 3) -> list[str]:
    """Registered names that look like ``name`` (for "did you mean" hints)."""
    return difflib.get_close_matches(name.lower(), list(ZOO), n=n, cutoff=0.6)


def build(name: str) -> nn.Module:
    """A fresh (randomly initialized) instance of the registered model ``name``.

    Example:
        >>> sum(p.numel() for p in build("resnet20").parameters())
        272474
    """
    entry = ZOO.get(name)
    if entry is None:
        close = close_names(name)
        raise ConfigError(f"No model named {name!r} in the zoo",
                          f"did you mean {' or '.join(close)}?" if close else None,
                          "list the names with: python -c 'import lossgrid.zoo as z; print(z.zoo_names())'")
    return entry.factory()
