"""Segmentation evaluation: mask IoU, Dice, boundary F, one-to-one instance matching, and timed evaluation.

Masks are (H, W) bool arrays (numpy or torch; any nonzero value counts as inside). IoU and Dice come from
torchmetrics (``binary_jaccard_index``; Dice is the binary F1 score, ``binary_f1_score``); the boundary F
score and the matching are custom code (torchmetrics has neither).

Conventions:

- Two empty masks agree perfectly: IoU, Dice and boundary F are 1.0 (torchmetrics' ``zero_division=1``).
- ``boundary_f_score`` is DAVIS's boundary measure F with a tolerance in pixels instead of DAVIS's fraction
  of the image diagonal; it is what the seed's ``evaluate_sam_performance`` calls "boundary accuracy".
- Instance scores are averaged over the *ground-truth* instances: a missed instance counts 0, and extra
  predictions are counted as ``false_positives`` (they do not lower the means).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from scipy.optimize import linear_sum_assignment
from torchmetrics.functional.classification import binary_f1_score, binary_jaccard_index

from ..errors import DataError

logger = logging.getLogger(__name__)

INSTANCE_METRICS = ("mean_iou", "mean_dice", "mean_boundary_f")
SEED_METRICS = ("mean_iou", "mean_dice", "mean_boundary_acc", "avg_inference_time")


def _mask(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise DataError(f"{what} must be an (H, W) mask, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def _pair(pred, gt, what: str) -> tuple[np.ndarray, np.ndarray]:
    p, g = _mask(pred, f"{what}: pred"), _mask(gt, f"{what}: gt")
    if p.shape != g.shape:
        raise DataError(f"{what}: pred and gt masks must have one shape, got {p.shape} and {g.shape}")
    return p, g


def mask_iou(pred, gt) -> float:
    """Intersection over union of two (H, W) masks; 1.0 when both are empty."""
    p, g = _pair(pred, gt, "mask_iou")
    value = binary_jaccard_index(torch.from_numpy(p), torch.from_numpy(g), validate_args=False, zero_division=1)
    return float(value)


def dice_score(pred, gt) -> float:
    """Dice coefficient ``2 |P & G| / (|P| + |G|)`` of two (H, W) masks; 1.0 when both are empty."""
    p, g = _pair(pred, gt, "dice_score")
    # Dice of two binary masks is their F1 score (2TP / (2TP + FP + FN)).
    value = binary_f1_score(torch.from_numpy(p), torch.from_numpy(g), validate_args=False, zero_division=1)
    return float(value)


def _boundary(mask: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries  # lazy: skimage is slowish to import

    return find_boundaries(mask, mode="inner")


def boundary_f_score(pred, gt, tolerance: float = 2) -> float:
    """DAVIS-style boundary F score of two (H, W) masks.

    Boundaries are the masks' inner boundary pixels (``find_boundaries(mode="inner")``: mask pixels with a
    4-neighbour outside the mask; the image border is not a boundary). A boundary pixel of one mask is matched
    when it lies within ``tolerance`` pixels (Euclidean) of the other mask's boundary. Precision is the matched
    share of the predicted boundary, recall that of the ground-truth boundary, F = 2PR / (P + R). Both
    boundaries empty gives 1.0, only one empty gives 0.0.
    """
    p, g = _pair(pred, gt, "boundary_f_score")
    if tolerance < 0:
        raise DataError(f"boundary_f_score: tolerance must be >= 0 pixels, got {tolerance!r}")
    bp, bg = _boundary(p), _boundary(g)
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    # distance_transform_edt gives each pixel's distance to the nearest zero: zeros are the other boundary.
    to_gt, to_pred = distance_transform_edt(~bg), distance_transform_edt(~bp)
    precision = float((to_gt[bp] <= tolerance).sum()) / n_p
    recall = float((to_pred[bg] <= tolerance).sum()) / n_g
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _stack(masks, what: str) -> np.ndarray:
    """(N, H, W) bool from an (N, H, W) array or a sequence of (H, W) masks; (0, 0, 0) when there are none."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    if isinstance(masks, np.ndarray):
        if masks.ndim == 3:
            return masks.astype(bool, copy=False)
        if masks.size == 0:
            return np.zeros((0, 0, 0), dtype=bool)
        raise DataError(f"{what} must be (N, H, W) masks or a list of (H, W) masks, got shape {masks.shape}")
    items = [_mask(m, f"{what}[{i}]") for i, m in enumerate(masks)]
    if not items:
        return np.zeros((0, 0, 0), dtype=bool)
    shapes = {m.shape for m in items}
    if len(shapes) > 1:
        raise DataError(f"{what}: the masks of one image must share one shape, got {sorted(shapes)}")
    return np.stack(items)


