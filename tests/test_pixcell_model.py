"""hubkit.pixcell on tiny models: PixCell-format weights in diffusers' PixArt transformer, the VAE scaling, UNI2-h's
timm keys in transformers' Dinov2WithRegisters, the adapter (LoRA + MLP) round trip, samplers and guidance."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import AdapterMismatchError, ConfigError
from hubkit.pixcell import (
    AdapterSpec,
    add_adapter,
    load_adapter,
    load_encoder,
    load_pixcell,
    sample,
    save_adapter,
    timm_to_hf_state_dict,
    training_loss,
)
from hubkit.pixcell.adapter import ADAPTER_INFO_FILE, DIFFUSERS_LORA_FILE, MLP_FILE
from hubkit.pixcell.model import UNCOND_KEY, PixCellModel
from hubkit.tasks.pixcell import HistologySamples, _to_pixels
from hubkit.tiny.pixcell import build_unet

TASK = "histology-generation"
STEPS = 3


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny.build("pixcell", tmp_path_factory.mktemp("tiny") / "pixcell")


@pytest.fixture(scope="module")
def model(base):
    return load_pixcell(base)


def embeddings_of(model, n=2, seed=0):
    return torch.randn(n, 1, model.embedding_dim, generator=torch.Generator().manual_seed(seed))


# -- 1. PixCell-format weights in diffusers' PixArtTransformer2DModel -------------------------------------------
PIXCELL_SHAPE = dict(  # PixCell-256's config with small widths: 28 x 16 x 72 -> 2 x 2 x 16, UNI2-h's 1536 -> 48
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=16,
    out_channels=32,
    num_layers=2,
    cross_attention_dim=32,
    sample_size=8,
    patch_size=2,
    caption_channels=48,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    use_additional_conditions=False,
)


def pixcell_checkpoint(cfg: dict, tokens: int = 1) -> dict[str, torch.Tensor]:
    """The tensors of a PixCell transformer checkpoint, names and shapes written out by hand (not read off diffusers):
    PixArt-Sigma's blocks plus the ``caption_projection.uncond_embedding`` buffer."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    c, p, cin, cout = cfg["caption_channels"], cfg["patch_size"], cfg["in_channels"], cfg["out_channels"]
    shapes = {
        "pos_embed.proj.weight": (d, cin, p, p),
        "pos_embed.proj.bias": (d,),
        "adaln_single.emb.timestep_embedder.linear_1.weight": (d, 256),
        "adaln_single.emb.timestep_embedder.linear_1.bias": (d,),
        "adaln_single.emb.timestep_embedder.linear_2.weight": (d, d),
        "adaln_single.emb.timestep_embedder.linear_2.bias": (d,),
        "adaln_single.linear.weight": (6 * d, d),
        "adaln_single.linear.bias": (6 * d,),
        "caption_projection.linear_1.weight": (d, c),
        "caption_projection.linear_1.bias": (d,),
        "caption_projection.linear_2.weight": (d, d),
        "caption_projection.linear_2.bias": (d,),
        UNCOND_KEY: (tokens, c),
        "scale_shift_table": (2, d),
        "proj_out.weight": (p * p * cout, d),
        "proj_out.bias": (p * p * cout,),
    }
    for i in range(cfg["num_layers"]):
        shapes[f"transformer_blocks.{i}.scale_shift_table"] = (6, d)
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                shapes[f"transformer_blocks.{i}.{attn}.{proj}.weight"] = (d, d)
                shapes[f"transformer_blocks.{i}.{attn}.{proj}.bias"] = (d,)
        shapes[f"transformer_blocks.{i}.ff.net.0.proj.weight"] = (4 * d, d)
        shapes[f"transformer_blocks.{i}.ff.net.0.proj.bias"] = (4 * d,)
        shapes[f"transformer_blocks.{i}.ff.net.2.weight"] = (d, 4 * d)
        shapes[f"transformer_blocks.{i}.ff.net.2.bias"] = (d,)
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=gen) * 0.05 for k, s in shapes.items()}


