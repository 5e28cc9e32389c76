"""airbench's CIFAR-10 network (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498;
docs/methods/recipes.md#fast-recipes): a frozen patch-whitening convolution, three conv groups and a linear head.

What makes it train fast, and where it lives here:

- **Patch whitening** (the paper's §3.2): the first conv (kernel 2, no padding) is set from the training data
  by :meth:`Airbench.init_from_data` before training — its 2·C·k² filters are the eigenvectors of the 2×2 patch
  covariance divided by √(eigenvalue + 5e-4), and their negatives — and its weight is never trained; its bias
  trains for the first ``whiten_bias_epochs`` epochs only (:meth:`Airbench.on_epoch_start`).
- **Identity initialisation** (§3.3): every 3×3 conv has ``dirac_`` on its first c_in output channels, an
  implicit residual path.
- **BatchNorm**: weights frozen at 1, only the biases train (with a scaled learning rate: ``train.norm_bias_lr_scale``,
  robprune.train.recipe), eps 1e-12, running statistics with momentum 0.6 (torch's 0.4).
- **Output scaling**: logits multiplied by 1/9 (``scale``).

Inputs are pixels in [0, 1] (the :class:`~robprune.models.common.Normalize` first layer, as every robprune model).
The spatial size after the whitening conv (H − k + 1) is halved by each group's max-pool and must leave a 3×3
map for the final 3×3 max-pool: 25 ≤ H ≤ 32 for k = 2 (CIFAR's 32, MNIST's 28), refused otherwise.
"""
from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from robprune.errors import ConfigError
from robprune.models.common import Normalize
from robprune.options import Float, Int
from robprune.registry import MODELS

WHITEN_EPS = 5e-4  # added to the patch-covariance eigenvalues before the 1/√ scaling (airbench's value)
WHITEN_IMAGES = 5000  # training images whose patches estimate the covariance (airbench's 5,000)


def conv(c_in: int, c_out: int) -> nn.Conv2d:
    """3×3 'same' conv without bias, identity-initialised on its first c_in output channels (airbench §3.3).
    A plain nn.Conv2d (MAC counters and Torch-Pruning dispatch on the exact type)."""
    layer = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(layer.weight[:min(c_in, c_out)])  # an implicit residual: out_i = in_i at initialisation
    return layer


def batchnorm(channels: int, momentum: float) -> nn.BatchNorm2d:
    """BatchNorm with the weight frozen at 1 (only the bias trains), eps 1e-12; ``momentum`` in airbench's
    convention (the weight of the *old* running statistics), torch's is 1 − it."""
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=1.0 - momentum)
    bn.weight.requires_grad_(False)
    return bn


class ConvGroup(nn.Module):
    """conv → max-pool 2 → BN → GELU → conv → BN → GELU."""

    def __init__(self, c_in: int, c_out: int, momentum: float):
        super().__init__()
        self.conv1, self.pool, self.norm1 = conv(c_in, c_out), nn.MaxPool2d(2), batchnorm(c_out, momentum)
        self.conv2, self.norm2, self.activ = conv(c_out, c_out), batchnorm(c_out, momentum), nn.GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x):
        return x * self.factor


