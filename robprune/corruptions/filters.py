"""Batched image filters the corruptions are built from, each a torch version of the scipy / OpenCV /
PIL / ImageMagick call that Hendrycks & Dietterich's make_cifar_c.py makes per image.

Every function takes images x: (N, C, H, W) float (pixels in [0, 1] unless stated) on any device and
keeps shape, dtype and device. Border modes are named as scipy names them and computed by index
arithmetic, so padding wider than the image works (tiny images): ``nearest`` (edge pixel repeated;
OpenCV BORDER_REPLICATE), ``reflect101`` (d c b | a b c d | c b a; OpenCV's default BORDER_REFLECT_101,
scipy 'mirror'), ``symmetric`` (d c b a | a b c d | d c b a; scipy and skimage 'reflect').
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights (OpenCV COLOR_RGB2GRAY, PIL 'L')


def border_index(i: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Indices i (any integers) folded into [0, n) by the border ``mode``."""
    if mode == "nearest" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "reflect101":
        i = i.remainder(2 * n - 2)
        return torch.where(i >= n, 2 * n - 2 - i, i)
    if mode == "symmetric":
        i = i.remainder(2 * n)
        return torch.where(i >= n, 2 * n - 1 - i, i)
    raise ValueError(f"unknown border mode {mode!r}")


