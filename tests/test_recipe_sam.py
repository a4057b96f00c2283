"""The SAM recipe (hubkit.recipes.sam_lora, trainers/sam_lora.py) on the synthetic shapes set with the tiny SAM.

A random tiny SAM's mask decoder outputs logits of ~1e-5 (small random weights multiplied through the hypernetwork
and upscaling): LoRA on the image encoder cannot move them. So the decoder is first trained in full on one shapes
set (the `decoder_full` variant, on the raw tiny SAM) and saved as the base the LoRA variants adapt to another
shapes set, as a real SAM's pretrained decoder is.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import time
from unittest import mock

import numpy as np
import pytest
import test_trainer_depth as depth_tests
import torch
import yaml
from conftest import ROOT, one_torch_thread
from safetensors.torch import load_file
from test_trainer_depth import losses

import hubkit
from hubkit import tiny
from hubkit.adapters import restore_trained_modules
from hubkit.data.segma import make_shapes_dataset, read_detection_data
from hubkit.errors import ConfigError
from hubkit.recipes import sam_lora
from hubkit.recipes.sam_lora import SamLoraConfig, dice_ce_loss, evaluate, sam_setup
from hubkit.tasks import LoadOptions, get_task
from hubkit.training import build_config, train

TRAINER = ROOT / "trainers" / "sam_lora.py"
RECIPE = ROOT / "trainers" / "configs" / "sam_lora.yaml"


one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


@pytest.fixture(scope="module")
def raw_base(tmp_path_factory):
    return tiny.build("sam", tmp_path_factory.mktemp("raw") / "sam")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "shapes", images=40, size=96, seed=0)


def quick(base, data, out, **overrides) -> dict:
    values = dict(
        base=str(base),
        data=str(data),
        output_dir=str(out),
        batch_size=4,
        epochs=1,
        max_steps=100,
        eval_every=1000,  # evaluate before and after only
        learning_rate=3e-3,
        lora_dropout=0.0,
        box_jitter=4,  # 96 px images: the real default (20 px) would swallow the shapes
        val_fraction=0.25,
        report_to="none",
        log_every=1,
    )
    values.update(overrides)
    return {k: str(v) for k, v in values.items()}


@pytest.fixture(scope="module")
def decoder_run(raw_base, tmp_path_factory):
    """The decoder_full variant on the raw tiny SAM, on a second shapes set (seed 1)."""
    root = tmp_path_factory.mktemp("decoder")
    pre = make_shapes_dataset(root / "pre", images=24, size=96, seed=1)
    config = build_config(
        SamLoraConfig, quick(raw_base, pre, root / "run", variant="decoder", decoder_full="true", max_steps=40)
    )
    return train(config, sam_setup(config))


@pytest.fixture(scope="module")
def base_dir(decoder_run, raw_base, tmp_path_factory):
    """The raw tiny SAM with the trained decoder folded in (restore_trained_modules), saved as a model folder."""
    model, _ = get_task("mask-generation").load(raw_base, LoadOptions())
    assert all(name.startswith("mask_decoder.") for name in restore_trained_modules(model, decoder_run.adapter_dir))
    folder = tmp_path_factory.mktemp("pretrained") / "sam"
    model.save_pretrained(folder)
    for extra in raw_base.glob("*.json"):
        if extra.name != "config.json":
            shutil.copy(extra, folder / extra.name)
    return folder


def open_rgb(path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def held_out(config) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(sam_setup(config).eval_dataset, batch_size=4)


# -- pieces ------------------------------------------------------------------------------------------------------
def monai_dice_ce(logits: np.ndarray, target: np.ndarray) -> float:
    """monai DiceCELoss(sigmoid=True, squared_pred=True, reduction="mean") for one channel, written out in numpy."""
    p = 1 / (1 + np.exp(-logits))
    axes = (2, 3)
    dice = 1 - (2 * (p * target).sum(axes) + 1e-5) / ((p**2).sum(axes) + (target**2).sum(axes) + 1e-5)
    bce = np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))
    return float(dice.mean() + bce.mean())


def test_loss_is_monai_dice_ce():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 1, 8, 8))
    target = (rng.random((3, 1, 8, 8)) > 0.6).astype(np.float64)
    got = dice_ce_loss(torch.from_numpy(logits), torch.from_numpy(target))
    assert float(got) == pytest.approx(monai_dice_ce(logits, target), rel=1e-6)
    perfect = torch.from_numpy(np.where(target > 0, 20.0, -20.0))
    assert float(dice_ce_loss(perfect, torch.from_numpy(target))) < 1e-3
    with pytest.raises(Exception, match="differ"):
        dice_ce_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8))


def test_samples_targets_and_prompts(raw_base, data_dir):
    config = build_config(SamLoraConfig, quick(raw_base, data_dir, "unused", box_jitter=20))
    setup = sam_setup(config)
    train_ds, val_ds = setup.train_dataset, setup.eval_dataset
    data = read_detection_data(data_dir)
    assert len(train_ds) + len(val_ds) == sum(len(s.objects) for s in data.samples)  # one sample per object
    assert len(train_ds.pixels) == len(train_ds.images) < len(train_ds)  # pixel_values once per image
    # targets: the processor's own segmentation_maps path (resized, padded to the 32 x 32 low-res frame)
    processor = sam_lora.load_processor(raw_base)
    image = train_ds.images[0]
    blank = np.zeros((*image["original"], 3), np.uint8)
    expected = processor(images=blank, segmentation_maps=image["masks"][0].astype(np.uint8), return_tensors="pt")
    expected = expected["labels"][0]
    assert train_ds[0]["labels"].shape == (32, 32) and torch.equal(train_ds[0]["labels"].long(), expected)
    # prompts: the box widened by 0-20 px per side inside the image, in the model's input frame (96 px -> 64 px);
    # seeded by (seed, epoch, index): the same twice, another draw next epoch
    exact = np.array(image["boxes"][0]) * 64 / 96
    draws = []
    for epoch in range(4):
        train_ds.set_epoch(epoch)
        box = train_ds[0]["input_boxes"][0].numpy()
        assert torch.equal(train_ds[0]["input_boxes"], train_ds[0]["input_boxes"])
        assert (box[:2] <= exact[:2] + 1e-4).all() and (box[2:] >= exact[2:] - 1e-4).all()
        assert (box[:2] >= exact[:2] - 20 * 64 / 96 - 1e-4).all() and (box >= 0).all() and (box <= 64 + 1e-4).all()
        draws.append(tuple(box))
    assert len(set(draws)) > 1
    assert np.allclose(val_ds[0]["input_boxes"][0].numpy(), np.array(val_ds.images[0]["boxes"][0]) * 64 / 96)
    # point prompts: a random point inside the mask (training), the innermost one (evaluation)
    config = build_config(SamLoraConfig, quick(raw_base, data_dir, "unused", prompt="point"))
    setup = sam_setup(config)
    for dataset in (setup.train_dataset, setup.eval_dataset):
        item, image = dataset[0], dataset.images[dataset.items[0][0]]
        x, y = item["input_points"][0, 0].numpy() * 96 / 64
        assert image["masks"][dataset.items[0][1]][round(y), round(x)] and item["input_labels"].tolist() == [[1]]


def test_bad_config_values_are_clear(raw_base, data_dir):
    with pytest.raises(ConfigError, match="variant"):
        build_config(SamLoraConfig, quick(raw_base, data_dir, "x", variant="middle"))
    with pytest.raises(ConfigError, match="decoder_full"):
        build_config(SamLoraConfig, quick(raw_base, data_dir, "x", decoder_full="true"))
    with pytest.raises(ConfigError, match="prompt"):
        build_config(SamLoraConfig, quick(raw_base, data_dir, "x", prompt="scribble"))
    with pytest.raises(ConfigError, match="data is required"):
        sam_setup(build_config(SamLoraConfig, quick(raw_base, "", "x")))


def test_recipe_yamls_hold_the_seed_and_tutorial_values():
    seed = build_config(SamLoraConfig, yaml.safe_load(RECIPE.read_text()))
    assert (seed.base, seed.variant, seed.lora_r, seed.lora_alpha, seed.lora_dropout) == (
        "facebook/sam-vit-base",
        "encoder",
        16,
        32,
        0.1,
    )
    assert (seed.learning_rate, seed.epochs, seed.prompt, seed.box_jitter) == (1e-4, 10, "box", 20)
    tutorial = build_config(SamLoraConfig, yaml.safe_load((RECIPE.parent / "sam_decoder.yaml").read_text()))
    assert (tutorial.variant, tutorial.decoder_full, tutorial.learning_rate, tutorial.weight_decay) == (
        "decoder",
        True,
        1e-5,
        0.0,
    )
    assert sam_lora.trainable_for(seed).lora and not sam_lora.trainable_for(tutorial).lora


# -- training improves held-out masks -----------------------------------------------------------------------------
def test_decoder_full_training_raises_iou(decoder_run, raw_base):
    before, after = decoder_run.metrics_before, decoder_run.metrics
    assert after["mean_iou"] > before["mean_iou"] + 0.1, (before, after)  # measured: 0.084 -> 0.249 (40 steps)
    assert after["mean_dice"] > before["mean_dice"] and after["mean_boundary_acc"] > before["mean_boundary_acc"]
    assert {p.name for p in decoder_run.adapter_dir.iterdir()} >= {"trained_modules.safetensors", "README.md"}
    saved = load_file(decoder_run.adapter_dir / "trained_modules.safetensors")
    assert saved and all(k.startswith("mask_decoder.") for k in saved)  # the encoders stayed as they were
    image = read_detection_data(decoder_run.adapter_dir.parent.parent / "pre").samples[0]
    box = image.objects[0].box_xyxy
    base = hubkit.load("mask-generation", raw_base)
    plain = base.predict(image.image(), boxes=[box]).masks
    restore_trained_modules(base.model, decoder_run.adapter_dir)
    assert not np.array_equal(base.predict(image.image(), boxes=[box]).masks, plain)


def test_encoder_lora_raises_iou_and_reloads(base_dir, data_dir, tmp_path):
    config = build_config(SamLoraConfig, quick(base_dir, data_dir, tmp_path / "run", report_to="tensorboard"))
    result = train(config, sam_setup(config))
    before, after = result.metrics_before, result.metrics
    assert after["mean_iou"] > before["mean_iou"] + 0.1, (before, after)  # measured: 0.351 -> 0.562 (100 steps)
    assert set(after) == {"mean_iou", "mean_dice", "mean_boundary_acc", "avg_inference_time"}
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert saved and all("vision_encoder" in k for k in saved)  # the preset: encoder only
    card = (result.adapter_dir / "README.md").read_text()
    assert "| mean_iou |" in card and "Before and after training" in card and "pipeline_tag: mask-generation" in card
    # hubkit.load with the adapter gives the masks the evaluation scored, and the base gives others
    dataset = sam_setup(config).eval_dataset
    image = dataset.images[0]
    predictor = hubkit.load("mask-generation", base_dir, adapters=[result.adapter_dir])
    masks = predictor.predict(open_rgb(image["path"]), boxes=image["boxes"]).masks
    assert np.array_equal(masks, sam_lora.predict_objects(predictor.model, dataset, 0))
    base_masks = predictor.predict(open_rgb(image["path"]), boxes=image["boxes"], adapter="base").masks
    assert not np.array_equal(masks, base_masks)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = EventAccumulator(str(next((tmp_path / "run" / "logs").rglob("events.out.tfevents.*")).parent))
    logs.Reload()
    assert {"train/loss", "eval/mean_iou"} <= set(logs.Tags()["scalars"])
    assert "eval/masks_pred_vs_truth" in " ".join(logs.Tags()["images"])


def test_decoder_lora_raises_iou(base_dir, data_dir, tmp_path):
    args = quick(base_dir, data_dir, tmp_path / "run", variant="decoder", learning_rate=1e-3)
    config = build_config(SamLoraConfig, args)
    result = train(config, sam_setup(config))
    before, after = result.metrics_before, result.metrics
    assert after["mean_iou"] > before["mean_iou"] + 0.03, (before, after)  # measured: 0.351 -> 0.414 (100 steps)
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert saved and all("mask_decoder" in k for k in saved)
    model = hubkit.load("mask-generation", base_dir, adapters=[result.adapter_dir]).model
    assert evaluate(model, held_out(config))["mean_iou"] == pytest.approx(after["mean_iou"], abs=1e-6)


def test_point_prompts_and_embedding_cache_train(base_dir, data_dir, tmp_path):
    args = quick(base_dir, data_dir, tmp_path / "run", variant="decoder", prompt="point", max_steps=3)
    config = build_config(SamLoraConfig, args)
    setup = sam_setup(config)
    batch = next(iter(torch.utils.data.DataLoader(setup.train_dataset, batch_size=4)))
    model = setup.load_base()
    cached = sam_lora.make_loss(cache=True)(model, batch)
    assert len(model.__dict__[sam_lora._CACHE]) == len(set(batch["image_id"].tolist()))
    assert float(cached) == pytest.approx(float(sam_lora.make_loss(cache=False)(model, batch)), rel=1e-5)
    result = train(config, setup)
    assert result.global_step == 3 and np.isfinite([loss for _, loss in result.losses]).all()


# -- the trainer under accelerate launch ----------------------------------------------------------------------------
def launch(args: dict, **kwargs):
    """test_trainer_depth's launcher, pointed at this trainer and recipe."""
    with mock.patch.multiple(depth_tests, TRAINER=TRAINER, RECIPE=RECIPE):
        return depth_tests.launch(args, **kwargs)


