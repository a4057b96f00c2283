"""Readers and writers for the domain data formats: pure functions of files and arrays."""

from __future__ import annotations

from .histology import HistologySet, load_patches, make_histology_dataset, read_patch_folder, stain_shift
from .leaves import LeafSet, make_leaf_dataset
from .synthetic import disparity_to_depth_mm, make_motorcycle_zivid
from .zivid import (
    ZividDepthDataset,
    ZividReport,
    ZividSample,
    load_pair,
    scan_zivid,
    split,
    write_zivid,
)

__all__ = [
    "HistologySet",
    "LeafSet",
    "ZividDepthDataset",
    "ZividReport",
    "ZividSample",
    "disparity_to_depth_mm",
    "load_pair",
    "load_patches",
    "make_histology_dataset",
    "make_leaf_dataset",
    "make_motorcycle_zivid",
    "read_patch_folder",
    "scan_zivid",
    "split",
    "stain_shift",
    "write_zivid",
]
