"""Wide residual network for CIFAR-sized inputs (Zagoruyko & Komodakis 2016, "Wide Residual Networks"): a 3x3
stem of 16 channels, three stages of (depth − 4) / 6 pre-activation BasicBlocks with 16k, 32k, 64k channels
(k = widen_factor; strides 1, 2, 2), BN-ReLU, global average pool, one Linear. The layout of the robust
training literature's WRN-28-4 / WRN-34-10 (Madry et al.'s, TRADES', RobustBench's and HYDRA's
``wrn_cifar.py``, without HYDRA's unused ``sub_block1``); WRN-28-4 has 5.85 M parameters for 10 classes."""
from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from torch import nn

from robprune.errors import ConfigError
from robprune.models.common import Normalize
from robprune.options import Float, Int
from robprune.registry import MODELS


class WideBlock(nn.Module):
    """Pre-activation BasicBlock: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus the shortcut. When the width or
    stride changes, the shortcut is a 1x1 conv of the *activated* input (the original WRN layout)."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = None if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x):
        activated = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(activated)))
        out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + (x if self.shortcut is None else self.shortcut(activated))


class WideResNet(nn.Module):
    def __init__(self, *, depth: int, widen_factor: int, dropout: float, in_channels: int, num_classes: int, mean, std):
        super().__init__()
        blocks_per_stage = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        stages, c_in = [], 16
        for stage, c_out in enumerate(widths):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(WideBlock(c_in, c_out, (1 if stage == 0 else 2) if i == 0 else 1, dropout))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(c_in)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        return self.classifier(self.pool(F.relu(self.bn(out))).flatten(1))


@MODELS.register("wrn", modality="image")
def wrn(*, in_channels: int, image_size: int, num_classes: int, mean, std,
        depth: Annotated[int, Int(10, example="28"), "layers: 6n + 4 for n BasicBlocks per stage (28 = WRN-28)"] = 28,
        widen_factor: Annotated[int, Int(1, example="4"), "width multiplier k of the 16/32/64-channel stages (4 = WRN-28-4)"] = 4,
        dropout: Annotated[float, Float(0, high=1, high_open=True, example="0.0"),
                           "dropout probability between the two convs of a block (0 = none, as in robust training)"] = 0.0,
        ) -> WideResNet:
    """WRN-depth-widen_factor; input (N, C, H, W) pixels in [0, 1]; image_size: any (global pool; 32 for CIFAR)."""
    if (depth - 4) % 6:
        raise ConfigError(f"model.depth must be 6n + 4 (10, 16, 22, 28, 34, 40, ...), got {depth}; e.g. model.depth=28")
    return WideResNet(depth=depth, widen_factor=widen_factor, dropout=dropout, in_channels=in_channels,
                      num_classes=num_classes, mean=mean, std=std)
