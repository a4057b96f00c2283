"""Segma Vision: SAM automatic masks + BLIP caption + LLM classes + Grounding DINO boxes + SAM box masks, matched
into labelled regions with 61 HLBB features each (and an optional random-forest region classifier).

Every model stage is a `Stage` of the generic pipeline (optional, timed, its model from the shared pool); the glue
(class fallback, box NMS, matching, features) is timed too. Presets and prompts are the Segma seed's.

    from hubkit.pipelines.segma import SegmaConfig, SegmaPipeline

    result = SegmaPipeline(SegmaConfig(preset="medical")).run("xray.png")   # a hubkit.segma.SegmaResult
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..segma.regions import UNLABELLED, Region, SegmaResult
from ..tasks import to_pil
from ..tasks.labels import MAX_LABELS, nouns_from_caption
from ._core import Pipeline, Stage

logger = logging.getLogger(__name__)

SAM_TASK, CAPTION_TASK = "mask-generation", "image-to-text"
LABELS_TASK, DETECT_TASK = "label-extraction", "zero-shot-object-detection"

# segment-anything's model types: the Hugging Face port and Meta's checkpoint file (both load)
SAM_MODEL_TYPES = {
    "vit_b": ("facebook/sam-vit-base", "sam_vit_b_01ec64.pth"),
    "vit_l": ("facebook/sam-vit-large", "sam_vit_l_0b3195.pth"),
    "vit_h": ("facebook/sam-vit-huge", "sam_vit_h_4b8939.pth"),
}


@dataclass(frozen=True)
class SamPreset:
    name: str
    model_type: str  # a SAM_MODEL_TYPES key
    automatic: Mapping[str, Any]  # AutomaticMaskConfig overrides
    domain: str | None = None  # the caption / LLM domain it implies unless one is given


SAM_PRESETS = {
    # SamAutomaticMaskGenerator's own defaults (32 points, 0.88, 0.95, box NMS 0.7)
    "general": SamPreset("general", "vit_b", {}),
    "medical": SamPreset(
        "medical", "vit_h",
        {"points_per_side": 64, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "crop_n_layers": 2,
         "crop_n_points_downscale_factor": 2},
        domain="medical",
    ),
    "satellite": SamPreset(
        "satellite", "vit_l",
        {"max_side": 2048, "points_per_side": 32, "pred_iou_thresh": 0.82, "stability_score_thresh": 0.90,
         "min_mask_region_area": 1000},
    ),
}  # fmt: skip
# The seed's BLIP prefixes and LLM domain blocks; a user's domain names one of each.
CAPTION_PROMPTS = {
    "medical": "Medical image showing:",
    "automotive": "Vehicle component:",
    "nature": "Natural scene containing:",
}
DOMAINS = {  # domain -> (caption prompt key, LLM instruction key)
    "medical": ("medical", "medical"),
    "automotive": ("automotive", "industrial"),
    "industrial": ("automotive", "industrial"),
    "nature": ("nature", "natural"),
    "natural": ("nature", "natural"),
}
STAGES = ("masks", "caption", "classes", "boxes", "box_masks")  # the model stages, in order
STAGES_OF = {"sam": ("masks", "box_masks"), "captioner": ("caption",), "labeler": ("classes",), "detector": ("boxes",)}
TINY_BASES = {  # `hubkit bootstrap`'s random-weight models, for offline demos and tests
    "sam": "hubkit-tiny/sam",
    "captioner": "hubkit-tiny/blip",
    "labeler": "hubkit-tiny/mistral",
    "detector": "hubkit-tiny/grounding-dino",
}
# Untrained models predict IoU ~0 and flat scores: with them every filter would drop everything.
TINY_SAM_OVERRIDES = {"pred_iou_thresh": None, "stability_score_thresh": None, "points_per_side": 8}


def sam_base(name: str | Path | None, preset: SamPreset) -> str | Path:
    """A SAM base: a repo id / folder as given, a model type ("vit_h"), or the preset's model type's HF port."""
    if name is None:
        return SAM_MODEL_TYPES[preset.model_type][0]
    return SAM_MODEL_TYPES[name][0] if str(name) in SAM_MODEL_TYPES else name


@dataclass(frozen=True)
class SegmaConfig:
    """What a Segma run uses. Bases default to the real Hub ids (SAM's from the preset's model type); `adapters`
    maps a stage ("sam", "captioner", "labeler", "detector") to its adapters (the first is used)."""

    preset: str = "general"
    domain: str | None = None  # medical | automotive | industrial | nature | natural; None: the preset's
    sam: str | Path | None = None
    captioner: str | Path | None = None
    labeler: str | Path | None = None
    detector: str | Path | None = None
    adapters: Mapping[str, Sequence[str | Path] | Mapping[str, str | Path]] = field(default_factory=dict)
    base_only: bool = False  # adapters stay loaded but off: the "base" side of a base-vs-adapted comparison
    classes: Sequence[str] | None = None  # given classes: the LLM (and the caption, unless wanted) is skipped
    automatic: bool = True  # SAM automatic masks
    caption: bool = True
    llm: bool = True
    detect: bool = True
    llm_quantize: str | None = None  # "nf4" (CUDA) or "int8"
    sam_options: Mapping[str, Any] = field(default_factory=dict)  # AutomaticMaskConfig overrides over the preset
    num_beams: int = 3
    max_caption_tokens: int = 50
    max_classes: int = MAX_LABELS
    box_threshold: float = 0.25
    text_threshold: float = 0.2
    box_nms_iou: float = 0.5
    match_iou: float = 0.5
    features: bool = True
    classifier: Any = None  # a RegionClassifier, a folder or a repo id: names the automatic-only regions
    load_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.preset not in SAM_PRESETS:
            raise ConfigError(f"Unknown preset {self.preset!r}; choose one of {sorted(SAM_PRESETS)}")
        if self.domain is not None and self.domain not in DOMAINS:
            raise ConfigError(f"Unknown domain {self.domain!r}; choose one of {sorted(DOMAINS)} or none")
        unknown = sorted(set(self.adapters) - {"sam", "captioner", "labeler", "detector"})
        if unknown:
            raise ConfigError(f"adapters for unknown stage(s) {unknown}; stages: sam, captioner, labeler, detector")
        for name in ("box_threshold", "text_threshold", "box_nms_iou", "match_iou"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{name} must be a number in [0, 1]; got {value!r}")
        if self.classes is not None:
            classes = [str(c).strip().lower() for c in self.classes if str(c).strip()]
            if not classes:
                raise ConfigError("classes is empty: give at least one class name, or None to let the LLM choose")
            object.__setattr__(self, "classes", tuple(dict.fromkeys(classes)))
        from ..tasks._sam_auto import AutomaticMaskConfig

        AutomaticMaskConfig(**self.automatic_options)  # bad SAM knobs fail here, before any model loads

    @property
    def sam_preset(self) -> SamPreset:
        return SAM_PRESETS[self.preset]

    @property
    def effective_domain(self) -> str | None:
        return self.domain or self.sam_preset.domain

    @property
    def automatic_options(self) -> dict[str, Any]:
        return {**self.sam_preset.automatic, **self.sam_options}

    @classmethod
    def tiny(cls, **overrides: Any) -> SegmaConfig:
        """The offline demo: `hubkit bootstrap`'s random-weight models, filters off (results are meaningless)."""
        options = {**TINY_SAM_OVERRIDES, **overrides.pop("sam_options", {})}
        return cls(**{**TINY_BASES, **overrides, "sam_options": options})