def pad(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    """x padded by ph rows and pw columns on each side; ``constant`` pads with zeros."""
    if mode == "constant":
        return F.pad(x, (pw, pw, ph, ph))
    h, w = x.shape[-2:]
    rows = border_index(torch.arange(-ph, h + ph, device=x.device), h, mode)
    cols = border_index(torch.arange(-pw, w + pw, device=x.device), w, mode)
    return x.index_select(-2, rows).index_select(-1, cols)


MATRIX_MAX = 128  # up to this size a 1-D filter runs as a matmul with its (n, n) matrix, above as shifted sums


def filter_matrix(n: int, taps: torch.Tensor, mode: str) -> torch.Tensor:
    """(n, n) matrix M with (M @ v)[o] = Σ_i taps[i] · v[border(o + i − r)]: a centred 1-D correlation
    with the border folded in (r = len(taps) // 2)."""
    r = len(taps) // 2
    src = border_index(torch.arange(n)[:, None] + torch.arange(-r, len(taps) - r)[None, :], n, mode)
    m = torch.zeros(n, n, dtype=torch.float64)
    m.scatter_add_(1, src, taps.double()[None].expand(n, -1).contiguous())
    return m


def filter1d(x: torch.Tensor, taps: torch.Tensor, dim: int, mode: str) -> torch.Tensor:
    """Centred 1-D correlation of x along dim -2 (rows) or -1 (columns), borders by ``mode``."""
    n = x.shape[dim]
    if n <= MATRIX_MAX:
        m = filter_matrix(n, taps, mode).to(x)
        return m @ x if dim == -2 else x @ m.T
    r = len(taps) // 2
    padded = pad(x, r, 0, mode) if dim == -2 else pad(x, 0, r, mode)
    out = torch.zeros_like(x)
    for i, weight in enumerate(taps.tolist()):
        if weight:
            out += weight * padded.narrow(dim, i, n)
    return out


def correlate(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-channel 2-D correlation with a centred (kh, kw) kernel (OpenCV filter2D, scipy correlate).
    A rank-1 kernel runs as two 1-D passes; others as a sum of shifted copies over its non-zero taps."""
    kernel = kernel.double()
    u, sv, vh = torch.linalg.svd(kernel)
    if sv.numel() == 1 or sv[1] <= 1e-12 * sv[0]:
        col, row = u[:, 0] * sv[0].sqrt(), vh[0] * sv[0].sqrt()
        return filter1d(filter1d(x, col.float(), -2, mode), row.float(), -1, mode)
    kh, kw = kernel.shape
    h, w = x.shape[-2:]
    padded = pad(x, kh // 2, kw // 2, mode)
    out = torch.zeros_like(x)
    for i, j in kernel.nonzero().tolist():
        out += float(kernel[i, j]) * padded[..., i:i + h, j:j + w]
    return out


def gaussian_kernel1d(sigma: float, truncate: float) -> torch.Tensor:
    """scipy.ndimage's Gaussian taps: radius int(truncate·sigma + 0.5), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def gaussian(x: torch.Tensor, sigma: float, *, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian (scipy.ndimage.gaussian_filter) over H and W, sigma in pixels; sigma ≈ 0
    is the identity, as in scipy."""
    if sigma <= 1e-15:
        return x
    k = gaussian_kernel1d(sigma, truncate)
    return filter1d(filter1d(x, k, -2, mode), k, -1, mode)


def box3(x: torch.Tensor) -> torch.Tensor:
    """cv2.blur(x, (3, 3)): 3x3 mean, BORDER_REFLECT_101."""
    third = torch.full((3,), 1.0 / 3.0)
    return filter1d(filter1d(x, third, -2, "reflect101"), third, -1, "reflect101")


def gather(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x[n, :, rows[n, i, j], cols[n, i, j]]: rows, cols (N, Ho, Wo) int64 inside the image -> (N, C, Ho, Wo)."""
    n, c, h, w = x.shape
    flat = (rows * w + cols).reshape(n, 1, -1).expand(n, c, -1)
    return x.reshape(n, c, h * w).gather(2, flat).reshape(n, c, *rows.shape[1:])


def bilinear(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str) -> torch.Tensor:
    """Bilinear samples of x at float pixel coordinates (N, Ho, Wo), borders by ``mode``: ``symmetric``
    (scipy map_coordinates(order=1, mode='reflect')) or ``reflect101`` (cv2.warpAffine INTER_LINEAR,
    BORDER_REFLECT_101). Runs as torch's grid_sample with reflection padding, whose coordinate
    reflection is exactly these two index rules (about the image edge without align_corners, about the
    edge pixels' centres with it)."""
    h, w = x.shape[-2:]
    if mode == "symmetric":
        gx, gy = (2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1
    elif mode == "reflect101":
        gx, gy = 2 * cols / max(w - 1, 1) - 1, 2 * rows / max(h - 1, 1) - 1
    else:
        raise ValueError(f"bilinear: unsupported border mode {mode!r}")
    grid = torch.stack([gx, gy], -1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=mode == "reflect101")


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick's MagickMotionBlurImage (what make_cifar_c.py calls through wand), per image angle.

    A one-sided line kernel: width = 2·ceil(radius) + 1 taps i = 0..width-1 with weights
    exp(-i²/2σ²) (normalised), tap i read at offset (round(i·cos a), round(i·sin a)) pixels
    (columns, rows; ImageMagick's ceil(v - 0.5)), edge pixels repeated. angles: (N,) degrees.
    The result goes to 8 bits as ImageMagick (Q16) writes it back to the PNG make_cifar_c.py decodes:
    rounded to 16 bits, then truncated (floor(q16 / 257); measured equal to wand + ImageMagick 6.9 on
    every pixel of 20 CIFAR-10 test images). x: pixels in [0, 1]."""
    n, _, h, w = x.shape
    width = 2 * math.ceil(radius) + 1
    taps = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    weights = (weights / weights.sum()).tolist()
    rad = angles.double().cpu() * math.pi / 180
    dx = torch.ceil(taps[None] * torch.cos(rad)[:, None] - 0.5).long().to(x.device)  # (N, width)
    dy = torch.ceil(taps[None] * torch.sin(rad)[:, None] - 0.5).long().to(x.device)
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    out = torch.zeros_like(x)
    for i in range(width):
        rows = (ar_h[None] + dy[:, i, None]).clamp(0, h - 1)[:, :, None].expand(n, h, w)
        cols = (ar_w[None] + dx[:, i, None]).clamp(0, w - 1)[:, None, :].expand(n, h, w)
        out += weights[i] * gather(x, rows, cols)
    return torch.floor(torch.round(out.clamp(0, 1) * 65535) / 257) / 255


@functools.lru_cache(maxsize=256)
def zoom_matrix(n: int, factor: float) -> torch.Tensor:
    """(n, n) matrix M with M @ v = make_cifar_c.py's clipped_zoom of a length-n signal v: crop the
    central ceil(n / factor) samples, scipy.ndimage.zoom(order=1) them by ``factor`` (output length
    round(crop·factor), input coordinate o·(crop-1)/(out-1)), trim back to the central n."""
    crop = int(math.ceil(n / factor))
    top = (n - crop) // 2
    out = int(round(crop * factor))
    trim = (out - n) // 2
    coord = (np.arange(trim, trim + n) * ((crop - 1) / (out - 1) if out > 1 else 0.0)).clip(0, crop - 1)
    lo = np.floor(coord).astype(int)
    hi = np.minimum(lo + 1, crop - 1)
    frac = coord - lo
    m = np.zeros((n, n))
    np.add.at(m, (np.arange(n), top + lo), 1 - frac)
    np.add.at(m, (np.arange(n), top + hi), frac)
    return torch.from_numpy(m).float()


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """make_cifar_c.py's clipped_zoom on every image and channel (the same zoom for all)."""
    h, w = x.shape[-2:]
    mh, mw = zoom_matrix(h, factor).to(x), zoom_matrix(w, factor).to(x)
    return mh @ x @ mw.T


@functools.lru_cache(maxsize=64)
def pil_box_windows(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's BOX resampling from n_in to n_out <= n_in samples (Pillow's precompute_coeffs with the box
    filter): (n_out, n_in) 0/1 window matrix, and per output the fixed-point weight Pillow gives every
    pixel of its window (normalize_coeffs_8bpc: int(0.5 + 2^22 / window size)). Not to be modified."""
    scale = n_in / n_out
    support = 0.5 * max(scale, 1.0)
    windows = np.zeros((n_out, n_in), dtype=np.float32)
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        t = (np.arange(lo, hi) - center + 0.5) / max(scale, 1.0)
        windows[o, lo:hi] = (t > -0.5) & (t <= 0.5)  # the box filter: 1 inside (-0.5, 0.5], else 0
    weight = (0.5 + 2 ** 22 / np.maximum(windows.sum(1), 1)).astype(np.int64)
    return torch.from_numpy(windows), torch.from_numpy(weight).int()


def pil_box_resize(v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL Image.resize(size=(w, h), BOX) of 8-bit images v: (N, C, H, W) float integers 0..255, as
    Pillow computes it: two passes, horizontal first, each in 22-bit fixed point rounded back to 8 bits;
    a pass whose size does not change is skipped."""
    h_out, w_out = size
    if v.shape[-1] != w_out:
        v = _pil_pass(v, w_out, -1)
    if v.shape[-2] != h_out:
        v = _pil_pass(v, h_out, -2)
    return v


def _pil_pass(v: torch.Tensor, n_out: int, dim: int) -> torch.Tensor:
    """One Pillow BOX pass along dim. Shrinking: every pixel of a window has the same fixed-point weight
    c, so Pillow's (Σ c·v + 2^21) >> 22 is (c·S + 2^21) >> 22 on the window sum S, exact in int32
    (c·S <= 2^22·255). Enlarging: each output has one source pixel of weight 1, a gather."""
    n_in = v.shape[dim]
    if n_out > n_in:
        source = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out)).long().clamp(max=n_in - 1)
        return v.index_select(dim, source.to(v.device))
    windows, weight = (t.to(v.device) for t in pil_box_windows(n_in, n_out))
    sums = (v @ windows.T if dim == -1 else windows @ v).round_().int()  # integers <= 255·window: exact
    weight = weight if dim == -1 else weight[:, None]
    return ((sums * weight + 2 ** 21) >> 22).clamp_(0, 255).to(v.dtype)


def round8(x: torch.Tensor) -> torch.Tensor:
    """Pixels rounded to the nearest of the 256 8-bit levels (what a library writing uint8 does)."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) grey repeated to 3 channels; RGB unchanged."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def like_input(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """Back to the input's channels: RGB unchanged, grey by ITU-R 601 luma."""
    if channels == 3:
        return rgb
    return sum(wt * rgb[:, i:i + 1] for i, wt in enumerate(LUMA))


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """skimage.color.rgb2hsv on (N, 3, H, W): H, S, V in [0, 1]; ties of the max go to blue, then green."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    hue = torch.where(r == v, (g - b) / safe, torch.zeros_like(v))
    hue = torch.where(g == v, 2.0 + (b - r) / safe, hue)
    hue = torch.where(b == v, 4.0 + (r - g) / safe, hue)
    hue = torch.where(delta == 0, torch.zeros_like(v), (hue / 6.0).remainder(1.0))
    sat = torch.where(delta == 0, torch.zeros_like(v), delta / torch.where(v == 0, torch.ones_like(v), v))
    return torch.stack([hue, sat, v], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """skimage.color.hsv2rgb on (N, 3, H, W)."""
    h, s, v = hsv.unbind(1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = hi.long().remainder(6)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = [torch.zeros_like(v) for _ in range(3)]
    for k, channels in enumerate(table):
        hit = sector == k
        out = [torch.where(hit, ch, o) for ch, o in zip(channels, out)]
    return torch.stack(out, 1)
