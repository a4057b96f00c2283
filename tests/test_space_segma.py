"""The Segma Space: SegmaDemo on the examples with `hubkit bootstrap`'s tiny models (run, review, export, push,
load_dataset), its refusals, and the Gradio app's handlers; the browser test is tests/test_browser_segma.py."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_space_depth import handler, store_template

from hubkit import hub
from hubkit.errors import ConfigError, DataError, HubkitError, InvalidImageError, InvalidRepoIdError
from hubkit.pipelines.segma import SAM_TASK
from hubkit.pool import ModelPool
from hubkit.segma.demo import TABLE_HEADERS, SegmaDemo, parse_classes
from hubkit.spaces_support import ADAPTER_DIRS_ENV, ADAPTER_NOT_AVAILABLE

EXAMPLES = Path(__file__).resolve().parent.parent / "spaces" / "segma" / "examples"
COINS = EXAMPLES / "coins.png"
TINY = {
    "sam": "hubkit-tiny/sam",
    "captioner": "hubkit-tiny/blip",
    "labeler": "hubkit-tiny/mistral",
    "detector": "hubkit-tiny/grounding-dino",
}
SAM_LORA = "hubkit-tiny/sam-demo-lora-0"


@pytest.fixture
def store(tmp_path_factory, isolated_home):
    """This test's HUBKIT_HOME, hard links to the bootstrapped template (store files are replaced, never edited)."""
    template = store_template(tmp_path_factory)
    shutil.copytree(template, isolated_home, ignore=shutil.ignore_patterns(".complete"), copy_function=os.link)
    return isolated_home


@pytest.fixture(scope="module")
def pool():
    """One pool for the tests that run models: each model loads once for the module."""
    return ModelPool()


