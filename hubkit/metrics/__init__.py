"""Evaluation metrics and training losses, torchmetrics-backed where a matching metric exists."""

from __future__ import annotations

from .classification import (
    ClassificationAccumulator,
    classification_metrics,
    model_index,
    perplexity_from_logits,
    perplexity_from_loss,
    plot_confusion_matrix,
    plot_per_class_f1,
    text_generation_metrics,
    write_evaluation_report,
)
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
    "ClassificationAccumulator",
    "DepthMetricAccumulator",
    "SegmentationEvaluator",
    "align_inverse",
    "align_scale_shift",
    "boundary_f_score",
    "classification_metrics",
    "depth_metrics",
    "dice_score",
    "evaluate_instances",
    "evaluate_segmentation",
    "iou_matrix",
    "mask_iou",
    "masked_mse_normalised",
    "masks_of",
    "match_instances",
    "model_index",
    "perplexity_from_logits",
    "perplexity_from_loss",
    "plot_confusion_matrix",
    "plot_per_class_f1",
    "silog_loss",
    "ssi_loss",
    "text_generation_metrics",
    "write_evaluation_report",
]
