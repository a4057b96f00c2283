"""Tiny latent diffusion model in the Stable Diffusion layout (diffusers' UNet2DConditionModel, AutoencoderKL,
DDPMScheduler), without the text side."""

from __future__ import annotations

import json
from pathlib import Path

# The diffusion folder has no text encoder / tokenizer / safety checker: load a pipeline with these overrides and
# pass `prompt_embeds` of width 32, e.g. StableDiffusionImg2ImgPipeline.from_pretrained(folder, **DIFFUSION_ABSENT)
DIFFUSION_ABSENT: dict[str, None] = dict.fromkeys(
    ("text_encoder", "tokenizer", "safety_checker", "feature_extractor", "image_encoder")
)


def build(out: Path) -> None:
    import diffusers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,  # 2 blocks -> one downsample: 16 px images <-> 8x8 latents
    )
    scheduler = DDPMScheduler(  # SD 1.5's betas; DDPM so that add_noise / step need no extra state
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    scheduler.save_pretrained(out / "scheduler")
    # Stable Diffusion layout without the text side (see DIFFUSION_ABSENT)
    index = {name: [None, None] for name in DIFFUSION_ABSENT} | {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
