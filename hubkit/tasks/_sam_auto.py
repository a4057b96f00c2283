"""Automatic mask generation the way segment-anything's SamAutomaticMaskGenerator does it, on transformers' SamModel.

The steps and their order are Meta's: crops (`generate_crop_boxes`), per-layer point grids, one image embedding per
crop, points decoded in batches, predicted-IoU and stability filters on the upscaled logits, masks touching a crop's
inner edge dropped, box NMS per crop then across crops (smaller crops win), small holes / islands removed. The mask
utilities come from the `segment-anything` package itself (its `utils/amg.py`); the package's `__init__` imports
torchvision, which is not needed here, so that one file is loaded on its own. NMS and small-region removal, which
Meta delegates to torchvision and OpenCV, are written here (numpy / scipy) and tested against them.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, fields
from types import ModuleType

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError

logger = logging.getLogger(__name__)
UPSCALE_CHUNK = 32  # masks upscaled to crop size at a time: bounds memory on large images


@functools.cache
def amg() -> ModuleType:
    """segment_anything.utils.amg, loaded from the installed package without importing torchvision."""
    from importlib import metadata, util

    try:
        path = metadata.distribution("segment-anything").locate_file("segment_anything/utils/amg.py")
    except metadata.PackageNotFoundError:
        raise ImportError("Automatic masks need the segment-anything package: pip install segment-anything") from None
    spec = util.spec_from_file_location("hubkit._segment_anything_amg", str(path))
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class AutomaticMaskConfig:
    """SamAutomaticMaskGenerator's knobs, with its defaults. A threshold of None (or 0) disables that filter.

    `max_side`: images whose longest side is larger are processed at that size and their masks scaled back (the
    seed's `input_size` for large satellite tiles; crops then cover it at SAM's 1024 px). `max_masks` keeps the best
    ones by predicted IoU.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float | None = 0.88
    stability_score_thresh: float | None = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    max_side: int | None = None
    max_masks: int = 100

    def __post_init__(self):
        for name in ("points_per_side", "points_per_batch", "crop_n_points_downscale_factor", "max_masks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1; got {value!r}")
        for name in ("crop_n_layers", "min_mask_region_area"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0; got {value!r}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ConfigError(f"{name} must be a number in [0, 1] (or None: no filter); got {value!r}")
        if not 0 <= self.crop_overlap_ratio < 1:
            raise ConfigError(f"crop_overlap_ratio must be in [0, 1); got {self.crop_overlap_ratio!r}")
        if self.max_side is not None and (not isinstance(self.max_side, int) or self.max_side < 64):
            raise ConfigError(f"max_side must be an integer >= 64 or None; got {self.max_side!r}")
        if self.crop_n_points_downscale_factor**self.crop_n_layers > self.points_per_side:
            raise ConfigError(
                f"points_per_side {self.points_per_side} leaves no point on crop layer {self.crop_n_layers} with "
                f"crop_n_points_downscale_factor {self.crop_n_points_downscale_factor}"
            )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices kept, best score first: each box suppresses later ones overlapping it by more than `iou_threshold`
    (torchvision.ops.nms's rule)."""
    from .sam import box_iou

    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes[order].float(), boxes[order].float())
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= iou[i, i + 1 :] <= iou_threshold
    return order[keep]


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """segment-anything's remove_small_regions (8-connected components) with scipy instead of OpenCV: fills holes
    (mode "holes") or drops islands ("islands") smaller than `area_thresh`; returns the mask and whether it changed."""
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ConfigError(f"mode must be 'holes' or 'islands'; got {mode!r}")
    correct_holes = mode == "holes"
    working = correct_holes ^ mask.astype(bool)
    regions, n = ndimage.label(working, structure=np.ones((3, 3), bool))
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0, *small]
    if not correct_holes:
        fill = [i for i in range(n + 1) if i not in fill] or [int(np.argmax(sizes)) + 1]  # all small: keep the largest
    return np.isin(regions, fill), True


