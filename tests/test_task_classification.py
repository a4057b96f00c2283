"""image-classification on the tiny ViT: top-k ordering, softmax scores, batching, adapters, JSON output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import ConfigError
from hubkit.tasks import get_task
from hubkit.tasks.classification import Classification

TASK = "image-classification"
LABELS = {"cat", "dog", "bird", "car", "tree"}  # the tiny model's id2label


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny.build("image-classification", tmp_path_factory.mktemp("tiny") / "vit")


@pytest.fixture(scope="module")
def predictor(base):
    return hubkit.load(TASK, base)


def test_top_k_labels_sorted_by_softmax_score(predictor):
    out = predictor.predict(data.chelsea(), top_k=3)
    assert isinstance(out, Classification)
    assert len(out.labels) == 3 and len(set(out.labels)) == 3 and set(out.labels) <= LABELS
    assert out.scores.dtype == np.float32 and out.scores.shape == (3,)
    assert np.all(np.diff(out.scores) <= 0)  # best first
    assert np.all((out.scores > 0) & (out.scores <= 1)) and out.scores.sum() <= 1 + 1e-6
    full = predictor.predict(data.chelsea(), top_k=5)
    assert full.scores.sum() == pytest.approx(1.0, abs=1e-5)  # every class: the whole distribution
    assert full.labels[:3] == out.labels
    np.testing.assert_allclose(full.scores[:3], out.scores, rtol=1e-6)


def test_top_k_larger_than_the_label_set_is_clamped(predictor):
    out = predictor.predict(data.coffee(), top_k=50)
    assert sorted(out.labels) == sorted(LABELS)


def test_deterministic_and_batch_matches_single(predictor):
    images = [data.astronaut(), data.coffee(), data.immunohistochemistry()]
    singles = [predictor.predict(img) for img in images]
    again = predictor.predict(images[0])
    assert again.labels == singles[0].labels
    np.testing.assert_array_equal(again.scores, singles[0].scores)
    batch = predictor.predict(images)
    for one, many in zip(singles, batch, strict=True):
        assert one.labels == many.labels
        np.testing.assert_allclose(one.scores, many.scores, rtol=1e-4, atol=1e-6)
    assert not np.allclose(singles[0].scores, singles[1].scores)  # different images, different scores


@pytest.mark.parametrize("top_k", [0, -1, 2.5, True, "3"])
def test_bad_top_k_is_a_clear_error(predictor, top_k):
    with pytest.raises(ConfigError, match="top_k must be a positive integer"):
        predictor.predict(data.coffee(), top_k=top_k)


def test_adapter_changes_scores(base, tmp_path):
    adapter = tiny.random_adapter(TASK, base, tmp_path / "lora", seed=1)
    predictor = hubkit.load(TASK, base, adapters=[adapter])
    names = [n for n, _ in predictor.model.named_parameters() if "lora_A" in n]
    assert names and all(any(t in n for t in ("q_proj", "k_proj", "v_proj")) for n in names)
    adapted = predictor.predict(data.chelsea())
    plain = predictor.predict(data.chelsea(), adapter="base")
    assert not np.allclose(adapted.scores, plain.scores, atol=1e-4)


def test_save_output_writes_json(predictor, tmp_path):
    out = predictor.predict(data.astronaut(), top_k=2)
    [path] = get_task(TASK).save_output(out, tmp_path / "out", "astronaut")
    rows = json.loads(path.read_text())
    assert [r["label"] for r in rows] == out.labels
    np.testing.assert_allclose([r["score"] for r in rows], out.scores, rtol=1e-6)