@pytest.fixture(scope="module")
def pixcell_folder(base, tmp_path_factory):
    """A copy of the tiny base whose transformer/ holds the hand-written PixCell checkpoint."""
    from diffusers import PixArtTransformer2DModel

    folder = tmp_path_factory.mktemp("pixcell-format") / "base"
    shutil.copytree(base, folder)
    shutil.rmtree(folder / "transformer")
    PixArtTransformer2DModel(**PIXCELL_SHAPE).save_config(folder / "transformer")
    state = pixcell_checkpoint(PIXCELL_SHAPE)
    save_file(state, folder / "transformer" / "diffusion_pytorch_model.safetensors")
    return folder, state


def test_pixcell_weights_load_into_pixart_with_only_the_uncond_buffer_left_over(pixcell_folder):
    from diffusers import PixArtTransformer2DModel

    folder, state = pixcell_folder
    transformer, info = PixArtTransformer2DModel.from_pretrained(
        folder / "transformer", output_loading_info=True, use_safetensors=True
    )
    assert info["missing_keys"] == [] and info["mismatched_keys"] == []
    assert list(info["unexpected_keys"]) == [UNCOND_KEY]
    loaded = transformer.state_dict()
    assert set(loaded) == set(state) - {UNCOND_KEY}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)

    # hubkit restores the buffer under its own name and keeps it in the transformer's state dict
    model = load_pixcell(folder)
    assert torch.equal(model.unconditional_embedding(), state[UNCOND_KEY])
    assert torch.equal(model.transformer.state_dict()[UNCOND_KEY], state[UNCOND_KEY])
    model.transformer.save_pretrained(folder / "resaved")
    with safe_open(folder / "resaved" / "diffusion_pytorch_model.safetensors", framework="pt") as f:
        assert set(f.keys()) == set(state)
    assert model.learned_sigma and model.tokens_per_image == 1 and model.resolution == 16


def test_the_uncond_embedding_drives_guidance_and_conditioning_dropout(pixcell_folder):
    folder, _ = pixcell_folder
    model = load_pixcell(folder)
    emb = embeddings_of(model, 2)
    dropped = model.condition(emb, drop_mask=torch.tensor([True, False]))
    assert torch.equal(dropped[0], model.unconditional_embedding())
    assert torch.equal(dropped[1], emb[1])  # the untrained MLP is the identity

    kwargs = dict(num_inference_steps=2, sampler="ddim", seed=0)
    guided, plain = sample(model, emb, guidance_scale=3.0, **kwargs), sample(model, emb, guidance_scale=1.0, **kwargs)
    with torch.no_grad():
        model.unconditional_embedding().mul_(-2.0).add_(0.3)
    assert np.abs(sample(model, emb, guidance_scale=3.0, **kwargs).astype(int) - guided).max() > 0
    np.testing.assert_array_equal(sample(model, emb, guidance_scale=1.0, **kwargs), plain)  # no guidance: unused

    lat = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))

    def loss(embeddings, dropout):
        torch.manual_seed(0)
        return float(training_loss(model, embeddings, lat, cond_dropout=dropout))

    other = embeddings_of(model, 2, seed=5)
    assert loss(emb, 1.0) == loss(other, 1.0)  # every condition dropped: only the uncond embedding is seen
    assert loss(emb, 0.0) != loss(other, 0.0)


# -- 2. VAE latents ----------------------------------------------------------------------------------------------
def test_vae_latents_are_shifted_and_scaled(model):
    vae = model.vae
    assert (vae.config.latent_channels, vae.config.scaling_factor, vae.config.shift_factor) == (16, 1.5305, 0.0609)
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mean
        latents = model.encode_latents(pixels)
        torch.testing.assert_close(latents, (z - 0.0609) * 1.5305)
        torch.testing.assert_close(model.latents_to_vae(latents), z)
        torch.testing.assert_close(model.decode_latents(latents), vae.decode(z).sample)
    assert latents.shape == (2, 16, 8, 8)
    emb = model.encode_images(pixels)
    assert emb.shape == (2, 1, 48) and torch.isfinite(emb).all()


# -- 3. UNI2-h: timm keys in transformers' Dinov2WithRegistersModel ----------------------------------------------
TIMM_ARGS = dict(  # UNI2-h's model_args with tiny widths (embed_dim 1536 -> 48, depth 24 -> 2, 24 heads -> 4)
    img_size=28,
    patch_size=14,
    depth=2,
    num_heads=4,
    init_values=0.5,
    embed_dim=48,
    mlp_ratio=2.66667 * 2,
    num_classes=0,
    no_embed_class=True,
    reg_tokens=2,
    dynamic_img_size=True,
)


