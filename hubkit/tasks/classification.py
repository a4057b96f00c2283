"""Image classification: ViT and friends through transformers' AutoModelForImageClassification."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..tiny import image_classification as tiny_image_classification
from ..tiny import resnet_classifier as tiny_resnet_classifier
from ._base import LoraPreset, Task, TinyModel, register_task


@dataclass
class Classification:
    labels: list[str]  # the top-k class names, best first
    scores: np.ndarray  # (k,) float32 softmax probabilities, descending; they sum to <= 1

    def to_dict(self) -> dict[str, float]:
        return {label: float(score) for label, score in zip(self.labels, self.scores, strict=True)}


@register_task
class ImageClassification(Task):
    name = "image-classification"
    pipeline_tag = "image-classification"
    architectures = (
        "ViTForImageClassification",
        "ResNetForImageClassification",
        "MobileNetV2ForImageClassification",
        "EfficientNetForImageClassification",
    )
    auto_model = "AutoModelForImageClassification"
    auto_processor = "AutoImageProcessor"
    default_base = "google/vit-base-patch16-224"
    tiny_models = (
        TinyModel("image-classification", tiny_image_classification.build, mimics="google/vit-base-patch16-224"),
        TinyModel("resnet-classifier", tiny_resnet_classifier.build, mimics="microsoft/resnet-50"),
    )
    output_type = "Classification (top-k labels and softmax scores, best first)"
    # The LoRA image-classification recipe: attention query / value / key (q_proj ... in transformers 5).
    preset = LoraPreset(targets=("query", "key", "value"), r=16, alpha=32, dropout=0.05)

    def forward(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_labels); the training loop uses this too."""
        return model(pixel_values=pixel_values).logits

    def predict(self, model, processor, images: list[Image.Image], *, top_k: int = 5) -> list[Classification]:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
        if not images:
            return []
        param = next(model.parameters())
        id2label = _config(model).id2label
        inputs = processor(images=images, return_tensors="pt")
        logits = self.forward(model, inputs["pixel_values"].to(param.device, param.dtype)).float()
        probs = logits.softmax(dim=-1)
        k = min(top_k, probs.shape[-1])
        scores, indices = probs.topk(k, dim=-1)  # sorted, best first
        return [
            Classification(
                [str(id2label.get(int(i), f"LABEL_{int(i)}")) for i in idx], s.cpu().numpy().astype(np.float32)
            )
            for s, idx in zip(scores, indices, strict=True)
        ]

    def save_output(self, output: Classification, out_dir: Path, stem: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stem}.classes.json"
        rows = [
            {"label": label, "score": float(score)} for label, score in zip(output.labels, output.scores, strict=True)
        ]
        path.write_text(json.dumps(rows, indent=2) + "\n")
        return [path]


def _config(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config
