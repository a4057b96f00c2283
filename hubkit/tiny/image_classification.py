"""Tiny ViT image classifier (transformers' ViTForImageClassification) with five named classes."""

from __future__ import annotations

from pathlib import Path

from ._common import BILINEAR


def build(out: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    labels = ["cat", "dog", "bird", "car", "tree"]
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    ViTForImageClassification(config).save_pretrained(out)
    # google/vit-base-patch16-224 preprocessing (224 there): square resize, mean/std 0.5
    ViTImageProcessorPil(
        size={"height": 32, "width": 32}, resample=BILINEAR, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(out)
