"""Tiny Depth Anything V2 (transformers' DepthAnythingForDepthEstimation on a DINOv2 backbone)."""

from __future__ import annotations

from pathlib import Path

from ._common import IMAGENET_MEAN, IMAGENET_STD, dpt_processor


def build(out: Path) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    layers = 4
    backbone = Dinov2Config(
        image_size=56,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        mlp_ratio=2,
        out_indices=list(range(1, layers + 1)),
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 64],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
        initializer_range=0.2,  # 0.02 shrinks a head this narrow to ~1e-8 outputs; 0.2 gives the real model's O(1-10)
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(out)
    # Depth-Anything-V2 preprocessing (518 there): keep the aspect ratio, both sides a multiple of the patch size
    dpt_processor(56, keep_aspect_ratio=True, multiple=14, mean=IMAGENET_MEAN, std=IMAGENET_STD).save_pretrained(out)
