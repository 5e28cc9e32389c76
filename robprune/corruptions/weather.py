"""Weather corruptions, batched (Hendrycks & Dietterich 2019, make_cifar_c.py); same signature as
:mod:`robprune.corruptions.noise`. Colour steps (snow's grey boost, spatter's water and mud, frost's
texture) run in RGB; grey images are repeated to RGB and returned as luma."""
from __future__ import annotations

import torch

from robprune.corruptions.base import Context, Draws
from robprune.corruptions.filters import (box3, clipped_zoom, correlate, filter1d, gaussian, like_input,
                                          motion_blur, pad, to_rgb)
from robprune.corruptions.textures import load_textures, plasma_fractal, pow2_at_least, procedural_frost

WATER = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise (RGB), make_cifar_c.py spatter
MUD = (63 / 255, 42 / 255, 20 / 255)       # mud brown (RGB)


def fog(x, p: tuple[float, float], draws: Draws, ctx: Context):
    """x + p[0]·plasma fractal (wibble decay p[1]), rescaled by max/(max + p[0]) with the image's
    max (make_cifar_c.py fog; the fractal is the next power of two >= the size, cropped)."""
    n, _, h, w = x.shape
    plasma = plasma_fractal(n, pow2_at_least(max(h, w)), p[1], draws)[:, None, :h, :w].to(x)
    peak = x.amax((1, 2, 3), keepdim=True)
    return (x + p[0] * plasma) * peak / (peak + p[0])


def frost(x, p: tuple[float, float], draws: Draws, ctx: Context):
    """p[0]·x + p[1]·frost, the frost a random crop of a random texture (make_cifar_c.py frost; textures:
    :mod:`robprune.corruptions.textures`, procedural unless ``ctx.textures`` holds user images)."""
    n, c, h, w = x.shape
    textures = ctx.textures if ctx.textures is not None else procedural_frost(max(h + 1, min(6 * max(h, w), 1024)))
    textures = textures.to(x)
    t, _, th, tw = textures.shape
    pick = draws.integers(0, t, (n,))
    top = draws.integers(0, th - h, (n,))  # np.random.randint(0, frost.shape[0] - size), as the reference
    left = draws.integers(0, tw - w, (n,))
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]
    flat = (rows * tw + cols).reshape(n, 1, h * w)
    channel = torch.arange(3, device=x.device)[None, :, None]
    crops = textures.reshape(t, 3, th * tw)[pick[:, None, None], channel, flat].reshape(n, 3, h, w)
    return p[0] * x + p[1] * like_input(crops, c)


def user_textures(folder: str, size: int) -> torch.Tensor:
    """Frost images from ``folder`` resized by 0.2·size/32 (the reference's 0.2 for 32 pixels)."""
    return load_textures(folder, 0.2 * size / 32, size)


def snow(x, p: tuple, draws: Draws, ctx: Context):
    """make_cifar_c.py snow, p = (mean, std, zoom, threshold, blur radius, blur σ, image weight): a
    N(mean, std) layer, clipped zoom, values below the threshold dropped, 8-bit, ImageMagick motion blur
    at U(-135°, -45°); the image is brightened towards 1.5·grey + 0.5, then the layer and its 180°
    rotation are added."""
    n, c, h, w = x.shape
    layer = draws.normal((n, 1, h, w), p[0], p[1])
    layer = clipped_zoom(layer, p[2])
    layer = torch.where(layer < p[3], torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255 + 1e-4) / 255  # (np.clip(layer, 0, 1) * 255).astype(np.uint8)
    angles = draws.uniform((n,), -135.0, -45.0)
    layer = motion_blur(layer, ctx.px(p[4]), ctx.px(p[5]), angles)
    grey = like_input(to_rgb(x), 1) if c == 3 else x
    x = p[6] * x + (1 - p[6]) * torch.maximum(x, grey * 1.5 + 0.5)
    return x + layer + layer.flip(-1, -2)


def spatter(x, p: tuple, draws: Draws, ctx: Context):
    """make_cifar_c.py spatter, p = (mean, std, σ, threshold, intensity, mud): a N(mean, std) liquid layer
    blurred (σ), values below the threshold dropped; mud = 0: water drops shaded by the distance to the
    layer's Canny edges (OpenCV Canny 50/150, distance transform, equalizeHist, emboss filter), added in
    pale turquoise; mud = 1: opaque brown blobs where the blurred layer mask exceeds 0.8."""
    n, c, h, w = x.shape
    liquid = gaussian(draws.normal((n, 1, h, w), p[0], p[1]), ctx.px(p[2]))
    liquid = torch.where(liquid < p[3], torch.zeros_like(liquid), liquid)
    rgb = to_rgb(x)
    if p[5] == 0:
        levels = torch.floor(liquid.clamp(0, 1) * 255 + 1e-4)  # (liquid * 255).astype(np.uint8)
        shade = levels * _water_shading(levels, ctx)
        shade = shade / shade.amax((2, 3), keepdim=True).clamp_min(1e-12) * p[4]
        out = rgb + shade * torch.tensor(WATER, device=x.device, dtype=x.dtype)[None, :, None, None]
    else:
        mask = gaussian((liquid > p[3]).to(x.dtype), ctx.px(p[4]))
        mask = torch.where(mask < 0.8, torch.zeros_like(mask), mask)
        out = rgb * (1 - mask) + mask * torch.tensor(MUD, device=x.device, dtype=x.dtype)[None, :, None, None]
    return like_input(out, c)


