"""The plant Space: PlantDemo with `hubkit bootstrap`'s tiny PlantVLM and a second model pushed to the store, its
refusals, and the Gradio app's handlers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_space_depth import handler, store_template

from hubkit import hub
from hubkit.errors import ConfigError, HubkitError, InvalidImageError
from hubkit.plant.demo import DESCRIPTIONS_FILE, MODEL_NOT_AVAILABLE, TINY, PlantDemo
from hubkit.pool import ModelPool

EXAMPLES = Path(__file__).resolve().parent.parent / "spaces" / "plant" / "examples"


@pytest.fixture
def store(tmp_path_factory, isolated_home):
    template = store_template(tmp_path_factory)
    shutil.copytree(template, isolated_home, ignore=shutil.ignore_patterns(".complete"), copy_function=os.link)
    return isolated_home


@pytest.fixture(scope="module")
def pool():
    return ModelPool()


def push_second_model(tmp_path: Path) -> dict[str, str]:
    """The tiny PlantVLM re-headed for three classes, with reference texts, pushed as me/plant."""
    from hubkit.plant.model import PlantVLM

    model = PlantVLM.from_pretrained(TINY).with_classes(["Apple___healthy", "Tomato___Early_blight", "Corn___rust"])
    folder = model.save_pretrained(tmp_path / "plant")
    texts = {"Apple___healthy": "An even green leaf.", "Tomato___Early_blight": "Brown rings on old leaves.",
             "Corn___rust": "Orange pustules."}  # fmt: skip
    (folder / DESCRIPTIONS_FILE).write_text(json.dumps(texts))
    hub.push(folder, "me/plant")
    return texts


def test_examples_are_leaf_images():
    from PIL import Image

    paths = sorted(EXAMPLES.glob("*.png"))
    assert len(paths) == 3
    for path in paths:
        with Image.open(path) as img:
            assert img.size == (192, 192) and np.asarray(img).std() > 20


def test_menus_list_plant_models_only(store, tmp_path):
    demo = PlantDemo()
    assert demo.available_models() == [TINY]  # the other tiny bases (ViT classifier, SAM...) are not PlantVLMs
    push_second_model(tmp_path)
    assert demo.available_models() == [TINY, "me/plant"] and demo.default_models() == [TINY, "me/plant"]


def test_requests_reuse_a_recent_store_listing_but_never_refuse_a_new_model(store, pool, tmp_path, monkeypatch):
    """The allow-list check lists the store once per OFFERED_TTL_S, not per request; a model pushed since the last
    listing gets a fresh one instead of a refusal."""
    from hubkit.errors import HubkitError

    demo = PlantDemo(pool=pool)
    listings = []
    real = demo.available_models
    monkeypatch.setattr(demo, "available_models", lambda: listings.append(1) or real())
    example = str(sorted(EXAMPLES.glob("*.png"))[0])
    for _ in range(3):
        demo.run(example, models=[TINY], top_k=1)
    assert len(listings) == 1
    push_second_model(tmp_path)
    assert [a.model for a in demo.run(example, models=["me/plant"], top_k=1).answers] == ["me/plant"]
    assert len(listings) == 2  # the new name missed the cached listing: listed again, not refused
    with pytest.raises(HubkitError, match="not available"):
        demo.run(example, models=["me/no-such-model"], top_k=1)


def test_two_models_side_by_side_with_text_and_description(store, pool, tmp_path):
    texts = push_second_model(tmp_path)
    demo = PlantDemo(pool=pool)
    example = sorted(EXAMPLES.glob("*.png"))[0]
    run = demo.run(str(example), text="brown rings", models=[TINY, "me/plant"], top_k=3, describe=True)
    assert [a.model for a in run.answers] == [TINY, "me/plant"] and run.text == "brown rings"
    for answer in run.answers:
        assert len(answer.labels) == 3 and answer.scores == sorted(answer.scores, reverse=True)
        assert 0 < sum(answer.scores) <= 1 + 1e-5 and isinstance(answer.description, str)
    second = run.answers[1]
    assert set(second.labels) == set(texts) and second.reference == texts[second.labels[0]]
    assert "Reference text" in demo.summary(second) and "Random-weight" in demo.summary(run.answers[0])
    saved = json.loads(run.files[0].read_text())
    assert [m["model"] for m in saved["models"]] == [TINY, "me/plant"]
    assert saved["models"][1]["top_k"][0]["class"] == second.labels[0]
    # without text and without a description; the same model twice runs once
    again = demo.run(str(example), models=[TINY, TINY], top_k=1)
    assert len(again.answers) == 1 and again.answers[0].description is None and again.text is None


def test_bad_inputs_are_refused_before_any_model_loads(store, tmp_path):
    loads = []

    class Pool:
        def predictor(self, *args, **kwargs):
            loads.append(args)
            raise AssertionError("no model should load")

    demo = PlantDemo(pool=Pool())
    broken = tmp_path / "leaf.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(InvalidImageError, match="not an image"):
        demo.run(str(broken))
    with pytest.raises(InvalidImageError, match="No image"):
        demo.run(None)
    example = str(sorted(EXAMPLES.glob("*.png"))[0])
    with pytest.raises(HubkitError, match="not available here") as err:
        demo.run(example, models=["/etc/passwd"])
    assert str(err.value) == MODEL_NOT_AVAILABLE
    with pytest.raises(ConfigError, match="top_k"):
        demo.run(example, top_k=0)
    with pytest.raises(ConfigError, match="characters"):
        demo.run(example, text="x" * 5000)
    assert loads == []


def test_app_builds_and_answers_with_gradio_errors(store, monkeypatch):
    import gradio as gr

    from hubkit import serve

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    (space,) = [s for s in serve.discover_spaces() if s.name == "plant"]
    app = serve.load_space_demo(space)
    assert isinstance(app, gr.Blocks) and space.sdk == "gradio"
    assert {"predict", "menus", "preview", "refresh"} <= {fn.api_name for fn in app.fns.values()}
    first, second = handler(app, "menus")()
    assert first.value == TINY and second.value is None
    with pytest.raises(gr.Error, match="No image"):
        handler(app, "predict")(None, None, "", TINY, None, 5, False)
    with pytest.raises(gr.Error, match="not an image"):
        handler(app, "preview")(str(Path(__file__)))
    label_a, info_a, label_b, info_b, files = handler(app, "predict")(
        str(sorted(EXAMPLES.glob("*.png"))[0]), None, "", TINY, None, 3, False
    )
    # plain values, not component updates (the run-history page shows an update's label, not its classes)
    assert len(label_a) == 3 and label_b is None and TINY in info_a and info_b == "" and len(files) == 1
    assert all("___" not in c for c in label_a)  # "Tomato · Early blight"
    titles = handler(app, "label_outputs")(TINY, None)  # the browser-only step after Run titles the panels
    assert [t.label for t in titles] == [TINY, "(no second model)"]
