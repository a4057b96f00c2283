"""Tiny SAM (transformers' SamModel + SamProcessor): an 8x8 image embedding, low-res masks 4x that."""

from __future__ import annotations

from pathlib import Path

from ._common import BILINEAR, IMAGENET_MEAN, IMAGENET_STD


def build(out: Path) -> None:
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    image_size, patch, hidden = 64, 8, 32  # 8x8 image embedding; low-res masks are 4x that (32), as 256 = 4 * 64
    config = SamConfig(
        vision_config=SamVisionConfig(
            initializer_range=0.02,  # the default 1e-10 leaves a tiny model blind to the image
            hidden_size=hidden,
            output_channels=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch,
            mlp_dim=64,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=hidden // 2,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=hidden, image_size=image_size, patch_size=patch, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=hidden, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=hidden
        ),
    )
    SamModel(config).save_pretrained(out)
    low_res = 4 * image_size // patch
    image_processor = SamImageProcessorPil(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": low_res},
        mask_pad_size={"height": low_res, "width": low_res},
        resample=BILINEAR,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    SamProcessor(image_processor=image_processor).save_pretrained(out)
