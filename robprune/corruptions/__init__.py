"""Common corruptions (Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR; their make_cifar_c.py) as batched, seeded torch operations.

``corrupt(x, name, severity, seed=...)``: x (N, C, H, W) pixels in [0, 1] (or uint8), C = 1 or 3, any
size, CPU or GPU -> corrupted pixels in [0, 1] on the same device, quantised to 8 bits as the released
files are (np.uint8 of the float image: truncation). The same (images, name, severity, seed) give the
same output on every device (random draws come from a seeded CPU generator).

Parameters (:data:`PARAMS`) are make_cifar_c.py's for 32x32 images, severity 1 -> 5. Other sizes:
spatial parameters (blur σ and radii, motion blur length and σ, glass blur σ and displacement (rounded,
at least 1), spatter and snow blurs, the spatter distance cap, elastic_transform's IMSIZE, frost
texture zoom) are multiplied by scale = max(1, min(H, W) / 32): Tiny-ImageNet's 64 pixels double them,
images of 32 pixels or fewer (MNIST 28, digits 8) keep CIFAR's pixel values, since blurs shrunk below
a pixel vanish on the grid and lose the severity order. Per-pixel parameters (noise, contrast,
brightness, saturation, JPEG quality, pixelate fraction, zoom factors) never scale; the fog fractal is
the next power of two >= the size, cropped. Grey images (MNIST, digits): per-channel corruptions apply
as they are; the colour ones (brightness, saturate, snow, frost, spatter) run on the grey repeated to
RGB and return its luma (ITU-R 601); saturate leaves a grey image grey at severities 1-3.

Deviations from the reference, all documented where they are implemented: glass blur's sequential
pixel loop is one batched gather per pass (exact, including numpy's copy-not-swap); frost textures are
procedural unless given (:mod:`robprune.corruptions.textures`); cv2.warpAffine's fixed-point
interpolation (1/32 pixel) is float here (≤ 0.009 difference); every other step was compared against
OpenCV 4, scipy, Pillow and wand/ImageMagick 6 on CIFAR-10 test images and matches to the 8-bit level
(Canny, distance transform, equalizeHist and spatter's chain: identical; motion blur: 1 pixel in 61,440
off by one level).

Registry: :data:`CORRUPTIONS` name -> :class:`Corruption`; :data:`COMMON` the 15 of CIFAR-10-C's
benchmark, :data:`EXTRA` the 4 held-out ones (speckle_noise, gaussian_blur, spatter, saturate).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from robprune.corruptions import blur, noise, weather
from robprune.corruptions.base import Context, Draws

SEVERITIES = (1, 2, 3, 4, 5)
SOURCES = ("generate", "files", "folders")  # eval.corruptions.source: on the fly | CIFAR-10-C .npy | ImageNet-C folders


@dataclass(frozen=True)
class Corruption:
    """name: registry key = the CIFAR-10-C file stem; fn(x, p, draws, ctx); params: the parameter of
    each severity 1..5 (make_cifar_c.py); random: whether the output depends on the seed."""

    name: str
    fn: Callable
    params: tuple
    random: bool = True


# Hendrycks & Dietterich 2019, make_cifar_c.py: the `c = [...]` list of each distortion, severity 1 -> 5.
PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),               # σ
    "shot_noise": (500, 250, 100, 75, 50),                          # photons at full intensity
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),                # s&p amount
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),     # (radius, alias σ)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # (σ, δ, iterations)
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),    # (radius, σ), angle U(-45°, 45°)
    "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),                    # zooms np.arange(1, p, 0.01)
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),         # (image, frost) weights
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),                 # (strength, wibble decay)
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),                      # HSV value +
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),                        # factor about the mean
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                          (0.1, 0.03, 0.03)),                       # (alpha, σ, affine) × IMSIZE
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),                      # downscale fraction
    "jpeg_compression": (80, 65, 58, 50, 40),                       # JPEG quality
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),                  # σ of the multiplicative noise
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),                       # σ
    "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),              # HSV saturation · a + b
}
DETERMINISTIC = ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate")
_MODULES = (noise, blur, weather)
CORRUPTIONS: dict[str, Corruption] = {
    name: Corruption(name, next(getattr(m, name) for m in _MODULES if hasattr(m, name)), params,
                     random=name not in DETERMINISTIC)
    for name, params in PARAMS.items()
}
NAMES = tuple(CORRUPTIONS)
COMMON = NAMES[:15]  # make_cifar_c.py's order: noise, blur, weather, digital
EXTRA = NAMES[15:]


def corrupt(x: torch.Tensor, name: str, severity: int, *, seed: int = 0, textures: torch.Tensor | None = None) -> torch.Tensor:
    """Corrupt a batch: x (N, C, H, W) float pixels in [0, 1] or uint8; C in (1, 3). Returns float32
    (N, C, H, W) in [0, 1] on x's device, quantised to 8-bit levels (truncation, as np.uint8 in
    make_cifar_c.py). seed: the batch's draws; textures: (T, 3, S, S) user frost textures (frost only).
    Raises ValueError for an unknown name or a severity outside 1-5."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(NAMES)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of 1-5, got {severity!r}")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(x.shape)}")
    spec = CORRUPTIONS[name]
    out = spec.fn(x.float(), spec.params[severity - 1], Draws(seed, x.device), Context.of(x, textures))
    out = out.clamp(0, 1) if out.data_ptr() == x.data_ptr() else out.clamp_(0, 1)  # never write into x
    return out.mul_(255).add_(1e-3).floor_().div_(255)  # np.uint8(np.clip(x, 0, 1) * 255), float-safe