def _stacked_pair(pred_masks, gt_masks) -> tuple[np.ndarray, np.ndarray]:
    p, g = _stack(pred_masks, "pred_masks"), _stack(gt_masks, "gt_masks")
    if len(p) and len(g) and p.shape[1:] != g.shape[1:]:
        raise DataError(f"pred and gt masks must have one (H, W), got {p.shape[1:]} and {g.shape[1:]}")
    hw = p.shape[1:] if len(p) else g.shape[1:]
    return p.reshape((len(p), *hw)), g.reshape((len(g), *hw))


def iou_matrix(pred_masks, gt_masks) -> np.ndarray:
    """(N_pred, N_gt) IoU of every pair of masks (float64; two empty masks count 1.0 as in ``mask_iou``)."""
    p, g = _stacked_pair(pred_masks, gt_masks)
    n_pixels = int(np.prod(p.shape[1:]))
    pf = p.reshape(len(p), n_pixels).astype(np.float64)
    gf = g.reshape(len(g), n_pixels).astype(np.float64)
    inter = pf @ gf.T
    union = pf.sum(1)[:, None] + gf.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)


def match_instances(pred_masks, gt_masks) -> list[tuple[int, int, float]]:
    """One-to-one matching of predicted to ground-truth instances maximising the summed IoU (Hungarian).

    Returns ``(pred_index, gt_index, iou)`` sorted by ``pred_index``; pairs whose IoU is 0 are dropped, so an
    instance that overlaps nothing stays unmatched.
    """
    ious = iou_matrix(pred_masks, gt_masks)
    if ious.size == 0:
        return []
    rows, cols = linear_sum_assignment(ious, maximize=True)
    return [(int(r), int(c), float(ious[r, c])) for r, c in zip(rows, cols, strict=True) if ious[r, c] > 0]


def evaluate_instances(pred_masks, gt_masks, *, tolerance: float = 2) -> dict[str, float | int]:
    """IoU, Dice and boundary F of one image's instances, averaged over the ground-truth instances.

    Instances are matched one-to-one (``match_instances``); an unmatched ground-truth instance scores 0 on all
    three. Returns ``mean_iou``, ``mean_dice``, ``mean_boundary_f``, ``matched``, ``missed`` (ground truth left
    unmatched), ``false_positives`` (predictions left unmatched), ``num_gt`` and ``num_pred``. With no ground
    truth, the means are 1.0 when nothing was predicted either and 0.0 otherwise.
    """
    p, g = _stacked_pair(pred_masks, gt_masks)
    pairs = match_instances(p, g)
    counts = {
        "matched": len(pairs),
        "missed": len(g) - len(pairs),
        "false_positives": len(p) - len(pairs),
        "num_gt": len(g),
        "num_pred": len(p),
    }
    if len(g) == 0:
        empty = 1.0 if len(p) == 0 else 0.0
        return {**dict.fromkeys(INSTANCE_METRICS, empty), **counts}
    sums = dict.fromkeys(INSTANCE_METRICS, 0.0)
    for pi, gi, _ in pairs:
        sums["mean_iou"] += mask_iou(p[pi], g[gi])
        sums["mean_dice"] += dice_score(p[pi], g[gi])
        sums["mean_boundary_f"] += boundary_f_score(p[pi], g[gi], tolerance)
    return {**{name: total / len(g) for name, total in sums.items()}, **counts}


