"""Blur and geometric corruptions, batched (Hendrycks & Dietterich 2019, make_cifar_c.py); same
signature as :mod:`robprune.corruptions.noise`. Spatial parameters (σ, radii, displacements) are
CIFAR-10-C's pixels at 32x32, multiplied by ``ctx.scale`` = max(1, size / 32); zoom factors are
relative; elastic_transform's parameters are fractions of IMSIZE (32·scale)."""
from __future__ import annotations

import math

import numpy as np
import torch

from robprune.corruptions.base import Context, Draws
from robprune.corruptions.filters import bilinear, clipped_zoom, correlate, gather, gaussian
from robprune.corruptions.filters import motion_blur as _motion


def gaussian_blur(x, p: float, draws: Draws, ctx: Context):
    """skimage gaussian, σ = p pixels (mode nearest, truncate 4) (make_cifar_c.py gaussian_blur)."""
    return gaussian(x, ctx.px(p))


def glass_blur(x, p: tuple[float, int, int], draws: Draws, ctx: Context):
    """Gaussian σ, 8-bit truncation, ``iterations`` passes of local pixel moves, Gaussian σ again
    (make_cifar_c.py glass_blur, p = (σ, max_delta, iterations)).

    The reference visits (h, w) from the bottom-right to the top-left, draws (dx, dy) from
    randint(-δ, δ) = {-δ .. δ-1} and writes ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``; with numpy
    views that is a copy, x[h, w] ← x[h', w'], not a swap (measured on numpy 2.x; the released files
    were made the same way). A pass is computed here for all images at once as one gather: a pixel's
    source is followed through sources already overwritten earlier in the same pass (pointer jumping),
    which reproduces the sequential loop exactly, also for δ > 1."""
    sigma, delta, iterations = ctx.px(p[0]), max(1, round(p[1] * ctx.scale)), int(p[2])
    x = torch.floor(gaussian(x, sigma).clamp(0, 1) * 255 + 1e-4) / 255  # np.uint8(gaussian(x) * 255)
    for _ in range(iterations):
        x = _local_copies(x, delta, draws)
    return gaussian(x, sigma)