def check_node(node, key: str = "eval.corruptions") -> None:
    """ConfigError (one line, the valid values and a fix) for an ``eval.corruptions`` node that names an
    unknown corruption, a severity outside 1-5, an empty or repeating list, or a source whose root
    folder (or frost_textures folder) is not there. Types and the other keys: robprune.schema."""
    import difflib

    from robprune.errors import ConfigError

    names, severities = list(node.get("names") or []), list(node.get("severities") or [])
    for what, values in (("names", names), ("severities", severities)):
        if not values:
            raise ConfigError(f"{key}.{what} is empty; e.g. {key}.{what}=" + ("[fog,snow]" if what == "names" else "[1,2,3,4,5]"))
        if len(set(values)) < len(values):
            raise ConfigError(f"{key}.{what} lists {next(v for v in values if values.count(v) > 1)} twice; "
                              f"remove the repeat, e.g. {key}.{what}=[{','.join(str(v) for v in dict.fromkeys(values))}]")
    for name in names:
        if name not in CORRUPTIONS:
            near = difflib.get_close_matches(str(name), NAMES, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"{key}.names: unknown corruption {name!r}{hint}; valid: {', '.join(NAMES)}; "
                              f"e.g. {key}.names=[{near[0] if near else 'fog'}]")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise ConfigError(f"{key}.severities has {bad[0]}, but severities are 1 (mild) to 5 (strong); "
                          f"e.g. {key}.severities=[1,2,3,4,5]")
    _check_folders(node, key)


def _check_folders(node, key: str) -> None:
    from pathlib import Path

    from robprune.errors import ConfigError

    source = str(node.get("source", "generate"))
    root = node.get("root")
    if source != "generate" and (root is None or not Path(str(root)).expanduser().is_dir()):
        layout = "<name>.npy and labels.npy (CIFAR-10-C)" if source == "files" else "<name>/<severity>/<class>/ (Tiny-ImageNet-C)"
        raise ConfigError(f"{key}.source={source} reads {key}.root, but {key}.root={'null' if root is None else root} is not a folder; "
                          f"pass the folder holding {layout}, e.g. {key}.root=data/CIFAR-10-C")
    textures = node.get("frost_textures")
    if textures is not None and not Path(str(textures)).expanduser().is_dir():
        raise ConfigError(f"{key}.frost_textures={textures} is not a folder; pass a folder of frost images, "
                          f"or set {key}.frost_textures=null for the procedural textures")


def batch_seed(seed: int, name: str, severity: int, chunk: int) -> int:
    """A 63-bit seed for one chunk of one (corruption, severity), from the evaluation seed."""
    digest = hashlib.sha256(f"{int(seed)}:{name}:{int(severity)}:{int(chunk)}".encode()).hexdigest()
    return int(digest[:16], 16) & (2 ** 63 - 1)


def describe() -> dict[str, Any]:
    """name -> {params, random, common} for documentation and benchmarks."""
    return {n: {"params": c.params, "random": c.random, "common": n in COMMON} for n, c in CORRUPTIONS.items()}


__all__ = ["COMMON", "CORRUPTIONS", "Corruption", "EXTRA", "NAMES", "PARAMS", "SEVERITIES", "SOURCES", "batch_seed",
           "check_node", "corrupt"]
