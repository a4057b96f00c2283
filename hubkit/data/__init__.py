"""Readers and writers for the domain data formats: pure functions of files and arrays."""

from __future__ import annotations

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
    "LeafSet",
    "ZividDepthDataset",
    "ZividReport",
    "ZividSample",
    "disparity_to_depth_mm",
    "load_pair",
    "make_leaf_dataset",
    "make_motorcycle_zivid",
    "scan_zivid",
    "split",
    "write_zivid",
]