class Airbench(nn.Module):
    """Normalize → whitening conv (k×k, 2·C·k² channels) → GELU → 3 conv groups (w, 4w, 4w) → max-pool 3 →
    linear (no bias) → ×scale. x: (N, C, H, W) in [0, 1] → (N, num_classes) logits."""

    init_images = WHITEN_IMAGES  # how many training images init_from_data wants (the train stage gives them)

    def __init__(self, *, in_channels: int, num_classes: int, mean, std, width: int, whiten_kernel: int,
                 bn_momentum: float, scale: float, whiten_bias_epochs: int, whiten_eps: float = WHITEN_EPS):
        super().__init__()
        self.normalize = Normalize(mean, std)
        whiten_width = 2 * in_channels * whiten_kernel ** 2
        self.whiten = nn.Conv2d(in_channels, whiten_width, kernel_size=whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from the data (init_from_data), never trained
        nn.init.zeros_(self.whiten.bias)
        self.activ = nn.GELU()
        widths = (width, 4 * width, 4 * width)
        self.block1 = ConvGroup(whiten_width, widths[0], bn_momentum)
        self.block2 = ConvGroup(widths[0], widths[1], bn_momentum)
        self.block3 = ConvGroup(widths[1], widths[2], bn_momentum)
        self.pool = nn.MaxPool2d(3)
        self.classifier = nn.Linear(widths[2], num_classes, bias=False)
        self.scale = Scale(scale)
        self.whiten_bias_epochs, self.whiten_eps = int(whiten_bias_epochs), float(whiten_eps)

    def forward(self, x):
        x = self.activ(self.whiten(self.normalize(x)))
        x = self.pool(self.block3(self.block2(self.block1(x))))
        return self.scale(self.classifier(x.flatten(1)))

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Patch whitening (airbench §3.2): images (N, C, H, W) in [0, 1] → the whitening conv's filters.

        Σ = (1/P) Σ_p v_p v_pᵀ over every k×k patch v_p (flattened, C·k² values) of the normalised images;
        Σ = V Λ Vᵀ; the filters are [V/√(Λ + ε), −V/√(Λ + ε)] (ε = ``whiten_eps``) (largest eigenvalue first), so the first C·k²
        output channels of a patch have covariance V'ᵀΣV' = Λ/(Λ + ε) ≈ I: whitened, unit variance."""
        weight = self.whiten.weight
        c, k = weight.shape[1], weight.shape[2]
        x = self.normalize(images.to(weight.device, torch.float32))
        patches = x.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).double()
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + self.whiten_eps)).T.reshape(c * k * k, c, k, k)
        weight.copy_(torch.cat([filters, -filters]).to(weight.dtype))

    def on_epoch_start(self, epoch: int) -> None:
        """A training hook (robprune.train.fit): the whitening bias trains only in the first
        ``whiten_bias_epochs`` epochs (airbench's ``whiten_bias_epochs``), then stays as it is."""
        self.whiten.bias.requires_grad_(epoch < self.whiten_bias_epochs)


def final_size(image_size: int, kernel: int) -> int:
    """Spatial size reaching the last 3×3 max-pool: (H − k + 1) halved (floor) by each group's pool."""
    return (image_size - kernel + 1) // 2 // 2 // 2


@MODELS.register("airbench", modality="image")
def airbench(*, in_channels: int, image_size: int, num_classes: int, mean, std,
             width: Annotated[int, Int(1, example="64"), "first group's width; the other two have 4× (64 = airbench94)"] = 64,
             whiten_kernel: Annotated[int, Int(1, example="2"), "patch size of the whitening conv (2 = airbench94)"] = 2,
             bn_momentum: Annotated[float, Float(0, high=1, high_open=True, example="0.6"),
                                    "weight of the old BatchNorm running statistics (airbench: 0.6; torch's momentum is 1 − it)"] = 0.6,
             scale: Annotated[float, Float(0, low_open=True, example="0.111"), "logit multiplier (airbench: 1/9)"] = 1 / 9,
             whiten_bias_epochs: Annotated[int, Int(0, example="3"), "epochs the whitening conv's bias trains, then frozen (airbench: 3)"] = 3,
             whiten_eps: Annotated[float, Float(0, low_open=True, example="0.0005"), "ε added to the patch eigenvalues: "
                                   "the whitening's gain on a direction of variance λ is 1/√(λ + ε), at most 1/√ε (airbench: 5e-4)"] = WHITEN_EPS,
             ) -> Airbench:
    """airbench94's network (arXiv 2404.00498, docs/methods/recipes.md#fast-recipes). Call
    ``init_from_data`` with training images before training (the train stage does)."""
    if final_size(image_size, whiten_kernel) != 3:
        lo = 3 * 8 + whiten_kernel - 1
        raise ConfigError(f"model=airbench needs {lo} <= image size <= {lo + 7} (its pools must leave a 3x3 map for the "
                          f"last 3x3 max-pool) with model.whiten_kernel={whiten_kernel}, but the dataset's images are "
                          f"{image_size}x{image_size}; use it on CIFAR-10/100, SVHN or MNIST-sized data, or another model")
    return Airbench(in_channels=in_channels, num_classes=num_classes, mean=mean, std=std, width=width,
                    whiten_kernel=whiten_kernel, bn_momentum=bn_momentum, scale=scale,
                    whiten_bias_epochs=whiten_bias_epochs, whiten_eps=whiten_eps)
