"""Noise and digital corruptions, batched (Hendrycks & Dietterich 2019, make_cifar_c.py). Each takes
x: (N, C, H, W) pixels in [0, 1], its severity parameter ``p``, :class:`Draws` and :class:`Context`,
and returns the corrupted images (not yet quantised to 8 bits; :func:`robprune.corruptions.corrupt`
does that). Per-pixel parameters (noise σ, contrast, brightness, JPEG quality, pixelate fraction)
do not depend on the image size."""
from __future__ import annotations

import warnings

import torch

from robprune.corruptions.base import Context, Draws
from robprune.corruptions.filters import like_input, pil_box_resize, to_rgb


def gaussian_noise(x, p: float, draws: Draws, ctx: Context):
    """x + N(0, p²) per pixel and channel (make_cifar_c.py gaussian_noise)."""
    return draws.normal(x.shape, std=p).add_(x)


def shot_noise(x, p: float, draws: Draws, ctx: Context):
    """Poisson(p·x) / p: photon noise with p photons at full intensity (make_cifar_c.py shot_noise)."""
    return draws.poisson(x * p) / p


def impulse_noise(x, p: float, draws: Draws, ctx: Context):
    """Salt and pepper: each pixel and channel replaced with probability p, half by 1, half by 0
    (skimage.util.random_noise(mode='s&p', amount=p) as make_cifar_c.py calls it)."""
    u = draws.uniform(x.shape)  # one draw: u < p flips (probability p), u < p/2 of those salts (half)
    return torch.where(u < p, (u < p / 2).to(x.dtype), x)


def speckle_noise(x, p: float, draws: Draws, ctx: Context):
    """x + x·N(0, p²) (make_cifar_c.py speckle_noise)."""
    return draws.normal(x.shape, std=p).mul_(x).add_(x)


def contrast(x, p: float, draws: Draws, ctx: Context):
    """(x − mean)·p + mean with the per-image, per-channel mean (make_cifar_c.py contrast)."""
    mean = x.mean((2, 3), keepdim=True)
    return x.sub(mean).mul_(p).add_(mean)


def brightness(x, p: float, draws: Draws, ctx: Context):
    """HSV value + p, clipped (make_cifar_c.py brightness). Hue and saturation stay, so skimage's
    rgb2hsv -> hsv2rgb round trip is rgb · V'/V (black pixels become grey V' = p), computed directly.
    Grey images go through RGB (the grey repeated) and come back as luma."""
    rgb = to_rgb(x)
    v = rgb.amax(1, keepdim=True)
    v_new = (v + p).clamp(0, 1)
    out = torch.where(v > 0, rgb * (v_new / v.clamp_min(1e-12)), v_new.expand_as(rgb))
    return like_input(out, x.shape[1])


def saturate(x, p: tuple[float, float], draws: Draws, ctx: Context):
    """HSV saturation·p[0] + p[1], clipped (make_cifar_c.py saturate; severities 1-2 desaturate, 3-5
    saturate). hsv2rgb is linear in S at fixed hue and value: channel = V − S·V·w with w in
    {0, 1, f, 1 − f}, so the round trip is V − (S'/S)(V − rgb); a grey pixel (S = 0, hue 0 in skimage)
    becomes (V, V(1 − S'), V(1 − S'))."""
    rgb = to_rgb(x)
    v = rgb.amax(1, keepdim=True)
    spread = v - rgb.amin(1, keepdim=True)
    s = torch.where(v > 0, spread / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s * p[0] + p[1]).clamp(0, 1)
    grey = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], 1)
    out = torch.where(spread > 0, v - (s_new / s.clamp_min(1e-12)) * (v - rgb), grey)
    return like_input(out, x.shape[1])


def jpeg_compression(x, p: int, draws: Draws, ctx: Context):
    """JPEG at quality p, encoded and decoded per image (make_cifar_c.py saves and reopens a PIL image).
    torchvision.io's libjpeg codec when present (bit-identical to PIL's, tests/test_corruptions.py, and
    twice as fast), else PIL itself. The one per-image step: there is no batched JPEG codec on the CPU;
    images on a GPU go through the CPU codec too."""
    pixels = torch.round(x.clamp(0, 1) * 255).to(torch.uint8).cpu()
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg, encode_jpeg

            decoded = [decode_jpeg(encode_jpeg(image, quality=int(p))) for image in pixels]
    except ImportError:
        decoded = [_pil_jpeg(image, int(p)) for image in pixels]
    return torch.stack(decoded).to(x.device, x.dtype) / 255


def _pil_jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    import io

    import numpy as np
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, "JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer))
    return torch.from_numpy(decoded.reshape(decoded.shape[0], decoded.shape[1], -1).copy()).permute(2, 0, 1)


def pixelate(x, p: float, draws: Draws, ctx: Context):
    """PIL BOX resize to int(size·p), then BOX back to the size (make_cifar_c.py pixelate), with
    Pillow's fixed-point coefficients and 8-bit rounding after each pass."""
    h, w = x.shape[-2:]
    v = torch.round(x.clamp(0, 1) * 255)
    small = pil_box_resize(v, (max(1, int(h * p)), max(1, int(w * p))))
    return pil_box_resize(small, (h, w)).div_(255)