def masks_of(prediction) -> list[np.ndarray]:
    """The masks of what a model returned: a SegmaResult (rejected regions left out), a list of Regions,
    SAM's automatic-mask dicts (``"segmentation"``), an (N, H, W) array or a list of (H, W) masks."""
    regions = getattr(prediction, "regions", None)
    if regions is not None:
        return [r.mask for r in regions if getattr(r, "status", "pending") != "rejected"]
    if isinstance(prediction, (np.ndarray, torch.Tensor)):
        return list(prediction) if prediction.ndim == 3 else [prediction]
    out = []
    for item in prediction:
        if isinstance(item, dict):
            if "segmentation" not in item:
                raise DataError(f"A mask dict needs a 'segmentation' entry (SAM's format); got keys {sorted(item)}")
            item = item["segmentation"]
        out.append(getattr(item, "mask", item))
    return out


class SegmentationEvaluator:
    """Per-image ``evaluate_instances`` averaged over images, plus each image's inference time.

    ``compute()`` returns the seed's keys (``mean_iou``, ``mean_dice``, ``mean_boundary_acc`` = boundary F,
    ``avg_inference_time`` in seconds) and the totals ``num_images``, ``matched``, ``missed``,
    ``false_positives``. Plain sums, no distributed sync (hubkit evaluates on the main process only).
    """

    def __init__(self, *, tolerance: float = 2):
        self.tolerance = tolerance
        self.reset()

    def reset(self) -> None:
        self.per_image: list[dict[str, float | int]] = []

    def update(self, prediction, gt_masks, *, inference_time: float | None = None) -> dict[str, float | int]:
        """Add one image (``prediction`` as ``masks_of`` takes it); returns its metrics."""
        metrics = evaluate_instances(masks_of(prediction), gt_masks, tolerance=self.tolerance)
        if inference_time is not None:
            metrics["inference_time"] = float(inference_time)
        self.per_image.append(metrics)
        return metrics

    def compute(self) -> dict[str, float | int]:
        """Means over the images added; empty (with a warning) if none were."""
        if not self.per_image:
            logger.warning("SegmentationEvaluator: no images were evaluated; returning no metrics")
            return {}
        times = [m["inference_time"] for m in self.per_image if "inference_time" in m]
        out: dict[str, float | int] = {
            "mean_iou": float(np.mean([m["mean_iou"] for m in self.per_image])),
            "mean_dice": float(np.mean([m["mean_dice"] for m in self.per_image])),
            "mean_boundary_acc": float(np.mean([m["mean_boundary_f"] for m in self.per_image])),
            "avg_inference_time": float(np.mean(times)) if times else float("nan"),
            "num_images": len(self.per_image),
        }
        for key in ("matched", "missed", "false_positives"):
            out[key] = int(sum(m[key] for m in self.per_image))
        return out


def evaluate_segmentation(
    pairs: Iterable[tuple[object, Sequence]], predict_fn: Callable[[object], object], *, tolerance: float = 2
) -> dict[str, float | int]:
    """The seed's ``evaluate_sam_performance``: run ``predict_fn(image)`` on each ``(image, gt_masks)``, time it
    (wall clock, ``time.perf_counter``) and average the instance metrics over images (``SegmentationEvaluator``).

    ``predict_fn`` may return anything ``masks_of`` takes: a SegmaResult, SAM's mask dicts, masks.
    """
    evaluator = SegmentationEvaluator(tolerance=tolerance)
    for image, gt_masks in pairs:
        start = time.perf_counter()
        prediction = predict_fn(image)
        elapsed = time.perf_counter() - start
        evaluator.update(prediction, gt_masks, inference_time=elapsed)
    return evaluator.compute()
