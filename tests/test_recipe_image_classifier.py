"""The image-classifier recipe (trainers/image_classifier.py) and `hubkit data garments`: the offline start of
the deployment flow (train a classifier, then `hubkit optimize` it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli

from hubkit.errors import ConfigError


def test_data_garments_writes_class_folders_and_refuses_a_used_folder(tmp_path):
    out = tmp_path / "garments"
    proc = run_cli("data", "garments", str(out), "--per-category", "3", "--size", "32")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["bag", "dress", "shirt", "shoe", "trousers"]
    assert all(len(list((out / name).glob("*.png"))) == 3 for name in folders)
    again = run_cli("data", "garments", str(out))
    assert again.returncode == 1 and "not empty" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.slow
def test_classifier_trains_relabels_and_pushes_a_loadable_model(tmp_path, isolated_home):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hubkit import cards, hub, tiny
    from hubkit.data.garments import make_class_folders

    make_class_folders(tmp_path / "garments", n_per_category=12, size=32, seed=0)
    base = tiny.build("resnet-classifier", tmp_path / "base")
    cmd = [
        str(ROOT / "trainers" / "image_classifier.py"),
        "--config",
        str(ROOT / "trainers/configs/image_classifier.yaml"),
    ]
    cmd += ["--data", str(tmp_path / "garments"), "--base", str(base), "--epochs", "4", "--batch_size", "8"]
    cmd += ["--report_to", "none", "--output_dir", str(tmp_path / "out"), "--push-to-hub", "me/garments"]
    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["pushed"] == "me/garments" and summary["metrics"]["accuracy"] > 0.5  # chance: 0.2

    folder = hub.pull("me/garments")
    model = AutoModelForImageClassification.from_pretrained(folder)
    assert sorted(model.config.id2label.values()) == ["bag", "dress", "shirt", "shoe", "trousers"]
    assert AutoImageProcessor.from_pretrained(folder) is not None
    card = cards.read_card(folder)
    assert cards.validate_card(folder) == []
    [result] = card.data.eval_results
    assert result.metric_type == "accuracy" and result.metric_value == pytest.approx(summary["metrics"]["accuracy"])
    assert "`trousers`" in card.text


def test_setup_refuses_a_single_class_tree(tmp_path):
    from hubkit import tiny
    from hubkit.recipes.image_classifier import ImageClassifierConfig, image_classifier_setup

    only = tmp_path / "one" / "shirt"
    only.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(only / "a.png")
    base = tiny.build("resnet-classifier", tmp_path / "base")
    with pytest.raises(ConfigError, match="at least 2"):
        image_classifier_setup(ImageClassifierConfig(base=str(base), data=str(tmp_path / "one")))
    with pytest.raises(ConfigError, match="data is required"):
        image_classifier_setup(ImageClassifierConfig(base=str(base)))
