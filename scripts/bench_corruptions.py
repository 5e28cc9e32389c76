"""Throughput of robprune's batched corruptions against the usual per-image loop, on the same images.

  reference  make_cifar_c.py's way (Hendrycks & Dietterich 2019): one image at a time through numpy,
             PIL and scipy, written out below for the corruptions that need nothing else (the script's
             OpenCV calls as their scipy equivalents: filter2D = ndimage.correlate(mode='mirror'),
             warpAffine = ndimage.affine_transform(mode='mirror'); skimage's gaussian = scipy's
             gaussian_filter, its rgb2hsv copied; wand's motion blur as the imagecorruptions package's
             numpy port). snow, frost and spatter need wand or OpenCV and have no reference here.
  robprune   robprune.corruptions.corrupt on batches of --batch images (torch, --threads threads).

Images: the first --n CIFAR-10 test images of the project's shared data folder (shared/data/cifar10-images beside the repository) (32x32 RGB; seeded noise
images when that folder is absent). Both sides corrupt the same images at --severity. For the
deterministic corruptions the table also gives the largest difference of the two outputs in 8-bit
levels (0 = identical); for the random ones the mean |corrupted − clean| of each side, which must agree
in distribution. Writes outputs/bench/bench_corruptions.json.

    python scripts/bench_corruptions.py --n 1000 --threads 2 --severity 3

Times are the fastest of --repeats runs on each side. On a busy 2-core machine use --threads 1: two
OpenMP threads competing with other processes for two cores run torch several times slower.
"""
from __future__ import annotations

import argparse
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from scipy import ndimage

from robprune.corruptions import CORRUPTIONS, NAMES, PARAMS, corrupt
from robprune.io import atomic_write_json

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-images" / "test"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="images (the same for both sides)")
    p.add_argument("--batch", type=int, default=500, help="images per robprune batch")
    p.add_argument("--severity", type=int, default=3, choices=range(1, 6), help="severity of every corruption")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the reference is single-threaded numpy)")
    p.add_argument("--names", nargs="+", default=list(NAMES), choices=NAMES, help="corruptions to time")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per side; the fastest is reported")
    p.add_argument("--ref-n", type=int, default=None, help="images for the reference loop (default --n; its rate is per image)")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/bench_corruptions.json"))
    return p.parse_args()


def load_images(n: int) -> np.ndarray:
    """(n, 32, 32, 3) uint8: CIFAR-10 test images (class folders interleaved), else seeded noise."""
    files = sorted(SHARED.glob("*/*.jpg")) if SHARED.is_dir() else []
    if not files:
        return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    by_class = [sorted(SHARED.glob(f"{c.name}/*.jpg")) for c in sorted(SHARED.iterdir())]
    picked = [f for group in zip(*by_class) for f in group][:n]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in picked])


# ---- the per-image reference: make_cifar_c.py, numpy / PIL / scipy only -------------------------

def gaussian(x, sigma, mode="nearest", truncate=4.0):
    """skimage.filters.gaussian(x, sigma, multichannel=True) = scipy gaussian_filter over H, W."""
    return ndimage.gaussian_filter(x, (sigma, sigma, 0) if x.ndim == 3 else sigma, mode=mode, truncate=truncate)


