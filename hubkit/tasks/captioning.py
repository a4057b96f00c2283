"""Image captioning: BLIP (transformers' BlipForConditionalGeneration), unconditional or continuing a prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import ConfigError
from ..tiny import blip as tiny_blip
from ._base import LoraPreset, Task, TinyModel, register_task


@dataclass
class Caption:
    text: str


@register_task
class ImageCaptioning(Task):
    name = "image-to-text"
    pipeline_tag = "image-to-text"
    architectures = ("BlipForConditionalGeneration",)
    auto_model = "AutoModelForImageTextToText"  # loads BlipForConditionalGeneration
    default_base = "Salesforce/blip-image-captioning-base"
    tiny_models = (TinyModel("blip", tiny_blip.build, mimics="Salesforce/blip-image-captioning-base"),)
    output_type = "Caption (text)"
    # Text decoder self- and cross-attention `query` / `value` (the usual q,v LoRA recipe for BERT-style decoders:
    # cross-attention queries decide what the caption looks at) plus the vision encoder's fused `qkv`, so the
    # adapter can also adjust to a new image domain. `key` and the MLPs stay frozen: little gain for the parameters.
    preset = LoraPreset(targets=("query", "value", "qkv"), r=16, alpha=32, dropout=0.05)

    def model_class(self, folder: Path | None = None):
        from transformers import BlipForConditionalGeneration

        return BlipForConditionalGeneration

    def predict(
        self,
        model,
        processor,
        images: list[Image.Image],
        *,
        prompt: str | None = None,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        batch_size: int = 8,
    ) -> list[Caption]:
        """One caption per image; with `prompt` (e.g. "a photograph of") the caption continues it. Greedy / beam
        search only, so the same image always gets the same caption."""
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise ConfigError(f"prompt must be a non-empty string or None, got {prompt!r}")
        for name, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        param = next(model.parameters())
        captions = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            text = None if prompt is None else [prompt] * len(chunk)
            inputs = processor(images=chunk, text=text, return_tensors="pt").to(param.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(param.dtype)
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
            captions += [Caption(t.strip()) for t in processor.batch_decode(ids, skip_special_tokens=True)]
        return captions

    def save_output(self, output: Caption, out_dir: Path, stem: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stem}.caption.txt"
        path.write_text(output.text + "\n", encoding="utf-8")
        return [path]
