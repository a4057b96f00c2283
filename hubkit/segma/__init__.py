"""Segma Vision's data and tools: labelled regions, HLBB features, the region classifier, outputs and export.

The pipeline itself is `hubkit.pipelines.segma`; `hubkit label` runs it over a folder.
"""

from __future__ import annotations

from .export import export_dataset, push_dataset
from .features import FEATURE_GROUPS, FEATURE_NAMES, N_FEATURES, hlbb_features, hlbb_features_batch
from .outputs import coco_document, label_json, label_map, load_result, overlay, save_result, write_folder_outputs
from .regions import BACKGROUND, UNLABELLED, Region, SegmaResult

__all__ = [
    "BACKGROUND", "FEATURE_GROUPS", "FEATURE_NAMES", "N_FEATURES", "UNLABELLED", "Region", "SegmaResult",
    "coco_document", "export_dataset", "hlbb_features", "hlbb_features_batch", "label_json", "label_map",
    "load_result", "overlay", "push_dataset", "save_result", "write_folder_outputs",
]  # fmt: skip