def rgb2hsv(arr):
    """skimage.color.rgb2hsv (skimage is not installed here; its code)."""
    out = np.empty_like(arr)
    out_v = arr.max(-1)
    delta = arr.ptp(-1) if hasattr(arr, "ptp") else np.ptp(arr, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out_s = delta / out_v
    out_s[delta == 0.] = 0.
    with np.errstate(invalid="ignore", divide="ignore"):
        idx = arr[..., 0] == out_v
        out[idx, 0] = (arr[idx, 1] - arr[idx, 2]) / delta[idx]
        idx = arr[..., 1] == out_v
        out[idx, 0] = 2. + (arr[idx, 2] - arr[idx, 0]) / delta[idx]
        idx = arr[..., 2] == out_v
        out[idx, 0] = 4. + (arr[idx, 0] - arr[idx, 1]) / delta[idx]
    out_h = (out[..., 0] / 6.) % 1.
    out_h[delta == 0.] = 0.
    return np.stack([out_h, out_s, out_v], -1)


def hsv2rgb(hsv):
    """skimage.color.hsv2rgb."""
    hi = np.floor(hsv[..., 0] * 6)
    f = hsv[..., 0] * 6 - hi
    p = hsv[..., 2] * (1 - hsv[..., 1])
    q = hsv[..., 2] * (1 - f * hsv[..., 1])
    t = hsv[..., 2] * (1 - (1 - f) * hsv[..., 1])
    v = hsv[..., 2]
    hi = np.stack([hi, hi, hi], axis=-1).astype(np.uint8) % 6
    return np.choose(hi, np.stack([np.stack((v, t, p), -1), np.stack((q, v, p), -1), np.stack((p, v, t), -1),
                                   np.stack((p, q, v), -1), np.stack((t, p, v), -1), np.stack((v, p, q), -1)]))


def disk(radius, alias_blur):
    """make_cifar_c.py's disk; cv2.GaussianBlur(ksize 3) written as its 3-tap kernel, BORDER_REFLECT_101."""
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    d = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    d /= d.sum()
    g = np.exp(-np.arange(-1, 2) ** 2 / (2 * alias_blur ** 2))
    g /= g.sum()
    return ndimage.correlate(ndimage.correlate(d, g[:, None], mode="mirror"), g[None, :], mode="mirror")


def plasma_fractal(mapsize=32, wibbledecay=3):
    """make_cifar_c.py plasma_fractal (diamond-square), verbatim in substance."""
    maparray = np.zeros((mapsize, mapsize))
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array):
        return array / 4 + wibble * np.random.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        corner = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        square = corner + np.roll(corner, -1, axis=0)
        square += np.roll(square, -1, axis=1)
        maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(square)
        dr = maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize]
        ul = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        maparray[0:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1))
        maparray[stepsize // 2:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0))
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def clipped_zoom(img, zoom_factor):
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = ndimage.zoom(img[top:top + ch, top:top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim:trim + h, trim:trim + h]


def motion_blur_numpy(x, radius, sigma, angle):
    """The imagecorruptions package's numpy port of ImageMagick's motion blur (shift and sum)."""
    width = radius * 2 + 1
    kernel = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hyp = np.hypot(*point)
    out = np.zeros_like(x, dtype=np.float32)
    for i in range(width):
        dy = -int(np.ceil((i * point[0]) / hyp - 0.5))
        dx = -int(np.ceil((i * point[1]) / hyp - 0.5))
        rows = np.clip(np.arange(x.shape[0]) - dy, 0, x.shape[0] - 1)
        cols = np.clip(np.arange(x.shape[1]) - dx, 0, x.shape[1] - 1)
        out += kernel[i] * x[rows][:, cols]
    return out


def reference(name: str, img: np.ndarray, c) -> np.ndarray:
    """One image (32, 32, 3) uint8 -> corrupted uint8, as make_cifar_c.py computes it."""
    x = img / 255.0
    if name == "gaussian_noise":
        out = np.clip(x + np.random.normal(size=x.shape, scale=c), 0, 1) * 255
    elif name == "shot_noise":
        out = np.clip(np.random.poisson(x * c) / c, 0, 1) * 255
    elif name == "impulse_noise":  # skimage random_noise(mode='s&p', amount=c)
        flipped = np.random.choice([True, False], size=x.shape, p=[c, 1 - c])
        salted = np.random.choice([True, False], size=x.shape, p=[0.5, 0.5])
        out = x.copy()
        out[flipped & salted], out[flipped & ~salted] = 1, 0
        out = np.clip(out, 0, 1) * 255
    elif name == "speckle_noise":
        out = np.clip(x + x * np.random.normal(size=x.shape, scale=c), 0, 1) * 255
    elif name == "gaussian_blur":
        out = np.clip(gaussian(x, c), 0, 1) * 255
    elif name == "glass_blur":
        x = np.uint8(gaussian(x, c[0]) * 255)
        for _ in range(c[2]):
            for h in range(32 - c[1], c[1], -1):
                for w in range(32 - c[1], c[1], -1):
                    dx, dy = np.random.randint(-c[1], c[1], size=(2,))
                    hp, wp = h + dy, w + dx
                    x[h, w], x[hp, wp] = x[hp, wp], x[h, w]
        out = np.clip(gaussian(x / 255., c[0]), 0, 1) * 255
    elif name == "defocus_blur":
        k = disk(*c)
        out = np.clip(np.stack([ndimage.correlate(x[:, :, d], k, mode="mirror") for d in range(3)], -1), 0, 1) * 255
    elif name == "motion_blur":
        blurred = motion_blur_numpy(img.astype(np.float32), c[0], c[1], np.random.uniform(-45, 45))
        out = np.clip(np.round(blurred), 0, 255)
    elif name == "zoom_blur":
        x = x.astype(np.float32)
        zooms = np.arange(1, c, 0.01)
        acc = np.zeros_like(x)
        for z in zooms:
            acc += clipped_zoom(x, z)
        out = np.clip((x + acc) / (len(zooms) + 1), 0, 1) * 255
    elif name == "fog":
        peak = x.max()
        x = x + c[0] * plasma_fractal(wibbledecay=c[1])[:32, :32][..., None]
        out = np.clip(x * peak / (peak + c[0]), 0, 1) * 255
    elif name == "contrast":
        means = np.mean(x, axis=(0, 1), keepdims=True)
        out = np.clip((x - means) * c + means, 0, 1) * 255
    elif name in ("brightness", "saturate"):
        hsv = rgb2hsv(x)
        if name == "brightness":
            hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
        else:
            hsv[:, :, 1] = np.clip(hsv[:, :, 1] * c[0] + c[1], 0, 1)
        out = np.clip(hsv2rgb(hsv), 0, 1) * 255
    elif name == "jpeg_compression":
        buf = BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=c)
        out = np.asarray(Image.open(buf))
    elif name == "pixelate":
        small = Image.fromarray(img).resize((int(32 * c), int(32 * c)), Image.BOX)
        out = np.asarray(small.resize((32, 32), Image.BOX))
    elif name == "elastic_transform":
        out = _elastic(x.astype(np.float32), [v * 32 for v in c]) * 255
    else:
        raise KeyError(name)
    return np.uint8(out)


def _elastic(image, c):
    """make_cifar_c.py elastic_transform; cv2.getAffineTransform/warpAffine as numpy/scipy."""
    shape = image.shape
    center, square = np.float32(shape[:2]) // 2, min(shape[:2]) // 3
    pts1 = np.float32([center + square, [center[0] + square, center[1] - square], center - square])
    pts2 = pts1 + np.random.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    forward = np.linalg.solve(np.hstack([pts1, np.ones((3, 1))]), pts2).T  # 2x3, (x, y)
    inv = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))
    matrix = np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]])  # (row, col) order
    offset = np.array([inv[1, 2], inv[0, 2]])
    image = np.stack([ndimage.affine_transform(image[:, :, d], matrix, offset, order=1, mode="mirror")
                      for d in range(shape[2])], -1)
    dx = (gaussian(np.random.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dy = (gaussian(np.random.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = (np.reshape(y + dy[..., None], (-1, 1)), np.reshape(x + dx[..., None], (-1, 1)), np.reshape(z, (-1, 1)))
    return np.clip(ndimage.map_coordinates(image, indices, order=1, mode="reflect").reshape(shape), 0, 1)


REFERENCE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "glass_blur",
             "defocus_blur", "motion_blur", "zoom_blur", "fog", "contrast", "brightness", "saturate",
             "jpeg_compression", "pixelate", "elastic_transform")


def best_of(repeats: int, run) -> tuple[float, object]:
    """(fastest wall time of ``repeats`` calls, the last result): load from other processes only slows."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def time_ours(x: torch.Tensor, name: str, severity: int, batch: int, repeats: int) -> tuple[float, np.ndarray]:
    corrupt(x[:8], name, severity, seed=0)  # warm-up (first-call costs: imports, textures)
    seconds, out = best_of(repeats, lambda: torch.cat([corrupt(x[i:i + batch], name, severity, seed=i)
                                                       for i in range(0, len(x), batch)]))
    return seconds, np.round(out.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


def time_reference(imgs: np.ndarray, name: str, severity: int, repeats: int) -> tuple[float, np.ndarray]:
    np.random.seed(0)
    c = PARAMS[name][severity - 1]
    reference(name, imgs[0], c)
    return best_of(repeats, lambda: np.stack([reference(name, img, c) for img in imgs]))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    imgs = load_images(args.n)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    ref_imgs = imgs[:args.ref_n or args.n]
    rows = []
    for name in args.names:
        seconds, ours = time_ours(x, name, args.severity, args.batch, args.repeats)
        row = {"name": name, "ours_images_per_s": len(x) / seconds, "random": CORRUPTIONS[name].random}
        if name in REFERENCE:
            ref_seconds, ref = time_reference(ref_imgs, name, args.severity, args.repeats)
            row["reference_images_per_s"] = len(ref_imgs) / ref_seconds
            row["speedup"] = row["ours_images_per_s"] / row["reference_images_per_s"]
            k = len(ref)
            if CORRUPTIONS[name].random:
                row["mean_abs_change_ours"] = float(np.abs(ours[:k].astype(float) - imgs[:k]).mean())
                row["mean_abs_change_reference"] = float(np.abs(ref.astype(float) - imgs[:k]).mean())
            else:
                row["max_abs_diff_levels"] = int(np.abs(ours[:k].astype(int) - ref.astype(int)).max())
        rows.append(row)
        Console().print(f"{name}: {row['ours_images_per_s']:.0f} img/s" +
                        (f", reference {row['reference_images_per_s']:.0f} img/s" if "speedup" in row else ""))
    report(args, len(x), len(ref_imgs), rows)


def report(args, n: int, n_ref: int, rows: list[dict]) -> None:
    table = Table(title=f"corruptions at severity {args.severity}: {n} CIFAR-10 images (reference on {n_ref}), "
                        f"batch {args.batch}, {args.threads} torch threads, best of {args.repeats}")
    for col in ("corruption", "robprune img/s", "per-image ref img/s", "speedup", "agreement"):
        table.add_column(col, justify="left" if col == "corruption" else "right")
    for r in rows:
        if "max_abs_diff_levels" in r:
            agree = f"max |Δ| {r['max_abs_diff_levels']} levels"
        elif "mean_abs_change_ours" in r:
            agree = f"mean |x'−x| {r['mean_abs_change_ours']:.2f} vs {r['mean_abs_change_reference']:.2f}"
        else:
            agree = "—"
        ref = f"{r['reference_images_per_s']:.0f}" if "reference_images_per_s" in r else "—"
        speed = f"{r['speedup']:.1f}×" if "speedup" in r else "—"
        table.add_row(r["name"], f"{r['ours_images_per_s']:.0f}", ref, speed, agree)
    Console().print(table)
    payload = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "torch": torch.__version__, "numpy": np.__version__, "n_images": n, "n_reference": n_ref,
               "rows": rows}
    atomic_write_json(args.out, payload)
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
