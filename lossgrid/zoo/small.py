"""Small architectures for the demo, the tests and the benchmarks (8x8 digits, tokens).

All are plain ``nn.Module`` factories, usable as model specs such as
``lossgrid.zoo:resnet_digits``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cifar import BasicBlock


class ResNet(nn.Module):
    """A small CIFAR-style ResNet: a stem, three stages of basic blocks in one ``layers``
    Sequential, global pooling, ``fc`` (the names :func:`resnet_digits` checkpoints use)."""

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


def resnet20_v0() -> ResNet:
    """ResNet-20 as ``lossgrid.zoo:resnet20`` was before the zoo took the reference code's names
    (``layers.*``, ``fc.*``): loads checkpoints saved from it."""
    return ResNet(3, (16, 32, 64), 3, 10)


def resnet56_v0() -> ResNet:
    """ResNet-56 as ``lossgrid.zoo:resnet56`` was before the zoo took the reference code's names."""
    return ResNet(9, (16, 32, 64), 3, 10)


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


def vgg_digits() -> nn.Sequential:
    """VGG-style: conv-BN-ReLU stacks with max pooling, dropout, two Linear layers (8x8 digits)."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(1, 16), *block(16, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))


class DenseBlock(nn.Module):
    """DenseNet-style block: each layer's output is concatenated to its input."""

    def __init__(self, cin: int, growth: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for i in range(layers):
            c = cin + i * growth
            self.layers.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, padding=1,
                                                                                      bias=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class DenseNetSmall(nn.Module):
    """Stem conv, a dense block, transition (BN-ReLU-1x1 conv-avg pool), GroupNorm, classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.block = DenseBlock(8, 6, 3)
        self.trans = nn.Sequential(nn.BatchNorm2d(26), nn.ReLU(), nn.Conv2d(26, 16, 1, bias=False), nn.AvgPool2d(2))
        self.norm = nn.GroupNorm(4, 16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans(self.block(self.stem(x)))
        x = F.silu(self.norm(x))
        return self.fc(x.mean(dim=(2, 3)))


def densenet_digits() -> DenseNetSmall:
    return DenseNetSmall()


class TokenTransformer(nn.Module):
    """Embedding + positional embedding, one transformer encoder block, mean pooling, classifier."""

    def __init__(self, vocab: int = 32, length: int = 12, dim: int = 32, heads: int = 4, num_classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.1)
        self.encoder = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=64, dropout=0.1, activation="gelu",
                                                  batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos
        x = self.encoder(x)
        return self.head(self.norm(x).mean(dim=1))


def transformer_tokens() -> TokenTransformer:
    return TokenTransformer()


class Conv1dNet(nn.Module):
    """Conv1d with groups, stride and dilation, BatchNorm1d after Linear, Tanh/GELU, adaptive max pooling."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(8, 16, 3, padding=2, dilation=2)
        self.conv2 = nn.Conv1d(16, 16, 3, stride=2, groups=4, padding=1)
        self.pool = nn.AdaptiveMaxPool1d(2)
        self.fc1 = nn.Linear(32, 24)
        self.bn = nn.BatchNorm1d(24)
        self.fc2 = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 8, 8)  # 8x8 digits as 8 channels of length 8
        x = torch.tanh(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = self.pool(x).flatten(1)
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def conv1d_digits() -> Conv1dNet:
    return Conv1dNet()
