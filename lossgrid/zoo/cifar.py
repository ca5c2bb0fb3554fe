"""The CIFAR-10 networks of Li et al. (2018), with the reference code's parameter names.

Module attributes, ``nn.Sequential`` nesting and layer order follow the
loss-landscape reference implementation exactly, so a ``state_dict`` it saved
(its ``.t7`` files hold ``{'state_dict': ..., 'acc': ..., 'epoch': ...}``)
loads into these classes unchanged, and the parameter counts agree:

* :class:`CifarResNet` -- stem, three stages of :class:`BasicBlock` with widths
  16k, 32k, 64k (k = 1 for ResNet-20/56/110, k = 2/4/8 for Wide-ResNet-56),
  global average pooling, ``linear``; :func:`resnet_cifar` builds any depth 6n+2.
* :class:`ResNet4Stage` -- the four-stage 64..512 ResNet-18/34/50/101/152 (basic
  or :class:`Bottleneck` blocks) on 32x32 inputs.
* :class:`VGG` -- conv-BN-ReLU stacks, max pooling, ``fc`` (Linear-BN1d-ReLU)
  then ``classifier``; :func:`vgg9` is the paper's VGG-9.
* :class:`DenseNet` -- bottleneck dense layers and transitions; :func:`densenet121`.

``shortcuts=False`` gives the paper's "no short-cut" networks: the same layers
with the residual addition removed (and no ``shortcut`` parameters, as in the
reference). The final pooling is adaptive, which equals the reference's fixed
pooling window on 32x32 inputs and also accepts other sizes.

Example:
    >>> model = resnet_cifar(56)
    >>> sum(p.numel() for p in model.parameters())
    855770
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; with ``shortcut`` the input is added back before the last ReLU.

    The shortcut is an identity, or a 1x1 conv + BN (``shortcut.0``, ``shortcut.1``)
    when the block changes the resolution or width.
    """

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module | None = None
        if shortcut:
            self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, each with BN.

    With ``shortcut`` the input is added back and a ReLU follows; without, the block
    ends at the last BN (no final ReLU), as the reference's no-shortcut bottleneck does,
    so that its checkpoints compute the function they were trained as.
    """

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module | None = None
        if shortcut:
            self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is None:
            return out
        return F.relu(out + self.shortcut(x))


def _projection(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity when shapes agree, else a strided 1x1 conv + BN (an empty Sequential has no
    parameters, so both forms keep the reference's names)."""
    if stride == 1 and cin == cout:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def _stage(block: type[BasicBlock] | type[Bottleneck], cin: int, planes: int, count: int, stride: int,
           shortcuts: bool) -> tuple[nn.Sequential, int]:
    """``count`` blocks, the first one strided; returns the stage and its output width."""
    blocks = []
    for i in range(count):
        blocks.append(block(cin, planes, stride if i == 0 else 1, shortcuts))
        cin = planes * block.expansion
    return nn.Sequential(*blocks), cin


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet: 3x3 stem (``conv1``, ``bn1``), stages ``layer1..3`` of
    ``blocks`` basic blocks at widths 16k/32k/64k (strides 1, 2, 2), pooling, ``linear``."""

    def __init__(self, blocks: int, width: int = 1, shortcuts: bool = True, in_channels: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        w = 16 * width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.layer1, c = _stage(BasicBlock, w, w, blocks, 1, shortcuts)
        self.layer2, c = _stage(BasicBlock, c, 2 * w, blocks, 2, shortcuts)
        self.layer3, c = _stage(BasicBlock, c, 4 * w, blocks, 2, shortcuts)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class ResNet4Stage(nn.Module):
    """The ImageNet-shaped ResNet (stages of width 64..512, ``layer1..4``) with a 3x3 stem
    for 32x32 inputs, as the reference trains ResNet-18..152 on CIFAR-10."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: Sequence[int], shortcuts: bool = True,
                 in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, c = _stage(block, 64, 64, blocks[0], 1, shortcuts)
        self.layer2, c = _stage(block, c, 128, blocks[1], 2, shortcuts)
        self.layer3, c = _stage(block, c, 256, blocks[2], 2, shortcuts)
        self.layer4, c = _stage(block, c, 512, blocks[3], 2, shortcuts)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet_cifar(depth: int, shortcuts: bool = True, width: int = 1, in_channels: int = 3,
                 num_classes: int = 10) -> nn.Module:
    """The paper's CIFAR ResNet family: depth ``6n + 2`` (20, 56, 110, ...), ``width`` the
    Wide-ResNet multiplier k, ``shortcuts=False`` for the ``_noshort`` networks.

    With ``in_channels=3`` the ``state_dict`` names are the reference code's, so its
    checkpoints load as they are.

    Example:
        >>> net = resnet_cifar(56, shortcuts=False, width=2)   # the reference's wrn56_2_noshort
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"ResNet depth {depth!r} is not of the form 6n + 2",
                          "a CIFAR ResNet has a stem, three stages of n two-layer blocks and a classifier",
                          "use a depth such as 20, 32, 44, 56 or 110")
    for name, value in (("width", width), ("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"ResNet {name} must be a positive integer, got {value!r}")
    return CifarResNet((depth - 2) // 6, width, shortcuts, in_channels, num_classes)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 for 32x32 RGB images (the reference's ``resnet20``), 272,474 parameters."""
    return CifarResNet(3, num_classes=num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 for 32x32 RGB images (the reference's ``resnet56``, the paper's main CIFAR-10
    network), 855,770 parameters."""
    return CifarResNet(9, num_classes=num_classes)


#: blocks per stage and block type of the four-stage ResNets
RESNET4_CONFIGS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def resnet_4stage(depth: int, shortcuts: bool = True, num_classes: int = 10) -> ResNet4Stage:
    """ResNet-18/34/50/101/152 for 32x32 RGB images, as the reference's ``resnet18`` ... ``resnet152``."""
    if depth not in RESNET4_CONFIGS:
        raise ConfigError(f"No four-stage ResNet of depth {depth!r}", hint=f"use one of {sorted(RESNET4_CONFIGS)}")
    block, blocks = RESNET4_CONFIGS[depth]
    return ResNet4Stage(block, blocks, shortcuts, num_classes=num_classes)


#: VGG layer plans: output channels of each 3x3 conv, "M" for a 2x2 max pool
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg9": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """``features`` (conv-BN-ReLU per plan entry, max pools with ceil mode), ``fc``
    (Linear from the flattened maps to as many units as the last conv has channels,
    BatchNorm1d, ReLU), then ``classifier``."""

    def __init__(self, plan: Sequence[int | str], in_channels: int = 3, input_size: int = 32,
                 num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, input_size
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                size = -(-size // 2)
            elif isinstance(item, int) and not isinstance(item, bool) and item > 0:
                layers += [nn.Conv2d(c, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
                c = item
            else:
                raise ConfigError(f"VGG plan entry {item!r} is neither a channel count nor 'M'")
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(c * size * size, c), nn.BatchNorm1d(c), nn.ReLU())
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x).flatten(1)))


def vgg9(num_classes: int = 10) -> VGG:
    """The paper's VGG-9 (7 conv layers, 2 fully connected) for 32x32 RGB images."""
    return VGG(VGG_CONFIGS["vgg9"], num_classes=num_classes)


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv to 4*growth channels, BN-ReLU-3x3 conv to ``growth``; the new
    channels are concatenated in front of the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (``bn``, ``conv``) then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """3x3 stem to 2*growth channels (``conv1``), four dense blocks ``dense1..4`` with
    transitions ``trans1..3`` that keep ``floor(reduction * channels)``, then ``bn``,
    ReLU, pooling and ``linear``."""

    def __init__(self, blocks: Sequence[int], growth: int = 32, reduction: float = 0.5, in_channels: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        c = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        for i, count in enumerate(blocks, start=1):
            layers = []
            for _ in range(count):
                layers.append(DenseLayer(c, growth))
                c += growth
            setattr(self, f"dense{i}", nn.Sequential(*layers))
            if i < len(blocks):
                reduced = int(c * reduction)
                setattr(self, f"trans{i}", Transition(c, reduced))
                c = reduced
        self.num_blocks = len(blocks)
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for i in range(1, self.num_blocks + 1):
            out = getattr(self, f"dense{i}")(out)
            if i < self.num_blocks:
                out = getattr(self, f"trans{i}")(out)
        out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def densenet121(num_classes: int = 10) -> DenseNet:
    """DenseNet-121 (blocks of 6, 12, 24, 16 layers, growth 32) for 32x32 RGB images."""
    return DenseNet((6, 12, 24, 16), 32, num_classes=num_classes)
