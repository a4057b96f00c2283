"""Tiny DINOv2 backbone (transformers' Dinov2Model) for image embeddings."""

from __future__ import annotations

from pathlib import Path

from ._common import BICUBIC, IMAGENET_MEAN, IMAGENET_STD


def build(out: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    config = Dinov2Config(
        image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2
    )
    Dinov2Model(config).save_pretrained(out)
    # facebook/dinov2-small preprocessing (256 -> 224 there): resize shortest edge, centre crop
    BitImageProcessorPil(
        size={"shortest_edge": 32},
        crop_size={"height": 28, "width": 28},
        resample=BICUBIC,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(out)
