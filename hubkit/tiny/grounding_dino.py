"""Tiny Grounding DINO (transformers' GroundingDinoForObjectDetection: Swin image + BERT text backbones)."""

from __future__ import annotations

from pathlib import Path

from ._common import IMAGENET_MEAN, IMAGENET_STD, bert_tokenizer


def build(out: Path) -> None:
    from transformers import BertConfig, SwinConfig
    from transformers.models.grounding_dino import (
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    tokenizer = bert_tokenizer()
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_indices=[2, 3, 4],
    )
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        num_queries=20,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,  # 1 breaks tie_weights_keys (bbox_embed.0 -> bbox_embed.[1-9])
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    GroundingDinoForObjectDetection(config).save_pretrained(out)
    # IDEA-Research/grounding-dino-* resize to shortest 800 / longest 1333; tiny keeps the same rule at 64 / 96
    image_processor = GroundingDinoImageProcessorPil(
        size={"shortest_edge": 80, "longest_edge": 120}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