def test_trainer_offline_writes_adapter_and_card_and_pushes(base_dir, data_dir, tmp_path):
    hubkit.push(base_dir, "me/sam-shapes-base")
    hubkit.push(data_dir, "me/shapes", repo_type="dataset")  # --data may name a dataset repo in the store
    args = quick("me/sam-shapes-base", "me/shapes", tmp_path / "run", max_steps=40, push_to_hub="me/sam-lora")
    summary = launch(args)
    assert summary["pushed"] == "me/sam-lora" and len(summary["revision"]) == 40
    assert summary["metrics"]["mean_iou"] > summary["metrics_before"]["mean_iou"]
    pulled = hubkit.pull("me/sam-lora")
    card = hubkit.cards.card_summary(hubkit.cards.read_card(pulled))
    assert card["base_model"] == "me/sam-shapes-base" and card["datasets"] == ["me/shapes"]
    assert {r["metric"] for r in card["eval_results"]} >= {"mean_iou", "mean_dice", "mean_boundary_acc"}
    text = (pulled / "README.md").read_text()
    assert "| metric | base | trained |" in text and "| mean_iou |" in text
    assert not any(p.name.startswith("checkpoint") for p in pulled.iterdir())
    image = read_detection_data(data_dir).samples[-1]
    boxes = [o.box_xyxy for o in image.objects]
    adapted = hubkit.load("mask-generation", "me/sam-shapes-base", adapters=["me/sam-lora"])
    assert not np.array_equal(
        adapted.predict(image.image(), boxes=boxes).masks,
        adapted.predict(image.image(), boxes=boxes, adapter="base").masks,
    )


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["encoder", "decoder"])
def test_ddp_two_processes_matches_single_process(base_dir, data_dir, tmp_path, variant):
    # decoder: LoRA on the mask decoder and the IoU-head loss, so every adapted parameter gets a gradient under DDP
    single = quick(base_dir, data_dir, tmp_path / "one", batch_size=4, max_steps=6, variant=variant)
    double = quick(base_dir, data_dir, tmp_path / "two", batch_size=2, max_steps=6, variant=variant)
    train(build_config(SamLoraConfig, single), sam_setup(build_config(SamLoraConfig, single)))
    launch(double, processes=2)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    np.testing.assert_allclose(two, one, rtol=2e-2)  # the same global batch: the same curve, up to float order
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    diff = torch.cat([(b[k] - a[k]).flatten() for k in a]).norm() / torch.cat([a[k].flatten() for k in a]).norm()
    assert diff < 0.05, f"adapters differ by {diff:.3%}"


