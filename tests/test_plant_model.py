"""PlantVLM (hubkit.plant.model) on the tiny build: shapes with and without text, the no-text path, save / load,
prediction and description APIs, encoders from folders, LoRA vs full parameter counts, clear config errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import ConfigError, MissingModelFileError
from hubkit.plant import PlantVLM, PlantVLMConfig, _encoders
from hubkit.plant.model import NEW_MODULES, NEW_MODULES_PATTERN

one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny.build("plant-vlm", tmp_path_factory.mktemp("plant") / "base")


@pytest.fixture
def model(base_dir):
    return PlantVLM.from_pretrained(base_dir)


def images(n: int = 2):
    return [data.astronaut(), data.coffee(), data.chelsea()][:n]


def test_forward_shapes_with_and_without_text(model):
    batch = model.preprocess(images(), ["brown spots with rings", "white powder"])
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and batch["input_ids"].shape[0] == 2
    out = model(**batch, description_ids=batch["input_ids"], description_mask=batch["attention_mask"])
    assert out.logits.shape == (2, model.config.num_classes) and out.fused.shape == (2, model.config.fusion_dim)
    assert out.description_loss.ndim == 0 and out.description_loss > 0
    assert int(out.description_tokens) == int(batch["attention_mask"].sum())
    image_only = model(pixel_values=batch["pixel_values"])
    assert image_only.logits.shape == (2, 8) and image_only.description_loss is None
    assert not torch.allclose(out.logits, image_only.logits)  # the text changes the prediction


def test_a_sample_without_text_is_exactly_the_image_only_path(model):
    """A missing text (None / "") in a batch attends the no-text token alone: the same logits as no text at all."""
    mixed = model(**model.preprocess(images(), ["yellow leaves", None])).logits
    alone = model(**model.preprocess(images(), None)).logits
    torch.testing.assert_close(mixed[1], alone[1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mixed[0], alone[0])


def test_text_dropout_only_in_training(model):
    batch = model.preprocess(images(), ["brown spots", "grey streaks"])
    model.config = dataclasses.replace(model.config, text_dropout=1.0)
    model.vision_encoder.requires_grad_(False)  # BatchNorm in eval mode: only the text dropout differs
    model.train()
    dropped = model(**batch).logits
    model.eval()
    alone = model(pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(dropped, alone, rtol=1e-5, atol=1e-6)  # the tiny's dropout is 0
    assert not torch.allclose(model(**batch).logits, alone)


def test_save_and_load_round_trip(model, tmp_path):
    with torch.no_grad():
        model.classifier[1].bias.add_(torch.linspace(-1, 1, 8))  # not the saved state any more
    folder = model.save_pretrained(tmp_path / "saved")
    assert {"config.json", "model.safetensors", "classes.json", "preprocessor_config.json", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert json.loads((folder / "classes.json").read_text()) == model.class_names
    again = PlantVLM.from_pretrained(folder)
    batch = model.preprocess(images(), ["brown spots", None])
    torch.testing.assert_close(again(**batch).logits, model(**batch).logits, rtol=1e-5, atol=1e-6)
    hubkit.push(folder, "me/plant")  # a repo id loads through the store
    assert PlantVLM.from_pretrained("me/plant").class_names == model.class_names
    (folder / "model.safetensors").rename(folder / "weights.bin")
    with pytest.raises(MissingModelFileError, match="model.safetensors"):
        PlantVLM.from_pretrained(folder)


def test_predict_top_k_and_descriptions(model):
    ranked = model.predict(images(3), ["brown spots", None, ""], top_k=3)
    assert len(ranked) == 3 and all(len(row) == 3 for row in ranked)
    for row in ranked:
        probs = [p for _, p in row]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert {c for c, _ in row} <= set(model.class_names)
    assert model.predict(images(1)[0]) == model.predict(images(1))  # one image or a list of one
    batched = model.predict(images(3), top_k=8, batch_size=2)
    one_by_one = [model.predict([image], top_k=8)[0] for image in images(3)]
    for a, b in zip(batched, one_by_one, strict=True):
        assert [c for c, _ in a] == [c for c, _ in b] and np.allclose([p for _, p in a], [p for _, p in b], atol=1e-5)
    texts = model.generate_description(images(2), max_new_tokens=6)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    with pytest.raises(ConfigError, match="top_k"):
        model.predict(images(1), top_k=0)
    with pytest.raises(ConfigError, match="2 images but 3 texts"):
        model.predict(images(2), ["a", "b", "c"])


def test_task_predicts_with_text_and_description(base_dir, tmp_path):
    predictor = hubkit.load("plant-disease", base_dir)
    out = predictor.predict(data.astronaut(), texts="brown spots", top_k=2, generate_description=True)
    assert len(out.labels) == 2 and out.scores.dtype == np.float32 and isinstance(out.description, str)
    path = predictor.task.save_output(out, tmp_path, "leaf")[0]
    assert set(json.loads(path.read_text())) == {"classes", "description"}


def test_from_encoders_reads_encoder_folders(model, tmp_path):
    """A new model on pretrained encoders (here: the tiny ones, saved as their own Hub-style folders)."""
    vision_dir, text_dir = tmp_path / "vision", tmp_path / "text"
    model.vision_encoder.save_pretrained(vision_dir)
    model.image_processor.save_pretrained(vision_dir)
    model.text_encoder.save_pretrained(text_dir)
    tokenizer = _encoders.load_tokenizer(model.save_pretrained(tmp_path / "m"))
    tokenizer.pad_token = None  # as GPT-2 ships: the eos pads
    tokenizer.save_pretrained(text_dir)
    config = PlantVLMConfig(num_classes=3, class_names=["a", "b", "c"], vision_dim=16, text_dim=16, fusion_dim=16,
                            num_attention_heads=2, num_attention_layers=1, text_max_length=32)  # fmt: skip
    fresh = PlantVLM.from_encoders(config, vision_backbone=str(vision_dir), text_model=str(text_dir))
    assert fresh.config.vision_config["model_type"] == "resnet" and fresh.config.text_config["model_type"] == "gpt2"
    assert fresh.config.pad_token_id == fresh.config.eos_token_id == fresh.tokenizer.eos_token_id
    for name, param in fresh.vision_encoder.state_dict().items():
        torch.testing.assert_close(param, model.vision_encoder.state_dict()[name])
    assert fresh.predict(images(1), ["spots"], top_k=3)[0][0][0] in {"a", "b", "c"}
    assert _encoders.backbone_id("resnet50") == "microsoft/resnet-50"
    assert _encoders.backbone_id("efficientnet_b4") == "google/efficientnet-b4"
    assert _encoders.backbone_id("me/own-backbone") == "me/own-backbone"


def test_lora_trains_far_fewer_parameters_than_full(model):
    from peft import get_peft_model

    from hubkit.adapters import count_parameters, lora_config

    assert model.lora_targets() == ("convolution", "c_attn", "c_proj", "c_fc")
    total = sum(p.numel() for p in model.parameters())
    new = sum(p.numel() for name in NEW_MODULES for p in getattr(model, name).parameters())
    config = lora_config(model, model.lora_targets(), r=4, alpha=8, exclude=NEW_MODULES_PATTERN,
                         modules_to_save=list(NEW_MODULES))  # fmt: skip
    peft_model = get_peft_model(model, config)
    trainable, _ = count_parameters(peft_model)
    encoder_params = total - new
    assert new < trainable < new + 0.5 * encoder_params  # the new modules in full + small LoRA matrices
    adapted = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    assert adapted and not any(m in n for n in adapted for m in NEW_MODULES)  # LoRA only inside the encoders
    assert any("vision_encoder" in n for n in adapted) and any("text_encoder" in n for n in adapted)


def test_frozen_batchnorm_keeps_its_statistics(model):
    model.vision_encoder.requires_grad_(False)
    model.train()
    bns = [m for m in model.vision_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    model.vision_encoder.requires_grad_(True)
    model.train()
    assert all(m.training for m in bns)


def test_bad_configs_are_clear_errors(base_dir):
    with pytest.raises(ConfigError, match="text_pooling"):
        PlantVLMConfig(text_pooling="max")
    with pytest.raises(ConfigError, match="class_names"):
        PlantVLMConfig(num_classes=3, class_names=["a", "b"])
    with pytest.raises(ConfigError, match="fusion_dim"):
        PlantVLMConfig(fusion_dim=30, num_attention_heads=8)
    with pytest.raises(ConfigError, match="from_encoders"):
        PlantVLM(PlantVLMConfig())
    with pytest.raises(ConfigError, match="No LoRA targets known"):
        _encoders.lora_targets("perceiver")
    assert PlantVLMConfig().num_classes == 133 and PlantVLMConfig().text_model == "microsoft/DialoGPT-medium"
