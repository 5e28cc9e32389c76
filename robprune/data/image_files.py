"""Image files -> uint8 pixels, with the faults real folders have (docs/concepts/data-faults.md).

- A file that is not a whole image (empty, cut short, not an image at all, or with 32-bit pixels that have no
  8-bit reading) is refused; every such file of the split is counted and the first three are named in one
  line, so that one run finds them all. The ends are checked as the streamed manifest checks them (a JPEG
  must end with EOI, a PNG with IEND: PIL decodes a PNG without its IEND chunk, a failed copy leaves one),
  then PIL decodes the file.
- An image in another mode than the dataset's (grayscale, RGBA, palette, CMYK, 16-bit in an RGB dataset) is
  converted, as torchvision's loader converts it (alpha dropped; palette transparency through RGBA, as PIL
  asks), with one warning per split counting the modes. 16-bit pixels are scaled to 8 bits (``v >> 8``, what
  ``torchvision.transforms.v2.ToDtype(torch.uint8, scale=True)`` does); PIL's own conversion would clip them
  to 255.
"""
from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np

from robprune.data.faults import warn
from robprune.data.manifest import check_ends
from robprune.errors import DataError

SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})  # 16-bit grayscale: scaled to 8 bits
UNREADABLE_MODES = {"I": "32-bit integer", "F": "32-bit float"}  # no known range to scale to 8 bits: refused
ALPHA = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
TRANSPARENT_PALETTE = "P (transparent)"  # how a palette image with a transparent colour is counted
_ENDS = 64  # bytes of a file's end checked for its end marker (manifest._TAIL)


def read_image(path: Path, mode: str, size: int | None) -> tuple[np.ndarray | None, str, str]:
    """(pixels, the file's own PIL mode, problem) of one image file: pixels (H, W, C) uint8 in ``mode`` ('RGB' or
    'L'), resized to size x size (bilinear) when given; None and what is wrong (for the one-line error) when the
    file is not a usable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except OSError as err:
        return None, "", f"unreadable ({err.strerror or err})"
    problem = check_ends(data[:8], data[-_ENDS:], len(data), path.suffix)
    if problem:
        return None, "", problem
    try:
        with Image.open(io.BytesIO(data)) as img:
            own = TRANSPARENT_PALETTE if img.mode == "P" and "transparency" in img.info else img.mode
            if own in UNREADABLE_MODES:
                return None, own, (f"PIL reads {UNREADABLE_MODES[own]} pixels (mode {own!r}) with no known 8-bit range: "
                                   "save it as an 8- or 16-bit PNG")
            img = _converted(img, mode)
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except UnidentifiedImageError:
        return None, "", "not an image format PIL reads"
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return None, "", f"cannot be decoded: {' '.join(str(err).split()) or type(err).__name__}"
    return pixels.reshape(pixels.shape[0], pixels.shape[1], -1), own, ""


def _converted(img, mode: str):
    """``img`` in ``mode``: 16-bit pixels scaled to 8 bits first, a palette with transparency through RGBA."""
    from PIL import Image

    if img.mode in SIXTEEN_BIT:
        img = Image.fromarray((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == mode else img.convert(mode)


def decode_images(paths: list[Path], channels: int, size: int | None, name: str, split: str) -> list[np.ndarray]:
    """(H, W, C) uint8 pixels of each file, ``channels`` 3 (RGB) or 1 (grayscale); DataError naming the files
    that are not usable images, a warning counting the images converted from another mode. name, split: the
    dataset and base split, for the messages."""
    mode = "RGB" if channels == 3 else "L"
    pixels, bad, converted, first = [], [], Counter(), {}
    for path in paths:
        img, own, problem = read_image(path, mode, size)
        if problem:
            bad.append((path, problem))
            continue
        if own != mode:
            converted[own] += 1
            first.setdefault(own, path)
        pixels.append(img)
    if bad:
        shown = "; ".join(f"{path} ({why})" for path, why in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DataError(f"dataset {name!r}: {len(bad)} of {len(paths)} images of split {split!r} cannot be read: "
                        f"{shown}{more}; replace or delete {'it' if len(bad) == 1 else 'them'}")
    if converted:
        warn(_conversion_note(name, split, mode, converted, first, len(paths)))
    return pixels


def _conversion_note(name: str, split: str, mode: str, converted: Counter, first: dict, total: int) -> str:
    counts = ", ".join(f"{n} {own}" for own, n in sorted(converted.items()))
    how = (["alpha dropped"] if set(converted) & (ALPHA | {TRANSPARENT_PALETTE}) else []) + \
        (["16-bit pixels scaled to 8 bits"] if set(converted) & SIXTEEN_BIT else [])
    target = "RGB" if mode == "RGB" else "grayscale (L)"
    return (f"dataset {name!r}: {sum(converted.values())} of {total} images of split {split!r} are not {target} "
            f"({counts}; first: {next(iter(first.values()))}); converted to {target}"
            + (f" ({', '.join(how)})" if how else ""))
