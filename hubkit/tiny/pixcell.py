"""Tiny PixCell: a PixArt transformer of PixCell-256's config shape, a 16-channel SD3-style VAE and a
Dinov2WithRegisters encoder, laid out as hubkit.pixcell.load_pixcell reads them.

PixCell-256 -> tiny: 28 blocks x 16 heads x 72 -> 2 x 2 x 16; caption_channels 1536 (UNI2-h) -> 48 (the tiny
encoder's width); in_channels 16, out_channels 32 (learned sigma) and patch 2 kept; latents 32x32 -> 8x8; the VAE
keeps 16 latent channels and SD3's scaling / shift factors but downsamples by 2 (16 px images); the transformer's
safetensors carries ``caption_projection.uncond_embedding`` (1, 48) as PixCell's does. ``build_unet`` writes the
seed's U-Net variant (``UNet2DConditionModel`` with a ``text_proj`` encoder projection) with the same VAE / encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

ENCODER_DIM = 48
SCALING_FACTOR, SHIFT_FACTOR = 1.5305, 0.0609  # SD3's VAE


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=16,
        scaling_factor=SCALING_FACTOR,
        shift_factor=SHIFT_FACTOR,
        use_quant_conv=False,  # SD3's VAE has no quant convs
        use_post_quant_conv=False,
    )


def _write_encoder(out: Path) -> None:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        hidden_size=ENCODER_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=4,
        use_swiglu_ffn=True,  # UNI2-h's SwiGLU MLP
        hidden_act="silu",
        num_register_tokens=2,
        layerscale_value=0.5,
        image_size=28,
        patch_size=14,
        layer_norm_eps=1e-6,
    )
    Dinov2WithRegistersModel(config).save_pretrained(out)
    processor = {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 28},
        "do_center_crop": True,
        "crop_size": {"height": 28, "width": 28},
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


def _scheduler(**kwargs):
    from diffusers import DDPMScheduler

    # PixArt's training schedule: linear betas over 1000 steps
    return DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False, **kwargs)


def _common(out: Path, *, variance_type: str) -> None:
    _vae().save_pretrained(out / "vae")
    _scheduler(variance_type=variance_type).save_pretrained(out / "scheduler")
    _write_encoder(out / "encoder")


def build(out: Path) -> None:
    import diffusers
    import torch
    from diffusers import PixArtTransformer2DModel
    from safetensors.torch import load_file, save_file

    transformer = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=16,
        out_channels=32,
        num_layers=2,
        cross_attention_dim=32,
        sample_size=8,
        patch_size=2,
        caption_channels=ENCODER_DIM,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,
    )
    with torch.no_grad():  # diffusers zero-initialises nothing here, but keep the output visibly non-trivial
        transformer.proj_out.weight.mul_(4.0)
    transformer.save_pretrained(out / "transformer")
    weights = out / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["caption_projection.uncond_embedding"] = torch.randn(1, ENCODER_DIM) * 0.5  # PixCell's extra buffer
    save_file(state, weights, metadata={"format": "pt"})
    _common(out, variance_type="learned_range")
    index = {
        "_class_name": "PixCellPipeline",
        "_diffusers_version": diffusers.__version__,
        "transformer": ["diffusers", "PixArtTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def build_unet(out: Path) -> None:
    import diffusers
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=16,
        out_channels=16,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        encoder_hid_dim=ENCODER_DIM,  # encoder_hid_proj: the UNet's caption_projection
        encoder_hid_dim_type="text_proj",
        attention_head_dim=8,
        norm_num_groups=8,
    )
    unet.save_pretrained(out / "unet")
    save_file({"uncond_embedding": torch.randn(1, ENCODER_DIM) * 0.5}, out / "unet" / "uncond_embedding.safetensors")
    _common(out, variance_type="fixed_small")
    index = {
        "_class_name": "PixCellPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
