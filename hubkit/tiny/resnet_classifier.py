"""Tiny ResNet image classifier (transformers' ResNetForImageClassification, microsoft/resnet-50's layout: basic
blocks here, bottlenecks there) with five named classes: a CNN start for the classifier recipe and `hubkit optimize`
(ONNX Runtime static int8, channel pruning)."""

from __future__ import annotations

from pathlib import Path

from ._common import BILINEAR, IMAGENET_MEAN, IMAGENET_STD

LABELS = ["cat", "dog", "bird", "car", "tree"]


def config(labels: list[str]):
    """The tiny ResNet's architecture with a head for `labels` (tests that train one on their own classes use it)."""
    from transformers import ResNetConfig

    return ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 96],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )


def build(out: Path) -> None:
    from transformers import ResNetForImageClassification
    from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil

    ResNetForImageClassification(config(LABELS)).save_pretrained(out)
    # microsoft/resnet-50 preprocessing (shortest edge 224 / crop_pct 0.875 there): 64 px here, no crop
    ConvNextImageProcessorPil(
        size={"shortest_edge": 64}, crop_pct=1.0, resample=BILINEAR, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    ).save_pretrained(out)
