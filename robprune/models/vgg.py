"""VGG-16 with batch norm for CIFAR-sized inputs (Simonyan & Zisserman 2015; single FC classifier as in
the CIFAR pruning literature, e.g. Li et al. 2017)."""
from __future__ import annotations

from typing import Annotated

from torch import nn

from robprune.models.common import Normalize
from robprune.options import Float
from robprune.registry import MODELS

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, plan, *, in_channels: int, num_classes: int, mean, std, width_mult: float = 1.0):
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers, c_in = [], in_channels
        for v in plan:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            c_out = max(1, int(v * width_mult))
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(self.normalize(x))).flatten(1))


@MODELS.register("vgg16_bn", modality="image")
def vgg16_bn(*, in_channels: int, image_size: int, num_classes: int, mean, std,
             width_mult: Annotated[float, Float(0, low_open=True, example="1.0"),
                                 "multiplies every conv width (1.0 = standard VGG-16)"] = 1.0) -> VGG:
    """VGG-16-BN; 32x32 inputs reach 1x1 after five pools. ``image_size`` must be >= 32."""
    if image_size < 32:
        from robprune.errors import ConfigError
        raise ConfigError(f"model=vgg16_bn needs image_size >= 32 (five 2x2 pools), the dataset gives {image_size}; use model=cnn8 or resnet18")
    return VGG(VGG16, in_channels=in_channels, num_classes=num_classes, mean=mean, std=std, width_mult=width_mult)