def timm_state_dict(args: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """What timm's VisionTransformer(mlp_layer=SwiGLUPacked, reg_tokens, no_embed_class) names and shapes."""
    d, p, grid = args["embed_dim"], args["patch_size"], args["img_size"] // args["patch_size"]
    packed = int(d * args["mlp_ratio"])
    shapes = {
        "cls_token": (1, 1, d),
        "reg_token": (1, args["reg_tokens"], d),
        "pos_embed": (1, grid * grid, d),  # no_embed_class: patches only
        "patch_embed.proj.weight": (d, 3, p, p),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
    }
    for i in range(args["depth"]):
        b = f"blocks.{i}."
        shapes |= {
            b + "norm1.weight": (d,), b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "ls1.gamma": (d,),
            b + "norm2.weight": (d,), b + "norm2.bias": (d,),
            b + "mlp.fc1.weight": (packed, d), b + "mlp.fc1.bias": (packed,),
            b + "mlp.fc2.weight": (d, packed // 2), b + "mlp.fc2.bias": (d,),
            b + "ls2.gamma": (d,),
        }  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * (0.2 if len(s) > 1 else 1.0) for k, s in shapes.items()}


def timm_reference(sd: dict, x: torch.Tensor, args: dict) -> torch.Tensor:
    """timm's ViT forward written out: patch embed, +pos (patches only), [cls, reg, patches], blocks of
    x + ls1 * attn(norm1 x), x + ls2 * fc2(silu(fc1_a) * fc1_b); final norm. Returns all tokens."""
    f = torch.nn.functional
    d, heads = args["embed_dim"], args["num_heads"]
    x = f.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=args["patch_size"])
    x = x.flatten(2).transpose(1, 2) + sd["pos_embed"]
    b = x.shape[0]
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), sd["reg_token"].expand(b, -1, -1), x], dim=1)
    n, hd = x.shape[1], d // heads
    for i in range(args["depth"]):
        p = f"blocks.{i}."
        h = f.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = f.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(b, n, 3, heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * hd**-0.5).softmax(-1) @ v
        h = f.linear(attn.transpose(1, 2).reshape(b, n, d), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        x = x + sd[p + "ls1.gamma"] * h
        h = f.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        x1, x2 = f.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]).chunk(2, dim=-1)
        h = f.linear(f.silu(x1) * x2, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = x + sd[p + "ls2.gamma"] * h
    return f.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uni2h")
    config = {"architecture": "vit_giant_patch14_224", "num_classes": 0, "model_args": TIMM_ARGS,
              "pretrained_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    state = timm_state_dict(TIMM_ARGS)
    save_file(state, folder / "model.safetensors")
    return folder, state


def test_uni2h_timm_keys_load_into_dinov2_with_registers_and_match_timms_forward(timm_folder):
    from transformers import Dinov2WithRegistersModel

    from hubkit.pixcell.encoder import _swiglu_hidden, hf_config_from_timm

    folder, state = timm_folder
    host = Dinov2WithRegistersModel(hf_config_from_timm(TIMM_ARGS)).eval()
    missing, unexpected = host.load_state_dict(timm_to_hf_state_dict(state), strict=False)
    assert missing == ["embeddings.mask_token"] and unexpected == []  # DINOv2's masking token, unused at inference
    assert host.encoder.layer[0].mlp.gate_proj.out_features == int(48 * TIMM_ARGS["mlp_ratio"]) // 2

    uni2h = hf_config_from_timm({})  # UNI2-h itself: 1536 wide, 24 blocks, 8 registers, SwiGLU 8192 packed = 2 x 4096
    assert (uni2h.hidden_size, uni2h.num_hidden_layers, uni2h.num_attention_heads) == (1536, 24, 24)
    assert uni2h.num_register_tokens == 8 and uni2h.layerscale_value == 1e-5 and uni2h.image_size == 224
    assert _swiglu_hidden(uni2h.hidden_size, uni2h.mlp_ratio) == int(1536 * 2.66667 * 2) // 2 == 4096

    encoder = load_encoder(folder)
    assert encoder.dim == 48 and encoder.image_size == 28
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = encoder.model(pixel_values=x).last_hidden_state
        reference = timm_reference(state, x, TIMM_ARGS)
    assert ours.shape == (2, 1 + 2 + 4, 48)  # class token, 2 registers, 2x2 patches
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)

    # the test can fail: swapping the SwiGLU halves (gate_last=True) changes the output
    swapped = dict(state)
    for i in range(TIMM_ARGS["depth"]):
        for leaf in ("weight", "bias"):
            a, b = state[f"blocks.{i}.mlp.fc1.{leaf}"].chunk(2, dim=0)
            swapped[f"blocks.{i}.mlp.fc1.{leaf}"] = torch.cat([b, a])
    with torch.no_grad():
        assert (timm_reference(swapped, x, TIMM_ARGS) - reference).abs().max() > 1e-3

    # the full encoder: [-1, 1] pixels -> ImageNet-normalised -> class token of the last norm
    pixels = x.clamp(-1, 1)
    with torch.no_grad():
        normalised = ((pixels + 1) / 2 - encoder.mean) / encoder.std
        torch.testing.assert_close(encoder(pixels), timm_reference(state, normalised, TIMM_ARGS)[:, 0], atol=1e-5,
                                   rtol=1e-5)  # fmt: skip
        grid = encoder(torch.rand(1, 3, 56, 56) * 2 - 1, tokens_per_image=4)  # PixCell-1024's 4x4 grid, in small
    assert grid.shape == (1, 4, 48)


def test_unknown_timm_keys_and_pickles_are_refused(timm_folder, tmp_path):
    from hubkit.errors import UnsafeWeightsError

    _, state = timm_folder
    with pytest.raises(ConfigError, match="blocks.0.attn.q_norm.weight"):
        timm_to_hf_state_dict({**state, "blocks.0.attn.q_norm.weight": torch.zeros(12)})
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_giant_patch14_224", "model_args": TIMM_ARGS}))
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match="allow_pickle"):
        load_encoder(folder)
    assert load_encoder(folder, allow_pickle=True).dim == 48


