"""The Plantset recipe (hubkit.recipes.plant_vlm, trainers/plant_vlm.py) on the generated leaf set with the tiny
PlantVLM: learning far above chance, text beating image alone where only the text tells classes apart, the merged
model pushed by the trainer loading alone, class weights, the seed's recipe values."""

from __future__ import annotations

import json
import os
import signal
import time
from unittest import mock

import numpy as np
import pytest
import test_trainer_depth as depth_tests
import torch
import yaml
from conftest import ROOT, one_torch_thread
from test_trainer_depth import losses

import hubkit
from hubkit import tiny
from hubkit.data.leaves import make_leaf_dataset
from hubkit.errors import ConfigError
from hubkit.plant import PlantVLM
from hubkit.recipes.plant_vlm import (
    PlantVLMTrainConfig,
    class_weights,
    plant_setup,
    predict_loader,
    stratified_split,
)
from hubkit.training import build_config, train

TRAINER = ROOT / "trainers" / "plant_vlm.py"
RECIPE = ROOT / "trainers" / "configs" / "plant_vlm.yaml"
one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


@pytest.fixture(scope="module")
def leaves(tmp_path_factory):
    """The leaf set with its multimodal JSONL (text: the class's English symptoms; description: its description)."""
    root = tmp_path_factory.mktemp("leaves")
    leaf_set = make_leaf_dataset(root / "data", per_class=12, size=64, seed=0)
    diseases = json.loads(leaf_set.diseases_json.read_text())
    rows = []
    for path, label in leaf_set.images():
        info = diseases[label]
        rows.append({"path": path.relative_to(leaf_set.image_dir).as_posix(), "label": label,
                     "label_id": leaf_set.classes.index(label), "text": ", ".join(info["symptoms"]["en"]),
                     "description": info["description"]["en"], "language": "en"})  # fmt: skip
    jsonl = root / "multimodal_dataset.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "classes.json").write_text(json.dumps(leaf_set.classes))
    return leaf_set, jsonl


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny.build("plant-vlm", tmp_path_factory.mktemp("plant-base") / "base")


def quick(base, leaves, out, **overrides) -> dict:
    leaf_set, jsonl = leaves
    args = {"base": base, "jsonl_file": jsonl, "root_dir": leaf_set.image_dir, "num_classes": 8, "batch_size": 8,
            "warmup_steps": 0, "learning_rate": 3e-3, "report_to": "none", "output_dir": out, "val_fraction": 0.25,
            "mixed_precision": "no", "checkpoint_every": 0, "eval_before": False}  # fmt: skip
    return {k: str(v) for k, v in {**args, **overrides}.items()}


@pytest.fixture(scope="module")
def full_run(base_dir, leaves, tmp_path_factory):
    out = tmp_path_factory.mktemp("full-run")
    config = build_config(PlantVLMTrainConfig, quick(base_dir, leaves, out, finetune="full", epochs=10))
    setup = plant_setup(config)
    return train(config, setup), setup


def test_training_learns_far_above_chance(full_run):
    result, _ = full_run
    chance = 1 / 8
    assert result.metrics["accuracy"] > 2 * chance and result.metrics["f1_macro"] > 2 * chance
    assert result.metrics["accuracy_image_only"] > chance  # trained for without text (text_dropout)
    assert result.metrics["auc_ovr_macro_image_only"] > 0.6
    assert np.isfinite(result.metrics["description_perplexity"])
    assert result.losses[-1][1] < result.losses[0][1]


def test_text_beats_image_alone_where_only_the_text_tells(full_run, leaves):
    """The pair drawn identically: with its symptom text the model tells them apart, from the image alone it can
    only guess between the two."""
    result, setup = full_run
    leaf_set, _ = leaves
    pair = sorted(leaf_set.text_only_classes)
    model = PlantVLM.from_pretrained(result.adapter_dir)  # finetune full: the loop saved the whole model here
    loader = torch.utils.data.DataLoader(setup.eval_dataset, batch_size=8)
    accuracy = {}
    for with_text in (True, False):
        probs, labels = predict_loader(model, loader, with_text=with_text)
        ids = [model.class_names.index(c) for c in pair]
        keep = np.isin(labels, ids)
        # restricted to the pair: which of the two the model ranks higher
        picked = np.array(ids)[probs[keep][:, ids].argmax(axis=1)]
        accuracy[with_text] = float((picked == labels[keep]).mean())
    assert keep.sum() >= 4
    assert accuracy[True] > accuracy[False] and accuracy[True] >= 0.9, accuracy


