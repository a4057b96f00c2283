"""The Segma pipeline: the seed's prompts and presets, class extraction and its fallback, region matching, and the
whole chain on scikit-image photos with tiny random models."""

from __future__ import annotations

import re
from importlib import metadata

import numpy as np
import pytest
from PIL import Image
from skimage import data

from hubkit import tiny
from hubkit.errors import ConfigError
from hubkit.pipelines.segma import (
    CAPTION_PROMPTS,
    SAM_MODEL_TYPES,
    SAM_PRESETS,
    TINY_SAM_OVERRIDES,
    UNLABELLED,
    SegmaConfig,
    SegmaPipeline,
)
from hubkit.pool import ModelPool
from hubkit.tasks._sam_auto import AutomaticMaskConfig
from hubkit.tasks.detection import Detections
from hubkit.tasks.labels import Labels, class_prompt, nouns_from_caption, parse_labels
from hubkit.tasks.sam import MaskPrediction


# The seed's function, verbatim (seed 000, "Prompts Optimisés pour Classes"): our prompt must say the same.
def create_optimized_class_prompt(descriptions, domain=None):
    domain_instructions = {
        "medical": """Extract medical terminology and anatomical structures.
        Focus on: organs, anatomical parts, medical devices, pathological findings.
        Avoid: adjectives, colors, orientations.""",
        "industrial": """Extract industrial components and equipment.
        Focus on: machinery, tools, parts, systems, materials.
        Avoid: conditions, measurements, locations.""",
        "natural": """Extract natural objects and environmental features.
        Focus on: animals, plants, geological features, weather elements.
        Avoid: colors, sizes, quantities.""",
    }

    base_instruction = """Analyze these image descriptions and extract the main object classes for object detection.
    
    Rules:
    1. Extract only concrete, visible objects
    2. Use simple nouns or short phrases (1-2 words max)
    3. Avoid adjectives, colors, and descriptive words
    4. Focus on objects that can be detected visually
    5. Maximum 8 classes per description set
    """  # noqa: W293

    if domain and domain in domain_instructions:
        instruction = base_instruction + "\n\n" + domain_instructions[domain]
    else:
        instruction = base_instruction

    prompt = f"""{instruction}

Descriptions:
{chr(10).join(descriptions)}

Extract the main detectable objects as a comma-separated list:"""

    return prompt


@pytest.mark.parametrize("domain", [None, "medical", "industrial", "natural"])
def test_class_prompt_says_what_the_seed_says(domain):
    descriptions = ["Medical image showing: a chest X-ray with visible ribcage", "a second description"]
    ours, seed = class_prompt(descriptions, domain), create_optimized_class_prompt(descriptions, domain)
    # the seed's triple-quoted strings carry its source indentation; the words and lines are what the LLM reads
    assert [line.strip() for line in ours.splitlines()] == [line.strip() for line in seed.splitlines()]
    with pytest.raises(ConfigError, match="Unknown label-extraction domain 'dental'"):
        class_prompt(descriptions, "dental")


def test_presets_and_prompts_are_the_seeds():
    medical, satellite, general = SAM_PRESETS["medical"], SAM_PRESETS["satellite"], SAM_PRESETS["general"]
    assert medical.model_type == "vit_h" and dict(medical.automatic) == {
        "points_per_side": 64, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "crop_n_layers": 2,
        "crop_n_points_downscale_factor": 2,
    }  # fmt: skip
    assert satellite.model_type == "vit_l" and dict(satellite.automatic) == {
        "max_side": 2048, "points_per_side": 32, "pred_iou_thresh": 0.82, "stability_score_thresh": 0.90,
        "min_mask_region_area": 1000,
    }  # fmt: skip
    assert dict(general.automatic) == {}  # SAM's own defaults
    assert AutomaticMaskConfig() == AutomaticMaskConfig(points_per_side=32, pred_iou_thresh=0.88, box_nms_thresh=0.7)
    assert CAPTION_PROMPTS == {
        "medical": "Medical image showing:",
        "automotive": "Vehicle component:",
        "nature": "Natural scene containing:",
    }
    # segment-anything's own registry names the same model types
    build_sam = metadata.distribution("segment-anything").locate_file("segment_anything/build_sam.py").read_text()
    registry = build_sam[build_sam.index("sam_model_registry") :]
    assert set(re.findall(r'"(vit_[blh])"', registry)) == set(SAM_MODEL_TYPES)
    assert SegmaConfig(preset="medical").effective_domain == "medical"
    assert SegmaPipeline(SegmaConfig(preset="satellite")).bases()["sam"] == "facebook/sam-vit-large"
    assert SegmaPipeline(SegmaConfig(sam="vit_h")).bases()["sam"] == "facebook/sam-vit-huge"


