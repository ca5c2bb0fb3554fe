"""Model zoo: the paper's CIFAR-10 networks by name, and small models for demos and tests.

* :mod:`lossgrid.zoo.cifar` -- the networks of Li et al. (2018) with the reference
  code's ``state_dict`` names (its ``.t7`` checkpoints load as they are).
* :mod:`lossgrid.zoo.registry` -- :data:`ZOO`, the registry behind ``--model resnet56``.
* :mod:`lossgrid.zoo.small` -- small networks for the 8x8 digits and token data.

Every factory is also a model spec, e.g. ``lossgrid.zoo:resnet_digits``.

Example:
    >>> from lossgrid.zoo import ZOO, build
    >>> ZOO["resnet56_noshort"].input_shape
    (3, 32, 32)
    >>> type(build("resnet56")).__name__
    'CifarResNet'
"""

from __future__ import annotations

from .cifar import (
    VGG,
    BasicBlock,
    Bottleneck,
    CifarResNet,
    DenseLayer,
    DenseNet,
    ResNet4Stage,
    Transition,
    densenet121,
    resnet20,
    resnet56,
    resnet_4stage,
    resnet_cifar,
    vgg9,
)
from .registry import ZOO, ZooEntry, build, zoo_names
from .small import (
    Conv1dNet,
    DenseBlock,
    DenseNetSmall,
    ResNet,
    TokenTransformer,
    conv1d_digits,
    densenet_digits,
    mlp,
    mlp_digits,
    mlp_mnist,
    resnet20_v0,
    resnet56_v0,
    resnet_digits,
    transformer_tokens,
    vgg_digits,
)

__all__ = [
    "ZOO", "ZooEntry", "build", "zoo_names",
    "BasicBlock", "Bottleneck", "CifarResNet", "DenseLayer", "DenseNet", "ResNet4Stage", "Transition", "VGG",
    "densenet121", "resnet20", "resnet56", "resnet_4stage", "resnet_cifar", "vgg9",
    "Conv1dNet", "DenseBlock", "DenseNetSmall", "ResNet", "TokenTransformer", "conv1d_digits", "densenet_digits",
    "mlp", "mlp_digits", "mlp_mnist", "resnet20_v0", "resnet56_v0", "resnet_digits", "transformer_tokens", "vgg_digits",
]