def test_class_weights_balance_the_counts(leaves):
    from hubkit.plant.texts import read_multimodal

    leaf_set, jsonl = leaves
    samples, classes = read_multimodal(jsonl, leaf_set.image_dir)
    skewed = [s for s in samples if s.label_id != 0 or s.path.stem < "004"]  # class 0: 4 images, others 12
    weights = class_weights(skewed, len(classes))
    counts = np.bincount([s.label_id for s in skewed], minlength=len(classes))
    assert weights[0] == pytest.approx(3 * weights[1]) and float((weights.numpy() * counts).sum()) == pytest.approx(
        len(skewed)
    )
    train_part, val_part = stratified_split(samples, val_fraction=0.25, seed=0)
    assert np.bincount([s.label_id for s in val_part]).tolist() == [3] * 8 and len(train_part) == 72


def test_balanced_class_weights_train(base_dir, leaves, tmp_path):
    config = build_config(PlantVLMTrainConfig, quick(base_dir, leaves, tmp_path, class_weights="balanced",
                                                     max_steps=2, epochs=1))  # fmt: skip
    result = train(config, plant_setup(config))
    assert result.global_step == 2 and (tmp_path / "adapter" / "model.safetensors").is_file()


def test_bad_configs_are_clear_errors(base_dir, leaves, tmp_path):
    with pytest.raises(ConfigError, match="--num-classes 8"):
        plant_setup(build_config(PlantVLMTrainConfig, quick(base_dir, leaves, tmp_path, num_classes=133)))
    with pytest.raises(ConfigError, match="finetune"):
        build_config(PlantVLMTrainConfig, quick(base_dir, leaves, tmp_path, finetune="half"))
    with pytest.raises(ConfigError, match="does not exist"):
        plant_setup(build_config(PlantVLMTrainConfig, quick(base_dir, leaves, tmp_path, jsonl_file=tmp_path / "x")))
    with pytest.raises(ConfigError, match="not a PlantVLM"):
        tiny.build("image-classification", tmp_path / "vit")
        plant_setup(build_config(PlantVLMTrainConfig, quick(tmp_path / "vit", leaves, tmp_path)))


def test_recipe_yaml_holds_the_seed_values():
    recipe = yaml.safe_load(RECIPE.read_text())
    config = build_config(PlantVLMTrainConfig, recipe)
    assert (config.batch_size, config.epochs, config.num_classes) == (32, 100, 133)
    assert (config.vision_backbone, config.text_model) == ("resnet50", "microsoft/DialoGPT-medium")
    assert (config.fusion_dim, config.num_attention_heads, config.num_attention_layers) == (512, 8, 2)
    assert config.mixed_precision == "auto" and config.base == "microsoft/resnet-50"  # the card's base model
    assert config.builds_new_model


# -- the trainer under accelerate launch ----------------------------------------------------------------------------
def launch(args: dict, **kwargs):
    with mock.patch.multiple(depth_tests, TRAINER=TRAINER, RECIPE=RECIPE):
        return depth_tests.launch(args, **kwargs)


