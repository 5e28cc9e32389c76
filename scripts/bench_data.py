"""Streamed training loader against torchvision's reference, and peak memory against dataset size.

(1) Throughput: a generated ImageNet-like tree (``--images`` JPEGs of 300-500 x 260-400 pixels, smooth
colour fields plus noise, quality 90, in 10 class folders). Both loaders run ImageNet's training transform,
RandomResizedCrop 224 (area 8-100%) + horizontal flip, with the same ``--workers`` DataLoader processes
(persistent), batch size and prefetch, and deliver float32 [0, 1] (B, 3, 224, 224) batches:
  - robprune: ``dataset=imagefolder dataset.storage=stream`` (robprune.data.stream.StreamLoader: per-example
    seeds, torchvision.io decode, transforms.v2 functionals on uint8 tensors, uint8 batches from the workers,
    float conversion in the main process);
  - reference: ``torchvision.datasets.ImageFolder`` (PIL decode) + ``transforms.v2.Compose([RandomResizedCrop(224),
    RandomHorizontalFlip(), ToImage(), ToDtype(float32, scale=True)])`` + ``DataLoader``.
Rounds alternate (reference, robprune, reference, ...) so machine load hits both; the first epoch of each
loader warms its workers and page cache and is not timed. Ratio = robprune images/s over reference images/s
in the same run.
(2) Memory: one epoch of the streamed loader (no workers) over trees of 2,000 and 20,000 tiny JPEGs, each in a
fresh process; peak RSS (VmHWM) of that process.

Numbers depend on the CPU, its load and the disk (shared machines are noisy); float pixels can differ slightly
between CPUs. ``python scripts/bench_data.py --images 2000 --workers 2 --rounds 3``
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from robprune.io import atomic_write_json

RSS_SCRIPT = """
import sys, torch
from omegaconf import OmegaConf
from robprune.data import build_data
cfg = OmegaConf.create({"name": "imagefolder", "root": sys.argv[1], "storage": "stream", "image_size": 16,
                        "train_split": "train[10:]", "test_split": "train[:10]", "num_classes": None})
data = build_data(cfg, cache_dir=sys.argv[2], loading={"num_workers": 0})
loader = data.loader(data.train_x, data.train_y, 256, shuffle=True, generator=torch.Generator().manual_seed(0),
                     augment={"hflip": True, "crop_padding": 2})
seen = sum(len(y) for x, y in loader)
print(seen, next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="JPEGs in the throughput tree")
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes of both loaders")
    p.add_argument("--batch", type=int, default=64, help="images per batch")
    p.add_argument("--rounds", type=int, default=3, help="timed epochs per loader (median reported)")
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="tree sizes of the memory test")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/bench_data.json"), help="JSON result")
    return p.parse_args()


def photo_tree(root: Path, n: int, classes: int = 10, seed: int = 0) -> Path:
    """n JPEGs of ImageNet-like sizes and content (smooth fields + noise), written once."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(260, 400)), int(rng.integers(300, 500))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(xx / rng.uniform(10, 60) + c) * np.cos(yy / rng.uniform(10, 60)) for c in range(3)], -1)
        img = np.clip(127 + 90 * base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        folder = root / "train" / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:06d}.JPEG", quality=90)
    return root


def robprune_loader(root: Path, workers: int, batch: int, cache: Path):
    from omegaconf import OmegaConf

    from robprune.data import build_data

    cfg = OmegaConf.create({"name": "imagefolder", "root": str(root), "storage": "stream", "image_size": 224,
                            "resize": 256, "train_split": "train", "test_split": "train[:10]", "num_classes": None})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = build_data(cfg, cache_dir=str(cache), loading={"num_workers": workers})
    return data.loader(data.train_x, data.train_y, batch, shuffle=True, generator=torch.Generator().manual_seed(0),
                       augment={"hflip": True, "resized_crop": [0.08, 1.0]})


def reference_loader(root: Path, workers: int, batch: int):
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True)])
    dataset = ImageFolder(str(root / "train"), transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                                       generator=torch.Generator().manual_seed(0))


def epoch_rate(loader) -> float:
    start, seen = time.perf_counter(), 0
    for x, y, *_ in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 224, 224)
        seen += len(y)
    return seen / (time.perf_counter() - start)


def peak_rss(sizes: list[int], work: Path) -> dict[int, int]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.test_stream import flat_tree

    out = {}
    for n in sizes:
        root = flat_tree(work / f"tiny{n}", n)
        res = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(root), str(work / "cache")], capture_output=True,
                             text=True, check=True)
        seen, out[n] = (int(v) for v in res.stdout.split())
        assert seen == n - 10
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # the main process only converts and hands batches on
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        photo_tree(work / "tree", args.images)
        console.print(f"wrote {args.images} JPEGs in {time.perf_counter() - start:.1f} s")
        loaders = {"reference": reference_loader(work / "tree", args.workers, args.batch),
                   "robprune": robprune_loader(work / "tree", args.workers, args.batch, work / "cache")}
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for name, loader in loaders.items():
            epoch_rate(loader)  # warm-up: worker start, page cache
        for _ in range(args.rounds):
            for name, loader in loaders.items():
                rates[name].append(epoch_rate(loader))
        rss = peak_rss(args.sizes, work)
    median = {name: statistics.median(r) for name, r in rates.items()}
    ratio = median["robprune"] / median["reference"]
    table = Table(title=f"training loader, RandomResizedCrop 224 + flip, {args.workers} workers, batch {args.batch}")
    for col in ("loader", "images/s (median)", "rounds", "ratio"):
        table.add_column(col)
    for name in ("reference", "robprune"):
        table.add_row(name, f"{median[name]:.1f}", " ".join(f"{r:.1f}" for r in rates[name]),
                      f"{median[name] / median['reference']:.2f}x")
    console.print(table)
    mem = Table(title="peak RSS of one streamed epoch (fresh process, no workers)")
    mem.add_column("images")
    mem.add_column("peak RSS (MiB)")
    for n, kib in rss.items():
        mem.add_row(f"{n:,}", f"{kib / 1024:.1f}")
    console.print(mem)
    sizes = sorted(rss)
    console.print(f"peak RSS grows by {(rss[sizes[-1]] - rss[sizes[0]]) / 1024:.1f} MiB from {sizes[0]:,} to "
                  f"{sizes[-1]:,} images. Machine: {platform.processor() or platform.machine()}, "
                  f"{torch.get_num_threads()} torch thread(s); numbers differ between CPUs and loads.")
    atomic_write_json(args.out, {"images": args.images, "workers": args.workers, "batch": args.batch,
                                 "images_per_s": rates, "median": median, "ratio": ratio,
                                 "peak_rss_kib": {str(k): v for k, v in rss.items()},
                                 "machine": platform.platform(), "cpu": platform.processor()})
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
