"""Released corruption benchmarks read from disk, never downloaded.

``source: files`` (CIFAR-10-C / CIFAR-100-C, Hendrycks & Dietterich 2019): ``<root>/<name>.npy`` per
corruption, uint8 (5·M, H, W, C) (or (5·M, H, W) for grey), and ``<root>/labels.npy``, integers (5·M,)
(or (M,)). make_cifar_c.py stacks the severities as consecutive blocks: row (s − 1)·M + i is test image
i at severity s (s = 1..5); M = 10,000 for the released files. The rows map to the run's test points:
when M equals the test split's size, row i is test point i; otherwise the test split must be a slice
of a base split of M images (``dataset.test_split='test[:1000]'`` takes rows [0, 1000) of every
severity block). Shapes, dtypes, the label count and the labels themselves (against the run's test
labels, at every severity used) are checked before training.

``source: folders`` (Tiny-ImageNet-C / ImageNet-C): ``<root>/<name>/<severity>/<class>/<image>``, each
severity folder read by robprune's image-folder reader (PIL, converted to the run's channels and
resized to its image size). Class folders, sorted by name, are the labels, so they must be the
dataset's classes in its label order; their count must be ``dataset.num_classes``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robprune.errors import ConfigError, DataError

LABELS = "labels.npy"
N_SEVERITIES = 5


def _fix(root: Path) -> str:
    return f"e.g. eval.corruptions.root=<folder with <name>.npy and {LABELS}> (CIFAR-10-C layout), not {root}"


def _open(path: Path) -> np.ndarray:
    """A memory-mapped .npy array (header read only); DataError when missing or not a plain .npy."""
    if not path.is_file():
        raise DataError(f"{path} is missing; eval.corruptions.source=files reads <name>.npy for every name of "
                        f"eval.corruptions.names and {LABELS} from eval.corruptions.root; {_fix(path.parent)}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path} is not a readable .npy array ({str(err).splitlines()[0]}); "
                        f"replace it with the released file, {_fix(path.parent)}") from None


@dataclass(frozen=True)
class CorruptionFiles:
    """Checked ``.npy`` files: per_severity = M; positions: (n_test,) rows within a severity block of
    the run's test points, in test order."""

    root: Path
    per_severity: int
    positions: np.ndarray

    def images(self, name: str, severity: int, points: np.ndarray) -> torch.Tensor:
        """(len(points), C, H, W) uint8: the run's test points ``points`` (indices into the test split)
        at ``severity``, read from <name>.npy (only those rows)."""
        rows = (severity - 1) * self.per_severity + self.positions[np.asarray(points)]
        order = np.argsort(rows, kind="stable")  # ascending rows: sequential reads of the memory map
        arr = _open(self.root / f"{name}.npy")
        block = np.empty((len(rows),) + arr.shape[1:], dtype=np.uint8)
        block[order] = arr[rows[order]]
        x = torch.from_numpy(block)
        return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def open_files(root: str | Path, names, severities, test_y: torch.Tensor, image_shape: tuple[int, int, int],
               test_split: str) -> CorruptionFiles:
    """Check the files for a run and return the reader. test_y: (n_test,) the run's test labels;
    image_shape: (C, H, W) of its images; test_split: ``dataset.test_split``. Raises DataError (one line,
    naming the file, what it holds and what the run needs) for a missing or unreadable file, a wrong
    dtype or shape, files of different lengths, a label count that does not fit, or labels that differ
    from the run's test labels."""
    root = Path(str(root)).expanduser()
    if not root.is_dir():
        raise ConfigError(f"eval.corruptions.root={root} is not a folder; {_fix(root)}")
    c, h, w = image_shape
    want = f"uint8 (5·M, {h}, {w}, {c})" + (f" or (5·M, {h}, {w})" if c == 1 else "")
    length = None
    for name in names:
        arr = _open(root / f"{name}.npy")
        shape_ok = arr.shape[1:] in ((h, w, c),) + (((h, w),) if c == 1 else ())
        if arr.dtype != np.uint8 or not shape_ok or arr.shape[0] % N_SEVERITIES:
            raise DataError(f"{root / f'{name}.npy'} holds {arr.dtype} {tuple(arr.shape)} but this run needs {want} "
                            f"(5 severities of M test images, images {h}x{w} with {c} channel(s)); "
                            f"pass the files made for this dataset, {_fix(root)}")
        if length is not None and arr.shape[0] != length:
            raise DataError(f"{root / f'{name}.npy'} holds {arr.shape[0]} images but {root / f'{names[0]}.npy'} holds "
                            f"{length}; every file must hold the same test images; {_fix(root)}")
        length = arr.shape[0]
    per_severity = (length or 0) // N_SEVERITIES
    positions = _positions(root, per_severity, len(test_y), test_split)
    _check_labels(root, per_severity, positions, test_y, severities)
    return CorruptionFiles(root, per_severity, positions)


