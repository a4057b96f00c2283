"""Several predictors composed into one call, timed per stage, with models from the shared pool.

    from hubkit.pipelines import Pipeline, Stage

    pipeline = Pipeline([
        Stage("caption", "image-to-text", "Salesforce/blip-image-captioning-base"),
        Stage("labels", "label-extraction", prepare=lambda ctx: {"captions": [ctx["caption"].text]}),
        Stage("detections", "zero-shot-object-detection", requires=("labels",),
              prepare=lambda ctx: {"labels": ctx["labels"].names} if ctx["labels"].names else None),  # None: skip
    ])
    result = pipeline.run("photo.jpg")   # result.outputs, result.timings (s), result.skipped

`caption_to_detections(...)` builds that chain with the skips it needs.
"""

from __future__ import annotations

from ._core import IMAGE, Pipeline, PipelineResult, Stage, StageError
from .examples import caption_to_detections

__all__ = ["IMAGE", "Pipeline", "PipelineResult", "Stage", "StageError", "caption_to_detections"]
