"""Zero-shot object detection: Grounding DINO (transformers' GroundingDinoForObjectDetection) finds the objects named
by free-text labels."""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import ConfigError
from ..tiny import grounding_dino as tiny_grounding_dino
from ._base import LoraPreset, Task, TinyModel, register_task

logger = logging.getLogger(__name__)


@dataclass
class Detections:
    boxes: np.ndarray  # (N, 4) float32 xyxy in pixels of the input image
    scores: np.ndarray  # (N,) float32 in [0, 1]
    labels: list[str]  # N entries, each one of the labels asked for
    image: Image.Image | None = field(default=None, repr=False)  # the input, for the annotated PNG

    def to_coco(self, image_id: int = 0) -> list[dict]:
        """COCO-style annotations (bbox as x, y, width, height)."""
        return [
            {"image_id": image_id, "category": label, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            for (x1, y1, x2, y2), score, label in zip(
                self.boxes.tolist(), self.scores.tolist(), self.labels, strict=True
            )
        ]


@register_task
class ZeroShotDetection(Task):
    name = "zero-shot-object-detection"
    pipeline_tag = "zero-shot-object-detection"
    architectures = ("GroundingDinoForObjectDetection",)
    auto_model = "AutoModelForZeroShotObjectDetection"
    default_base = "IDEA-Research/grounding-dino-tiny"
    tiny_models = (TinyModel("grounding-dino", tiny_grounding_dino.build, mimics="IDEA-Research/grounding-dino-tiny"),)
    output_type = "Detections (xyxy boxes, scores, labels)"
    # The detection transformer's attention: the text enhancer's and the decoder's self / text-cross attention
    # (query, key, value, out_proj) and the deformable attention's value / output projections. The Swin and BERT
    # backbones, the fusion layer and the sampling-offset / attention-weight heads (unstable under LoRA) stay frozen.
    preset = LoraPreset(
        targets=("query", "key", "value", "out_proj", "value_proj", "output_proj"), r=16, alpha=32, dropout=0.05,
        exclude=r"(.*\.)?(backbone|text_backbone)\..*",  # re.search and peft's re.fullmatch
    )  # fmt: skip
    example_kwargs = {"labels": ["a person", "a cat", "a cup"]}

    def model_class(self, folder: Path | None = None):
        return _grounding_dino_class()

    def predict(
        self,
        model,
        processor,
        images: list[Image.Image],
        *,
        labels: list[str] | None = None,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
    ) -> list[Detections]:
        """Boxes of the objects named in `labels` (e.g. ["a cat", "a remote control"]) with a score above
        `box_threshold`; each box gets the label whose words the model matched best."""
        labels = _check_labels(labels)
        for name, value in (("box_threshold", box_threshold), ("text_threshold", text_threshold)):
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
        param = next(model.parameters())
        out = []
        for image in images:  # one at a time: padding a batch to the largest image changes the boxes slightly
            inputs = processor(images=image, text=labels, return_tensors="pt").to(param.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(param.dtype)
            outputs = model(**inputs)
            result = processor.post_process_grounded_object_detection(
                outputs,
                inputs["input_ids"],
                threshold=box_threshold,
                text_threshold=text_threshold,
                target_sizes=[(image.height, image.width)],
            )[0]
            raw = torch.sigmoid(outputs.logits[0])  # as post-processing computes it, in the model's dtype
            kept = raw.max(-1).values > box_threshold  # the queries it kept, in its order
            probs = raw.float()
            phrases = result["text_labels"] if len(result["scores"]) else []  # batch_decode([]) is not []
            spans = _label_spans(inputs["input_ids"][0].tolist(), processor.tokenizer, len(labels))
            named = [_pick(phrase, labels, spans, p) for phrase, p in zip(phrases, probs[kept], strict=True)]
            boxes = result["boxes"].float().cpu()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.height)
            order = torch.argsort(result["scores"].float().cpu(), descending=True, stable=True)
            out.append(
                Detections(
                    boxes[order].numpy().astype(np.float32).reshape(-1, 4),
                    result["scores"].float().cpu()[order].numpy().astype(np.float32),
                    [named[i] for i in order.tolist()],
                    image,
                )
            )
        return out

    def save_output(self, output: Detections, out_dir: Path, stem: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        js, png = out_dir / f"{stem}.detections.json", out_dir / f"{stem}.detections.png"
        records = [
            {"label": label, "score": score, "box_xyxy": box, **coco}
            for label, score, box, coco in zip(
                output.labels, output.scores.tolist(), output.boxes.tolist(), output.to_coco(), strict=True
            )
        ]
        size = None if output.image is None else {"width": output.image.width, "height": output.image.height}
        js.write_text(json.dumps({"image": size, "detections": records}, indent=2) + "\n")
        annotate(output).save(png)
        return [js, png]


@functools.cache
def _grounding_dino_class():
    """GroundingDinoForObjectDetection that names its input embeddings (BERT's word embeddings): transformers 5
    cannot find them on its own, and peft asks for them (tied-weight check) when attaching LoRA."""
    from transformers import GroundingDinoForObjectDetection

    class GroundingDino(GroundingDinoForObjectDetection):
        def get_input_embeddings(self):
            return self.model.text_backbone.get_input_embeddings()

    GroundingDino.__name__ = GroundingDino.__qualname__ = "GroundingDinoForObjectDetection"  # saved configs name it
    return GroundingDino


def annotate(output: Detections) -> Image.Image:
    """The input (or a grey canvas holding the boxes) with each box and `label score` drawn on it."""
    if output.image is not None:
        canvas = output.image.convert("RGB")
    else:
        right, bottom = output.boxes[:, 2:].max(0) if len(output.boxes) else (64, 64)
        canvas = Image.new("RGB", (max(int(right) + 1, 1), max(int(bottom) + 1, 1)), (128, 128, 128))
    draw = ImageDraw.Draw(canvas)
    palette = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180)]
    names = sorted(set(output.labels))
    for box, score, label in zip(output.boxes.tolist(), output.scores.tolist(), output.labels, strict=True):
        colour = palette[names.index(label) % len(palette)]
        draw.rectangle(box, outline=colour, width=2)
        draw.text((box[0] + 3, box[1] + 2), f"{label} {score:.2f}", fill=colour)
    return canvas


