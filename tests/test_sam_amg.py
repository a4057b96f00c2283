"""Automatic masks follow segment-anything's SamAutomaticMaskGenerator: its utilities, its rules, its defaults."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data, draw, filters

import hubkit
from hubkit import tiny
from hubkit.errors import ConfigError
from hubkit.tasks import _sam_auto
from hubkit.tasks._sam_auto import AutomaticMaskConfig, amg, filter_batch, remove_small_regions

NO_FILTERS = {"pred_iou_thresh": None, "stability_score_thresh": None}


def _masks() -> list[np.ndarray]:
    coins = data.coins()
    blobs = coins > filters.threshold_otsu(coins)  # many islands and holes of every size
    rng = np.random.default_rng(0)
    speckle = rng.random((64, 80)) > 0.7
    disc = np.zeros((50, 50), bool)
    disc[draw.disk((25, 25), 15)] = True
    disc[24:27, 24:27] = False  # a 9-px hole
    disc[0, 0] = True  # a 1-px island
    return [blobs, speckle, disc, np.zeros((10, 10), bool)]


@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("area", [1, 10, 100, 1000])
def test_small_region_removal_matches_segment_anything(mode, area):
    pytest.importorskip("cv2")  # segment-anything's own version needs OpenCV
    for mask in _masks():
        ours, changed = remove_small_regions(mask, area, mode)
        theirs, their_changed = amg().remove_small_regions(mask, area, mode)
        assert changed == their_changed
        np.testing.assert_array_equal(ours, theirs)


def test_batch_filters_match_segment_anything_rules():
    torch.manual_seed(0)
    logits = torch.randn(12, 40, 60) * 4
    logits[3] = 8.0  # fills the crop: touches its inner edge
    logits[4] = -8.0
    logits[4, 10:20, 25:35] = 8.0  # a clean, stable square, over 20 px from the inner (left) crop edge
    iou = torch.linspace(0.80, 0.99, 12)
    cfg = AutomaticMaskConfig(pred_iou_thresh=0.85, stability_score_thresh=0.5)
    crop_box, orig = [40, 0, 100, 40], (40, 100)  # the right part of a 100 px wide image
    masks, scores, boxes = filter_batch(logits, iou, crop_box, orig, cfg)
    # segment-anything's _process_batch, written out with its own functions
    a = amg()
    keep = iou > 0.85
    stable = a.calculate_stability_score(logits[keep], 0.0, 1.0) >= 0.5
    expected = logits[keep][stable] > 0
    near = a.is_box_near_crop_edge(a.batched_mask_to_box(expected), crop_box, [0, 0, 100, 40])
    assert torch.equal(masks, expected[~near]) and torch.equal(scores, iou[keep][stable][~near])
    assert torch.equal(boxes, a.batched_mask_to_box(expected[~near]))
    assert near.any()  # the full-crop mask touched the inner edge and was dropped
    assert any(torch.equal(m, logits[4] > 0) for m in masks)  # the square survived


def test_config_defaults_are_sams_and_bad_values_are_refused():
    cfg = AutomaticMaskConfig()
    assert (cfg.points_per_side, cfg.points_per_batch, cfg.pred_iou_thresh, cfg.stability_score_thresh) == (
        32,
        64,
        0.88,
        0.95,
    )
    assert (cfg.box_nms_thresh, cfg.crop_n_layers, cfg.min_mask_region_area) == (0.7, 0, 0)
    with pytest.raises(ConfigError, match="points_per_side must be an integer >= 1"):
        AutomaticMaskConfig(points_per_side=0)
    with pytest.raises(ConfigError, match=r"pred_iou_thresh must be a number in \[0, 1\]"):
        AutomaticMaskConfig(pred_iou_thresh=1.5)
    with pytest.raises(ConfigError, match="leaves no point on crop layer 3"):
        AutomaticMaskConfig(points_per_side=4, crop_n_layers=3, crop_n_points_downscale_factor=2)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return hubkit.load("mask-generation", tiny.build("sam", tmp_path_factory.mktemp("sam") / "base"))


def test_one_embedding_per_crop_and_points_in_batches(predictor, monkeypatch):
    model = predictor.model
    calls = {"embed": 0, "decode": 0}
    embed, forward = model.get_image_embeddings, model.forward

    def counting_embed(*args, **kwargs):
        calls["embed"] += 1
        return embed(*args, **kwargs)

    def counting_forward(*args, **kwargs):
        calls["decode"] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "get_image_embeddings", counting_embed)
    monkeypatch.setattr(model, "forward", counting_forward)
    out = predictor.predict(
        data.coffee(), points_per_side=8, points_per_batch=20, crop_n_layers=1, crop_n_points_downscale_factor=2,
        **NO_FILTERS,
    )  # fmt: skip
    # 1 full image + 4 crops; 64 points in 4 batches on the image, 16 in 1 batch per crop
    assert calls == {"embed": 5, "decode": 4 + 4 * 1}
    assert out.masks.shape[1:] == (400, 600) and len(out.masks) >= 1


def test_min_region_area_and_max_side(predictor):
    image = data.astronaut()
    out = predictor.predict(image, points_per_side=4, min_mask_region_area=200, **NO_FILTERS)
    for mask in out.masks:
        assert remove_small_regions(mask, 200, "islands")[1] is False  # no island left under the area
        assert remove_small_regions(mask, 200, "holes")[1] is False
    small = predictor.predict(image, points_per_side=4, max_side=128, **NO_FILTERS)
    assert small.masks.shape[1:] == (512, 512)  # processed at 128 px, returned at the image's size


def test_amg_is_loaded_without_torchvision():
    assert _sam_auto.amg().__name__ == "hubkit._segment_anything_amg"
    assert hasattr(_sam_auto.amg(), "generate_crop_boxes")