class SegmaPipeline:
    """Runs a SegmaConfig on images; models come from the pool, so several pipelines and Spaces share them."""

    def __init__(self, config: SegmaConfig | None = None, *, pool=None):
        self.config = config or SegmaConfig()
        self._pool = pool
        self._classifier = None

    @property
    def pool(self):
        from ..pool import get_pool

        return self._pool or get_pool()

    def with_options(self, **changes: Any) -> SegmaPipeline:
        """The same pipeline (and pool) with some config fields changed."""
        return SegmaPipeline(replace(self.config, **changes), pool=self._pool)

    def bases(self) -> dict[str, str]:
        """Stage -> the base it loads (as given or defaulted)."""
        from ..tasks import get_task

        c = self.config
        return {
            "sam": str(sam_base(c.sam, c.sam_preset)),
            "captioner": str(c.captioner or get_task(CAPTION_TASK).default_base),
            "labeler": str(c.labeler or get_task(LABELS_TASK).default_base),
            "detector": str(c.detector or get_task(DETECT_TASK).default_base),
        }

    def load(self) -> dict[str, float]:
        """Load every model the config uses into the pool now (a server's warm-up, a CLI's early failure); returns
        seconds per stage. A base that cannot load raises StageError naming the stage and the base."""
        from ..errors import StageError

        seconds = {}
        for stage in self._stages({}).stages:
            if not stage.enabled or stage.name == "box_masks":  # box_masks shares the "masks" SAM
                continue
            begun = time.perf_counter()
            try:
                with self.pool.lease(stage.task, stage.base, stage.adapters, **stage.load_options):
                    pass
            except Exception as err:
                raise StageError(stage, err) from err
            seconds[stage.name] = time.perf_counter() - begun
        return seconds

    def run(self, image: Any) -> SegmaResult:
        """Label one image (path, PIL image or array); InvalidImageError for an unreadable one."""
        pil = to_pil(image)
        state: dict[str, Any] = {}
        result = self._stages(state).run(pil)
        timings = dict(result.timings)
        begun = time.perf_counter()
        regions = self._regions(result.outputs, state, pil.size)
        timings["regions"] = time.perf_counter() - begun
        if regions and self.config.features:
            begun = time.perf_counter()
            from ..segma.features import hlbb_features_batch

            feats = hlbb_features_batch(pil, np.stack([r.mask for r in regions]))
            for region, row in zip(regions, feats, strict=True):
                region.features = row
            timings["features"] = time.perf_counter() - begun
        if self.config.classifier is not None and any(r.label == UNLABELLED for r in regions):
            begun = time.perf_counter()
            self._classify(regions)
            timings["classify"] = time.perf_counter() - begun
        caption = result.outputs.get("caption")
        llm = result.outputs.get("classes")
        classes, source = state.get("classes", ([], "none"))
        return SegmaResult(
            image=pil,
            regions=regions,
            caption=caption.text if caption is not None else "",
            classes=list(classes),
            classes_source=source,
            llm_answer=llm.raw if llm is not None else "",
            preset=self.config.preset,
            domain=self.config.effective_domain,
            models=self._models(result.skipped),
            timings=timings,
            skipped=list(result.skipped),
        )

    # -- stages ---------------------------------------------------------------------------------------------
    def _stages(self, state: dict[str, Any]) -> Pipeline:
        c = self.config
        bases = self.bases()
        options = dict(c.load_options)
        caption_key, llm_domain = DOMAINS.get(c.effective_domain, (None, None))
        caption_kwargs = {"num_beams": c.num_beams, "max_new_tokens": c.max_caption_tokens}
        if caption_key is not None:
            caption_kwargs["prompt"] = CAPTION_PROMPTS[caption_key]

        def captions(ctx) -> dict | None:
            caption = ctx.get("caption")
            return {"captions": [caption.text]} if caption is not None and caption.text.strip() else None

        def labels(ctx) -> dict | None:
            classes, source = self._classes(ctx)
            state["classes"] = (classes, source)
            return {"labels": classes} if classes else None

        def boxes(ctx) -> dict | None:
            found = ctx["boxes"]
            if not len(found.boxes):
                return None
            from ..tasks._sam_auto import nms

            keep = nms(torch.from_numpy(found.boxes), torch.from_numpy(found.scores), c.box_nms_iou).tolist()
            state["kept_boxes"] = keep
            return {"boxes": found.boxes[keep]}

        def stage(name, task, base_key, **kwargs) -> Stage:
            adapters = _adapters(c.adapters.get(base_key, ()))
            adapter = "base" if c.base_only and adapters else None
            base = bases[base_key]
            return Stage(name, task, base, adapters=adapters, adapter=adapter, load_options=options, **kwargs)

        llm_options = dict(options, **({"quantize": c.llm_quantize} if c.llm_quantize else {}))
        return Pipeline(
            [
                stage("masks", SAM_TASK, "sam", kwargs=c.automatic_options, enabled=c.automatic),
                stage("caption", CAPTION_TASK, "captioner", kwargs=caption_kwargs, enabled=c.caption),
                Stage(
                    "classes",
                    LABELS_TASK,
                    bases["labeler"],
                    adapters=_adapters(c.adapters.get("labeler", ())),
                    adapter="base" if c.base_only and c.adapters.get("labeler") else None,
                    kwargs={"domain": llm_domain, "max_labels": c.max_classes},
                    prepare=captions,
                    enabled=c.llm and c.classes is None,
                    load_options=llm_options,
                ),  # fmt: skip
                stage(
                    "boxes",
                    DETECT_TASK,
                    "detector",
                    prepare=labels,
                    enabled=c.detect,
                    kwargs={"box_threshold": c.box_threshold, "text_threshold": c.text_threshold},
                ),  # fmt: skip
                stage("box_masks", SAM_TASK, "sam", prepare=boxes, requires=("boxes",)),
            ],
            pool=self._pool,
        )

    def _classes(self, ctx) -> tuple[list[str], str]:
        """The classes to look for and where they came from: given, the LLM, or the caption's nouns."""
        c = self.config
        if c.classes:
            return list(c.classes), "given"
        llm = ctx.get("classes")
        if llm is not None and llm.names:
            return list(llm.names)[: c.max_classes], "llm"
        caption = ctx.get("caption")
        if caption is not None:
            nouns = nouns_from_caption(caption.text, c.max_classes)
            if nouns:
                logger.info("segma: no class from the LLM; using the caption's nouns %s", nouns)
                return nouns, "fallback"
        return [], "none"

    # -- regions ----------------------------------------------------------------------------------------------
    def _regions(self, outputs: dict[str, Any], state: dict[str, Any], size: tuple[int, int]) -> list[Region]:
        from ..tasks.sam import masks_to_boxes

        regions: list[Region] = []
        automatic = outputs.get("masks")
        auto_masks = automatic.masks if automatic is not None else np.zeros((0, size[1], size[0]), bool)
        used = np.zeros(len(auto_masks), bool)
        detected, prompted = outputs.get("boxes"), outputs.get("box_masks")
        if detected is not None and prompted is not None:
            keep = state.get("kept_boxes", [])
            ious = _mask_iou(prompted.masks, auto_masks)
            for k, index in enumerate(keep):
                mask = prompted.masks[k]
                if not mask.any():
                    logger.info("segma: SAM gave an empty mask for the %r box; region dropped", detected.labels[index])
                    continue
                source = "detection"
                if len(auto_masks):
                    ious_k = np.where(used, -1.0, ious[k])
                    best = int(ious_k.argmax())
                    if ious_k[best] >= self.config.match_iou:
                        used[best], source = True, "detection+automatic"
                box = tuple(float(v) for v in detected.boxes[index])
                regions.append(
                    Region(len(regions) + 1, mask, box, detected.labels[index], float(detected.scores[index]), source)
                )
        if len(auto_masks):
            boxes = masks_to_boxes(torch.from_numpy(auto_masks)).numpy()
            for i in np.flatnonzero(~used):
                box = tuple(float(v) for v in boxes[i])
                score = float(automatic.scores[i])
                regions.append(Region(len(regions) + 1, auto_masks[i], box, UNLABELLED, score, "automatic"))
        return regions

    def _classify(self, regions: list[Region]) -> None:
        from ..segma.classifier import RegionClassifier

        if self._classifier is None:
            source = self.config.classifier
            self._classifier = source if isinstance(source, RegionClassifier) else RegionClassifier.load(source)
        todo = [r for r in regions if r.label == UNLABELLED and r.features is not None]
        if not todo:
            return
        probs = self._classifier.predict_proba(np.stack([r.features for r in todo]))
        classes = list(self._classifier.classes)
        for region, p in zip(todo, probs, strict=True):
            region.label, region.score = classes[int(p.argmax())], float(p.max())

    def _models(self, skipped: list[str]) -> dict[str, str]:
        c = self.config
        bases = self.bases()
        out = {}
        for key, stages in STAGES_OF.items():
            if all(s in skipped for s in stages):
                continue
            given = c.adapters.get(key, ())
            adapters = [str(a) for a in (given.values() if isinstance(given, Mapping) else given)]
            out[key] = bases[key] + (f" + {adapters[0]}" if adapters and not c.base_only else "")
        return out


def _adapters(given) -> list | dict:
    """A stage's adapters as Stage takes them: a list of sources, or {name: source} (names kept)."""
    return dict(given) if isinstance(given, Mapping) else list(given)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU between two stacks of bool masks."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    fa, fb = a.reshape(len(a), -1).astype(np.float32), b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)
