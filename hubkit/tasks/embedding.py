"""Image embeddings: DINOv2 (and other ViT backbones) through transformers' AutoModel, for visual search.

One vector per image, by default the CLS token, L2-normalised so that a dot product is the cosine similarity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..tiny import image_embedding as tiny_image_embedding
from ._base import LoraPreset, Task, TinyModel, register_task

POOLINGS = ("cls", "mean")


@dataclass
class Embedding:
    vector: np.ndarray  # (D,) float32; unit L2 norm when predicted with normalize=True

    def cosine(self, other: Embedding) -> float:
        a, b = self.vector.astype(np.float64), other.vector.astype(np.float64)
        return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


@register_task
class ImageEmbedding(Task):
    name = "image-embedding"
    pipeline_tag = "image-feature-extraction"
    architectures = ("Dinov2Model",)
    auto_model = "AutoModel"
    auto_processor = "AutoImageProcessor"
    default_base = "facebook/dinov2-small"
    tiny_models = (TinyModel("image-embedding", tiny_image_embedding.build, mimics="facebook/dinov2-small"),)
    output_type = "Embedding ((D,) float32 vector, unit norm by default)"
    preset = LoraPreset(targets=("query", "key", "value"), r=16, alpha=32, dropout=0.05)

    def forward(self, model, pixel_values: torch.Tensor, pooling: str = "cls") -> torch.Tensor:
        """Pooled (B, D) features before normalisation; the training loop uses this too."""
        hidden = model(pixel_values=pixel_values).last_hidden_state  # (B, 1 + registers + patches, D)
        if pooling == "cls":
            return hidden[:, 0]
        skip = 1 + int(getattr(_config(model), "num_register_tokens", 0) or 0)  # DINOv2-with-registers
        return hidden[:, skip:].mean(dim=1)

    def predict(
        self, model, processor, images: list[Image.Image], *, pooling: str = "cls", normalize: bool = True
    ) -> list[Embedding]:
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not images:
            return []
        param = next(model.parameters())
        inputs = processor(images=images, return_tensors="pt")
        features = self.forward(model, inputs["pixel_values"].to(param.device, param.dtype), pooling).float()
        if normalize:
            features = torch.nn.functional.normalize(features, dim=-1)
        return [Embedding(v.cpu().numpy().astype(np.float32)) for v in features]

    def save_output(self, output: Embedding, out_dir: Path, stem: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stem}.embedding.npy"
        np.save(path, output.vector)
        return [path]


def _config(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config
