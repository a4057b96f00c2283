"""image-to-text on the tiny BLIP: captions, prompts, determinism, saving, adapters."""

from __future__ import annotations

import pytest
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import ConfigError
from hubkit.tasks import get_task
from hubkit.tasks.captioning import Caption

TASK = "image-to-text"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny.build("blip", tmp_path_factory.mktemp("blip") / "base")


@pytest.fixture(scope="module")
def predictor(base):
    return hubkit.load(TASK, base)


def test_caption_is_deterministic_text(predictor):
    caption = predictor.predict(data.astronaut(), max_new_tokens=8)
    assert isinstance(caption, Caption) and isinstance(caption.text, str) and caption.text.strip()
    assert predictor.predict(data.astronaut(), max_new_tokens=8) == caption
    batch = predictor.predict([data.astronaut(), data.coffee(), data.chelsea()], max_new_tokens=8)
    assert len(batch) == 3 and batch[0] == caption  # batching does not change a caption
    longer = predictor.predict(data.astronaut(), max_new_tokens=16)
    assert len(longer.text) > len(caption.text)


def test_prompt_is_continued(predictor):
    caption = predictor.predict(data.chelsea(), prompt="a photo of", max_new_tokens=5)
    assert caption.text.startswith("a photo of") and len(caption.text) > len("a photo of")
    beams = predictor.predict(data.chelsea(), prompt="a photo of", max_new_tokens=5, num_beams=2)
    assert beams.text.startswith("a photo of")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"prompt": "  "}, "prompt"), ({"max_new_tokens": 0}, "max_new_tokens"), ({"num_beams": 1.5}, "num_beams")],
)
def test_bad_arguments_are_clear_errors(predictor, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        predictor.predict(data.chelsea(), **kwargs)


def test_save_output_writes_the_caption(predictor, tmp_path):
    caption = predictor.predict(data.coffee(), max_new_tokens=6)
    [path] = get_task(TASK).save_output(caption, tmp_path, "coffee")
    assert path.name == "coffee.caption.txt"
    assert path.read_text(encoding="utf-8").strip() == caption.text


def test_random_adapter_changes_the_caption(base, predictor, tmp_path):
    adapter = tiny.random_adapter(TASK, base, tmp_path / "adapter")
    adapted = hubkit.load(TASK, base, adapters=[adapter])
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in adapted.model.named_parameters() if "lora_" in n}
    assert targets == {"query", "value", "qkv"}
    image = data.astronaut()
    assert adapted.predict(image, max_new_tokens=8) != predictor.predict(image, max_new_tokens=8)
    assert adapted.predict(image, max_new_tokens=8, adapter="base") == predictor.predict(image, max_new_tokens=8)
