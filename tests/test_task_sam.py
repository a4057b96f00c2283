"""mask-generation on the tiny SAM: prompted and automatic masks, NMS, saving, adapters, Meta checkpoints."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import ConfigError, UnsafeWeightsError
from hubkit.tasks import LoadOptions, get_task
from hubkit.tasks.sam import box_iou, convert_segment_anything_state_dict, masks_to_boxes, nms

TASK = "mask-generation"
NO_FILTERS = {"pred_iou_thresh": None, "stability_score_thresh": None}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny.build("sam", tmp_path_factory.mktemp("sam") / "base")


@pytest.fixture(scope="module")
def predictor(base):
    return hubkit.load(TASK, base)


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = torch.tensor([[0, 0, 10, 10], [2, 2, 12, 12], [50, 50, 60, 60], [0, 0, 10, 10.5]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # box 0 is a near-copy of the better box 3 (IoU 0.95): dropped; box 1 overlaps box 3 at IoU 68/137 ~ 0.50
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 2]
    assert nms(boxes, scores, 0.4).tolist() == [3, 2]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []
    iou = box_iou(boxes[:2], boxes[:2])
    assert iou[0, 0] == pytest.approx(1.0) and iou[0, 1] == pytest.approx(64 / 136)


def test_masks_to_boxes_on_hand_made_masks():
    masks = torch.zeros(3, 8, 10, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 7, 9] = True
    assert masks_to_boxes(masks).tolist() == [[3, 2, 7, 5], [9, 7, 10, 8], [0, 0, 0, 0]]


def test_automatic_masks_are_image_sized_sorted_and_deduplicated(predictor):
    image = data.astronaut()
    out = predictor.predict(image, **NO_FILTERS)
    n = len(out.scores)
    assert n >= 1
    assert out.masks.dtype == np.bool_ and out.masks.shape == (n, *image.shape[:2])
    assert out.scores.dtype == np.float32 and out.boxes.shape == (n, 4)
    areas = out.masks.reshape(n, -1).sum(1)
    assert (areas > 0).all() and (np.diff(areas) <= 0).all()  # largest first
    np.testing.assert_array_equal(out.boxes, masks_to_boxes(torch.from_numpy(out.masks)).numpy())
    assert (out.boxes[:, :2] >= 0).all() and (out.boxes[:, 2] <= 512).all() and (out.boxes[:, 3] <= 512).all()
    # the same grid without de-duplication keeps (many) more, overlapping masks; max_masks caps the count
    many = predictor.predict(image, box_nms_thresh=1.0, points_per_side=8, max_masks=n + 5, **NO_FILTERS)
    assert n < len(many.scores) <= n + 5
    iou = box_iou(torch.from_numpy(out.boxes), torch.from_numpy(out.boxes)).fill_diagonal_(0)
    assert (iou <= 0.7).all()


def test_thresholds_filter_untrained_masks(predictor):
    # A random model predicts IoU ~0, so SAM's usual thresholds keep nothing, with an empty but well-formed result
    out = predictor.predict(data.coffee(), points_per_side=4)
    assert out.masks.shape == (0, 400, 600) and out.scores.shape == (0,) and out.boxes.shape == (0, 4)


def test_prompted_masks_one_per_prompt(predictor):
    image = data.chelsea()  # 300 x 451, not square
    out = predictor.predict(image, points=[[100, 200], [400, 50]])
    assert out.masks.shape == (2, 300, 451) and out.masks.dtype == np.bool_ and out.scores.shape == (2,)
    assert not np.array_equal(out.masks[0], out.masks[1])  # different points, different masks
    single = predictor.predict(image, points=[100, 200])
    np.testing.assert_array_equal(single.masks[0], out.masks[0])
    boxed = predictor.predict(image, boxes=[[50, 40, 300, 250]])
    assert boxed.masks.shape == (1, 300, 451)
    both = predictor.predict(image, points=[[[120, 100], [20, 20]]], point_labels=[[1, 0]], boxes=[10, 10, 200, 200])
    assert both.masks.shape == (1, 300, 451) and np.isfinite(both.scores).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"points": [1, 2, 3]}, "points must be"),
        ({"points": [[1, 2]], "point_labels": [[1, 1]]}, "point_labels"),
        ({"points": [[1, 2]], "point_labels": [7]}, "point_labels"),
        ({"boxes": [[0, 0, 5]]}, "boxes must be"),
        ({"points": [[1, 2], [3, 4]], "boxes": [[0, 0, 5, 5]]}, "one box per prompt"),
        ({"points": [[np.nan, 2]]}, "finite"),
        ({"colour": "red"}, r"Unknown predict\(\) argument 'colour'"),  # UnknownArgumentError, a ConfigError
    ],
)
def test_bad_prompts_are_clear_errors(predictor, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        predictor.predict(data.chelsea(), **kwargs)


def test_save_output_writes_overlay_and_npz(predictor, tmp_path):
    out = predictor.predict(data.astronaut(), points=[[256, 256], [100, 400]])
    png, npz = get_task(TASK).save_output(out, tmp_path, "astronaut")
    assert png.name == "astronaut.masks.png" and npz.name == "astronaut.masks.npz"
    with Image.open(png) as img:
        assert img.size == (512, 512) and img.mode == "RGB"
    saved = np.load(npz)
    np.testing.assert_array_equal(saved["masks"], out.masks)
    np.testing.assert_allclose(saved["scores"], out.scores)


def test_random_adapter_changes_masks(base, predictor, tmp_path):
    if predictor.model.vision_encoder.neck.conv1.weight.abs().max() < 1e-6:
        pytest.xfail("tiny SAM built with SamVisionConfig's initializer_range=1e-10: the image embedding is ~0")
    adapter = tiny.random_adapter(TASK, base, tmp_path / "adapter")
    adapted = hubkit.load(TASK, base, adapters=[adapter])
    lora = [n for n, _ in adapted.model.named_parameters() if "lora_" in n]
    assert lora and all(".vision_encoder." in n for n in lora)  # the preset adapts the image encoder only
    image = data.chelsea()
    a, b = adapted.predict(image, points=[[100, 200]]), predictor.predict(image, points=[[100, 200]])
    assert a.scores[0] != b.scores[0] or not np.array_equal(a.masks, b.masks)


# -- Meta's segment-anything checkpoints --------------------------------------------------------
# Written independently of hubkit's mapping: transformers SamModel names -> segment-anything names.
HF_TO_META = [
    (r"^vision_encoder\.", "image_encoder."),
    (r"\.patch_embed\.projection\.", ".patch_embed.proj."),
    (r"^image_encoder\.layers\.", "image_encoder.blocks."),
    (r"\.neck\.conv1\.", ".neck.0."),
    (r"\.neck\.layer_norm1\.", ".neck.1."),
    (r"\.neck\.conv2\.", ".neck.2."),
    (r"\.neck\.layer_norm2\.", ".neck.3."),
    (r"\.mask_embed\.conv1\.", ".mask_downscaling.0."),
    (r"\.mask_embed\.layer_norm1\.", ".mask_downscaling.1."),
    (r"\.mask_embed\.conv2\.", ".mask_downscaling.3."),
    (r"\.mask_embed\.layer_norm2\.", ".mask_downscaling.4."),
    (r"\.mask_embed\.conv3\.", ".mask_downscaling.6."),
    (r"\.upscale_conv1\.", ".output_upscaling.0."),
    (r"\.upscale_layer_norm\.", ".output_upscaling.1."),
    (r"\.upscale_conv2\.", ".output_upscaling.3."),
    (r"\.layer_norm(\d|_final_attn)\.", r".norm\1."),
    (r"\.point_embed\.", ".point_embeddings."),
    (r"\.shared_embedding\.positional_embedding$", ".pe_layer.positional_encoding_gaussian_matrix"),
]
MLP = {"proj_in": "layers.0", "layers.0": "layers.1", "proj_out": "layers.2"}


def to_meta(state: dict) -> dict:
    out = {"pixel_mean": torch.tensor([123.675, 116.28, 103.53]), "pixel_std": torch.tensor([58.395, 57.12, 57.375])}
    for key, value in state.items():
        if key.startswith("shared_image_embedding."):
            continue
        for pattern, new in HF_TO_META:
            key = re.sub(pattern, new, key)
        key = re.sub(
            r"(mlps\.\d+|iou_prediction_head)\.(proj_in|layers\.0|proj_out)\.", lambda m: f"{m[1]}.{MLP[m[2]]}.", key
        )
        out[key] = value.clone()
    return out


@pytest.fixture(scope="module")
def meta_state(predictor):
    state = predictor.model.state_dict()
    meta = to_meta(state)
    for name in (  # names as segment-anything's sam_vit_b_01ec64.pth spells them
        "image_encoder.blocks.1.attn.qkv.weight",
        "image_encoder.neck.3.weight",
        "prompt_encoder.mask_downscaling.6.bias",
        "mask_decoder.output_upscaling.1.weight",
        "mask_decoder.iou_prediction_head.layers.2.weight",
        "mask_decoder.output_hypernetworks_mlps.3.layers.1.bias",
        "mask_decoder.transformer.norm_final_attn.weight",
        "mask_decoder.transformer.layers.0.norm4.bias",
    ):
        assert name in meta, name
    return state, meta


def test_conversion_inverts_to_the_transformers_state_dict(meta_state):
    state, meta = meta_state
    converted = convert_segment_anything_state_dict(meta)
    assert set(converted) == set(state)
    for key, value in state.items():
        assert torch.equal(converted[key], value), key


def test_load_segment_anything_checkpoints(base, predictor, meta_state, tmp_path):
    _, meta = meta_state
    expected = predictor.predict(data.chelsea(), points=[[100, 200]])
    # safetensors with Meta's keys beside the tiny config + processor files
    folder = tmp_path / "meta-safetensors"
    folder.mkdir()
    for name in ("config.json", "processor_config.json"):
        (folder / name).write_bytes((base / name).read_bytes())
    save_file({k: v.contiguous() for k, v in meta.items()}, folder / "sam_vit_t.safetensors")
    got = hubkit.load(TASK, folder).predict(data.chelsea(), points=[[100, 200]])
    np.testing.assert_array_equal(got.masks, expected.masks)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5)
    # a bare .pth (no config): pickles need an opt-in, and the config is read off the shapes
    bare = tmp_path / "meta-pth"
    bare.mkdir()
    torch.save(meta, bare / "sam_vit_t_000000.pth")
    with pytest.raises(UnsafeWeightsError, match="allow_pickle"):
        hubkit.load(TASK, bare)
    with pytest.raises(UnsafeWeightsError, match="allow_pickle"):
        get_task(TASK).load(bare, LoadOptions())
    loaded = hubkit.load(TASK, bare, allow_pickle=True)
    vision, tiny_vision = loaded.model.config.vision_config, predictor.model.config.vision_config
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_dim", "window_size", "image_size"):
        assert getattr(vision, name) == getattr(tiny_vision, name), name
    assert list(vision.global_attn_indexes) == list(tiny_vision.global_attn_indexes)
    assert loaded.processor.image_processor.size["longest_edge"] == 1024  # Meta's preprocessing without a config