def test_bad_configs_are_refused_before_loading():
    with pytest.raises(ConfigError, match="Unknown preset 'mri'"):
        SegmaConfig(preset="mri")
    with pytest.raises(ConfigError, match="Unknown domain 'space'"):
        SegmaConfig(domain="space")
    with pytest.raises(ConfigError, match="box_threshold must be a number in"):
        SegmaConfig(box_threshold=2)
    with pytest.raises(ConfigError, match="classes is empty"):
        SegmaConfig(classes=[" ", ""])
    with pytest.raises(ConfigError, match="points_per_side must be an integer"):
        SegmaConfig(sam_options={"points_per_side": 0})
    with pytest.raises(ConfigError, match="adapters for unknown stage"):
        SegmaConfig(adapters={"blip": ["x"]})


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("ribcage, heart, lungs, chest", ["ribcage", "heart", "lung", "chest"]),
        ("Sure! Objects:\n1. Pipes\n2. pressure gauges\n3. valves", ["pipe", "pressure gauge", "valve"]),
        ("trees, mountains, rocks, clouds, sky, leaves, berries, boxes, benches", ["tree", "mountain", "rock", "cloud",
         "sky", "leaf", "berry", "box"]),  # at most 8
        ("glass, bus, grass, people", ["glass", "bus", "grass", "person"]),
    ],
)  # fmt: skip
def test_answers_parse_to_at_most_eight_singular_nouns(answer, expected):
    assert parse_labels(answer, 8) == expected


def test_fallback_takes_the_captions_nouns():
    caption = "Medical image showing: a chest X-ray with visible ribcage, heart shadow and two lungs"
    assert nouns_from_caption(caption) == ["chest", "x-ray", "ribcage", "heart", "shadow", "lung"]
    assert nouns_from_caption("a photo of the big red and white") == []
    assert len(nouns_from_caption(" ".join(f"thing{i}" for i in range(20)))) == 8


def _pipeline(**config) -> SegmaPipeline:
    return SegmaPipeline(SegmaConfig(**config), pool=ModelPool())


def test_classes_come_from_given_llm_or_caption():
    ctx_llm = {"classes": Labels(["coin", "table"], "coin, table"), "caption": type("C", (), {"text": "a cat"})()}
    assert _pipeline()._classes(ctx_llm) == (["coin", "table"], "llm")
    ctx_empty = {"classes": Labels([], "\ufffd??"), "caption": type("C", (), {"text": "a cat on a mat"})()}
    assert _pipeline()._classes(ctx_empty) == (["cat", "mat"], "fallback")  # the LLM's answer parsed to nothing
    assert _pipeline()._classes({"caption": type("C", (), {"text": "a cat"})()}) == (["cat"], "fallback")
    assert _pipeline(classes=["Coin", "coin", "cell"])._classes(ctx_llm) == (["coin", "cell"], "given")
    assert _pipeline()._classes({}) == ([], "none")


