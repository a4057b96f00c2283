"""Plant disease: a PlantVLM (hubkit.plant) -> top-k disease classes for a leaf photo, with an optional symptom text
and an optional generated description."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..tiny import plant_vlm as tiny_plant_vlm
from ._base import LoadOptions, LoraPreset, Task, TinyModel, register_task


@dataclass
class PlantPrediction:
    labels: list[str]  # the top-k class names, best first
    scores: np.ndarray  # (k,) float32 softmax probabilities, descending
    description: str | None = None  # from the description head, when asked for

    def to_dict(self) -> dict:
        out = {"classes": {label: float(s) for label, s in zip(self.labels, self.scores, strict=True)}}
        return out if self.description is None else {**out, "description": self.description}


@register_task
class PlantDisease(Task):
    name = "plant-disease"
    pipeline_tag = "image-classification"
    library_name = "hubkit.plant"
    architectures = ("PlantVLM",)
    auto_model = "PlantVLM"
    auto_processor = None  # the model carries its image processor and tokenizer
    processor_files = (("preprocessor_config.json",), ("tokenizer_config.json",))
    # No PlantVLM is published on the Hub: without a base, hubkit.load serves the tiny one `hubkit bootstrap` stores
    # (trained models are passed by repo id); new models start from the recipe's vision_backbone + text_model.
    default_base = "hubkit-tiny/plant-vlm"
    tiny_models = (TinyModel("plant-vlm", tiny_plant_vlm.build, mimics="microsoft/resnet-50"),)
    output_type = "PlantPrediction (top-k classes and probabilities, best first; optional description)"
    # The default encoders' layers (ResNet convolutions, GPT-2 / DialoGPT projections); the fusion and heads are new
    # and train in full. Other encoders: PlantVLM.lora_targets() (the recipe uses it).
    preset = LoraPreset(
        targets=("convolution", "c_attn", "c_proj", "c_fc"),
        r=16,
        alpha=32,
        dropout=0.05,
        exclude=r"(^|\.)(vision_proj|text_proj|fusion|classifier|description_head)(\.|$)",
    )

    def load(self, folder: Path, options: LoadOptions):
        from ..plant.model import PlantVLM

        self.check_files(folder)
        model = PlantVLM.from_pretrained(folder)
        if options.dtype is not None:
            model = model.to(options.dtype)
        return model, None

    def predict(
        self,
        model,
        processor,
        images: list[Image.Image],
        *,
        texts: list[str | None] | str | None = None,
        top_k: int = 5,
        generate_description: bool = False,
        max_new_tokens: int = 64,
    ) -> list[PlantPrediction]:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
        if not images:
            return []
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        ranked = base.predict(images, texts, top_k=top_k)
        descriptions = (
            base.generate_description(images, texts, max_new_tokens=max_new_tokens)
            if generate_description
            else [None] * len(images)
        )
        return [
            PlantPrediction([c for c, _ in row], np.array([p for _, p in row], dtype=np.float32), text)
            for row, text in zip(ranked, descriptions, strict=True)
        ]

    def save_output(self, output: PlantPrediction, out_dir: Path, stem: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stem}.plant.json"
        path.write_text(json.dumps(output.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return [path]
