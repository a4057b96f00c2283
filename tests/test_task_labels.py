"""label-extraction: parsing real LLM answers, the chat prompt, generation on the tiny Mistral, adapters, errors."""

from __future__ import annotations

import json

import pytest
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import ConfigError
from hubkit.tasks import get_task
from hubkit.tasks.labels import Labels, parse_labels

TASK = "label-extraction"
CAPTIONS = ["a cat sitting on a mat next to a window"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cat, mat, window", ["cat", "mat", "window"]),
        (" Cat,  Mat , WINDOW.", ["cat", "mat", "window"]),
        ("cat, dog, and a ball", ["cat", "dog", "ball"]),
        ("Objects: person, bicycle, traffic light", ["person", "bicycle", "traffic light"]),
        ("Sure! Here is the list of objects:\n1. cat\n2. mat\n3. window", ["cat", "mat", "window"]),
        ("- cat\n- the mat\n* window\n• cat", ["cat", "mat", "window"]),
        ('["cup", "saucer", "spoon"]', ["cup", "saucer", "spoon"]),
        ("cat; dog; cat; Dog", ["cat", "dog"]),
        ("astronaut (person), flag, helmet", ["astronaut", "flag", "helmet"]),
        ("cup, saucer</s>", ["cup", "saucer"]),
        ("  ,, \n\n , ", []),
        ("", []),
        ("The image shows a woman in a white space suit standing in front of a flag", []),
        ("cat, 42, ???, a very long description of something that is not a class name", ["cat"]),
        ("\ufffdZreyQu # 6zen, t-shirt, café", ["t-shirt", "café"]),  # byte-level garbage from an untrained model
    ],
)
def test_parse_labels(text, expected):
    assert parse_labels(text) == expected


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny.build("mistral", tmp_path_factory.mktemp("tiny") / "mistral")


@pytest.fixture(scope="module")
def predictor(base):
    return hubkit.load(TASK, base)


def test_prompt_is_a_chat_turn_with_the_captions(predictor):
    task = get_task(TASK)
    text = predictor.processor.apply_chat_template(
        task.prompt(["a cat on a mat", "a window"]), add_generation_prompt=True, tokenize=False
    )
    assert text.startswith("<s>[INST] ") and text.endswith(" [/INST]")
    assert "Descriptions:\na cat on a mat\na window\n\nExtract the main detectable objects" in text


def test_predict_generates_greedily_and_parses(predictor):
    out = predictor.predict(data.astronaut(), captions=CAPTIONS, max_new_tokens=12)
    assert isinstance(out, Labels) and isinstance(out.raw, str) and out.raw
    assert out.names == parse_labels(out.raw)
    shorter = predictor.predict(data.astronaut(), captions=CAPTIONS, max_new_tokens=3)
    assert 0 < len(shorter.raw) < len(out.raw)
    again = predictor.predict(data.astronaut(), captions=CAPTIONS, max_new_tokens=12)
    assert again == out  # greedy: deterministic


def test_captions_per_image_or_one_for_all(predictor):
    one, two = predictor.predict([data.astronaut(), data.coffee()], captions=["a cup of coffee"], max_new_tokens=8)
    assert one == two
    a, b = predictor.predict(
        [data.astronaut(), data.coffee()], captions=[["a woman", "a flag"], "a cup of coffee"], max_new_tokens=8
    )
    assert b == one  # the same captions give the same answer, whichever image they come with
    assert a == predictor.predict(data.coffee(), captions=[["a woman", "a flag"]], max_new_tokens=8)
    # direct use without images: one answer per caption entry
    task = get_task(TASK)
    outs = task.predict(predictor.model, predictor.processor, [], captions=["a cup", "a dog"], max_new_tokens=4)
    assert len(outs) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "needs the captions"),
        ({"captions": []}, "non-empty list"),
        ({"captions": ["a cat", "  "]}, "non-empty strings"),
        ({"captions": ["a", "b", "c"]}, "3 captions for 1 images"),
        ({"captions": CAPTIONS, "max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_bad_inputs_are_clear_errors(predictor, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        predictor.predict(data.astronaut(), **kwargs)


def test_adapter_changes_the_answer(base, tmp_path):
    adapter = tiny.random_adapter(TASK, base, tmp_path / "lora", seed=2, strength=2.0)
    predictor = hubkit.load(TASK, base, adapters=[adapter])
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in predictor.model.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with_lora = predictor.predict(data.astronaut(), captions=CAPTIONS, max_new_tokens=12)
    without = predictor.predict(data.astronaut(), captions=CAPTIONS, max_new_tokens=12, adapter="base")
    assert with_lora.raw != without.raw


def test_quantize_errors_are_clear(base, monkeypatch):
    import sys

    from hubkit.errors import ConfigError

    with pytest.raises(ConfigError, match="'int8' or 'nf4'"):
        hubkit.load(TASK, base, quantize="int4")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as on a machine without it
    with pytest.raises(ConfigError, match=r"quantize='nf4' needs bitsandbytes: pip install 'hubkit\[quant\]'"):
        hubkit.load(TASK, base, quantize="nf4")


def test_save_output_writes_json(tmp_path):
    out = Labels(["cat", "mat"], "cat, mat")
    [path] = get_task(TASK).save_output(out, tmp_path / "out", "astronaut")
    assert json.loads(path.read_text()) == {"names": ["cat", "mat"], "raw": "cat, mat"}