def _local_copies(x: torch.Tensor, delta: int, draws: Draws) -> torch.Tensor:
    """One pass of glass_blur's pixel moves on every image (see :func:`glass_blur`)."""
    n, _, h, w = x.shape
    hs = torch.arange(h - delta, delta, -1, device=x.device)  # range(H - δ, δ, -1), as the reference
    ws = torch.arange(w - delta, delta, -1, device=x.device)
    if hs.numel() == 0 or ws.numel() == 0:
        return x
    visited = (hs[:, None] * w + ws[None, :]).reshape(-1)  # flat positions in visiting order
    offsets = draws.integers(-delta, delta, (n, visited.numel(), 2))  # (dx, dy) per visit, in order
    src = visited[None] + offsets[..., 1] * w + offsets[..., 0]
    rank = torch.full((h * w,), -1, dtype=torch.long, device=x.device)
    rank[visited] = torch.arange(visited.numel(), device=x.device)
    source = torch.arange(h * w, device=x.device).repeat(n, 1)  # position p reads the original at source[p]
    source[:, visited] = src
    pointer = torch.arange(h * w, device=x.device).repeat(n, 1)
    earlier = (rank[src] >= 0) & (rank[src] < rank[visited][None])  # src was overwritten before this visit
    pointer[:, visited] = torch.where(earlier, src, visited[None].expand(n, -1))
    for _ in range(math.ceil(math.log2(max(visited.numel(), 2))) + 1):
        pointer = pointer.gather(1, pointer)
    final = source.gather(1, pointer)  # follow overwritten sources to the value they held
    return gather(x, final.view(n, h, w) // w, final.view(n, h, w) % w)


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """make_cifar_c.py's disk: the aliased disk x²+y² <= r² on a (17, 17) grid (2r+1 above radius 8),
    normalised, then cv2.GaussianBlur with a 3x3 (5x5 above radius 8) kernel of σ = alias_blur;
    returned trimmed to its non-zero support."""
    half = 8 if radius <= 8 else int(math.ceil(radius))
    ksize = 3 if radius <= 8 else 5
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    taps = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-taps ** 2 / (2 * alias_blur ** 2))
    g /= g.sum()
    padded = np.pad(disk, ksize // 2, mode="reflect")  # cv2 BORDER_REFLECT_101 = numpy 'reflect'
    rows = sum(g[i] * padded[i:i + disk.shape[0]] for i in range(ksize))
    blurred = sum(g[i] * rows[:, i:i + disk.shape[1]] for i in range(ksize))
    keep_r, keep_c = np.flatnonzero(blurred.any(1)), np.flatnonzero(blurred.any(0))
    r = max(half - keep_r.min(), keep_r.max() - half)
    c = max(half - keep_c.min(), keep_c.max() - half)
    return torch.from_numpy(blurred[half - r:half + r + 1, half - c:half + c + 1]).float()


def defocus_blur(x, p: tuple[float, float], draws: Draws, ctx: Context):
    """cv2.filter2D with :func:`disk_kernel` (BORDER_REFLECT_101) (make_cifar_c.py defocus_blur, p =
    (radius, alias_blur); the radius scales with the image, the anti-aliasing σ stays in pixels)."""
    return correlate(x, disk_kernel(ctx.px(p[0]), p[1]), "reflect101")


def motion_blur(x, p: tuple[float, float], draws: Draws, ctx: Context):
    """ImageMagick motion blur (radius, σ) = p at an angle U(-45°, 45°) per image (make_cifar_c.py
    motion_blur through wand; :func:`robprune.corruptions.filters.motion_blur`)."""
    angles = draws.uniform((x.shape[0],), -45.0, 45.0)
    return _motion(x, ctx.px(p[0]), ctx.px(p[1]), angles)


def zoom_blur(x, p: float, draws: Draws, ctx: Context):
    """Mean of x and its clipped zooms by 1, 1.01, ... (np.arange(1, p, 0.01)) (make_cifar_c.py
    zoom_blur; p is the end of that range: 1.06, 1.11, 1.16, 1.21, 1.26)."""
    factors = np.arange(1, p, 0.01)
    out = x.clone()
    for factor in factors:
        out += clipped_zoom(x, float(factor))
    return out / (len(factors) + 1)


def elastic_transform(x, p: tuple[float, float, float], draws: Draws, ctx: Context):
    """make_cifar_c.py elastic_transform with IMSIZE = 32·scale (the image size from 32 pixels up): a random affine map of three
    points moved by U(-p[2], p[2]) (cv2.warpAffine, bilinear, BORDER_REFLECT_101), then a displacement
    field of U(-1, 1) noise smoothed by a Gaussian of σ = p[1] (mode reflect, truncate 3) times p[0]
    (scipy map_coordinates, order 1, mode reflect). p: fractions of IMSIZE, as in the reference."""
    n, _, h, w = x.shape
    size = 32 * ctx.scale
    alpha, sigma, affine = p[0] * size, p[1] * size, p[2] * size
    x = _random_affine(x, affine, draws)
    dx = gaussian(draws.uniform((n, 1, h, w), -1.0, 1.0), sigma, mode="symmetric", truncate=3.0) * alpha
    dy = gaussian(draws.uniform((n, 1, h, w), -1.0, 1.0), sigma, mode="symmetric", truncate=3.0) * alpha
    rows = torch.arange(h, device=x.device, dtype=x.dtype)[None, :, None] + dy[:, 0]
    cols = torch.arange(w, device=x.device, dtype=x.dtype)[None, None, :] + dx[:, 0]
    return bilinear(x, rows, cols, "symmetric")


def _random_affine(x: torch.Tensor, shift: float, draws: Draws) -> torch.Tensor:
    """cv2.getAffineTransform(pts1, pts1 + U(-shift, shift)) and cv2.warpAffine, per image."""
    n, _, h, w = x.shape
    center = torch.tensor([h // 2, w // 2], dtype=torch.float64)
    square = min(h, w) // 3
    pts1 = torch.stack([center + square, torch.stack([center[0] + square, center[1] - square]), center - square])
    pts2 = pts1[None] + draws.uniform((n, 3, 2), -shift, shift).cpu().double()
    ones = torch.ones(3, 1, dtype=torch.float64)
    forward = torch.linalg.solve(torch.cat([pts1, ones], 1)[None].expand(n, 3, 3), pts2)  # (N, 3, 2): [x y 1] @ M
    full = torch.cat([forward, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)[None, :, None].expand(n, 3, 1)], 2)
    inverse = torch.linalg.inv(full).float().to(x.device)  # dst -> src, row vectors [x y 1]
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    grid = torch.stack([xs, ys, torch.ones_like(xs)], -1).float().reshape(1, -1, 3)
    src = grid @ inverse  # (N, H*W, 3)
    return bilinear(x, src[..., 1].reshape(n, h, w), src[..., 0].reshape(n, h, w), "reflect101")