def _positions(root: Path, per_severity: int, n_test: int, test_split: str) -> np.ndarray:
    """Rows within a severity block of the run's test points (see the module docstring)."""
    from robprune.data import parse_split

    if per_severity == n_test:
        return np.arange(n_test)
    _, part = parse_split(str(test_split), key="dataset.test_split")
    span = None
    if not part.is_full:
        try:
            span = part.resolve(per_severity, key="dataset.test_split", spec=str(test_split))
        except ConfigError:
            span = None
    if span is None or span.stop - span.start != n_test:
        raise DataError(f"{root}: the files hold {per_severity} images per severity but the run's test split "
                        f"dataset.test_split='{test_split}' has {n_test} images, which are not a slice of them; "
                        f"the files must be the dataset's test split in its order, e.g. dataset.test_split='test' "
                        f"or a slice such as 'test[:{min(per_severity, 1000)}]'")
    return np.arange(span.start, span.stop)


def _check_labels(root: Path, per_severity: int, positions: np.ndarray, test_y: torch.Tensor, severities) -> None:
    labels = _open(root / LABELS)
    path = root / LABELS
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) not in (per_severity,
                                                                                               N_SEVERITIES * per_severity):
        raise DataError(f"{path} holds {labels.dtype} {tuple(labels.shape)} but the corruption files hold "
                        f"{N_SEVERITIES} x {per_severity} images, so it needs {N_SEVERITIES * per_severity} (or "
                        f"{per_severity}) integer labels; pass the labels.npy released with them, {_fix(root)}")
    want = test_y.numpy()
    for severity in severities:
        block = 0 if len(labels) == per_severity else (severity - 1) * per_severity
        got = np.asarray(labels[block + positions]).astype(np.int64)
        wrong = np.flatnonzero(got != want)
        if wrong.size:
            i = int(wrong[0])
            raise DataError(f"{path} does not match the run's test labels: {wrong.size} of {len(want)} differ at "
                            f"severity {severity} (first at test point {i}: the file says {got[i]}, the dataset "
                            f"{want[i]}); the files must hold this dataset's test split in order, e.g. "
                            f"dataset.test_split='test' with the released CIFAR-10-C files")


# --- Tiny-ImageNet-C / ImageNet-C folders ---------------------------------------------------------

def severity_folder(root: str | Path, name: str, severity: int) -> Path:
    return Path(str(root)).expanduser() / name / str(severity)


def check_folders(root: str | Path, names, severities, num_classes: int) -> None:
    """Every <root>/<name>/<severity>/ exists and holds num_classes class folders, the same in all."""
    seen: list[str] | None = None
    for name in names:
        for severity in severities:
            folder = severity_folder(root, name, severity)
            if not folder.is_dir():
                raise DataError(f"{folder} is missing; eval.corruptions.source=folders reads "
                                f"<root>/<name>/<severity>/<class>/<image> (Tiny-ImageNet-C layout); e.g. "
                                f"eval.corruptions.root=<folder holding {name}/>")
            classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            if len(classes) != num_classes or (seen is not None and classes != seen):
                raise DataError(f"{folder} has {len(classes)} class folders but the dataset has {num_classes} classes"
                                f"{'' if seen is None or len(classes) != len(seen) else ' (other names than the first folder)'}; "
                                f"every severity folder must hold the dataset's classes, e.g. "
                                f"eval.corruptions.root=<the Tiny-ImageNet-C folder>")
            seen = classes


def folder_subset(root: str | Path, name: str, severity: int, n_examples: int | None, seed: int):
    """The files of one severity folder's seeded subset of n_examples images (None: all), in the order they are
    read (:class:`robprune.data.stream.Files`), listed from the folder's cached manifest."""
    from robprune.data import manifest
    from robprune.data.imagefolder import tree_listing
    from robprune.data.stream import Files
    from robprune.data.tensors import seeded_indices

    folder = severity_folder(root, name, severity)
    split = tree_listing(manifest.load(folder, manifest.default_cache()), {"train": ""}, "train")
    keep = seeded_indices(len(split.rels), n_examples, seed).sort().values.tolist()
    return Files(folder, [split.rels[i] for i in keep], split.labels[keep])


def read_folder(root: str | Path, name: str, severity: int, channels: int, size: int | None,
                n_examples: int | None, seed: int, part: slice = slice(None)):
    """(x, y (n,) int64) of positions ``part`` of one severity folder's seeded subset: x a streamed
    (n, C, H, W) uint8 view (:class:`robprune.data.stream.StreamImages`, decoded chunk by chunk when indexed),
    resized to ``size`` when the images are not that size already."""
    from robprune.data.stream import StreamImages, Transforms

    files = folder_subset(root, name, severity, n_examples, seed).take(part)
    return StreamImages(files, Transforms(channels=int(channels), image_size=None if size is None else int(size),
                                          resize=None)), files.labels


def folder_digests(root: str | Path, names, severities) -> list[list]:
    """[folder, manifest digest] of every severity folder (the eval stage's key; manifests are cached)."""
    from robprune.data import manifest

    out = []
    for name in names:
        for severity in severities:
            folder = severity_folder(root, str(name), int(severity))
            if folder.is_dir():
                tree = manifest.load(folder, manifest.default_cache())
                out.append([str(folder), tree.digest(list(tree.files))])
    return out


def file_stats(paths) -> list[list]:
    """[name, size, mtime_ns] of each existing file (for the eval stage's key)."""
    out = []
    for path in paths:
        path = Path(path)
        if path.is_file():
            st = path.stat()
            out.append([str(path), st.st_size, st.st_mtime_ns])
    return out
