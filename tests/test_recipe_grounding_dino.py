"""The Grounding DINO recipe on the tiny model and the synthetic shapes set: prompt and labels, parameter groups, LoRA
and full fine-tuning, the adapter through hubkit.load, and the trainer under accelerate launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, one_torch_thread, same
from safetensors.torch import load_file

import hubkit
from hubkit import tiny
from hubkit.data.segma import make_shapes_dataset
from hubkit.errors import ConfigError, DataError
from hubkit.recipes.grounding_dino import (
    GroundingDinoConfig,
    coco_map,
    detection_loss,
    detection_map,
    grounding_dino_setup,
    head_modules,
    prompt_for,
)
from hubkit.training import build_config, train
from hubkit.training.trainable import build_trainable_model, optimizer_groups

TRAINER = ROOT / "trainers" / "grounding_dino.py"
RECIPE = ROOT / "trainers" / "configs" / "grounding_dino.yaml"
TASK = "zero-shot-object-detection"


one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny.build("grounding-dino", tmp_path_factory.mktemp("base") / "grounding-dino")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes", images=24, seed=0)


def quick(base_dir, data_dir, out, **overrides) -> dict:
    values = dict(
        base=str(base_dir),
        data=str(data_dir),
        output_dir=str(out),
        batch_size=4,
        epochs=1,
        max_steps=4,
        learning_rate=3e-3,
        head_lr=3e-3,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        lr_schedule="constant",
        max_grad_norm=1.0,
        report_to="none",
        log_every=1,
        val_fraction=0.25,
    )
    values.update(overrides)
    return {k: str(v) for k, v in values.items()}


@torch.no_grad()
def held_out_loss(model, loader) -> float:
    model.eval()
    return float(np.mean([detection_loss(model, batch).item() for batch in loader]))


def test_prompt_labels_and_boxes_follow_the_processor(base_dir, data_dir, tmp_path):
    from transformers.models.grounding_dino.modeling_grounding_dino import build_label_maps

    setup = grounding_dino_setup(build_config(GroundingDinoConfig, quick(base_dir, data_dir, tmp_path)))
    classes = setup.collate_fn.classes
    assert classes == ["disc", "square", "triangle"] and prompt_for(classes) == "disc. square. triangle."
    items = [setup.eval_dataset[i] for i in range(2)]
    batch = setup.collate_fn(items)
    tokenizer = setup.collate_fn.processor.tokenizer
    assert tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True) == "disc. square. triangle."
    maps = build_label_maps(torch.zeros(1, 1, 256), batch["input_ids"][:1])[0]  # the model's phrase -> token map
    for k, name in enumerate(classes):  # class index k is the k-th phrase of the prompt
        assert tokenizer.decode(batch["input_ids"][0][maps[k, : batch["input_ids"].shape[1]].bool()]) == name
    sample = setup.eval_dataset.samples[0]
    x, y, w, h = sample.objects[0].bbox
    expected = [(x + w / 2) / sample.width, (y + h / 2) / sample.height, w / sample.width, h / sample.height]
    np.testing.assert_allclose(batch["labels"][0]["boxes"][0].numpy(), expected, rtol=1e-6)
    assert batch["labels"][0]["class_labels"][0] == classes.index(sample.objects[0].label)


def test_parameter_groups_map_the_seed_onto_the_model(base_dir, data_dir, tmp_path):
    from hubkit.tasks import get_task

    preset = get_task(TASK).preset
    for lora in (True, False):
        config = build_config(GroundingDinoConfig, quick(base_dir, data_dir, tmp_path, lora=lora, head_lr=1e-3,
                                                         learning_rate=1e-4, backbone_lr=1e-5))  # fmt: skip
        setup = grounding_dino_setup(config)
        model = build_trainable_model(setup.load_base(), setup.trainable, config, preset)
        groups = {g["name"]: g for g in optimizer_groups(model, setup.trainable.groups, lr=1e-4, weight_decay=1e-4)}
        names = {id(p): n for n, p in model.named_parameters()}
        heads = [names[id(p)] for p in groups["(class_embed|bbox_embed)"]["params"]]
        assert groups["(class_embed|bbox_embed)"]["lr"] == 1e-3 and heads
        assert all("bbox_embed" in n for n in heads)  # class_embed holds no weights: its logits are text similarities
        assert not any("class_embed" in n for n, _ in model.named_parameters())
        if lora:
            assert set(groups) == {"(class_embed|bbox_embed)", "default"}  # backbones frozen
            assert all("lora_" in names[id(p)] for p in groups["default"]["params"])
            trainable = [n for n, p in model.named_parameters() if p.requires_grad]
            assert any(".fc1." in n for n in trainable) and not any("backbone" in n for n in trainable)
            assert head_modules(model.get_base_model().config) == ("model.decoder.bbox_embed.0",)  # shared by layers
        else:
            backbone = [names[id(p)] for p in groups[r"(^|\.)model\.(backbone|text_backbone)\."]["params"]]
            assert groups[r"(^|\.)model\.(backbone|text_backbone)\."]["lr"] == 1e-5
            assert any(".text_backbone." in n for n in backbone) and any(
                ".backbone.conv_encoder" in n for n in backbone
            )
            assert all(g["weight_decay"] == 1e-4 for g in groups.values())


def test_coco_map_matches_hand_computed_values():
    truth = [{"boxes": [[0, 0, 10, 10]], "labels": [0]}]
    exact = coco_map([{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [0]}], truth)
    assert exact == pytest.approx({"map": 1.0, "map_50": 1.0})
    wrong_class = coco_map([{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [1]}], truth)
    assert wrong_class == {"map": 0.0, "map_50": 0.0}
    # IoU 100/110 = 0.91: a hit at thresholds .50 ... .90 (9 of 10)
    assert coco_map([{"boxes": [[0, 0, 10, 11]], "scores": [0.9], "labels": [0]}], truth)["map"] == pytest.approx(0.9)


@pytest.mark.slow
def test_lora_lowers_the_loss_keeps_map_and_reloads_through_hubkit_load(base_dir, data_dir, tmp_path):
    config = build_config(GroundingDinoConfig, quick(base_dir, data_dir, tmp_path / "run", max_steps=40))
    setup = grounding_dino_setup(config)
    loader = torch.utils.data.DataLoader(setup.eval_dataset, batch_size=3, collate_fn=setup.collate_fn)
    held_out_before = held_out_loss(setup.load_base(), loader)
    result = train(config, setup)
    curve = [loss for _, loss in result.losses]
    # measured: training loss 302 -> 46, held-out loss 389 -> 48, mAP 0 -> 0.005 and mAP@.5 0 -> 0.05 on 6 images:
    # a random tiny DETR learns to score the prompt's phrases long before it localises (its mAP is noise level)
    assert np.mean(curve[-8:]) < 0.3 * np.mean(curve[:4]), curve
    assert set(result.metrics) == {"map", "map_50"} and set(result.metrics_before) == {"map", "map_50"}
    assert result.metrics["map_50"] >= result.metrics_before["map_50"], (result.metrics_before, result.metrics)
    assert result.metrics["map"] >= result.metrics_before["map"], (result.metrics_before, result.metrics)
    adapter = result.adapter_dir
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "README.md").is_file()
    heads = load_file(adapter / "trained_modules.safetensors")  # the box head, trained in place (tied everywhere)
    assert heads and all(k.startswith("model.decoder.bbox_embed.0.") for k in heads)
    predictor = hubkit.load(TASK, str(base_dir), adapters=[adapter])
    assert held_out_loss(predictor.model, loader) < 0.5 * held_out_before  # it generalises to the held-out images
    samples, classes = setup.eval_dataset.samples, setup.collate_fn.classes
    reloaded = detection_map(predictor.model, predictor.processor, samples, classes)
    assert reloaded == pytest.approx(result.metrics, abs=1e-9)  # the card's numbers are the adapter's
    image = samples[0].image()
    tuned = predictor.predict(image, labels=classes, box_threshold=0.0)
    base = hubkit.load(TASK, str(base_dir)).predict(image, labels=classes, box_threshold=0.0)  # (the heads are
    # restored into the predictor's base: adapter="base" keeps them)
    assert tuned.boxes.shape == base.boxes.shape and not same(tuned.boxes, base.boxes)
    card = hubkit.cards.read_card(adapter)
    assert {r.metric_type for r in card.data.eval_results} == {"map", "map_50"}
    assert card.data.pipeline_tag == TASK and "disc. square. triangle." in card.text


@pytest.mark.slow
def test_full_fine_tuning_saves_a_model_that_loads_as_a_base(base_dir, data_dir, tmp_path):
    config = build_config(GroundingDinoConfig, quick(base_dir, data_dir, tmp_path / "run", lora=False,
                                                     learning_rate=1e-3, head_lr=1e-3, backbone_lr=1e-3, max_steps=3,
                                                     eval_before=False))  # fmt: skip
    result = train(config, grounding_dino_setup(config))
    assert result.adapter_dir.name == "model" and (result.adapter_dir / "processor_config.json").is_file()
    assert result.trainable_params == result.total_params
    image = make_shapes_dataset(tmp_path / "one", images=1, seed=5) / "shape_000.png"
    tuned = hubkit.load(TASK, str(result.adapter_dir)).predict(image, labels=["disc", "square"], box_threshold=0.0)
    base = hubkit.load(TASK, str(base_dir)).predict(image, labels=["disc", "square"], box_threshold=0.0)
    assert not same(tuned.boxes, base.boxes)


def test_recipe_yaml_holds_the_seed_values():
    import yaml

    seed = build_config(GroundingDinoConfig, yaml.safe_load(RECIPE.read_text()))
    assert seed.base == "IDEA-Research/grounding-dino-tiny" and seed.lora
    assert (seed.backbone_lr, seed.learning_rate, seed.head_lr, seed.weight_decay) == (1e-5, 1e-4, 1e-3, 1e-4)
    assert GroundingDinoConfig().backbone_lr == seed.backbone_lr and GroundingDinoConfig().head_lr == seed.head_lr


def test_bad_values_are_refused(base_dir, data_dir, tmp_path):
    with pytest.raises(ConfigError, match="head_lr"):
        build_config(GroundingDinoConfig, quick(base_dir, data_dir, tmp_path, head_lr=-1))
    with pytest.raises(ConfigError, match="eval_box_threshold"):
        build_config(GroundingDinoConfig, quick(base_dir, data_dir, tmp_path, eval_box_threshold=1.5))
    with pytest.raises(ConfigError, match="data is required"):
        grounding_dino_setup(build_config(GroundingDinoConfig, quick(base_dir, "", tmp_path)))
    bad = tmp_path / "bad"
    bad.mkdir()
    coco = json.loads((data_dir / "coco.json").read_text())
    coco["categories"][0]["name"] = "a.b"
    (bad / "coco.json").write_text(json.dumps(coco))
    for image in data_dir.glob("*.png"):
        (bad / image.name).write_bytes(image.read_bytes())
    with pytest.raises(DataError, match="a.b"):
        grounding_dino_setup(build_config(GroundingDinoConfig, quick(base_dir, bad, tmp_path)))


def launch(args: dict, *, processes: int = 1) -> dict:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--num_processes", str(processes)]  # fmt: skip
    cmd += ["--multi_gpu"] if processes > 1 else []
    cmd += [str(TRAINER), "--config", str(RECIPE)] + [x for k, v in args.items() for x in (f"--{k}", v)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("lora", [True, False])
def test_ddp_two_processes_train_and_save(base_dir, data_dir, tmp_path, lora):
    # Under DDP every trainable parameter needs a gradient (the box heads train in place, tied; full fine-tuning
    # freezes what transformers' detached two-stage loss never reaches), and the reload check's loss, run on the
    # main process alone, must not all-reduce (local_box_count).
    summary = launch(quick(base_dir, data_dir, tmp_path / "run", batch_size=2, max_steps=2, lora=lora), processes=2)
    assert summary["steps"] == 2 and set(summary["metrics"]) == {"map", "map_50"}
    saved = tmp_path / "run" / ("adapter" if lora else "model")
    assert saved.name == Path(summary["adapter"]).name and (saved / "README.md").is_file()
    predictor = hubkit.load(TASK, str(base_dir), adapters=[saved]) if lora else hubkit.load(TASK, str(saved))
    found = predictor.predict(data_dir / "shape_000.png", labels=["disc", "square", "triangle"], box_threshold=0.0)
    assert found.boxes.shape == (20, 4)  # the tiny model's 20 queries


@pytest.mark.slow
def test_trainer_runs_offline_under_accelerate_and_pushes(base_dir, data_dir, tmp_path):
    hubkit.push(base_dir, "hubkit-tiny/grounding-dino")
    hubkit.push(data_dir, "hubkit-tiny/segma-shapes", repo_type="dataset")
    args = quick("hubkit-tiny/grounding-dino", "hubkit-tiny/segma-shapes", tmp_path / "run", max_steps=3,
                 push_to_hub="me/gd-shapes")  # fmt: skip
    summary = launch(args)
    assert summary["pushed"] == "me/gd-shapes" and set(summary["metrics"]) == {"map", "map_50"}
    pulled = hubkit.pull("me/gd-shapes")
    card = hubkit.cards.card_summary(hubkit.cards.read_card(pulled))
    assert card["base_model"] == "hubkit-tiny/grounding-dino" and card["datasets"] == ["hubkit-tiny/segma-shapes"]
    assert {r["metric"] for r in card["eval_results"]} >= {"map", "map_50"}
    image = data_dir / "shape_000.png"
    local = hubkit.load(TASK, "hubkit-tiny/grounding-dino", adapters=[tmp_path / "run" / "adapter"])
    remote = hubkit.load(TASK, "hubkit-tiny/grounding-dino", adapters=["me/gd-shapes"])
    labels = ["disc", "square", "triangle"]
    assert same(remote.predict(image, labels=labels, box_threshold=0.0).boxes,
                local.predict(image, labels=labels, box_threshold=0.0).boxes, rtol=1e-6)  # fmt: skip
