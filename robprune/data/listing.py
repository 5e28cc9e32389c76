"""What a streamed source returns for one base split (:class:`Listing`): files, labels, the manifest digest
that keys them and the files that are not whole images (docs/concepts/data-and-models.md#manifest)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Listing:
    """A base split of a streamed source: files (relative to ``root``) in split order, their labels, the
    manifest digest of those files plus the content of any label file, and the files that are not whole
    images (relative path, what is wrong)."""

    root: Path
    rels: list[str]
    labels: torch.Tensor
    digest: str
    problems: list[tuple[str, str]]

    def select(self, where: slice) -> "Listing":
        """The rows ``where`` of this split (a split slice such as 'train[:10%]')."""
        rows = list(range(len(self.rels)))[where]
        if len(rows) == len(self.rels):
            return self
        rels = [self.rels[i] for i in rows]
        bad = dict(self.problems)
        return Listing(self.root, rels, self.labels[torch.tensor(rows, dtype=torch.int64)],
                       _sha(self.digest, f"{where.start}:{where.stop}"), [(r, bad[r]) for r in rels if r in bad])

    def without(self, rels: set[str]) -> "Listing":
        """This split without the files ``rels`` (images skipped with data.skip_bad)."""
        keep = [i for i, r in enumerate(self.rels) if r not in rels]
        return Listing(self.root, [self.rels[i] for i in keep], self.labels[torch.tensor(keep, dtype=torch.int64)],
                       _sha(self.digest, "without", *sorted(rels)), [])


def _sha(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def content_digest(paths: list[Path]) -> str:
    """sha256 of the bytes of small label files (devkit ground truth, annotations)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.name).encode() + b"\x00" + Path(path).read_bytes())
    return h.hexdigest()


def listing(manifest, rels: list[str], labels: list[int], *, label_files: list[Path] = (), root: Path | None = None,
            strip: str = "") -> Listing:
    """A :class:`Listing` of ``rels`` (paths relative to the manifest's root) with the manifest digest and
    problems; ``strip`` is a folder prefix removed from the stored paths (``root`` = manifest root / strip)."""
    digest = _sha(manifest.digest(rels), content_digest(list(label_files)) if label_files else "")
    cut = len(strip.rstrip("/")) + 1 if strip else 0
    problems = [(rel[cut:], why) for rel, why in manifest.problems(rels)]
    return Listing(root if root is not None else Path(manifest.root) / strip, [r[cut:] for r in rels],
                   torch.tensor(labels, dtype=torch.int64), digest, problems)