def test_detections_are_matched_with_automatic_masks():
    h, w = 40, 60
    auto = np.zeros((3, h, w), bool)
    auto[0, 5:25, 5:25] = True  # matches the first detection's mask
    auto[1, 30:38, 40:58] = True  # nobody's
    auto[2, 0:4, 0:4] = True
    prompted = np.zeros((3, h, w), bool)
    prompted[0, 6:25, 5:25] = True
    prompted[1, 10:20, 30:50] = True  # no automatic mask near it
    # prompted[2] empty: SAM found nothing in that box -> no region
    detections = Detections(
        np.array([[5, 5, 25, 25], [30, 10, 50, 20], [0, 0, 10, 10]], np.float32),
        np.array([0.9, 0.6, 0.3], np.float32),
        ["coin", "coin", "cell"],
    )
    outputs = {
        "masks": MaskPrediction(auto, np.array([0.5, 0.4, 0.3], np.float32), np.zeros((3, 4), np.float32)),
        "boxes": detections,
        "box_masks": MaskPrediction(prompted, np.ones(3, np.float32), np.zeros((3, 4), np.float32)),
    }
    regions = _pipeline()._regions(outputs, {"kept_boxes": [0, 1, 2]}, (w, h))
    assert [(r.id, r.label, r.source) for r in regions] == [
        (1, "coin", "detection+automatic"),
        (2, "coin", "detection"),
        (3, UNLABELLED, "automatic"),
        (4, UNLABELLED, "automatic"),
    ]
    assert regions[0].score == pytest.approx(0.9) and regions[0].box == (5.0, 5.0, 25.0, 25.0)
    assert np.array_equal(regions[0].mask, prompted[0]) and np.array_equal(regions[2].mask, auto[1])
    assert regions[2].box == (40.0, 30.0, 58.0, 38.0) and regions[2].score == pytest.approx(0.4)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("segma")
    families = {"sam": "sam", "captioner": "blip", "labeler": "mistral", "detector": "grounding-dino"}
    bases = {stage: tiny.build(family, root / family) for stage, family in families.items()}
    return SegmaConfig(**bases, sam_options=dict(TINY_SAM_OVERRIDES, points_per_side=4), max_caption_tokens=12)


@pytest.fixture(scope="module")
def pool():
    return ModelPool()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["coins", "coffee", "astronaut"])
def test_whole_pipeline_on_real_photos(tiny_config, pool, name):
    image = getattr(data, name)()
    # box_threshold 0: an untrained detector's scores are ~0.5 at best, and the chain must reach SAM's box prompts
    pipeline = SegmaPipeline(tiny_config, pool=pool).with_options(box_threshold=0.0, text_threshold=0.0)
    result = pipeline.run(image)
    height, width = image.shape[:2]
    assert result.size == (width, height)
    assert set(result.timings) >= {"masks", "caption", "boxes", "box_masks", "regions", "features"}
    assert all(t >= 0 for t in result.timings.values())
    assert result.caption and result.classes and result.classes_source in ("llm", "fallback")
    assert result.classes == list(dict.fromkeys(result.classes)) and len(result.classes) <= 8
    sources = {r.source for r in result.regions}
    assert sources & {"detection", "detection+automatic"}
    assert sources <= {"detection", "detection+automatic", "automatic"}
    for region in result.regions:
        assert region.mask.shape == (height, width) and region.mask.dtype == np.bool_ and region.mask.any()
        x1, y1, x2, y2 = region.box
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert region.features.shape == (61,) and np.isfinite(region.features).all()
        assert region.label in result.classes or region.label == UNLABELLED
    assert [r.id for r in result.regions] == list(range(1, len(result.regions) + 1))
    assert set(result.models) == {"sam", "captioner", "labeler", "detector"}


@pytest.mark.slow
def test_given_classes_skip_the_llm_and_stages_switch_off(tiny_config, pool):
    pipeline = SegmaPipeline(tiny_config, pool=pool)
    given = pipeline.with_options(classes=["coin"], box_threshold=0.0, text_threshold=0.0, automatic=False).run(
        Image.fromarray(data.coins())
    )
    assert given.classes == ["coin"] and given.classes_source == "given"
    assert "classes" in given.skipped and "masks" in given.skipped and "labeler" not in given.models
    assert given.regions and all(r.label == "coin" and r.source == "detection" for r in given.regions)
    nothing = pipeline.with_options(classes=["coin"], box_threshold=1.0, automatic=False).run(data.coins())
    assert nothing.regions == [] and nothing.labelled() == [] and "box_masks" in nothing.skipped
