"""`hubkit label` on a folder with the tiny models: files per image, COCO, counts, resume, limits, zero labels."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image
from skimage import data
from test_space_depth import store_template

pytestmark = pytest.mark.slow
NAMES = ("coins", "coffee", "astronaut")


@pytest.fixture
def store(tmp_path_factory, isolated_home):
    shutil.copytree(
        store_template(tmp_path_factory),
        isolated_home,
        ignore=shutil.ignore_patterns(".complete"),
        copy_function=os.link,
    )
    return isolated_home


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    for name in NAMES[:2]:
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    Image.fromarray(data.astronaut()).resize((256, 256)).save(folder / "more" / "astronaut.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_label_writes_every_output_and_resumes(store, images, tmp_path):
    out = tmp_path / "out"
    first = run_cli("label", str(images), "--preset", "general", "--out", str(out), "--tiny")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == str(out)
    stems = ["coins", "coffee", "more__astronaut"]
    for stem in stems:
        for suffix in ("overlay.png", "labels.png", "label.json", "regions.json"):
            assert (out / f"{stem}.{suffix}").is_file(), f"{stem}.{suffix}"
        label = json.loads((out / f"{stem}.label.json").read_text())
        assert label["mask"][0] == {"value": 0, "label": "background"} and "caption" in label
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["failed"] == 0 and sum(summary["classes"].values()) > 0
    assert "unlabelled" not in summary["classes"]
    # the per-class counts printed are the summary's
    for name, count in summary["classes"].items():
        assert any(line.split() == [*name.split(), str(count)] for line in first.stderr.splitlines()), name
    # COCO with RLE masks, loadable by pycocotools; one annotation per labelled region
    from pycocotools.coco import COCO

    coco = COCO(str(out / "coco.json"))
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == sum(summary["classes"].values())
    ann = coco.loadAnns(coco.getAnnIds())[0]
    mask = coco.annToMask(ann)
    image = coco.loadImgs(ann["image_id"])[0]
    assert mask.shape == (image["height"], image["width"]) and mask.sum() == ann["area"]
    header = (out / "features.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["image", "region_id"] and header[-1] == "compactness" and len(header) >= 61 + 6

    # resume: nothing is labelled again
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.regions.json")}
    again = run_cli("label", str(images), "--out", str(out), "--tiny")
    assert again.returncode == 0, again.stderr
    assert "3 already done" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.regions.json")} == stamps
    # a damaged record is labelled again, not skipped
    (out / "coffee.regions.json").write_text('{"format": "hubkit.segma.regions", "regi')
    third = run_cli("label", str(images), "--out", str(out), "--tiny")
    assert third.returncode == 0 and "labelling" in third.stderr and "coffee" in third.stderr
    assert "2 already done" in third.stderr
    json.loads((out / "coffee.regions.json").read_text())  # rewritten whole


def test_given_classes_limit_and_zero_labels_exit_non_zero(store, images, tmp_path):
    out = tmp_path / "given"
    ok = run_cli(
        "label", str(images), "--out", str(out), "--tiny", "--classes", "coin,cup", "--limit", "1",
        "--box-threshold", "0", "--text-threshold", "0", "--no-automatic",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 1 and set(summary["classes"]) <= {"coin", "cup"} and summary["classes"]
    regions = json.loads(next(out.glob("*.regions.json")).read_text())
    assert regions["classes_source"] == "given" and "classes" in regions["skipped"]

    none = run_cli(
        "label", str(images), "--out", str(tmp_path / "none"), "--tiny", "--classes", "coin",
        "--box-threshold", "1.0", "--no-automatic",
    )  # fmt: skip
    assert none.returncode == 1
    last = none.stderr.strip().splitlines()[-1]
    assert last.startswith("hubkit label: no label found in 3 image(s)") and "Traceback" not in none.stderr


def test_bad_inputs_are_one_line_errors(store, images, tmp_path):
    broken = images / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    proc = run_cli("label", str(images), "--out", str(out), "--tiny", "--limit", "1")
    # sorted: broken.png comes first and fails alone; the run says so and exits 1
    assert proc.returncode == 1 and "skipped" in proc.stderr and "broken.png" in proc.stderr
    assert "Traceback" not in proc.stderr
    bad = run_cli("label", str(images), "--out", str(out), "--preset", "mri")
    assert bad.returncode == 2 and "invalid choice: 'mri'" in bad.stderr
    knob = run_cli("label", str(images), "--out", str(out), "--tiny", "--sam-option", "points_per_side=0")
    assert knob.returncode == 1
    assert knob.stderr.strip() == "hubkit label: points_per_side must be an integer >= 1; got 0"
    offline = run_cli("label", str(images), "--out", str(out))  # the real ids are the defaults: not in this store
    assert offline.returncode == 1 and len(offline.stderr.strip().splitlines()) == 1
    assert "'facebook/sam-vit-base'" in offline.stderr and "--tiny" in offline.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_cli("label", str(empty), "--out", str(out))
    assert nothing.returncode == 1 and "No images in" in nothing.stderr


def test_label_map_matches_label_json(store, images, tmp_path):
    out = tmp_path / "out"
    assert run_cli("label", str(images / "coins.png"), "--out", str(out), "--tiny").returncode == 0
    label = json.loads((out / "coins.label.json").read_text())
    label_map = np.asarray(Image.open(out / "coins.labels.png"))
    values = {entry["value"] for entry in label["mask"]}
    assert set(np.unique(label_map).tolist()) <= values and len(values) > 1


def test_segma_export_classifier_and_analysis(store, images, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run_cli("label", str(images), "--out", str(out), "--tiny").returncode == 0
    exported = run_cli("segma", "export", str(out), "me/tiny-labels", "--reviewed")
    assert exported.returncode == 0, exported.stderr
    listed = run_cli("ls", "--repo-type", "dataset", check=True).stdout
    assert "me/tiny-labels" in listed
    import datasets

    import hubkit

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = hubkit.pull("me/tiny-labels", repo_type="dataset")
    rows = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    summary = json.loads((out / "summary.json").read_text())
    assert rows.num_rows == 3
    assert sum(len(r["objects"]["categories"]) for r in rows) == sum(summary["classes"].values())
    assert "human-reviewed" in (Path(folder) / "README.md").read_text()

    trained = run_cli("segma", "classifier", str(out), "me/region-classifier")
    assert trained.returncode == 0, trained.stderr
    assert f"{sum(summary['classes'].values())} regions" in trained.stderr
    # the classifier names the automatic masks no detector box matched
    named = run_cli("label", str(images / "coins.png"), "--out", str(tmp_path / "named"), "--tiny",
                    "--classifier", "me/region-classifier")  # fmt: skip
    assert named.returncode == 0, named.stderr
    regions = json.loads((tmp_path / "named" / "coins.regions.json").read_text())["regions"]
    assert regions and all(r["label"] != "unlabelled" for r in regions)

    analysed = run_cli("segma", "analyze", str(out), "--out", str(tmp_path / "analysis"))
    assert analysed.returncode == 0, analysed.stderr
    report = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert set(report["categories"]) == {"color_histogram", "texture_lbp", "geometric"}
    for png in ("correlation.png", "mutual_information.png", "rf_importance.png"):
        assert Image.open(tmp_path / "analysis" / png).size[0] > 100