@pytest.mark.slow
def test_kill_9_then_resume_reaches_the_same_adapter(base_dir, data_dir, tmp_path):
    common = dict(max_steps=30, lora_dropout=0.1, box_jitter=8)  # dropout and jitter: RNG state must resume too
    args = quick(base_dir, data_dir, tmp_path / "x", checkpoint_every=3, **common)
    reference = quick(base_dir, data_dir, tmp_path / "ref", **common)
    train(build_config(SamLoraConfig, reference), sam_setup(build_config(SamLoraConfig, reference)))
    proc = launch(args, background=True)
    ckpt = tmp_path / "x" / "checkpoints" / "checkpoint-3"
    deadline = time.monotonic() + 300
    while not (ckpt / "trainer_state.json").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "x" / "adapter").exists()
    launch({**args, "resume": "latest"})
    assert losses(tmp_path / "x") == pytest.approx(losses(tmp_path / "ref"), rel=1e-4)
    a = load_file(tmp_path / "ref" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "x" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-7) for k in a)


# -- the closed loop: label with Segma, review, export, train, label again ---------------------------------------------
def test_segma_labels_train_an_adapter_the_pipeline_then_uses(raw_base, tmp_path):
    from hubkit.pipelines.segma import TINY_SAM_OVERRIDES, SegmaConfig, SegmaPipeline
    from hubkit.pool import ModelPool
    from hubkit.segma.export import export_dataset

    families = {"captioner": "blip", "labeler": "mistral", "detector": "grounding-dino"}
    bases = {stage: tiny.build(family, tmp_path / family) for stage, family in families.items()}
    config = SegmaConfig(
        sam=raw_base,
        **bases,
        classes=["disc", "square", "triangle"],
        automatic=False,
        caption=False,
        box_threshold=0.0,
        text_threshold=0.0,
        sam_options=TINY_SAM_OVERRIDES,
    )
    pool = ModelPool()
    shapes = read_detection_data(make_shapes_dataset(tmp_path / "photos", images=6, size=96, seed=3))
    entries = []
    for sample in shapes.samples:
        result = SegmaPipeline(config, pool=pool).run(sample.image_path)
        for region in result.regions:  # a person's review: keep the labels, accept the regions
            region.status = "accepted"
        entries.append((sample.image_path, sample.image_path.name, result))
    labelled = sum(len(r.regions) for _, _, r in entries)
    assert labelled > 0
    export = export_dataset(entries, tmp_path / "labels", reviewed=True, name="Segma labels, reviewed")
    run = quick(raw_base, export, tmp_path / "run", max_steps=6, learning_rate=1e-2, val_fraction=0.2)
    result = train(build_config(SamLoraConfig, run), sam_setup(build_config(SamLoraConfig, run)))
    adapted = SegmaPipeline(dataclasses.replace(config, adapters={"sam": [result.adapter_dir]}), pool=pool)
    base_only = adapted.with_options(base_only=True)
    photo = shapes.samples[0].image_path
    with_adapter, without = adapted.run(photo), base_only.run(photo)
    assert with_adapter.models["sam"].endswith(str(result.adapter_dir)) and "+" not in without.models["sam"]
    # the same detections (the detector has no adapter); SAM's box masks differ (a region whose mask came out
    # empty is dropped, so compare box -> mask)
    assert with_adapter.caption == without.caption and with_adapter.classes == without.classes
    masks = [{r.box: r.mask.tobytes() for r in result.regions} for result in (with_adapter, without)]
    assert masks[0] != masks[1]


def test_a_full_decoder_folder_is_refused_as_an_adapter_with_the_way_to_load_it(tmp_path):
    from safetensors.torch import save_file

    from hubkit.errors import AdapterMismatchError

    base = tiny.build("sam", tmp_path / "base")
    folder = tmp_path / "decoder"
    folder.mkdir()
    save_file({"mask_decoder.iou_token.weight": torch.zeros(1, 4)}, folder / "trained_modules.safetensors")
    with pytest.raises(AdapterMismatchError, match="restore_trained_modules"):
        hubkit.load("mask-generation", base, adapters=[folder])
