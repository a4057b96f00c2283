"""hubkit.metrics.segmentation: IoU / Dice / boundary F by hand, Hungarian matching, per-image and timed evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hubkit.errors import DataError
from hubkit.metrics import (
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
from hubkit.segma.regions import Region, SegmaResult

F32 = 1e-6  # torchmetrics computes in float32


def square(top: int, left: int, size: int = 10, shape=(40, 40)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def cols(start: int, stop: int, shape=(10, 20)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[:, start:stop] = True
    return mask


@pytest.fixture(scope="module")
def coin_masks() -> list[np.ndarray]:
    """Real-looking shapes: the coins of skimage's coins() image, thresholded and split into components."""
    from scipy.ndimage import binary_fill_holes
    from skimage import data, filters, measure

    image = data.coins()[:150, :200]
    labels = measure.label(binary_fill_holes(image > filters.threshold_otsu(image)))
    sizes = np.bincount(labels.ravel())
    big = [k for k in np.argsort(sizes)[::-1] if k != 0 and sizes[k] >= 300][:6]
    return [labels == k for k in big]


# ---- IoU and Dice by hand ----


def test_offset_squares_iou_and_dice():
    # Two 10x10 squares, the second 5 px to the right: intersection 10 x 5 = 50 px,
    # union 100 + 100 - 50 = 150 px -> IoU 50/150 = 1/3; Dice 2 * 50 / (100 + 100) = 0.5.
    a, b = square(5, 5), square(5, 10)
    assert mask_iou(a, b) == pytest.approx(50 / 150, abs=F32)
    assert dice_score(a, b) == pytest.approx(100 / 200, abs=F32)
    # Dice = 2 IoU / (1 + IoU) for any pair
    assert dice_score(a, b) == pytest.approx(2 * (1 / 3) / (1 + 1 / 3), abs=F32)


def test_nested_squares():
    # 4x4 inside 10x10: intersection 16, union 100 -> IoU 0.16; Dice 32 / 116.
    outer, inner = square(5, 5), square(8, 8, size=4)
    assert mask_iou(inner, outer) == pytest.approx(0.16, abs=F32)
    assert dice_score(inner, outer) == pytest.approx(32 / 116, abs=F32)


def test_empty_masks():
    empty, full = np.zeros((8, 8), bool), square(2, 2, size=4, shape=(8, 8))
    # both empty: a perfect (empty) prediction of an empty target, by convention 1.0 everywhere
    assert mask_iou(empty, empty) == dice_score(empty, empty) == boundary_f_score(empty, empty) == 1.0
    # one empty: no overlap at all
    assert mask_iou(full, empty) == dice_score(full, empty) == boundary_f_score(full, empty) == 0.0
    assert mask_iou(empty, full) == dice_score(empty, full) == boundary_f_score(empty, full) == 0.0


def test_accepts_torch_and_int_masks():
    a, b = square(5, 5), square(5, 10)
    assert mask_iou(torch.from_numpy(a), b.astype(np.uint8) * 255) == pytest.approx(1 / 3, abs=F32)


def test_bad_shapes_raise():
    with pytest.raises(DataError, match="one shape"):
        mask_iou(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(DataError, match=r"\(H, W\)"):
        dice_score(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4), bool))
    with pytest.raises(DataError, match="tolerance"):
        boundary_f_score(square(5, 5), square(5, 5), tolerance=-1)


def test_agrees_with_torchmetrics_and_numpy(coin_masks):
    from torchmetrics.functional.segmentation import dice_score as tm_dice
    from torchmetrics.functional.segmentation import mean_iou as tm_iou

    assert len(coin_masks) >= 4
    shifted = [np.roll(m, (3, -2), axis=(0, 1)) for m in coin_masks]
    matrix = iou_matrix(shifted, coin_masks)
    for i, (p, g) in enumerate(zip(shifted, coin_masks, strict=True)):
        inter, union = np.logical_and(p, g).sum(), np.logical_or(p, g).sum()
        assert mask_iou(p, g) == pytest.approx(inter / union, abs=F32)
        assert matrix[i, i] == pytest.approx(inter / union, abs=1e-12)
        assert dice_score(p, g) == pytest.approx(2 * inter / (p.sum() + g.sum()), abs=F32)
        one_hot = lambda m: torch.from_numpy(m)[None, None].long()  # noqa: E731
        assert mask_iou(p, g) == pytest.approx(float(tm_iou(one_hot(p), one_hot(g), num_classes=1)), abs=F32)
        assert dice_score(p, g) == pytest.approx(float(tm_dice(one_hot(p), one_hot(g), num_classes=1)), abs=F32)


# ---- boundary F ----


def test_boundary_f_identical_and_shifts():
    gt = square(5, 5)
    assert boundary_f_score(gt, gt) == 1.0
    # 1 px to the right: every boundary pixel of one square is within 1 px of the other's -> P = R = 1 at tol 2
    assert boundary_f_score(square(5, 6), gt, tolerance=2) == 1.0
    # At tolerance 0 only pixels on both boundaries match. Each square's inner boundary is 36 px
    # (10 * 4 - 4 corners); the shared pixels are the top and bottom rows at columns 6..14: 9 + 9 = 18.
    # P = R = 18 / 36 = 0.5 -> F = 0.5.
    assert boundary_f_score(square(5, 6), gt, tolerance=0) == pytest.approx(0.5)
    # 20 px away: no boundary pixel within 2 px of the other boundary -> F = 0
    assert boundary_f_score(square(5, 25), gt) == 0.0


