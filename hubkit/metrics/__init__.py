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

__all__ = [
    "METRIC_NAMES",
    "DepthMetricAccumulator",
    "align_inverse",
    "align_scale_shift",
    "depth_metrics",
    "masked_mse_normalised",
    "silog_loss",
    "ssi_loss",
]
