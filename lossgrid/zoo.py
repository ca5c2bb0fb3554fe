"""Small reference architectures used by the demo, the tests and the benchmarks.

All are plain ``nn.Module`` factories, usable as model specs such as
``lossgrid.zoo:resnet_digits``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs with BN) with an identity or 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: a stem, three stages of basic blocks, global pooling."""

    def __init__(self, blocks_per_stage: int = 3, widths: tuple[int, int, int] = (16, 32, 64),
                 in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                layers.append(BasicBlock(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet20(num_classes: int = 10) -> ResNet:
    """ResNet-20 for 32x32 RGB images (He et al. 2016), about 272k parameters."""
    return ResNet(3, (16, 32, 64), 3, num_classes)


def resnet_digits() -> ResNet:
    """A small residual CNN for scikit-learn's 8x8 digits (1 channel, 10 classes)."""
    return ResNet(1, (8, 16, 32), 1, 10)


def mlp(in_features: int = 64, hidden: int = 64, num_classes: int = 10, depth: int = 2) -> nn.Sequential:
    """A ReLU multi-layer perceptron on flattened inputs."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def mlp_digits() -> nn.Sequential:
    """MLP 64-64-64-10 for the 8x8 digits."""
    return mlp(64, 64, 10, 2)


def mlp_mnist() -> nn.Sequential:
    """MLP 784-512-512-10, the benchmark MLP."""
    return mlp(784, 512, 10, 2)