def filter_batch(
    logits: torch.Tensor, iou: torch.Tensor, crop_box: list[int], orig_size: tuple[int, int], cfg: AutomaticMaskConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of mask logits at crop size -> (masks, predicted IoU, xyxy boxes in crop pixels, inclusive as
    segment-anything's) that pass the IoU and stability filters and do not touch the crop's inner edge."""
    a = amg()
    if cfg.pred_iou_thresh:
        keep = iou > cfg.pred_iou_thresh
        logits, iou = logits[keep], iou[keep]
    if cfg.stability_score_thresh:
        keep = a.calculate_stability_score(logits, 0.0, cfg.stability_score_offset) >= cfg.stability_score_thresh
        logits, iou = logits[keep], iou[keep]
    masks = logits > 0.0
    boxes = a.batched_mask_to_box(masks)
    keep = ~a.is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
    return masks[keep], iou[keep], boxes[keep]


def generate(model, processor, image: Image.Image, cfg: AutomaticMaskConfig) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) bool masks at the image's size, largest first, and their predicted IoU (N,) float32."""
    a = amg()
    full_w, full_h = image.size
    work = image.convert("RGB")
    if cfg.max_side and max(full_w, full_h) > cfg.max_side:
        scale = cfg.max_side / max(full_w, full_h)
        work = work.resize((max(1, round(full_w * scale)), max(1, round(full_h * scale))), Image.BILINEAR)
    pixels = np.asarray(work)
    orig_h, orig_w = pixels.shape[:2]
    crop_boxes, layers = a.generate_crop_boxes((orig_h, orig_w), cfg.crop_n_layers, cfg.crop_overlap_ratio)
    grids = a.build_all_layer_point_grids(cfg.points_per_side, cfg.crop_n_layers, cfg.crop_n_points_downscale_factor)
    per_crop = [
        _process_crop(model, processor, pixels, box, grids[layer], cfg)
        for box, layer in zip(crop_boxes, layers, strict=True)
    ]
    masks = [m for m, _, _, _ in per_crop]
    scores = torch.cat([s for _, s, _, _ in per_crop])
    boxes = torch.cat([b for _, _, b, _ in per_crop])
    crops = torch.cat([c for _, _, _, c in per_crop])
    index = [(i, j) for i, (m, *_) in enumerate(per_crop) for j in range(len(m))]
    if len(crop_boxes) > 1 and len(index):  # duplicates across crops: the smaller crop's mask wins
        areas = ((crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])).float()
        keep = nms(boxes, 1 / areas, cfg.crop_nms_thresh)
        index, scores, boxes = [index[k] for k in keep.tolist()], scores[keep], boxes[keep]
    full = torch.zeros((len(index), orig_h, orig_w), dtype=torch.bool)
    for k, (i, j) in enumerate(index):
        x0, y0, x1, y1 = crop_boxes[i]
        full[k, y0:y1, x0:x1] = masks[i][j]
    if cfg.min_mask_region_area > 0 and len(full):
        full, scores = _postprocess_small_regions(full, scores, cfg)
    keep = torch.argsort(scores, descending=True, stable=True)[: cfg.max_masks]
    full, scores = full[keep], scores[keep]
    if (orig_h, orig_w) != (full_h, full_w) and len(full):
        full = torch.nn.functional.interpolate(full[:, None].float(), size=(full_h, full_w), mode="nearest")[:, 0] > 0.5
    areas = full.flatten(1).sum(1)
    nonempty = areas > 0
    order = torch.argsort(areas[nonempty], descending=True, stable=True)  # largest first: the draw order
    if not len(full):
        logger.warning(
            "no mask passed pred_iou_thresh=%s / stability_score_thresh=%s; lower them to see more",
            cfg.pred_iou_thresh,
            cfg.stability_score_thresh,
        )
    return full[nonempty][order].numpy(), scores[nonempty][order].numpy().astype(np.float32)


def _process_crop(model, processor, pixels: np.ndarray, crop_box: list[int], grid: np.ndarray, cfg):
    """Masks (at crop size), scores, boxes (image pixels) and crop boxes of one crop, after its own NMS."""
    x0, y0, x1, y1 = crop_box
    crop = Image.fromarray(pixels[y0:y1, x0:x1])
    param = next(model.parameters())
    inputs = processor(images=crop, return_tensors="pt")
    with torch.no_grad():
        embedding = model.get_image_embeddings(inputs["pixel_values"].to(param.device, param.dtype))  # once per crop
    (crop_h, crop_w), (in_h, in_w) = inputs["original_sizes"][0].tolist(), inputs["reshaped_input_sizes"][0].tolist()
    points = torch.from_numpy(grid * np.array([crop_w, crop_h])).float()  # crop pixels
    to_input = torch.tensor([in_w / crop_w, in_h / crop_h])
    orig_size = pixels.shape[:2]
    kept_masks, kept_scores, kept_boxes = [], [], []
    for start in range(0, len(points), cfg.points_per_batch):
        chunk = (points[start : start + cfg.points_per_batch] * to_input).to(embedding.device, embedding.dtype)
        ones = torch.ones(1, len(chunk), 1, dtype=torch.long, device=embedding.device)
        with torch.no_grad():
            result = model(image_embeddings=embedding, input_points=chunk[None, :, None], input_labels=ones)
        low = result.pred_masks[0].flatten(0, 1).float().cpu()  # (B*3, 256, 256) logits
        iou = result.iou_scores[0].flatten().float().cpu()
        if cfg.pred_iou_thresh:  # cheap, and spares upscaling masks that will be dropped anyway
            keep = iou > cfg.pred_iou_thresh
            low, iou = low[keep], iou[keep]
        for sub in range(0, len(low), UPSCALE_CHUNK):
            logits = processor.post_process_masks(
                [low[sub : sub + UPSCALE_CHUNK, None]], [(crop_h, crop_w)], [(in_h, in_w)], binarize=False
            )[0][:, 0]
            masks, scores, boxes = filter_batch(logits, iou[sub : sub + UPSCALE_CHUNK], crop_box, orig_size, cfg)
            kept_masks.append(masks)
            kept_scores.append(scores)
            kept_boxes.append(boxes)
    masks = torch.cat(kept_masks) if kept_masks else torch.zeros((0, crop_h, crop_w), dtype=torch.bool)
    scores = torch.cat(kept_scores) if kept_scores else torch.zeros(0)
    boxes = torch.cat(kept_boxes) if kept_boxes else torch.zeros((0, 4))
    keep = nms(boxes, scores, cfg.box_nms_thresh)
    boxes = amg().uncrop_boxes_xyxy(boxes[keep], crop_box)
    crops = torch.tensor([crop_box] * len(keep), dtype=torch.float32).reshape(-1, 4)
    return masks[keep], scores[keep], boxes.float(), crops


def _postprocess_small_regions(masks: torch.Tensor, scores: torch.Tensor, cfg: AutomaticMaskConfig):
    """Holes and islands under min_mask_region_area removed; masks that changed lose NMS ties (Meta's rule)."""
    fixed, unchanged = [], []
    for mask in masks.numpy():
        mask, changed_holes = remove_small_regions(mask, cfg.min_mask_region_area, "holes")
        mask, changed_islands = remove_small_regions(mask, cfg.min_mask_region_area, "islands")
        fixed.append(torch.from_numpy(mask))
        unchanged.append(float(not (changed_holes or changed_islands)))
    masks = torch.stack(fixed)
    boxes = amg().batched_mask_to_box(masks)
    keep = nms(boxes, torch.tensor(unchanged), max(cfg.box_nms_thresh, cfg.crop_nms_thresh))
    return masks[keep], scores[keep]
