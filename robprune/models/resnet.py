"""ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool), He et al. 2016 / kuangliu layout."""
from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from torch import nn

from robprune.models.common import Normalize
from robprune.options import Int
from robprune.registry import MODELS


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage, *, in_channels: int, num_classes: int, mean, std, width: int = 64):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)  # CIFAR stem
        self.bn1 = nn.BatchNorm2d(width)
        layers, c_in = [], width
        for stage, n_blocks in enumerate(blocks_per_stage):
            c_out = width * 2 ** stage
            strides = [1 if stage == 0 else 2] + [1] * (n_blocks - 1)
            blocks = []
            for s in strides:
                blocks.append(BasicBlock(c_in, c_out, s))
                c_in = c_out
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.classifier(self.pool(out).flatten(1))


@MODELS.register("resnet18", modality="image")
def resnet18(*, in_channels: int, image_size: int, num_classes: int, mean, std, width: Annotated[int, Int(1, example="32"), "stem width (64 = standard ResNet-18)"] = 64
             ) -> ResNet:
    """ResNet-18 (2-2-2-2 BasicBlocks); ``width`` is the stem width (64 = standard). image_size: any (global pool)."""
    return ResNet([2, 2, 2, 2], in_channels=in_channels, num_classes=num_classes, mean=mean, std=std, width=width)