def test_boundary_f_falls_as_the_boundary_moves_away(coin_masks):
    from scipy.ndimage import binary_dilation

    gt = coin_masks[1]  # one coin ([0] is the merged blob along the top edge)
    scores = [boundary_f_score(binary_dilation(gt, iterations=n), gt) for n in (1, 2, 3)]
    # grown by 1-2 px: nearly every boundary pixel within the 2 px tolerance; by 3 px: none
    assert scores[0] > 0.95 and scores[1] > 0.95 and scores[0] >= scores[1]
    assert scores[2] == 0.0
    assert boundary_f_score(binary_dilation(gt, iterations=3), gt, tolerance=3) > 0.95


# ---- matching ----


def test_hungarian_beats_greedy():
    # One row strip 10 px high, 20 px wide. gt0 = columns 0..9, gt1 = columns 10..19.
    # pred A = columns 3..18: with gt0 inter 7 cols, union 19 cols -> 7/19 = 0.368
    #                          with gt1 inter 9 cols, union 17 cols -> 9/17 = 0.529
    # pred B = columns 16..19: with gt1 inter 4 cols, union 10 cols -> 0.4; with gt0 nothing.
    # A greedy match takes the best pair first (A-gt1, 0.529) and leaves B with nothing: one match, sum 0.529.
    # The one-to-one optimum is A-gt0 + B-gt1 = 0.368 + 0.4 = 0.768: two matches.
    gt = [cols(0, 10), cols(10, 20)]
    pred = [cols(3, 19), cols(16, 20)]
    pairs = match_instances(pred, gt)
    assert [(p, g) for p, g, _ in pairs] == [(0, 0), (1, 1)]
    assert [iou for _, _, iou in pairs] == pytest.approx([7 / 19, 0.4])
    report = evaluate_instances(pred, gt)
    assert report["matched"] == 2 and report["missed"] == 0 and report["false_positives"] == 0
    assert report["mean_iou"] == pytest.approx((7 / 19 + 0.4) / 2, abs=F32)


def test_match_drops_zero_iou_pairs():
    pairs = match_instances([square(0, 0)], [square(20, 20)])
    assert pairs == []


def test_evaluate_instances_counts_missed_and_false_positives():
    gt = [square(5, 5), square(20, 20)]
    pred = [square(5, 5), square(0, 28, size=5)]  # one exact, one that overlaps nothing
    report = evaluate_instances(pred, gt)
    assert report["matched"] == 1 and report["missed"] == 1 and report["false_positives"] == 1
    # over the 2 ground-truth instances: 1 (exact) + 0 (missed)
    assert report["mean_iou"] == pytest.approx(0.5, abs=F32)
    assert report["mean_dice"] == pytest.approx(0.5, abs=F32)
    assert report["mean_boundary_f"] == pytest.approx(0.5)
    assert (report["num_gt"], report["num_pred"]) == (2, 2)


def test_evaluate_instances_without_ground_truth():
    assert evaluate_instances([], [])["mean_iou"] == 1.0
    only_pred = evaluate_instances([square(5, 5)], [])
    assert only_pred["mean_iou"] == 0.0 and only_pred["false_positives"] == 1
    nothing_found = evaluate_instances([], [square(5, 5)])
    assert nothing_found["mean_iou"] == 0.0 and nothing_found["missed"] == 1
    assert evaluate_instances(np.zeros((0, 40, 40), bool), np.stack([square(5, 5)]))["missed"] == 1


def test_evaluate_instances_shape_mismatch():
    with pytest.raises(DataError, match="one"):
        evaluate_instances([np.zeros((4, 4), bool)], [np.zeros((5, 5), bool)])


# ---- the seed's evaluate_sam_performance ----


def test_masks_of_formats():
    m = square(5, 5)
    result = SegmaResult(
        image=Image.new("RGB", (40, 40)),
        regions=[
            Region(0, m, (5, 5, 15, 15), "a", 0.9, "detection"),
            Region(1, square(20, 20), (20, 20, 30, 30), "b", 0.8, "detection", status="rejected"),
        ],
    )
    assert len(masks_of(result)) == 1  # rejected left out
    assert len(masks_of([{"segmentation": m, "area": 100}])) == 1  # SAM automatic mask generator
    assert len(masks_of(np.stack([m, m]))) == 2
    with pytest.raises(DataError, match="segmentation"):
        masks_of([{"mask": m}])


def test_evaluate_segmentation_times_each_prediction():
    gt_a, gt_b = [square(5, 5), square(20, 20)], [square(10, 10)]
    predictions = {"a": [square(5, 5), square(20, 20)], "b": [{"segmentation": square(10, 15)}]}
    calls = []

    def predict(image):
        calls.append(image)
        return predictions[image]

    metrics = evaluate_segmentation([("a", gt_a), ("b", gt_b)], predict)
    assert calls == ["a", "b"]
    # image a: perfect (1.0); image b: 10x10 squares offset 5 px -> IoU 1/3, Dice 0.5; means over images
    assert metrics["mean_iou"] == pytest.approx((1 + 1 / 3) / 2, abs=F32)
    assert metrics["mean_dice"] == pytest.approx((1 + 0.5) / 2, abs=F32)
    assert 0 < metrics["mean_boundary_acc"] < 1
    assert metrics["avg_inference_time"] >= 0
    assert metrics["num_images"] == 2 and metrics["matched"] == 3 and metrics["missed"] == 0


def test_evaluator_empty_and_reset(caplog):
    evaluator = SegmentationEvaluator()
    assert evaluator.compute() == {}
    evaluator.update([square(5, 5)], [square(5, 5)], inference_time=0.25)
    assert evaluator.compute()["avg_inference_time"] == 0.25
    evaluator.reset()
    assert evaluator.compute() == {}
