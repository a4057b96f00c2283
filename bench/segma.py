"""Segma: SAM automatic masks with one image embedding per image (hubkit) vs re-encoding the image for every point
batch (the naive loop over transformers' SamModel), and the Segma pipeline's time per stage.

SAM is the real ViT-B architecture with random weights (CPU); the other pipeline models are the tiny ones, so the
stage shares show SAM's cost against the glue, not BLIP's or Mistral's. Prints one JSON object.

    python bench/segma.py [--points-per-side 16] [--repeats 2] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data

sys.path.insert(0, str(Path(__file__).parent))
from adapters import real_size_folder  # noqa: E402

import hubkit  # noqa: E402
from hubkit import tiny  # noqa: E402
from hubkit.pipelines.segma import TINY_SAM_OVERRIDES, SegmaConfig, SegmaPipeline  # noqa: E402
from hubkit.pool import ModelPool  # noqa: E402

NO_FILTERS = {"pred_iou_thresh": None, "stability_score_thresh": None}


class ReEncoding:
    """Makes every decoder call re-run the image encoder first: what a loop calling
    `model(pixel_values=..., input_points=batch)` per batch does."""

    def __init__(self, model):
        self.model, self.pixels, self.encodes = model, None, 0
        self._embed, self._forward = model.get_image_embeddings, model.forward

    def __enter__(self):
        def embed(pixel_values, *args, **kwargs):
            self.pixels = pixel_values
            return self._embed(pixel_values, *args, **kwargs)

        def forward(*args, image_embeddings=None, **kwargs):
            if image_embeddings is not None:
                self.encodes += 1
                image_embeddings = self._embed(self.pixels)
            return self._forward(*args, image_embeddings=image_embeddings, **kwargs)

        self.model.get_image_embeddings, self.model.forward = embed, forward
        return self

    def __exit__(self, *exc):
        del self.model.get_image_embeddings, self.model.forward


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the tiny SAM instead of ViT-B (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    image = data.coffee()  # 400 x 600
    kwargs = {"points_per_side": args.points_per_side, **NO_FILTERS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sam = tiny.build("sam", root / "sam") if args.tiny else real_size_folder("sam", root / "sam")
        predictor = hubkit.load("mask-generation", sam)
        predictor.predict(image, points=[[10, 10]])  # warm-up
        ours_s, ours = timed(lambda: predictor.predict(image, **kwargs), args.repeats)
        with ReEncoding(predictor.model) as naive_model:
            naive_s, naive = timed(lambda: predictor.predict(image, **kwargs), args.repeats)
        same = ours.masks.shape == naive.masks.shape and np.array_equal(ours.masks, naive.masks)

        families = {"captioner": "blip", "labeler": "mistral", "detector": "grounding-dino"}
        bases = {stage: tiny.build(family, root / family) for stage, family in families.items()}
        config = SegmaConfig(sam=sam, **bases, sam_options={**TINY_SAM_OVERRIDES, **kwargs}, max_caption_tokens=20)
        pipeline = SegmaPipeline(config, pool=ModelPool()).with_options(box_threshold=0.0, text_threshold=0.0)
        pipeline.run(image)  # loads every model once
        stage_runs = [pipeline.run(image).timings for _ in range(args.repeats)]
    stages = {name: statistics.median(run[name] for run in stage_runs) for name in stage_runs[0]}
    total = sum(stages.values())
    points = args.points_per_side**2
    print(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
                "sam": "tiny" if args.tiny else "facebook/sam-vit-base architecture, random weights",
                "image": list(image.shape[:2]),
                "points": points,
                "points_per_batch": 64,
                "automatic_masks": {
                    "one_embedding_s": round(ours_s, 3),
                    "re_encoding_s": round(naive_s, 3),
                    "encoder_runs_re_encoding": naive_model.encodes // args.repeats,
                    "speedup": round(naive_s / ours_s, 2),
                    "points_per_s_one_embedding": round(points / ours_s, 1),
                    "points_per_s_re_encoding": round(points / naive_s, 1),
                    "same_masks": bool(same),
                },
                "pipeline_stage_s": {k: round(v, 4) for k, v in stages.items()},
                "pipeline_stage_share": {k: round(v / total, 3) for k, v in stages.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
