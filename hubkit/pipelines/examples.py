"""Ready-made pipelines built on the generic core."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._core import Pipeline, Stage

CAPTION_TASK, LABELS_TASK, DETECT_TASK = "image-to-text", "label-extraction", "zero-shot-object-detection"


def caption_to_detections(
    *,
    captioner: str | Path | None = None,
    labeler: str | Path | None = None,
    detector: str | Path | None = None,
    adapters: Mapping[str, Sequence[str | Path]] | None = None,
    default_labels: Sequence[str] = (),
    max_labels: int = 16,
    pool=None,
    **load_options: Any,
) -> Pipeline:
    """BLIP captions the image -> an LLM lists the objects in the caption -> Grounding DINO finds them.

    Stages "caption" (Caption), "labels" (Labels) and "detections" (Detections). Bases default to each task's real
    Hub id; `adapters` maps a stage name to its adapters. The detector looks for the LLM's labels (at most
    `max_labels`), or `default_labels` when the LLM names none; with neither, "detections" is skipped.
    `load_options` (device, dtype, ...) apply to every stage.
    """
    adapters = dict(adapters or {})
    fallback = [str(label) for label in default_labels]

    def captions(ctx) -> dict | None:
        text = ctx["caption"].text.strip()
        return {"captions": [text]} if text else None

    def labels(ctx) -> dict | None:
        names = list(ctx["labels"].names)[:max_labels] or fallback
        return {"labels": names} if names else None

    options = dict(load_options)
    return Pipeline(
        [
            Stage("caption", CAPTION_TASK, captioner, adapters=adapters.get("caption", ()), load_options=options),
            Stage(
                "labels",
                LABELS_TASK,
                labeler,
                adapters=adapters.get("labels", ()),
                prepare=captions,
                requires=("caption",),
                load_options=options,
            ),
            Stage(
                "detections",
                DETECT_TASK,
                detector,
                adapters=adapters.get("detections", ()),
                prepare=labels,
                requires=("labels",),
                load_options=options,
            ),
        ],
        pool=pool,
    )
