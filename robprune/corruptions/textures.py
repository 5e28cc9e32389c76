"""Procedural textures: make_cifar_c.py's plasma fractal (fog) batched over images, and the frost
textures that replace the six frost photographs the reference script reads from disk.

Frost: the reference blends a random crop of one of its photographs (``frost1.png`` ... resized by 0.2
for 32-pixel images) into the image. robprune does not ship those photographs. By default it
generates five frost-like textures procedurally (ridged plasma fractals: thin bright branching veins
where a fractal crosses its median, plus fine ice grains, tinted pale blue-white), from a fixed seed,
so every run sees the same five textures; ``eval.corruptions.frost_textures=<folder>`` reads
user-supplied images instead (e.g. the original photographs), resized by 0.2 · H / 32 as the reference
resizes them for CIFAR. Procedural frost is an approximation: accuracies on it are comparable between
robprune runs, not with published CIFAR-10-C frost numbers (use ``source=files`` for those).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from robprune.corruptions.base import Draws
from robprune.errors import ConfigError, DataError

TEXTURE_SEED = 20190101  # fixed: the procedural textures are data, not a draw of the run
N_TEXTURES = 5           # the reference picks one of its first five photographs (np.random.randint(5))
TINT = (0.80, 0.90, 1.00)  # pale blue-white of frost on glass (RGB gain)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, draws: Draws) -> torch.Tensor:
    """(n, mapsize, mapsize) heightmaps in [0, 1]: make_cifar_c.py's diamond-square ``plasma_fractal``
    (start wibble 100, each offset wibble·U(-wibble, wibble), wibble /= wibbledecay per level),
    min-max normalised per map. mapsize: a power of two."""
    assert mapsize & (mapsize - 1) == 0, "mapsize must be a power of two"
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled(a: torch.Tensor) -> torch.Tensor:
        return a / 4 + wibble * draws.uniform(a.shape, -wibble, wibble).cpu().double()

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        square = corner + corner.roll(-1, 1)
        square = square + square.roll(-1, 2)
        m[:, half::step, half::step] = wibbled(square)
        dr, ul = m[:, half::step, half::step], m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, half::step, 0::step] = wibbled(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step //= 2
        wibble /= wibbledecay
    m -= m.amin((1, 2), keepdim=True)
    return (m / m.amax((1, 2), keepdim=True).clamp_min(1e-12)).float()


def pow2_at_least(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


@functools.lru_cache(maxsize=8)
def procedural_frost(size: int) -> torch.Tensor:
    """(N_TEXTURES, 3, size, size) procedural frost textures in [0, 1] (pure function of ``size``)."""
    draws = Draws(TEXTURE_SEED)
    mapsize = pow2_at_least(size)
    veins = torch.zeros(N_TEXTURES, mapsize, mapsize)
    for decay, sharpness in ((1.3, 6), (1.6, 8), (2.0, 12), (2.4, 12)):  # rough to smooth: fine to coarse veins
        field = plasma_fractal(N_TEXTURES, mapsize, decay, draws)
        veins = torch.maximum(veins, (1 - (2 * field - 1).abs()) ** sharpness)
    haze = plasma_fractal(N_TEXTURES, mapsize, 1.8, draws)  # uneven icing between the veins
    grains = draws.uniform((N_TEXTURES, mapsize, mapsize)) ** 30
    frost = (0.8 * veins + 0.25 * haze ** 2 + 0.5 * grains).clamp(0, 1)[:, :size, :size]
    tint = torch.tensor(TINT)[None, :, None, None]
    return (frost[:, None] * tint).clamp(0, 1)


def load_textures(folder: str | Path, factor: float, min_size: int) -> torch.Tensor:
    """User frost textures: every image in ``folder`` (sorted by name) as RGB, resized by ``factor``
    (bilinear), centre-cropped to a common square side -> (T, 3, S, S) in [0, 1]. Raises DataError when
    the folder holds no images or one is smaller than ``min_size`` + 1 pixels after resizing."""
    import numpy as np
    from PIL import Image

    folder = Path(folder).expanduser()
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise ConfigError(f"eval.corruptions.frost_textures={folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                          "pass a folder of frost photographs, or eval.corruptions.frost_textures=null for procedural ones")
    images = []
    for path in files:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = max(1, round(img.width * factor)), max(1, round(img.height * factor))
            images.append(np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.uint8))
    side = min(min(a.shape[:2]) for a in images)
    if side <= min_size:
        raise DataError(f"{folder}: a frost texture is {side} pixels after resizing by {factor:.3g}, but crops of "
                        f"{min_size} pixels need at least {min_size + 1}; use larger images")
    crops = [a[(a.shape[0] - side) // 2:][:side, (a.shape[1] - side) // 2:][:, :side] for a in images]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