# -- 4. the adapter: LoRA + MLP, saved together ------------------------------------------------------------------
def trained_adapter(model, spec: AdapterSpec, seed: int = 0):
    """An adapter with non-zero LoRA B and MLP weights, as training would leave them."""
    peft_model = add_adapter(model, spec)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * 0.3)
    return peft_model


def test_new_adapter_trains_lora_and_the_mlp_only_and_starts_as_the_base(base):
    model = load_pixcell(base)
    emb = embeddings_of(model)
    before = sample(model, emb, num_inference_steps=2, sampler="ddim")
    peft_model = add_adapter(model, AdapterSpec(r=4, alpha=4, lora_scope="cross"))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("condition_mlp.modules_to_save.default" in n for n in trainable)
    lora = [n for n in trainable if "lora_" in n]
    assert lora and all(".attn2." in n and ".transformer." in n for n in lora)
    assert set(trainable) == set(lora) | {n for n in trainable if "condition_mlp.modules_to_save" in n}
    np.testing.assert_array_equal(sample(peft_model, emb, num_inference_steps=2, sampler="ddim"), before)

    lat = model.encode_latents(torch.rand(2, 3, 16, 16) * 2 - 1)
    loss = training_loss(peft_model, emb, lat, cond_dropout=0.1)
    loss.backward()
    grads = {n for n, p in peft_model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and grads <= set(trainable)
    assert any("condition_mlp" in n for n in grads) and any("lora_B" in n for n in grads)

    def seeded_loss():
        torch.manual_seed(0)  # the same noise, timesteps and dropout each time
        return training_loss(peft_model, emb, lat, cond_dropout=0.1)

    def value() -> float:
        with torch.no_grad():
            return float(seeded_loss())

    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    start = value()
    for _ in range(8):
        optimizer.zero_grad()
        seeded_loss().backward()
        optimizer.step()
    assert value() < 0.9 * start  # the adapter alone can fit a fixed batch


def test_loss_is_epsilon_on_the_first_latent_channels(base):
    model = load_pixcell(base)
    emb, lat = embeddings_of(model), torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(2))

    def loss():
        torch.manual_seed(0)
        return float(training_loss(model, emb, lat, cond_dropout=0.0))

    reference = loss()
    bias = model.transformer.proj_out.bias  # unpatchified as (..., p, p, out_channels): channel = index % 32
    channel = torch.arange(bias.numel()) % 32
    with torch.no_grad():
        bias[channel >= 16] += 5.0  # the variance half: not in the loss
    assert loss() == pytest.approx(reference, rel=1e-6)
    with torch.no_grad():
        bias[channel < 16] += 0.5  # the epsilon half
    assert abs(loss() - reference) > 1e-3
    with pytest.raises(ConfigError, match="cond_dropout"):
        training_loss(model, emb, lat, cond_dropout=1.5)


