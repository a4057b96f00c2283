"""zero-shot-object-detection on the tiny Grounding DINO: boxes, labels, thresholds, saving, adapters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import ConfigError
from hubkit.tasks import get_task
from hubkit.tasks.detection import Detections

TASK = "zero-shot-object-detection"
LABELS = ["a cat", "A person", "a coffee cup"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny.build("grounding-dino", tmp_path_factory.mktemp("gdino") / "base")


@pytest.fixture(scope="module")
def predictor(base):
    return hubkit.load(TASK, base)


def test_detections_are_boxes_in_the_image_with_the_asked_labels(predictor):
    image = data.coffee()  # 400 x 600
    out = predictor.predict(image, labels=LABELS, box_threshold=0.0, text_threshold=0.0)
    n = len(out.labels)
    assert isinstance(out, Detections) and n > 0
    assert out.boxes.shape == (n, 4) and out.boxes.dtype == np.float32
    assert out.scores.shape == (n,) and out.scores.dtype == np.float32
    assert ((out.scores >= 0) & (out.scores <= 1)).all() and (np.diff(out.scores) <= 0).all()  # best first
    assert set(out.labels) <= set(LABELS)
    x1, y1, x2, y2 = out.boxes.T
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 600).all() and (y2 <= 400).all()
    assert (x2 >= x1).all() and (y2 >= y1).all()
    again = predictor.predict(image, labels=LABELS, box_threshold=0.0, text_threshold=0.0)
    np.testing.assert_array_equal(again.boxes, out.boxes)


def test_box_threshold_filters(predictor):
    image = data.chelsea()
    everything = predictor.predict(image, labels=LABELS, box_threshold=0.0)
    cut = float(np.median(everything.scores))
    some = predictor.predict(image, labels=LABELS, box_threshold=cut)
    assert 0 < len(some.scores) < len(everything.scores) and (some.scores > cut).all()
    assert predictor.predict(image, labels=LABELS, box_threshold=1.0).boxes.shape == (0, 4)
    one = predictor.predict(image, labels="a cat. a dog.", box_threshold=0.0)  # Grounding DINO's own text format
    assert set(one.labels) <= {"a cat", "a dog"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "needs labels"),
        ({"labels": []}, "needs labels"),
        ({"labels": ["  "]}, "non-empty"),
        ({"labels": ["a cat.dog"]}, "without '.'"),
        ({"labels": LABELS, "box_threshold": 2}, "box_threshold"),
    ],
)
def test_bad_arguments_are_clear_errors(predictor, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        predictor.predict(data.chelsea(), **kwargs)


def test_save_output_writes_json_and_annotated_png(predictor, tmp_path):
    out = predictor.predict(data.chelsea(), labels=LABELS, box_threshold=0.0)
    js, png = get_task(TASK).save_output(out, tmp_path, "chelsea")
    assert js.name == "chelsea.detections.json" and png.name == "chelsea.detections.png"
    saved = json.loads(js.read_text())
    assert saved["image"] == {"width": 451, "height": 300}
    assert len(saved["detections"]) == len(out.labels)
    first = saved["detections"][0]
    x1, y1, x2, y2 = first["box_xyxy"]
    assert first["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])  # COCO: x, y, width, height
    assert first["label"] == out.labels[0] and first["score"] == pytest.approx(float(out.scores[0]))
    with Image.open(png) as img:
        assert img.size == (451, 300)
        assert not np.array_equal(np.asarray(img.convert("RGB")), data.chelsea())  # boxes were drawn


def test_random_adapter_changes_detections(base, predictor, tmp_path):
    adapter = tiny.random_adapter(TASK, base, tmp_path / "adapter")
    adapted = hubkit.load(TASK, base, adapters=[adapter])
    lora = {n.split(".lora_")[0] for n, _ in adapted.model.named_parameters() if "lora_" in n}
    assert lora and not any("backbone" in n for n in lora)  # backbones stay frozen
    assert any(n.endswith("decoder.layers.0.encoder_attn_text.query") for n in lora)
    image = data.coffee()
    a = adapted.predict(image, labels=LABELS, box_threshold=0.0)
    b = predictor.predict(image, labels=LABELS, box_threshold=0.0)
    assert a.boxes.shape != b.boxes.shape or not np.allclose(a.boxes, b.boxes)
