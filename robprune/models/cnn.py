"""Plain CNNs: ``small_cnn`` for the 8x8 digits default, ``cnn8`` the 8-layer CNN of Adver-Fine (docs/methods/adverfine.md)."""
from __future__ import annotations

from typing import Annotated, Sequence

from torch import nn

from robprune.models.common import Normalize, flat_features
from robprune.options import Int
from robprune.registry import MODELS


class ConvNet(nn.Module):
    """Normalize -> conv stack (3x3, pad 1, ReLU) -> flatten -> MLP classifier."""

    def __init__(self, convs: Sequence[tuple[int, int]], hidden: Sequence[int], *, in_channels: int,
                 image_size: int, num_classes: int, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out, stride in convs:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        dims = [flat_features(self.features, in_channels, image_size), *hidden]
        mlp: list[nn.Module] = [nn.Flatten()]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            mlp += [nn.Linear(d_in, d_out), nn.ReLU(inplace=True)]
        mlp.append(nn.Linear(dims[-1], num_classes))
        self.classifier = nn.Sequential(*mlp)

    def forward(self, x):
        return self.classifier(self.features(self.normalize(x)))


@MODELS.register("cnn8", modality="image")
def cnn8(*, in_channels: int, image_size: int, num_classes: int, mean, std,
         width: Annotated[int, Int(1, example="32"), "first conv width (32 = the paper's 8-layer CNN)"] = 32,
         hidden: Annotated[int, Int(1, example="128"), "units of the hidden FC layer (2048→128→classes at 28x28)"] = 128
         ) -> ConvNet:
    """Adver-Fine's "8-layer CNN": conv 1→32, 32→32 (s2), 32→64, 64→64 (s2), 64→128, 128→128 (s2),
    FC 2048→128, FC 128→10 at 28x28 (docs/methods/adverfine.md). ``width`` scales all conv widths (32 = paper)."""
    w = width
    convs = [(w, 1), (w, 2), (2 * w, 1), (2 * w, 2), (4 * w, 1), (4 * w, 2)]
    return ConvNet(convs, [hidden], in_channels=in_channels, image_size=image_size,
                   num_classes=num_classes, mean=mean, std=std)


@MODELS.register("small_cnn", modality="image")
def small_cnn(*, in_channels: int, image_size: int, num_classes: int, mean, std,
              width: Annotated[int, Int(1, example="32"), "channels of the first conv; later convs use 2x"] = 16,
              hidden: Annotated[int, Int(1, example="128"), "units of the hidden fully connected layer"] = 64) -> ConvNet:
    """A 3-conv CNN sized for 8x8 digits: conv w, conv 2w (s2), conv 2w; FC hidden; FC classes."""
    w = width
    convs = [(w, 1), (2 * w, 2), (2 * w, 1)]
    return ConvNet(convs, [hidden], in_channels=in_channels, image_size=image_size,
                   num_classes=num_classes, mean=mean, std=std)