def test_trainer_pushes_a_model_that_loads_alone(base_dir, leaves, tmp_path):
    hubkit.push(base_dir, "me/plant-base")
    args = quick("me/plant-base", leaves, tmp_path / "run", max_steps=4, push_to_hub="me/plant-vlm",
                 checkpoint_every=2)  # fmt: skip
    summary = launch(args)
    assert summary["pushed"] == "me/plant-vlm" and summary["steps"] == 4
    assert {"accuracy", "f1_macro", "accuracy_image_only"} <= set(summary["metrics"])
    pulled = hubkit.pull("me/plant-vlm")
    names = {p.name for p in pulled.iterdir()}
    assert {"adapter_model.safetensors", "model.safetensors", "config.json", "classes.json", "README.md"} <= names
    assert not any(n.startswith("checkpoint") for n in names)
    leaf_set, _ = leaves
    card = (pulled / "README.md").read_text()
    assert all(f"`{c}`" in card for c in leaf_set.classes) and "PlantVLM.from_pretrained" in card
    model = PlantVLM.from_pretrained("me/plant-vlm")  # the merged model, no adapter or base needed
    assert model.class_names == leaf_set.classes
    image = leaf_set.images()[0][0]
    direct = model.predict([image], ["brown spots"], top_k=3)[0]
    out = hubkit.load("plant-disease", "me/plant-vlm").predict(image, texts="brown spots", top_k=3)
    assert out.labels == [c for c, _ in direct] and np.allclose(out.scores, [p for _, p in direct], atol=1e-5)
    base = PlantVLM.from_pretrained(base_dir)
    assert not torch.allclose(model.fusion.no_text, base.fusion.no_text)  # the trained fusion, not the base's
    # the full evaluation report and the classes' reference texts travel with the model; the card shows the matrix
    report = json.loads((pulled / "evaluation" / "metrics.json").read_text())
    assert report["class_names"] == leaf_set.classes and len(report["confusion_matrix"]) == len(leaf_set.classes)
    assert {"bleu", "rougeL_f", "perplexity"} <= set(report["text"])
    assert (pulled / "evaluation" / "confusion_matrix.png").stat().st_size > 10_000
    assert "evaluation/confusion_matrix.png" in card
    references = json.loads((pulled / "descriptions.json").read_text())
    assert set(references) == set(leaf_set.classes)


def test_plant_cli_evaluates_and_predicts_like_the_seed_scripts(base_dir, leaves, tmp_path):
    from conftest import run_cli

    leaf_set, jsonl = leaves
    out = tmp_path / "evaluation_results"
    n = str(len(leaf_set.classes))
    proc = run_cli("plant", "evaluate", "--checkpoint", str(base_dir), "--jsonl-file", str(jsonl), "--root-dir",
                   str(leaf_set.image_dir), "--num-classes", n, "--output-dir", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve()) and "accuracy" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == len(leaf_set.images()) and 0 <= metrics["accuracy"] <= 1
    assert {"confusion_matrix.png", "per_class_f1.png", "classification_report.md", "image_only.json",
            "descriptions.jsonl"} <= {p.name for p in out.iterdir()}  # fmt: skip
    image = str(leaf_set.images()[0][0])
    proc = run_cli("plant", "predict", "--checkpoint", str(base_dir), "--image", image, "--text", "brown spots",
                   "--top-k", "3", "--generate-description")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["image"] == image and len(row["top_k"]) == 3 and isinstance(row["description"], str)
    direct = PlantVLM.from_pretrained(base_dir).predict([image], ["brown spots"], top_k=3)[0]
    assert [r["class"] for r in row["top_k"]] == [c for c, _ in direct]
    # one-line errors: a wrong class count, a broken image
    proc = run_cli("plant", "predict", "--checkpoint", str(base_dir), "--image", image, "--num-classes", "133")
    assert proc.returncode == 1 and "--num-classes" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    broken = tmp_path / "leaf.jpg"
    broken.write_bytes(b"not a jpeg")
    proc = run_cli("plant", "predict", "--checkpoint", str(base_dir), "--image", str(broken))
    assert proc.returncode == 1 and "leaf.jpg" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_ddp_two_processes_matches_single_process(base_dir, leaves, tmp_path):
    common = dict(max_steps=4, text_dropout=0.0, augment="false")  # no per-process random draws
    single = quick(base_dir, leaves, tmp_path / "one", batch_size=8, **common)
    double = quick(base_dir, leaves, tmp_path / "two", batch_size=4, **common)
    train(build_config(PlantVLMTrainConfig, single), plant_setup(build_config(PlantVLMTrainConfig, single)))
    launch(double, processes=2)
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=2e-2)


@pytest.mark.slow
def test_kill_9_then_resume_reaches_the_same_losses(base_dir, leaves, tmp_path):
    args = quick(base_dir, leaves, tmp_path / "x", max_steps=12, checkpoint_every=3)
    reference = quick(base_dir, leaves, tmp_path / "ref", max_steps=12)
    train(build_config(PlantVLMTrainConfig, reference), plant_setup(build_config(PlantVLMTrainConfig, reference)))
    proc = launch(args, background=True)
    ckpt = tmp_path / "x" / "checkpoints" / "checkpoint-3"
    deadline = time.monotonic() + 300
    while not (ckpt / "trainer_state.json").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    launch({**args, "resume": "latest"})
    assert losses(tmp_path / "x") == pytest.approx(losses(tmp_path / "ref"), rel=1e-4)