def _check_labels(labels) -> list[str]:
    if isinstance(labels, str):  # "a cat. a dog." as Grounding DINO writes it
        labels = labels.split(".")
    if labels is None or not isinstance(labels, (list, tuple)) or not labels:
        raise ConfigError(
            f"zero-shot-object-detection needs labels: the objects to find, e.g. labels=['a cat', 'a dog'] "
            f"(--arg labels='a cat. a dog.' on the command line); got {labels!r}"
        )
    clean = [str(label).strip() for label in labels if str(label).strip()]
    bad = [label for label in clean if "." in label]
    if not clean or bad:
        raise ConfigError(f"labels must be non-empty phrases without '.', got {list(labels)!r}")
    return list(dict.fromkeys(clean))


def _label_spans(input_ids: list[int], tokenizer, count: int) -> list[list[int]]:
    """Token positions of each label in "[CLS] a cat . a dog . [SEP]" (labels are separated by '.')."""
    dot, specials = tokenizer.convert_tokens_to_ids("."), set(tokenizer.all_special_ids)
    spans, current = [], []
    for position, token in enumerate(input_ids):
        if token == dot:
            spans.append(current)
            current = []
        elif token not in specials:
            current.append(position)
    if current:
        spans.append(current)
    return (spans + [[]] * count)[:count]  # labels cut off by the text length get no tokens


def _pick(phrase: str, labels: list[str], spans: list[list[int]], probs: torch.Tensor) -> str:
    """The asked-for label for one box: the decoded phrase if it is one, else the label its tokens score best."""
    lowered = [label.lower() for label in labels]  # the processor lower-cases the text
    if phrase.strip() in lowered:
        return labels[lowered.index(phrase.strip())]
    best = [float(probs[span].max()) if span else -1.0 for span in spans]
    return labels[int(np.argmax(best))]
