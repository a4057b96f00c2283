"""Tiny DPT (transformers' DPTForDepthEstimation, ViT backbone without the hybrid stem)."""

from __future__ import annotations

from pathlib import Path

from ._common import dpt_processor


def build(out: Path) -> None:
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(
        image_size=64,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        is_hybrid=False,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 64],
        fusion_hidden_size=16,
    )
    DPTForDepthEstimation(config).save_pretrained(out)
    # Intel/dpt-large preprocessing (384 there): fixed square resize, mean/std 0.5
    dpt_processor(64, keep_aspect_ratio=False, multiple=1, mean=[0.5] * 3, std=[0.5] * 3).save_pretrained(out)
