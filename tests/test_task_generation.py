"""conditional-image-generation on the tiny latent diffusion model: sampling, conditioning, adapters, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import ConfigError
from hubkit.tasks import get_task
from hubkit.tasks.generation import ADAPTER_DIR, ConditionedUNet, GeneratedImage

TASK = "conditional-image-generation"
STEPS = 4  # enough to exercise the scheduler loop; the tiny UNet is random anyway


def pixels(out: GeneratedImage) -> np.ndarray:
    return np.asarray(out.image, dtype=np.int16)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny.build("diffusion", tmp_path_factory.mktemp("tiny") / "diffusion")


@pytest.fixture(scope="module")
def predictor(base):
    return hubkit.load(TASK, base)


def test_model_holds_frozen_parts_and_a_fresh_adapter(predictor):
    net = predictor.model
    assert isinstance(net, ConditionedUNet)
    assert not isinstance(net.scheduler, torch.nn.Module)
    assert net.condition_adapter.config["embedding_dim"] == net.builtin_embedding_dim == 4 * 4**2
    assert not any(p.requires_grad for p in net.parameters())
    emb = torch.zeros(2, net.builtin_embedding_dim)
    assert net.condition_adapter(emb).shape == (2, 4, net.unet.config.cross_attention_dim)


def test_generates_an_rgb_image_deterministically(predictor):
    ihc = data.immunohistochemistry()
    out = predictor.predict(ihc, num_inference_steps=STEPS, seed=0)
    assert isinstance(out, GeneratedImage) and out.seed == 0
    assert out.image.mode == "RGB" and out.image.size == (16, 16)  # the tiny UNet's 8x8 latents, VAE factor 2
    assert pixels(out).std() > 0
    np.testing.assert_array_equal(pixels(out), pixels(predictor.predict(ihc, num_inference_steps=STEPS, seed=0)))
    assert np.abs(pixels(out) - pixels(predictor.predict(ihc, num_inference_steps=STEPS, seed=1))).max() > 0
    big = predictor.predict(ihc, num_inference_steps=2, height=32, width=24)
    assert big.image.size == (24, 32)


def test_output_follows_the_conditioning_image_and_embedding(predictor):
    ihc, cat = predictor.predict([data.immunohistochemistry(), data.chelsea()], num_inference_steps=STEPS)
    assert np.abs(pixels(ihc) - pixels(cat)).max() > 0
    np.testing.assert_array_equal(
        pixels(ihc), pixels(predictor.predict(data.immunohistochemistry(), num_inference_steps=STEPS))
    )
    net = predictor.model
    pix = torch.from_numpy(np.array(Image.fromarray(data.chelsea()).resize((16, 16), Image.Resampling.BICUBIC)))
    emb = net.encode_condition(pix.permute(2, 0, 1)[None].float() / 127.5 - 1.0).numpy()[0]
    direct = predictor.predict(data.astronaut(), embedding=emb, num_inference_steps=STEPS)  # the image is ignored
    np.testing.assert_array_equal(pixels(direct), pixels(cat))
    two = predictor.predict([data.astronaut(), data.coffee()], embedding=torch.from_numpy(emb), num_inference_steps=2)
    np.testing.assert_array_equal(pixels(two[0]), pixels(two[1]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"embedding": np.zeros(7)}, r"embedding must be \(64,\)"),
        ({"embedding": np.full(64, np.nan)}, "NaN"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"height": 15}, "multiples of 2"),
    ],
)
def test_bad_inputs_are_clear_errors(predictor, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        predictor.predict(data.coffee(), **kwargs)


def test_lora_adapts_the_unet_only_and_changes_the_image(base, tmp_path):
    adapter = tiny.random_adapter(TASK, base, tmp_path / "lora", seed=1, strength=2.0)
    predictor = hubkit.load(TASK, base, adapters=[adapter])
    lora = [n for n, _ in predictor.model.named_parameters() if "lora_A" in n]
    assert lora and all(".unet." in n for n in lora)
    assert any(n.endswith("attn2.to_k.lora_A.lora.weight") for n in lora)  # cross-attention is adapted too
    adapted = predictor.predict(data.immunohistochemistry(), num_inference_steps=STEPS)
    plain = predictor.predict(data.immunohistochemistry(), num_inference_steps=STEPS, adapter="base")
    assert np.abs(pixels(adapted) - pixels(plain)).max() > 0


def test_condition_adapter_is_read_from_the_folder(base, predictor, tmp_path):
    folder = shutil.copytree(base, tmp_path / "with-adapter")
    trained = predictor.model.condition_adapter
    trained.save_pretrained(folder / ADAPTER_DIR)
    same = hubkit.load(TASK, folder).predict(data.coffee(), num_inference_steps=STEPS)
    np.testing.assert_array_equal(pixels(same), pixels(predictor.predict(data.coffee(), num_inference_steps=STEPS)))
    with torch.no_grad():
        copy = hubkit.load(TASK, folder).model.condition_adapter
        copy.net[-1].weight.mul_(-3.0)
        copy.save_pretrained(folder / ADAPTER_DIR)
    changed = hubkit.load(TASK, folder).predict(data.coffee(), num_inference_steps=STEPS)
    assert np.abs(pixels(changed) - pixels(same)).max() > 0
    (folder / ADAPTER_DIR / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(ConfigError, match="not a usable condition adapter"):
        hubkit.load(TASK, folder)


def test_load_errors(base, tmp_path):
    with pytest.raises(ConfigError, match="quantize='nf4' is not supported"):
        hubkit.load(TASK, base, quantize="nf4")
    partial = shutil.copytree(base, tmp_path / "no-unet", ignore=shutil.ignore_patterns("unet"))
    with pytest.raises(ConfigError, match="lacks unet/"):
        hubkit.load(TASK, partial)


def test_save_output_writes_png(predictor, tmp_path):
    out = predictor.predict(data.coffee(), num_inference_steps=2)
    [path] = get_task(TASK).save_output(out, tmp_path / "out", "coffee")
    assert path.suffix == ".png"
    np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(out.image))
