"""Datasets as uint8 tensors, split slicing, a safetensors decode cache and a tensor batch loader.

``build_data(cfg.dataset)`` -> :class:`DataBundle` (uint8 images, int64 labels, mean/std);
``BatchLoader`` turns its tensors into float32 [0, 1] batches on a device with optional crop/flip.
Module map: build (DataBundle, StreamBundle; the sources register in :data:`robprune.registry.DATASETS`), splits (``'train[:80%]'`` parsing), source (Source protocol,
config helpers, cache), loader (BatchLoader), tensors (``as_pixels``, ``seeded_indices``), and one module per file format: mnist (IDX), cifar
(pickle batches), svhn (.mat), imagefolder (PIL), builtin (digits, synthetic), tiny_imagenet, imagenet (ILSVRC-2012, ImageNet-V2),
webdataset (tar shards). Streamed datasets (docs/concepts/data-and-models.md#streamed-datasets): manifest (the cached file listing that keys
them), listing (a split's files and labels), stream (transforms, lazy splits), streamloader (DataLoader workers).
"""
from robprune.data.build import DataBundle, build_data
from robprune.data.loader import BatchLoader
from robprune.data.splits import Bound, SplitSlice, parse_split
from robprune.data.tensors import as_pixels, seeded_indices

__all__ = ["BatchLoader", "Bound", "DataBundle", "SplitSlice", "as_pixels", "build_data", "parse_split", "seeded_indices"]
