"""The BLIP captioning recipe on the tiny BLIP and the shapes set: data readers, domain prefixes, metrics,
LoRA and full fine-tuning, the card's sample captions, the accelerate-launched trainer and pushing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, one_torch_thread

import hubkit
from hubkit import tiny
from hubkit.data.segma import make_shapes_dataset
from hubkit.errors import ConfigError, DataError
from hubkit.recipes.blip_caption import (
    BlipCaptionConfig,
    blip_caption_setup,
    caption_metrics,
    caption_prefix,
    generate_captions,
    read_caption_data,
)
from hubkit.tasks import LoadOptions, get_task
from hubkit.training import build_config, train

TRAINER = ROOT / "trainers" / "blip_caption.py"
RECIPE = ROOT / "trainers" / "configs" / "blip_caption.yaml"


one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny.build("blip", tmp_path_factory.mktemp("base") / "blip")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", images=16, seed=0)


def quick(base_dir, data, out, **overrides) -> dict:
    values = dict(
        base=str(base_dir),
        data=str(data),
        output_dir=str(out),
        # The tiny model's random word embeddings (std 0.02, tied to its LM head) keep every logit near zero: LoRA
        # on the preset alone cannot move them, so the tests adapt the LM head (`decoder`) too. Real BLIP's can.
        lora_targets="query,value,qkv,decoder",
        learning_rate=2e-2,
        lr_schedule="constant",
        warmup_steps=0,
        batch_size=4,
        epochs=100,
        max_steps=40,
        eval_every=40,
        val_fraction=0.25,
        report_to="none",
        log_every=1,
        samples=2,
    )
    values.update(overrides)
    return {k: str(v) for k, v in values.items()}


def test_readers_csv_jsonl_imagefolder_and_segma(shapes, tmp_path):
    data = read_caption_data(shapes)
    assert len(data.pairs) == 16 and data.pairs[0].caption == "two red discs on brick"
    images = tmp_path / "set" / "images"
    images.mkdir(parents=True)
    for p in data.pairs[:2]:
        (images / p.image_path.name).write_bytes(p.image_path.read_bytes())
    csv_file = tmp_path / "set" / "captions.csv"
    csv_file.write_text("image,caption\nimages/shape_000.png,two red discs\nimages/shape_001.png,\n")
    pairs = read_caption_data(csv_file).pairs
    assert [p.caption for p in pairs] == ["two red discs"] and pairs[0].image_path == images / "shape_000.png"
    jsonl = tmp_path / "set" / "captions.jsonl"
    jsonl.write_text(json.dumps({"image": "images/shape_001.png", "caption": "a yellow triangle"}) + "\n")
    assert read_caption_data(jsonl).pairs[0].caption == "a yellow triangle"
    (images / "metadata.jsonl").write_text(json.dumps({"file_name": "shape_000.png", "text": "two discs"}) + "\n")
    assert read_caption_data(images).pairs[0].image_path == images / "shape_000.png"  # an ImageFolder
    csv_file.write_text("file,text\na.png,b\n")
    with pytest.raises(DataError, match="image,caption"):
        read_caption_data(csv_file)
    jsonl.write_text(json.dumps({"image": "images/nope.png", "caption": "x"}) + "\n")
    with pytest.raises(DataError, match="line 1.*does not exist"):
        read_caption_data(jsonl)
    jsonl.write_text(json.dumps({"image": "images/shape_001.png", "caption": ""}) + "\n")
    with pytest.raises(DataError, match="no captioned image"):
        read_caption_data(jsonl)


def test_domain_prefix_is_the_pipelines_and_prefixes_the_targets(base_dir, shapes, tmp_path):
    from hubkit.pipelines.segma import CAPTION_PROMPTS

    assert caption_prefix("medical") == CAPTION_PROMPTS["medical"] == "Medical image showing:"
    assert caption_prefix("industrial") == CAPTION_PROMPTS["automotive"]  # the pipeline's alias
    with pytest.raises(ConfigError, match="domain"):
        build_config(BlipCaptionConfig, {"domain": "astrology"})
    setup = blip_caption_setup(build_config(BlipCaptionConfig, quick(base_dir, shapes, tmp_path, domain="medical")))
    item = setup.train_dataset[0]
    assert item["text"] == f"Medical image showing: {item['reference']}" and not item["reference"].startswith("Med")
    prefixed = setup.train_dataset.pairs[0].__class__(
        setup.train_dataset.pairs[0].image_path, "Medical image showing: x"
    )
    setup.train_dataset.pairs[0] = prefixed  # a caption that already carries the prefix is not prefixed twice
    assert setup.train_dataset[0]["text"] == "Medical image showing: x"
    batch = setup.collate_fn([setup.train_dataset[i] for i in range(3)])
    processor = get_task("image-to-text").load(base_dir, LoadOptions())[1]
    assert (batch["input_ids"][:, 0] == processor.tokenizer.bos_token_id).all()  # [DEC], as generate starts
    assert ((batch["labels"] == -100) == (batch["attention_mask"] == 0)).all()
    assert "Medical image showing:" in setup.card_notes


def test_metrics_and_prompted_generation(base_dir, shapes):
    assert caption_metrics(["A red disc, on brick."], ["a red disc on brick"]) == {"bleu4": 1.0, "rougeL": 1.0}
    assert caption_metrics(["blue square"], ["a red disc on brick"]) == {"bleu4": 0.0, "rougeL": 0.0}
    model, processor = get_task("image-to-text").load(base_dir, LoadOptions())
    image = read_caption_data(shapes).pairs[0].image_path
    pixels = processor(images=[hubkit.tasks.to_pil(str(image))], return_tensors="pt")["pixel_values"]
    prompt = "Medical image showing:"
    mine = generate_captions(model, processor.tokenizer, pixels, prompt=prompt, num_beams=3, max_new_tokens=8)[0]
    full = get_task("image-to-text").predict(model, processor, [hubkit.tasks.to_pil(str(image))], prompt=prompt,
                                             num_beams=3, max_new_tokens=8)[0].text  # fmt: skip
    assert mine and full.startswith("medical image showing") and full.endswith(mine)  # the prompt, then ours


@pytest.mark.slow
def test_lora_learns_shape_captions_and_the_card_shows_samples(base_dir, shapes, tmp_path):
    config = build_config(BlipCaptionConfig, quick(base_dir, shapes, tmp_path / "run"))
    setup = blip_caption_setup(config)
    result = train(config, setup)
    curve = [loss for _, loss in result.losses]
    assert np.mean(curve[-5:]) < 0.3 * np.mean(curve[:5]), curve
    assert result.metrics_before == {"bleu4": 0.0, "rougeL": 0.0}
    assert result.metrics["rougeL"] > 0.4 and result.metrics["bleu4"] > 0.1, result.metrics
    card = hubkit.cards.read_card(result.adapter_dir)
    assert {r.metric_type for r in card.data.eval_results} == {"bleu4", "rougeL"}
    assert card.data.pipeline_tag == "image-to-text" and "Sample held-out captions" in card.text
    samples = json.loads((result.adapter_dir / "caption_samples.json").read_text())
    assert len(samples) == 2 and all(s["before"] != s["after"] for s in samples)
    # the saved adapter, loaded as users load it, captions the held-out images as the card says
    captioner = hubkit.load("image-to-text", base_dir, adapters=[result.adapter_dir])
    images = [p.image_path for p in setup.eval_dataset.pairs[:2]]
    after = [c.text for c in captioner.predict(images, num_beams=3, max_new_tokens=50)]
    assert after == [s["after"] for s in samples]
    assert [c.text for c in captioner.predict(images, adapter="base", num_beams=3, max_new_tokens=50)] == [
        s["before"] for s in samples
    ]


@pytest.mark.slow
def test_full_fine_tuning_with_a_domain_saves_a_loadable_model(base_dir, shapes, tmp_path):
    args = quick(base_dir, shapes, tmp_path / "run", full="true", domain="nature", learning_rate=5e-3, max_steps=20)
    del args["lora_targets"]
    config = build_config(BlipCaptionConfig, args)
    result = train(config, blip_caption_setup(config))
    curve = [loss for _, loss in result.losses]
    assert np.mean(curve[-3:]) < 0.6 * np.mean(curve[:3]), curve
    assert result.adapter_dir.name == "model" and result.trainable_params == result.total_params
    samples = json.loads((result.adapter_dir / "caption_samples.json").read_text())
    assert all(s["before"] != s["after"] for s in samples)
    # the folder holds the processor too: it loads on its own and continues the domain prompt
    captioner = hubkit.load("image-to-text", result.adapter_dir)
    image = read_caption_data(shapes).pairs[0].image_path
    text = captioner.predict(image, prompt="Natural scene containing:", num_beams=3, max_new_tokens=20).text
    assert text.startswith("natural scene containing")
    base = hubkit.load("image-to-text", base_dir)
    assert base.predict(image, prompt="Natural scene containing:", max_new_tokens=20).text != text
    assert 'prompt="Natural scene containing:"' in hubkit.cards.read_card(result.adapter_dir).text


@pytest.mark.slow
def test_trainer_writes_adapter_card_and_pushes(base_dir, shapes, tmp_path):
    hubkit.push(base_dir, "hubkit-tiny/blip")
    hubkit.push(shapes, "me/shapes", repo_type="dataset")
    args = quick("hubkit-tiny/blip", "me/shapes", tmp_path / "run", max_steps=6, eval_every=0,
                 push_to_hub="me/blip-shapes")  # fmt: skip
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(TRAINER), "--config", str(RECIPE)]  # fmt: skip
    cmd += [x for k, v in args.items() for x in (f"--{k}", v)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["pushed"] == "me/blip-shapes" and len(summary["revision"]) == 40
    assert summary["metrics"]["rougeL"] >= summary["metrics_before"]["rougeL"]
    card = hubkit.cards.read_card(hubkit.pull("me/blip-shapes"))
    assert card.data.datasets == ["me/shapes"] and card.data.base_model == "hubkit-tiny/blip"
    assert {r.metric_type for r in card.data.eval_results} == {"bleu4", "rougeL"}
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
