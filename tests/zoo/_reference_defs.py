"""Stand-ins for the reference implementation's CIFAR-10 model classes, written for the tests.

They reproduce the reference's module structure -- attribute names, nesting,
layer order, constructor arithmetic and forward computation (fixed pooling
windows for 32x32 inputs, in-place residual addition, no final ReLU in the
no-shortcut bottleneck) -- so that their ``state_dict`` names are the ones in
the reference's published ``.t7`` files. They are deliberately independent of
``lossgrid.zoo``: the tests compare the two.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RefBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        layers = []
        if stride != 1 or in_planes != planes:
            layers = [nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)]
        self.shortcut = nn.Sequential(*layers)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        y += self.shortcut(x)
        return F.relu(y)


class RefBasicBlockNoShort(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        wide = 4 * planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, wide, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(wide)
        layers = []
        if stride != 1 or in_planes != wide:
            layers = [nn.Conv2d(in_planes, wide, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(wide)]
        self.shortcut = nn.Sequential(*layers)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        y += self.shortcut(x)
        return F.relu(y)


class RefBottleneckNoShort(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return self.bn3(self.conv3(y))  # the reference ends this block without a ReLU


def _layer(owner, block, planes, count, stride):
    mods = []
    for s in [stride] + [1] * (count - 1):
        mods.append(block(owner.in_planes, planes, s))
        owner.in_planes = planes * block.expansion
    return nn.Sequential(*mods)


class RefResNetCifar(nn.Module):
    """Three stages at 16k/32k/64k channels (k = 1: ResNet-20/56/110; k > 1: Wide-ResNet)."""

    def __init__(self, block, counts, k=1, num_classes=10):
        super().__init__()
        self.in_planes = 16 * k
        self.conv1 = nn.Conv2d(3, 16 * k, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16 * k)
        self.layer1 = _layer(self, block, 16 * k, counts[0], 1)
        self.layer2 = _layer(self, block, 32 * k, counts[1], 2)
        self.layer3 = _layer(self, block, 64 * k, counts[2], 2)
        self.linear = nn.Linear(64 * k * block.expansion, num_classes)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.layer3(self.layer2(self.layer1(y)))
        y = F.avg_pool2d(y, 8)
        return self.linear(y.view(y.size(0), -1))


class RefResNet(nn.Module):
    """Four stages at 64..512 channels, 3x3 stem, for 32x32 inputs."""

    def __init__(self, block, counts, num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _layer(self, block, 64, counts[0], 1)
        self.layer2 = _layer(self, block, 128, counts[1], 2)
        self.layer3 = _layer(self, block, 256, counts[2], 2)
        self.layer4 = _layer(self, block, 512, counts[3], 2)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.layer4(self.layer3(self.layer2(self.layer1(y))))
        y = F.avg_pool2d(y, 4)
        return self.linear(y.view(y.size(0), -1))


class RefVGG(nn.Module):
    PLANS = {"VGG9": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]}

    def __init__(self, name):
        super().__init__()
        self.input_size = 32
        mods, c = [], 3
        for v in self.PLANS[name]:
            if v == "M":
                mods.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
                self.input_size //= 2
            else:
                mods += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*mods)
        self.n_maps = c
        self.fc = nn.Sequential(nn.Linear(c * self.input_size ** 2, c), nn.BatchNorm1d(c), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(c, 10)

    def forward(self, x):
        y = self.features(x)
        return self.classifier(self.fc(y.view(y.size(0), -1)))


class RefDenseBottleneck(nn.Module):
    def __init__(self, in_planes, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([y, x], 1)


class RefTransition(nn.Module):
    def __init__(self, in_planes, out_planes):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class RefDenseNet(nn.Module):
    def __init__(self, counts, growth_rate=12, reduction=0.5, num_classes=10):
        super().__init__()
        self.growth_rate = growth_rate
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, planes, kernel_size=3, padding=1, bias=False)
        for i in range(3):
            setattr(self, f"dense{i + 1}", self._dense(planes, counts[i]))
            planes += counts[i] * growth_rate
            reduced = int(math.floor(planes * reduction))
            setattr(self, f"trans{i + 1}", RefTransition(planes, reduced))
            planes = reduced
        self.dense4 = self._dense(planes, counts[3])
        planes += counts[3] * growth_rate
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def _dense(self, planes, count):
        mods = []
        for _ in range(count):
            mods.append(RefDenseBottleneck(planes, self.growth_rate))
            planes += self.growth_rate
        return nn.Sequential(*mods)

    def forward(self, x):
        y = self.conv1(x)
        y = self.trans1(self.dense1(y))
        y = self.trans2(self.dense2(y))
        y = self.trans3(self.dense3(y))
        y = F.avg_pool2d(F.relu(self.bn(self.dense4(y))), 4)
        return self.linear(y.view(y.size(0), -1))


def _cifar(depth, block, k=1):
    n = (depth - 2) // 6
    return lambda: RefResNetCifar(block, [n, n, n], k)


#: the reference's model names (its name -> constructor table) and how it builds each
REFERENCE_MODELS = {
    "vgg9": lambda: RefVGG("VGG9"),
    "densenet121": lambda: RefDenseNet([6, 12, 24, 16], growth_rate=32),
    "resnet18": lambda: RefResNet(RefBasicBlock, [2, 2, 2, 2]),
    "resnet18_noshort": lambda: RefResNet(RefBasicBlockNoShort, [2, 2, 2, 2]),
    "resnet34": lambda: RefResNet(RefBasicBlock, [3, 4, 6, 3]),
    "resnet34_noshort": lambda: RefResNet(RefBasicBlockNoShort, [3, 4, 6, 3]),
    "resnet50": lambda: RefResNet(RefBottleneck, [3, 4, 6, 3]),
    "resnet50_noshort": lambda: RefResNet(RefBottleneckNoShort, [3, 4, 6, 3]),
    "resnet101": lambda: RefResNet(RefBottleneck, [3, 4, 23, 3]),
    "resnet101_noshort": lambda: RefResNet(RefBottleneckNoShort, [3, 4, 23, 3]),
    "resnet152": lambda: RefResNet(RefBottleneck, [3, 8, 36, 3]),
    "resnet152_noshort": lambda: RefResNet(RefBottleneckNoShort, [3, 8, 36, 3]),
    "resnet20": _cifar(20, RefBasicBlock),
    "resnet20_noshort": _cifar(20, RefBasicBlockNoShort),
    "resnet32_noshort": _cifar(32, RefBasicBlockNoShort),
    "resnet44_noshort": _cifar(44, RefBasicBlockNoShort),
    "resnet50_16_noshort": _cifar(50, RefBasicBlockNoShort),
    "resnet56": _cifar(56, RefBasicBlock),
    "resnet56_noshort": _cifar(56, RefBasicBlockNoShort),
    "resnet110": _cifar(110, RefBasicBlock),
    "resnet110_noshort": _cifar(110, RefBasicBlockNoShort),
    "wrn56_2": _cifar(56, RefBasicBlock, 2),
    "wrn56_4": _cifar(56, RefBasicBlock, 4),
    "wrn56_8": _cifar(56, RefBasicBlock, 8),
    "wrn56_2_noshort": _cifar(56, RefBasicBlockNoShort, 2),
    "wrn56_4_noshort": _cifar(56, RefBasicBlockNoShort, 4),
    "wrn56_8_noshort": _cifar(56, RefBasicBlockNoShort, 8),
    "wrn110_2_noshort": _cifar(110, RefBasicBlockNoShort, 2),
    "wrn110_4_noshort": _cifar(110, RefBasicBlockNoShort, 4),
}