@pytest.mark.parametrize("scope", ["all", "cross"])
def test_adapter_round_trip_gives_identical_samples(base, tmp_path, scope):
    spec = AdapterSpec(r=4, alpha=8, lora_scope=scope)
    trained = trained_adapter(load_pixcell(base), spec)
    emb = embeddings_of(trained.get_base_model())
    kwargs = dict(num_inference_steps=STEPS, sampler="dpm++", guidance_scale=1.5, num_images=2, seed=7)
    expected = sample(trained, emb, **kwargs)
    with trained.disable_adapter():
        base_samples = sample(trained, emb, **kwargs)
    assert np.abs(expected.astype(int) - base_samples).max() > 0

    folder = save_adapter(
        trained, tmp_path / "adapter", spec=spec, base_id="hubkit-tiny/pixcell", diffusers_export=True
    )
    assert {p.name for p in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", MLP_FILE,
                                                 ADAPTER_INFO_FILE, DIFFUSERS_LORA_FILE}  # fmt: skip
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["condition_mlp"] and config["r"] == 4
    info = json.loads((folder / ADAPTER_INFO_FILE).read_text())
    assert info["spec"]["lora_scope"] == scope and info["base"]["embedding_dim"] == 48

    reloaded = load_adapter(load_pixcell(base), folder)
    np.testing.assert_array_equal(sample(reloaded, emb, **kwargs), expected)
    mlp = load_file(folder / MLP_FILE)
    copy = reloaded.get_base_model().condition_mlp.modules_to_save["default"].state_dict()
    assert set(mlp) == {f"condition_mlp.{k}" for k in copy}
    assert all(torch.equal(mlp[f"condition_mlp.{k}"], v) for k, v in copy.items())
    assert any(v.abs().sum() > 0 for k, v in mlp.items() if k.startswith("condition_mlp.net.2"))  # trained, not zero

    # the diffusers-style export: transformer.<module>.lora_{A,B}.weight and the LoRA config in the header
    with safe_open(folder / DIFFUSERS_LORA_FILE, framework="pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    assert keys and all(k.startswith("transformer.transformer_blocks.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert "transformer.transformer_blocks.0.attn2.to_out.0.lora_A.weight" in keys
    assert ("transformer.transformer_blocks.0.attn1.to_q.lora_B.weight" in keys) == (scope == "all")
    assert len(keys) == 2 * 2 * 4 * (2 if scope == "all" else 1)  # A and B x 2 blocks x 4 projections x attns
    header = json.loads(metadata["lora_adapter_metadata"])
    assert header["transformer.r"] == 4 and header["transformer.lora_alpha"] == 8


def test_hubkit_load_puts_lora_and_mlp_back_and_base_stays_the_base(base, tmp_path):
    spec = AdapterSpec(r=4, alpha=4)
    trained = trained_adapter(load_pixcell(base), spec, seed=1)
    folder = save_adapter(trained, tmp_path / "stain", spec=spec)
    patch = data.immunohistochemistry()
    predictor = hubkit.load(TASK, base, adapters=[folder])
    kwargs = dict(num_inference_steps=STEPS, sampler="euler-a", num_images=2, seed=3)
    adapted = predictor.predict(patch, **kwargs)
    emb = predictor.model.get_base_model().encode_images(_to_pixels(Image.fromarray(patch), 16)[None])
    np.testing.assert_array_equal(adapted.array, sample(trained, emb, guidance_scale=1.5, **kwargs)[0])
    plain = hubkit.load(TASK, base).predict(patch, **kwargs)
    np.testing.assert_array_equal(predictor.predict(patch, adapter="base", **kwargs).array, plain.array)
    assert np.abs(adapted.array.astype(int) - plain.array).max() > 0


def test_an_adapter_for_another_base_shape_is_refused(base, tmp_path):
    from diffusers import PixArtTransformer2DModel

    spec = AdapterSpec(r=4, alpha=4)
    folder = save_adapter(trained_adapter(load_pixcell(base), spec), tmp_path / "a", spec=spec)
    other = shutil.copytree(base, tmp_path / "wider")
    shutil.rmtree(other / "transformer")
    wider = PixArtTransformer2DModel(**{**PIXCELL_SHAPE, "attention_head_dim": 24})  # inner dim 48, not 32
    wider.save_pretrained(other / "transformer")
    with pytest.raises(AdapterMismatchError, match=r"inner_dim 32 \(this base: 48\)"):
        load_adapter(load_pixcell(other), folder)
    with pytest.raises(AdapterMismatchError, match="different model size"):
        hubkit.load(TASK, other, adapters=[folder])


# -- 5. sampling and the task --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler-a", "dpm++"])
def test_each_sampler_is_deterministic_per_seed_and_variants_differ(model, sampler):
    emb = embeddings_of(model, 1)
    kwargs = dict(num_inference_steps=STEPS, sampler=sampler, guidance_scale=2.0, num_images=2)
    first = sample(model, emb, seed=0, **kwargs)
    assert first.shape == (1, 2, 16, 16, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, sample(model, emb, seed=0, **kwargs))
    assert np.abs(first[0, 0].astype(int) - first[0, 1]).max() > 0  # N variants differ
    assert np.abs(first.astype(int) - sample(model, emb, seed=1, **kwargs)).max() > 0


def test_predictor_predicts_n_variants_per_patch(base, tmp_path):
    predictor = hubkit.load(TASK, base)
    steps = []
    out = predictor.predict(
        data.immunohistochemistry(),
        num_inference_steps=STEPS,
        guidance_scale=1.5,
        sampler="ddim",
        num_images=3,
        seed=5,
        callback=lambda step, total: steps.append((step, total)),
    )
    assert isinstance(out, HistologySamples) and out.seeds == [5, 6, 7] and out.array.shape == (3, 16, 16, 3)
    assert [im.size for im in out.images] == [(16, 16)] * 3 and out.image.size == (48, 16)
    assert steps == [(i, STEPS) for i in range(1, STEPS + 1)]
    two = predictor.predict([data.immunohistochemistry(), data.coffee()], num_inference_steps=2, sampler="ddim")
    assert len(two) == 2 and np.abs(two[0].array.astype(int) - two[1].array).max() > 0  # follows the patch
    emb = np.zeros(48, np.float32)
    direct = predictor.predict([data.coffee(), data.astronaut()], embedding=emb, num_inference_steps=2)
    np.testing.assert_array_equal(direct[0].array, direct[1].array)  # same embedding, same noise
    paths = predictor.task.save_output(out, tmp_path, "ihc")
    assert [p.name for p in paths] == ["ihc.sample-5.png", "ihc.sample-6.png", "ihc.sample-7.png"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sampler": "heun"}, "Unknown sampler 'heun'"),
        ({"num_images": 0}, "num_images"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"seed": -3}, "seed"),
        ({"embedding": np.zeros(7)}, r"embedding must be \(48,\)"),
    ],
)
def test_bad_arguments_are_clear_errors(base, kwargs, match):
    predictor = hubkit.load(TASK, base)
    with pytest.raises(ConfigError, match=match):
        predictor.predict(data.coffee(), **kwargs)


def test_the_seeds_unet_variant_loads_samples_and_adapts(tmp_path):
    folder = tmp_path / "unet"
    torch.manual_seed(0)
    build_unet(folder)
    model = load_pixcell(folder)
    assert isinstance(model, PixCellModel) and model.kind == "unet" and model.embedding_dim == 48
    assert model.unconditional_embedding().shape == (1, 48) and not model.learned_sigma
    spec = AdapterSpec(mlp="caption_projection", r=4, alpha=4)
    trained = trained_adapter(model, spec)
    assert any("encoder_hid_proj.modules_to_save" in n for n, p in trained.named_parameters() if p.requires_grad)
    emb = embeddings_of(model, 1)
    kwargs = dict(num_inference_steps=2, sampler="ddpm", guidance_scale=2.0, seed=0)
    expected = sample(trained, emb, **kwargs)
    saved = save_adapter(trained, tmp_path / "a", spec=spec, diffusers_export=True)
    with safe_open(saved / DIFFUSERS_LORA_FILE, framework="pt") as f:
        assert all(k.startswith("unet.") for k in f.keys())  # noqa: SIM118
    np.testing.assert_array_equal(sample(load_adapter(load_pixcell(folder), saved), emb, **kwargs), expected)