def load_exported(repo_id: str, tmp_path: Path, monkeypatch):
    """The pushed data set as `datasets` reads it, from a folder pulled out of the store."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = hub.pull(repo_id, repo_type="dataset", to=tmp_path / "pulled")
    return datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "ds-cache"))["train"]


def test_examples_are_real_photos():
    assert sorted(p.name for p in EXAMPLES.glob("*.png")) == ["astronaut.png", "coffee.png", "coins.png"]
    for path in EXAMPLES.glob("*.png"):
        with Image.open(path) as img:
            assert min(img.size) >= 100 and max(img.size) <= 256 and np.asarray(img).std() > 20


def test_menus_come_from_the_store(store):
    demo = SegmaDemo()
    assert demo.default_bases() == TINY  # offline: the bootstrapped models
    for stage, base in TINY.items():
        assert demo.available_bases(stage)[0] == base
        family = base.split("/")[1]
        assert demo.available_adapters(stage) == [f"hubkit-tiny/{family}-demo-lora-{i}" for i in (0, 1)]
    assert "hubkit-tiny/blip" not in demo.available_bases("sam")  # bases are per task
    assert demo.available_adapters("sam", "facebook/sam-vit-base") == []  # adapters are per base
    assert parse_classes(" coin, ,Shadow ") == ["coin", "Shadow"] and parse_classes(" , ") is None


def test_run_review_export_and_load_dataset(store, pool, tmp_path, monkeypatch):
    demo = SegmaDemo(device="cpu", pool=pool)
    run = demo.run(str(COINS), classes="coin, shadow")  # given classes: the LLM is skipped
    result = run.result
    assert run.tiny and run.base is None and run.file_name == "coins.png" and run.bases == TINY
    assert result.classes == ["coin", "shadow"] and result.classes_source == "given" and "classes" in result.skipped
    assert len(result.labelled()) >= 3, result.regions  # the tiny SAM overrides keep masks from an untrained SAM
    assert {"masks", "caption", "boxes", "box_masks", "features"} <= set(result.timings)
    summary = demo.summary(run)
    assert "Random-weight" in summary and "from you" in summary and "box_masks" in summary

    rows = demo.table(run)
    assert len(rows) == len(result.regions) and len(rows[0]) == len(TABLE_HEADERS)
    assert all(0 < row[6] <= 1 and row[7] > 0 and 0 < row[8] <= 1 for row in rows)  # area ratio, aspect, compactness
    coco, labels, features = run.files
    assert coco.name == "coins.coco.json" and len(json.loads(coco.read_text())["annotations"]) == len(result.labelled())
    assert len(json.loads(labels.read_text())["mask"]) == len(result.regions) + 1  # background first
    header = features.read_text().splitlines()[0].split(",")
    assert header[:7] == ["image", "region_id", "label", "score", "source", "area", "status"]
    assert header[-3:] == ["area_ratio", "aspect_ratio", "compactness"]

    # Review: reject one, relabel one, accept one. The overlay and the downloads follow.
    gone, renamed, kept = (r.id for r in result.labelled()[:3])
    before, _ = demo.overlays(run)
    demo.review(run, {gone: "reject", renamed: "Euro Coin", kept: "accept"})
    after, _ = demo.overlays(run)
    status = {r.id: (r.label, r.status) for r in result.regions}
    assert status[gone][1] == "rejected" and status[renamed] == ("euro coin", "accepted")
    assert status[kept][1] == "accepted"
    assert not np.array_equal(np.asarray(before), np.asarray(after))
    assert gone not in [a["region_id"] for a in json.loads(run.files[0].read_text())["annotations"]]
    assert "euro coin" in [m["label"] for m in json.loads(run.files[1].read_text())["mask"]]
    assert [row[5] for row in demo.table(run) if row[0] == gone] == ["rejected"]

    dataset, message = demo.add(run, [])
    assert len(dataset) == 1 and "Added coins.png" in message
    again, message = demo.add(run, dataset)  # the same run again: its snapshot is replaced, not duplicated
    assert len(again) == 1 and message.startswith("Updated")
    exported = len(result.labelled())

    info = demo.export(dataset, "me/coins-labels")
    assert info.repo_id == "me/coins-labels" and len(info.revision) == 40 and info.images == 1
    assert info.regions == exported and "dataset  me/coins-labels" in info.listing.splitlines()
    (revision,) = hub.list_revisions("me/coins-labels", repo_type="dataset")
    assert revision.id == info.revision
    assert {"README.md", "metadata.jsonl", "coco.json", "coins.png"} <= set(zipfile.ZipFile(info.archive).namelist())

    ds = load_exported("me/coins-labels", tmp_path, monkeypatch)
    (row,) = ds
    objects = row["objects"]
    assert row["image"].size == result.size and len(objects["categories"]) == exported
    assert "euro coin" in objects["categories"]

    def pairs(labels, boxes):
        return sorted((label, tuple(round(float(v), 1) for v in box)) for label, box in zip(labels, boxes, strict=True))

    kept_regions = result.labelled()  # the reviewed labels, the rejected region left out
    assert pairs(objects["categories"], objects["bbox"]) == pairs(
        [r.label for r in kept_regions], [r.bbox_xywh for r in kept_regions]
    )
    coco_doc = json.loads((hub.pull("me/coins-labels", repo_type="dataset") / "coco.json").read_text())
    assert gone not in [a["region_id"] for a in coco_doc["annotations"]]
    card = (hub.pull("me/coins-labels", repo_type="dataset") / "README.md").read_text()
    assert "Reviewed by a person: yes" in card and "1 rejected region" in card


def test_adapters_bring_the_base_result_on_the_same_models(store, pool):
    demo = SegmaDemo(device="cpu", pool=pool)
    run = demo.run(str(COINS), classes=["coin"], adapters={"sam": SAM_LORA})
    sam = pool.peek(SAM_TASK, TINY["sam"], device="cpu")
    assert run.base is not None and run.adapters == {"sam": SAM_LORA}
    assert run.result.models["sam"] == f"{TINY['sam']} + {SAM_LORA}" and run.base.models["sam"] == TINY["sam"]
    assert len(sam.adapters) == 1  # attached once, on the base both runs share
    assert "Base run (adapters off):" in demo.summary(run)
    adapted, base = demo.overlays(run)
    assert base is not None and base.size == adapted.size
    assert all(model["loads"] == 1 for model in pool.snapshot())  # both runs on the same models, loaded once


def test_bad_inputs_get_clear_errors_before_any_model_loads(store, tmp_path):
    pool = ModelPool()
    demo = SegmaDemo(device="cpu", pool=pool)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for image, message in {None: "No image", text: "not an image", empty: "empty file"}.items():
        with pytest.raises(InvalidImageError, match=message):
            demo.run(image)
    with pytest.raises(ConfigError, match="Unknown preset"):
        demo.run(str(COINS), preset="xray")
    with pytest.raises(ConfigError, match="box_threshold"):
        demo.run(str(COINS), box_threshold=2)
    with pytest.raises(HubkitError, match="not offered here"):
        demo.run(str(COINS), bases={"sam": TINY["captioner"]})  # a store repo, but not a SAM base
    with pytest.raises(ConfigError, match="Unknown stage"):
        demo.run(str(COINS), bases={"segmenter": TINY["sam"]})
    with pytest.raises(DataError, match="Nothing to review"):
        demo.review(None, {1: "accept"})
    with pytest.raises(DataError, match="Nothing to review"):
        demo.accept_all(None)
    with pytest.raises(DataError, match="Nothing to add"):
        demo.add(None, [])
    with pytest.raises(DataError, match="empty"):
        demo.export([], "me/labels")
    for repo, message in [("", "Type a repo id"), ("labels", "exactly 2"), ("me/my labels", "whitespace"),
                          ("me/../x", r"\.\."), ("a/b/c", "exactly 2")]:  # fmt: skip
        with pytest.raises((ConfigError, InvalidRepoIdError), match=message):
            demo.export([], repo)
    assert pool.snapshot() == []  # every refusal came before a model load


def test_adapter_allow_list(store, tmp_path, monkeypatch):
    pool = ModelPool()
    demo = SegmaDemo(device="cpu", pool=pool)
    outside = Path(shutil.copytree(hub.pull(SAM_LORA), tmp_path / "server-adapter"))
    probes = ["/etc", str(outside), "/nonexistent", "../x", "nobody/missing", TINY["sam"], os.path.relpath(outside)]
    messages = set()
    for probe in probes:
        with pytest.raises(HubkitError) as err:
            demo.run(str(COINS), adapters={"sam": probe})
        messages.add(str(err.value))
    assert messages == {ADAPTER_NOT_AVAILABLE}  # one text, whatever exists on the server's disk
    with pytest.raises(HubkitError, match="not available"):
        demo.run(str(COINS), adapters={"detector": ["a", "list"]})  # API callers can send any JSON
    with pytest.raises(HubkitError, match="trained on 'hubkit-tiny/blip', not on the base 'hubkit-tiny/sam'"):
        demo.run(str(COINS), adapters={"sam": "hubkit-tiny/blip-demo-lora-0"})  # allowed, but for another base
    assert pool.snapshot() == []
    monkeypatch.setenv(ADAPTER_DIRS_ENV, str(outside))  # the operator allows a server folder
    assert demo.available_adapters("sam") == sorted([SAM_LORA, "hubkit-tiny/sam-demo-lora-1", str(outside)])


def load_app(monkeypatch):
    from hubkit import serve

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    (space,) = [s for s in serve.discover_spaces() if s.name == "segma"]
    return space, serve.load_space_demo(space)


def test_app_builds_and_its_handlers_answer_with_gradio_errors(store, monkeypatch):
    import gradio as gr

    from hubkit import spaces_support

    loads = []
    monkeypatch.setattr(spaces_support, "load", lambda *a, **k: loads.append(a))
    space, demo = load_app(monkeypatch)
    assert isinstance(demo, gr.Blocks) and loads == [] and space.title == "hubkit segma" and space.sdk == "gradio"
    names = {fn.api_name for fn in demo.fns.values()}
    assert None not in names
    assert {"run", "menus", "preview", "accept", "reject", "relabel", "accept_all", "add", "export"} <= names

    *updates, note = handler(demo, "menus")()
    assert [u.value for u in updates[::2]] == list(TINY.values()) and note.visible and "random-weight" in note.value
    assert [c[1] for c in updates[1].choices] == ["", SAM_LORA, "hubkit-tiny/sam-demo-lora-1"]

    bases = [v for b in TINY.values() for v in (b, "")]
    cases = [
        ("run", (None, "general", "none", "", *bases, 0.25, 0.2), "No image"),
        ("preview", (str(Path(__file__)),), "not an image"),
        ("accept", (None, None), "Nothing to review"),
        ("reject", (None, 3), "Nothing to review"),
        ("relabel", (None, 3, ""), "Type the new label"),
        ("accept_all", (None,), "Nothing to review"),
        ("add", (None, []), "Nothing to add"),
        ("export", ([], "me/labels", False), "empty"),
        ("export", ([], "not a repo", False), "Invalid repo id"),
    ]
    for api_name, args, message in cases:
        with pytest.raises(gr.Error, match=message):
            handler(demo, api_name)(*args)
    assert loads == []


def test_serve_mounts_the_segma_space(store, monkeypatch):
    from fastapi.testclient import TestClient

    from hubkit import serve

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    with TestClient(serve.build_app()) as client:
        spaces = client.get("/api/health").json()["spaces"]
        assert spaces["segma"] == "ok" and spaces["depth"] == "ok"
        config = client.get("/spaces/segma/config").json()
        ids = {c["props"].get("elem_id") for c in config["components"]}
        assert {"segma-upload", "segma-run", "segma-overlay", "segma-region", "segma-export"} <= ids


def test_the_space_export_trains_sam_lora_and_the_space_offers_the_adapter(store, pool, tmp_path):
    """The closed loop through the Space: label the examples, review, export + push; `sam_lora` trains on that repo
    and pushes; the Space's menu lists the adapter and compares base and adapted on the same models."""
    from hubkit.recipes.sam_lora import SamLoraConfig, sam_setup
    from hubkit.training import build_config, train

    demo = SegmaDemo(device="cpu", pool=pool)
    dataset: list = []
    for example in sorted(EXAMPLES.glob("*.png")):
        run = demo.run(str(example), classes="coin, person, cup")
        demo.review(run, {region.id: "accept" for region in run.result.labelled()})
        dataset, _ = demo.add(run, dataset)
    info = demo.export(dataset, "me/space-labels")
    assert info.images == 3 and info.regions > 3
    values = {"base": TINY["sam"], "data": "me/space-labels", "output_dir": tmp_path / "run", "batch_size": 2,
              "max_steps": 4, "eval_every": 1000, "learning_rate": 1e-2, "box_jitter": 4, "val_fraction": 0.34,
              "report_to": "none", "push_to_hub": "me/sam-space"}  # fmt: skip
    config = build_config(SamLoraConfig, {k: str(v) for k, v in values.items()})
    result = train(config, sam_setup(config))
    assert result.pushed_revision and "mean_iou" in set(result.metrics_before) & set(result.metrics)

    assert "me/sam-space" in SegmaDemo().available_adapters("sam")  # the menu reads the store
    run = demo.run(str(COINS), classes="coin", adapters={"sam": "me/sam-space"})
    assert run.base is not None and run.result.models["sam"] == f"{TINY['sam']} + me/sam-space"
    assert run.base.models["sam"] == TINY["sam"]
    masks = [{r.box: r.mask.tobytes() for r in res.regions} for res in (run.result, run.base)]
    assert masks[0].keys() & masks[1].keys() and masks[0] != masks[1]  # same detections, the adapted SAM's masks
    adapted, base = demo.overlays(run)
    assert not np.array_equal(np.asarray(adapted), np.asarray(base))
