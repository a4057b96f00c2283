"""image-embedding on the tiny DINOv2: vector shape, unit norm, pooling, similarity, adapters, .npy output."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import ConfigError
from hubkit.tasks import get_task
from hubkit.tasks.embedding import Embedding

TASK = "image-embedding"
HIDDEN = 32  # the tiny model's hidden size


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny.build("image-embedding", tmp_path_factory.mktemp("tiny") / "dinov2")


@pytest.fixture(scope="module")
def predictor(base):
    return hubkit.load(TASK, base)


def test_vector_is_float32_unit_norm(predictor):
    out = predictor.predict(data.astronaut())
    assert isinstance(out, Embedding)
    assert out.vector.dtype == np.float32 and out.vector.shape == (HIDDEN,)
    assert np.linalg.norm(out.vector) == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(out.vector).all()
    raw = predictor.predict(data.astronaut(), normalize=False)
    assert np.linalg.norm(raw.vector) != pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(raw.vector / np.linalg.norm(raw.vector), out.vector, rtol=1e-5, atol=1e-6)


def test_same_image_equal_different_images_differ(predictor):
    astronaut, again = predictor.predict([data.astronaut(), data.astronaut()])
    np.testing.assert_allclose(astronaut.vector, again.vector, atol=1e-6)
    np.testing.assert_array_equal(
        predictor.predict(data.astronaut()).vector, predictor.predict(data.astronaut()).vector
    )
    coffee, cat, ihc = predictor.predict([data.coffee(), data.chelsea(), data.immunohistochemistry()])
    for other in (coffee, cat, ihc):
        assert astronaut.cosine(other) < 0.999
        assert astronaut.cosine(other) == pytest.approx(float(astronaut.vector @ other.vector), abs=1e-5)
    assert astronaut.cosine(again) == pytest.approx(1.0, abs=1e-5)


def test_mean_pooling_differs_from_cls(predictor):
    cls = predictor.predict(data.coffee(), pooling="cls")
    mean = predictor.predict(data.coffee(), pooling="mean")
    assert mean.vector.shape == cls.vector.shape
    assert np.linalg.norm(mean.vector) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(mean.vector, cls.vector, atol=1e-3)


def test_bad_pooling_is_a_clear_error(predictor):
    with pytest.raises(ConfigError, match="pooling must be one of"):
        predictor.predict(data.coffee(), pooling="max")


def test_adapter_changes_the_embedding(base, tmp_path):
    adapter = tiny.random_adapter(TASK, base, tmp_path / "lora", seed=3)
    predictor = hubkit.load(TASK, base, adapters=[adapter])
    adapted = predictor.predict(data.chelsea())
    plain = predictor.predict(data.chelsea(), adapter="base")
    assert np.linalg.norm(adapted.vector) == pytest.approx(1.0, abs=1e-5)
    assert adapted.cosine(plain) < 0.9999


def test_save_output_writes_npy(predictor, tmp_path):
    out = predictor.predict(data.immunohistochemistry())
    [path] = get_task(TASK).save_output(out, tmp_path / "out", "ihc")
    assert path.suffix == ".npy"
    np.testing.assert_array_equal(np.load(path), out.vector)