def _water_shading(levels: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The reference's dist map of the 8-bit liquid layer: 255 − Canny(levels) -> distance transform (L2, 5x5 mask) capped at
    20 -> 3x3 blur -> uint8 -> equalizeHist -> filter2D emboss (CV_8U) -> 3x3 blur (uint8). (N, 1, H, W)
    float in [0, 255]. The cap of 20 pixels scales with the image."""
    edges = canny(levels, 50, 150)
    cap = 20 * ctx.scale
    dist = chamfer_distance(edges, cap).clamp(max=cap)
    dist = torch.floor(box3(dist) + 1e-4)
    dist = equalize_hist(dist)
    emboss = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
    dist = correlate(dist, emboss, "reflect101").clamp(0, 255)
    return torch.round(box3(dist))


def canny(v: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """OpenCV Canny (aperture 3, L1 gradient |gx| + |gy|) of 8-bit images v: (N, 1, H, W) float levels
    0..255 -> bool edges. Sobel with replicated borders; non-maximum suppression with OpenCV's
    tan 22.5° sector test and its tie rules; hysteresis: candidates (> low) 8-connected to a strong
    pixel (> high)."""
    smooth, diff = torch.tensor([1.0, 2.0, 1.0]), torch.tensor([-1.0, 0.0, 1.0])  # Sobel = smooth ⊗ diff, exact
    gx = filter1d(filter1d(v, smooth, -2, "nearest"), diff, -1, "nearest")
    gy = filter1d(filter1d(v, diff, -2, "nearest"), smooth, -1, "nearest")
    mag = gx.abs() + gy.abs()
    m = pad(mag, 1, 1, "constant")  # magnitude 0 outside the image
    h, w = v.shape[-2:]

    def at(dr: int, dc):  # neighbour magnitudes; dc may be a per-pixel tensor of -1/+1
        if isinstance(dc, torch.Tensor):
            return torch.where(dc < 0, m[..., 1 + dr:1 + dr + h, 0:w], m[..., 1 + dr:1 + dr + h, 2:2 + w])
        return m[..., 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

    ax, ay = gx.abs(), gy.abs()
    tg22 = ax * (13573 / 32768)  # OpenCV's TG22 = round(tan 22.5° · 2^15) / 2^15
    tg67 = tg22 + 2 * ax
    horizontal = ay < tg22
    vertical = ~horizontal & (ay > tg67)
    s = torch.where((gx < 0) != (gy < 0), -torch.ones_like(gx), torch.ones_like(gx))
    keep = torch.where(horizontal, (mag > at(0, -1)) & (mag >= at(0, 1)),
                       torch.where(vertical, (mag > at(-1, 0)) & (mag >= at(1, 0)),
                                   (mag > at(-1, -s)) & (mag > at(1, s))))
    candidate = keep & (mag > low)
    edges = candidate & (mag > high)
    while True:
        grown = candidate & (torch.nn.functional.max_pool2d(edges.float(), 3, 1, 1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


CHAMFER = [((0, 1), 1.0), ((1, 1), 1.4), ((1, 2), 2.1969)]  # OpenCV DIST_L2 with a 5x5 mask: a, b, c


def chamfer_distance(zeros: torch.Tensor, cap: float) -> torch.Tensor:
    """cv2.distanceTransform(DIST_L2, 5) distance of every pixel to the nearest ``zeros`` pixel (bool
    (N, 1, H, W)), exact where it is <= cap (relaxation for ceil(cap) steps of weight >= 1); larger
    distances come out > cap (callers cap them, as the reference does)."""
    big = 1e6
    dist = torch.where(zeros, torch.zeros_like(zeros, dtype=torch.float32), torch.full_like(zeros, big, dtype=torch.float32))
    moves = []
    for (a, b), weight in CHAMFER:
        for dr, dc in {(a, b), (b, a)}:
            moves += [(sr * dr, sc * dc, weight) for sr in (-1, 1) for sc in (-1, 1)]
    moves = list(dict.fromkeys(moves))
    h, w = zeros.shape[-2:]
    for _ in range(int(cap) + 2):
        padded = torch.nn.functional.pad(dist, (2, 2, 2, 2), value=big)
        best = dist
        for dr, dc, weight in moves:
            best = torch.minimum(best, padded[..., 2 + dr:2 + dr + h, 2 + dc:2 + dc + w] + weight)
        if torch.equal(best, dist):
            break
        dist = best
    return dist


def equalize_hist(v: torch.Tensor) -> torch.Tensor:
    """cv2.equalizeHist of 8-bit images v: (N, 1, H, W) float levels 0..255, per image."""
    n = v.shape[0]
    flat = v.reshape(n, -1).long()
    hist = torch.zeros(n, 256, dtype=torch.long, device=v.device).scatter_add_(1, flat, torch.ones_like(flat))
    first = (hist > 0).float().argmax(1)  # lowest level present
    count_first = hist.gather(1, first[:, None])[:, 0]
    total = flat.shape[1]
    scale = (255.0 / (total - count_first).clamp_min(1).double()).float()  # OpenCV's float32 scale
    cdf = hist.cumsum(1) - count_first[:, None]  # sum over levels above the first
    lut = torch.round(cdf.float() * scale[:, None]).clamp(0, 255)
    lut = torch.where(torch.arange(256, device=v.device)[None] <= first[:, None], torch.zeros_like(lut), lut)
    single = count_first == total  # one level only: OpenCV sets every pixel to it
    out = lut.gather(1, flat).float()
    out = torch.where(single[:, None], first[:, None].float().expand_as(out), out)
    return out.reshape(v.shape)
