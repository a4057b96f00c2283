"""Evaluation metrics and training losses, torchmetrics-backed where a matching metric exists."""

from __future__ import annotations

from .depth import (
    METRIC_NAMES,
    DepthMetricAccumulator,
    align_inverse,
    align_scale_shift,
    depth_metrics,
    masked_mse_normalised,
    silog_loss,
    ssi_loss,
)
from .segmentation import (
    SegmentationEvaluator,
    boundary_f_score,
    dice_score,
    evaluate_instances,
    evaluate_segmentation,
    iou_matrix,
    mask_iou,
    masks_of,
    match_instances,
)

__all__ = [
    "METRIC_NAMES",
    "DepthMetricAccumulator",
    "SegmentationEvaluator",
    "align_inverse",
    "align_scale_shift",
    "boundary_f_score",
    "depth_metrics",
    "dice_score",
    "evaluate_instances",
    "evaluate_segmentation",
    "iou_matrix",
    "mask_iou",
    "masked_mse_normalised",
    "masks_of",
    "match_instances",
    "silog_loss",
    "ssi_loss",
]
