"""The joint recipe (Grounding DINO + SAM + region head, one loss) on the shapes set with the tiny models: targets in
SAM's frame, box prompts and their gradient, the weighted loss falling, each exported part loading alone, and the
trainer under accelerate launch.

As in tests/test_recipe_sam.py, a random tiny SAM's mask decoder outputs logits of ~1e-5 that LoRA cannot move, so
the SAM base is the tiny SAM with its decoder first trained in full on another shapes set (seed 1), as a real SAM's
decoder is pretrained.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, one_torch_thread, same

import hubkit
from hubkit import tiny
from hubkit.data.segma import make_shapes_dataset
from hubkit.errors import ConfigError
from hubkit.recipes.grounding_dino import detection_map
from hubkit.recipes.segma_joint import (
    RegionHead,
    SegmaJointConfig,
    cxcywh_to_xyxy,
    evaluate_joint,
    low_res_targets,
    segma_joint_setup,
)
from hubkit.tasks import LoadOptions, get_task
from hubkit.training import build_config, train
from hubkit.training.loop import reload_trained

TRAINER = ROOT / "trainers" / "segma_joint.py"
RECIPE = ROOT / "trainers" / "configs" / "segma_joint.yaml"
SAM, DINO = "mask-generation", "zero-shot-object-detection"


one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


@pytest.fixture(scope="module")
def dino_base(tmp_path_factory):
    return tiny.build("grounding-dino", tmp_path_factory.mktemp("dino") / "grounding-dino")


@pytest.fixture(scope="module")
def sam_base(tmp_path_factory):
    """The tiny SAM with its mask decoder trained in full (the SAM recipe's decoder_full) on shapes seed 1."""
    from hubkit.adapters import restore_trained_modules
    from hubkit.recipes.sam_lora import SamLoraConfig, sam_setup

    root = tmp_path_factory.mktemp("sam")
    raw = tiny.build("sam", root / "raw")
    pre = make_shapes_dataset(root / "pre", images=24, seed=1)
    values = dict(base=raw, data=pre, output_dir=root / "run", variant="decoder", decoder_full=True, max_steps=40,
                  batch_size=4, learning_rate=3e-3, box_jitter=4, report_to="none", eval_before=False)  # fmt: skip
    config = build_config(SamLoraConfig, {k: str(v) for k, v in values.items()})
    run = train(config, sam_setup(config))
    model, _ = get_task(SAM).load(raw, LoadOptions())
    restore_trained_modules(model, run.adapter_dir)
    folder = root / "sam"
    model.save_pretrained(folder)
    for extra in raw.glob("*.json"):
        if extra.name != "config.json":
            shutil.copy(extra, folder / extra.name)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes", images=24, seed=0)


def quick(sam_base, dino_base, data_dir, out, **overrides) -> dict:
    values = dict(
        base=sam_base,
        detector_base=dino_base,
        data=data_dir,
        output_dir=out,
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
def held_out_parts(model, loader) -> dict[str, float]:
    model.eval()
    out: dict[str, list[float]] = {}
    for batch in loader:
        for key, value in model(**batch).items():
            out.setdefault(key, []).append(float(value))
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.fixture(scope="module")
def joint_run(sam_base, dino_base, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("joint") / "run"
    config = build_config(SegmaJointConfig, quick(sam_base, dino_base, data_dir, out, max_steps=40))
    setup = segma_joint_setup(config)
    loader = torch.utils.data.DataLoader(setup.eval_dataset, batch_size=3, collate_fn=setup.collate_fn)
    before = held_out_parts(setup.load_base(), loader)
    result = train(config, setup)
    after = held_out_parts(reload_trained(setup, result.adapter_dir), loader)
    parts = {name: result.adapter_dir / "adapters" / name for name in ("sam", "grounding_dino", "region_head")}
    assert all((folder / "README.md").is_file() or name == "region_head" for name, folder in parts.items())
    return config, setup, result, parts, before, after


def test_low_res_targets_are_laid_out_as_sam_processor_lays_out_masks(sam_base, data_dir):
    from transformers import AutoProcessor

    from hubkit.data.segma import read_detection_data

    processor = AutoProcessor.from_pretrained(sam_base)
    sample = read_detection_data(data_dir).samples[0]
    masks = [o.mask(sample.height, sample.width) for o in sample.objects]
    inputs = processor(images=sample.image(), segmentation_maps=[m.astype(np.uint8) for m in masks],
                       return_tensors="pt")  # fmt: skip
    ours = low_res_targets(torch.from_numpy(np.stack(masks)), inputs["reshaped_input_sizes"][0].tolist(), 64, 32)
    assert ours.shape == inputs["labels"].shape == (len(masks), 32, 32)
    assert torch.equal(ours > 0.5, inputs["labels"].bool())


def test_box_prompts_and_the_gradient_they_carry(sam_base, dino_base, data_dir, tmp_path):
    def prompts_and_grad(**overrides):
        config = build_config(SegmaJointConfig, quick(sam_base, dino_base, data_dir, tmp_path, **overrides))
        setup = segma_joint_setup(config)
        model = setup.load_base()
        model.requires_grad_(False)
        model.sam.mask_decoder.requires_grad_(True)
        head = model.detector.bbox_embed[-1].layers[-1].weight  # the box head's last layer (tied across layers)
        head.requires_grad_(True)
        batch = setup.collate_fn([setup.eval_dataset[0], setup.eval_dataset[1]])
        model.eval()  # no jitter
        detected = model.detector(**batch["detector"], labels=batch["labels"])
        boxes = model.prompt_boxes(detected, batch["labels"], batch["detector"]["input_ids"])
        model(**batch)["segmentation"].backward()
        truth = [cxcywh_to_xyxy(t["boxes"]).clamp(0, 1) for t in batch["labels"]]
        return boxes, truth, head.grad

    boxes, truth, grad = prompts_and_grad(box_prompts="gt")
    assert all(torch.equal(b, t) for b, t in zip(boxes, truth, strict=True)) and grad is None
    detected, truth, grad = prompts_and_grad(box_prompts="detected")
    assert all(b.shape == t.shape and not torch.equal(b, t) for b, t in zip(detected, truth, strict=True))
    assert grad is not None and grad.abs().sum() > 0  # SAM's loss reaches the detector's box head: end to end
    auto_all, _, _ = prompts_and_grad(box_prompts="auto", prompt_iou=0.0)  # every match is good enough
    assert all(torch.equal(a, d) for a, d in zip(auto_all, detected, strict=True))
    auto_none, _, grad = prompts_and_grad(box_prompts="auto", prompt_iou=1.0)  # none is: the ground truth
    assert all(torch.equal(a, t) for a, t in zip(auto_none, truth, strict=True)) and not grad.abs().sum()


@pytest.mark.slow
def test_the_weighted_loss_falls_and_each_part_learns(joint_run):
    config, _, result, _, before, after = joint_run
    curve = [loss for _, loss in result.losses]
    assert len(curve) == 40 and np.mean(curve[-8:]) < 0.3 * np.mean(curve[:4]), curve
    # measured on the held-out images: detection 389 -> 47, classification 1.04 -> 0.04, segmentation (BCE)
    # 0.202 -> 0.199; total = 1.0 seg + 1.0 det + 0.5 cls: 390 -> 48 (training curve 321 -> 45)
    for part in ("loss", "detection", "classification", "segmentation"):
        assert after[part] < before[part], (part, before, after)
    assert after["loss"] == pytest.approx(after["segmentation"] + after["detection"] + 0.5 * after["classification"])
    assert set(result.metrics) == {"map", "map_50", "mask_iou", "accuracy"}
    assert result.metrics["accuracy"] > result.metrics_before["accuracy"]  # measured 0.14 -> 1.0 (7 regions)
    assert result.metrics["map"] >= result.metrics_before["map"]  # measured 0 -> 0.10 (mAP@.5 0 -> 0.33), noisy
    assert result.metrics["mask_iou"] > 0.2  # measured 0.327 -> 0.326: 40 steps of decoder LoRA move it little
    card = hubkit.cards.read_card(result.adapter_dir)
    assert card.data.pipeline_tag == SAM and {r.metric_type for r in card.data.eval_results} == set(result.metrics)
    assert "adapters/grounding_dino" in card.text and "Before and after training" in card.text


@pytest.mark.slow
def test_each_exported_part_loads_alone_and_changes_its_predictions(joint_run, sam_base, dino_base):
    config, setup, result, parts, _, _ = joint_run
    assert set(parts) == {"sam", "grounding_dino", "region_head"}
    joint = reload_trained(setup, result.adapter_dir).get_base_model().eval()
    samples, classes = setup.eval_dataset.samples, setup.collate_fn.detection.classes
    metrics = evaluate_joint(joint, samples, classes, setup.collate_fn.detection.processor,
                             setup.collate_fn.sam_processor)  # fmt: skip
    assert metrics == pytest.approx(result.metrics, abs=1e-9)  # the card's numbers are the saved adapter's
    image = samples[0].image()
    boxes = [o.box_xyxy for o in samples[0].objects]

    sam = hubkit.load(SAM, str(sam_base), adapters=[parts["sam"]])
    tuned = sam.predict(image, boxes=boxes)
    in_joint = get_task(SAM).predict(joint.sam, sam.processor, [image], boxes=boxes)[0]
    assert np.array_equal(tuned.masks, in_joint.masks) and same(tuned.scores, in_joint.scores)
    assert not same(tuned.scores, sam.predict(image, boxes=boxes, adapter="base").scores)

    dino = hubkit.load(DINO, str(dino_base), adapters=[parts["grounding_dino"]])
    assert detection_map(dino.model, dino.processor, samples, classes) == pytest.approx(
        {k: result.metrics[k] for k in ("map", "map_50")}, abs=1e-9)  # fmt: skip
    found = dino.predict(image, labels=classes, box_threshold=0.0)
    plain = hubkit.load(DINO, str(dino_base)).predict(image, labels=classes, box_threshold=0.0)
    assert not same(found.boxes, plain.boxes)
    assert (parts["grounding_dino"] / "trained_modules.safetensors").is_file()  # the box head, trained in place

    head = RegionHead.load(parts["region_head"])
    assert head.classes == classes and head.input == "sam"
    features = torch.randn(5, head.config()["in_features"])
    with torch.no_grad():
        assert torch.allclose(head(features), joint.region_head(features))
        assert not torch.allclose(head(features), setup.load_base().region_head(features))
    for name, task in (("sam", SAM), ("grounding_dino", DINO)):
        card = hubkit.cards.read_card(parts[name])
        assert card.data.pipeline_tag == task and card.data.base_model == str(sam_base if name == "sam" else dino_base)
    assert {r.metric_type for r in hubkit.cards.read_card(parts["grounding_dino"]).data.eval_results} == {
        "map", "map_50"}  # fmt: skip


@pytest.mark.slow
def test_trainer_runs_offline_under_ddp_and_pushes_every_part(sam_base, dino_base, data_dir, tmp_path):
    hubkit.push(sam_base, "hubkit-tiny/sam")
    hubkit.push(dino_base, "hubkit-tiny/grounding-dino")
    hubkit.push(data_dir, "hubkit-tiny/segma-shapes", repo_type="dataset")
    args = quick("hubkit-tiny/sam", "hubkit-tiny/grounding-dino", "hubkit-tiny/segma-shapes", tmp_path / "run",
                 max_steps=3, batch_size=2, region_input="hlbb", seg_loss="dice_bce", box_prompts="gt",
                 push_to_hub="me/segma-joint")  # fmt: skip
    # two processes (DDP over gloo): every trainable parameter gets a gradient, the main-process-only reload check
    # does not wait on the others, and only the main process exports and pushes
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(TRAINER), "--config",
           str(RECIPE)]  # fmt: skip
    cmd += [x for k, v in args.items() for x in (f"--{k}", v)]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["pushed"] == "me/segma-joint" and set(summary["parts"]) == {"sam", "grounding_dino", "region_head"}
    pulled = hubkit.pull("me/segma-joint")
    assert len(hubkit.list_revisions("me/segma-joint")) == 1  # the parts are written before the loop's one push
    assert summary["part_repos"] == {"sam": "me/segma-joint-sam", "grounding_dino": "me/segma-joint-grounding-dino",
                                     "region_head": "me/segma-joint-region-head"}  # fmt: skip
    # each part is an adapter of its own in the store, which the Segma Space's menus offer for its base
    from hubkit.segma.demo import SegmaDemo

    demo = SegmaDemo()
    assert "me/segma-joint-sam" in demo.available_adapters("sam", "hubkit-tiny/sam")
    assert "me/segma-joint-grounding-dino" in demo.available_adapters("detector", "hubkit-tiny/grounding-dino")
    assert hubkit.cards.read_card(hubkit.pull("me/segma-joint-sam")).data.base_model == "hubkit-tiny/sam"
    files = {p.relative_to(pulled).as_posix() for p in pulled.rglob("*") if p.is_file()}
    assert {"README.md", "adapter_model.safetensors", "adapters/sam/adapter_model.safetensors",
            "adapters/sam/README.md", "adapters/grounding_dino/adapter_config.json",
            "adapters/region_head/model.safetensors", "adapters/region_head/config.json"} <= files  # fmt: skip
    assert not any(f.startswith("checkpoints/") for f in files)
    card = hubkit.cards.card_summary(hubkit.cards.read_card(pulled))
    assert card["base_model"] == "hubkit-tiny/sam" and card["datasets"] == ["hubkit-tiny/segma-shapes"]
    assert {r["metric"] for r in card["eval_results"]} == {"map", "map_50", "mask_iou", "accuracy"}
    head = RegionHead.load(pulled / "adapters" / "region_head")
    assert head.input == "hlbb" and head.config()["in_features"] == 61
    image = data_dir / "shape_000.png"
    sam = hubkit.load(SAM, "hubkit-tiny/sam", adapters=[pulled / "adapters" / "sam"])
    assert sam.predict(image, boxes=[[10, 10, 50, 50]]).masks.shape == (1, 96, 96)
    dino = hubkit.load(DINO, "hubkit-tiny/grounding-dino", adapters=[pulled / "adapters" / "grounding_dino"])
    assert len(dino.predict(image, labels=["disc", "square", "triangle"], box_threshold=0.0).boxes) > 0


def test_recipe_yaml_holds_the_seed_values():
    import yaml

    seed = build_config(SegmaJointConfig, yaml.safe_load(RECIPE.read_text()))
    assert (seed.base, seed.detector_base) == ("facebook/sam-vit-base", "IDEA-Research/grounding-dino-tiny")
    weights = (seed.segmentation_weight, seed.detection_weight, seed.classification_weight)
    assert weights == (1.0, 1.0, 0.5) and seed.seg_loss == "bce"  # EndToEndPipelineLoss
    defaults = SegmaJointConfig()
    assert (defaults.segmentation_weight, defaults.detection_weight, defaults.classification_weight) == weights


def test_bad_values_are_refused(sam_base, dino_base, data_dir, tmp_path):
    for key, value in (("box_prompts", "random"), ("region_input", "pixels"), ("seg_loss", "focal"),
                       ("prompt_iou", 2), ("box_jitter", 1), ("head_hidden", 0)):  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            build_config(SegmaJointConfig, quick(sam_base, dino_base, data_dir, tmp_path, **{key: value}))
    with pytest.raises(ConfigError, match="loss weights"):
        build_config(SegmaJointConfig, quick(sam_base, dino_base, data_dir, tmp_path, segmentation_weight=0,
                                             detection_weight=0, classification_weight=0))  # fmt: skip


def test_an_empty_predicted_mask_falls_back_to_its_box_for_hlbb():
    from types import SimpleNamespace

    from hubkit.recipes.segma_joint import _filled

    masks = np.zeros((2, 20, 30), dtype=bool)
    masks[0, 2:5, 2:5] = True
    objects = [SimpleNamespace(box_xyxy=(0, 0, 10, 10)), SimpleNamespace(box_xyxy=(25.4, 15.2, 40, 40))]
    out = _filled(masks, objects)
    assert np.array_equal(out[0], masks[0])  # a mask with pixels is kept as it is
    assert out[1].sum() == 5 * 5 and out[1, 15:20, 25:30].all()  # the box, clipped to the image
