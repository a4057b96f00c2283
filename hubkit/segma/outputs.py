"""What a Segma run writes: overlays, label maps, Grounded-SAM's label.json, COCO JSON, the features table, and a
per-image ``regions.json`` record that ``load_result`` reads back exactly.

Files per image (``save_result``), ``{stem}`` chosen by the caller:

- ``{stem}.overlay.png``: the image, each region tinted in its own colour, its box and "label score" drawn.
- ``{stem}.labels.png``: the label map, 16-bit greyscale PNG (``label_map``): 0 background, k the k-th region.
- ``{stem}.label.json``: Grounded-SAM's ``label.json`` for that map (``label_json``).
- ``{stem}.regions.json``: everything (``REGIONS_FORMAT``): run facts, and per region its id, label, score,
  source, status, box, area, mask as COCO RLE, features (61 floats) or null.

Files per folder (``write_folder_outputs``): ``coco.json`` (``coco_document``) and ``features.csv``
(``features_table``). Rejected regions are never drawn nor exported; ``regions.json`` and ``features.csv`` keep
them, with their status. Every file is written to a temp file beside it and moved into place (``os.replace``),
so a killed run leaves the previous file or none, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..errors import ConfigError
from .features import FEATURE_NAMES, N_FEATURES
from .regions import BACKGROUND, STATUSES, Region, SegmaResult

logger = logging.getLogger(__name__)

REGIONS_FORMAT = "hubkit.segma.regions"
REGIONS_VERSION = 1
PIPELINE_DESCRIPTION = (
    "Segma Vision (hubkit): caption -> class names -> open-vocabulary detection -> SAM masks -> HLBB features -> review"
)
TABLE_COLUMNS = ("image", "region_id", "label", "score", "source", "area", "status")
# Distinct, saturated colours (Tableau 10 + 2); a region's colour follows its id, so it is stable across views.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 255), (255, 215, 0),
)  # fmt: skip
TINT_ALPHA = 0.45


# ---- masks as COCO RLE ----


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of an (H, W) mask, JSON-ready: ``{"size": [h, w], "counts": str}``."""
    from pycocotools import mask as mask_utils  # lazy: only the writers need it

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """The (H, W) bool mask of a COCO RLE dict (``counts`` str or bytes)."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    size = [int(v) for v in rle["size"]]
    encoded = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(encoded).astype(bool)


# ---- which regions are shown and exported ----


def _check_masks(result: SegmaResult) -> None:
    width, height = result.size
    for region in result.regions:
        shape = np.shape(region.mask)
        if shape != (height, width):
            raise ConfigError(
                f"Region {region.id}: mask shape {shape} does not match the image ({height}, {width}); "
                "masks must be at the image's size."
            )


def shown_regions(result: SegmaResult) -> list[Region]:
    """The regions drawn and written to the label map: every region not rejected, in ``result.regions`` order."""
    return [r for r in result.regions if r.status != "rejected"]


def exported_regions(result: SegmaResult, *, include_pending: bool = True) -> list[Region]:
    """The regions COCO and data-set exports hold: labelled ones (``SegmaResult.labelled()``: a class label,
    not background, not rejected), and only accepted ones when ``include_pending`` is False."""
    return [r for r in result.labelled() if include_pending or r.status == "accepted"]


def _largest_first(regions: Sequence[Region]) -> list[Region]:
    return sorted(regions, key=lambda r: r.area, reverse=True)  # stable: ties keep their order


def region_colour(region_id: int) -> tuple[int, int, int]:
    return PALETTE[region_id % len(PALETTE)]


def _caption_text(region: Region) -> str:
    name = region.label if region.label and region.label != BACKGROUND else f"#{region.id}"
    return f"{name} {region.score:.2f}"


# ---- per image: overlay, label map, label.json ----


def overlay(
    result: SegmaResult,
    regions: Iterable[Region | int] | None = None,
    show_labels: bool = True,
    *,
    scale: int = 1,
) -> Image.Image:
    """The image with each region's mask tinted in its colour, its box outlined and "label score" written.

    ``regions`` limits the drawing to those regions (Region objects or ids); rejected regions are never drawn.
    Larger regions are tinted first, so smaller ones stay visible on top. ``scale`` > 1 draws at that whole
    multiple of the image's size (LANCZOS-resized image, masks repeated): boxes and labels stay sharp.
    """
    _check_masks(result)
    chosen = shown_regions(result)
    if regions is not None:
        wanted = {r.id if isinstance(r, Region) else int(r) for r in regions}
        chosen = [r for r in chosen if r.id in wanted]
    ordered = _largest_first(chosen)
    # The tints, blended one region after another, make each pixel rgb * factor + add: computed at the masks' own
    # size and repeated to the drawn size, which is the same sum as blending repeated masks, for far less work.
    width_px, height_px = result.size
    factor = np.ones((height_px, width_px, 1), dtype=np.float32)
    add = np.zeros((height_px, width_px, 3), dtype=np.float32)
    for region in ordered:
        mask = np.asarray(region.mask, dtype=bool)
        colour = np.asarray(region_colour(region.id), dtype=np.float32)
        factor[mask] *= 1 - TINT_ALPHA
        add[mask] = (1 - TINT_ALPHA) * add[mask] + TINT_ALPHA * colour
    picture = result.image.convert("RGB")
    if scale > 1:
        picture = picture.resize((width_px * scale, height_px * scale), Image.LANCZOS)
        factor, add = (a.repeat(scale, 0).repeat(scale, 1) for a in (factor, add))
    rgb = np.asarray(picture, dtype=np.float32) * factor + add
    image = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    width = max(1, round(min(image.size) / 200))
    font = _label_font(image) if show_labels else None
    for region in ordered:
        colour = region_colour(region.id)
        x0, y0, x1, y1 = (float(v) * scale for v in region.box)
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=width)
        if font is not None:
            text = _caption_text(region)
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            tw, th = right - left, bottom - top
            ty = y0 - th - 2 * width if y0 - th - 2 * width >= 0 else y0  # above the box when there is room
            draw.rectangle([x0, ty, x0 + tw + 2 * width, ty + th + 2 * width], fill=colour)
            draw.text((x0 + width - left, ty + width - top), text, fill=(255, 255, 255), font=font)
    return image


def _label_font(image: Image.Image):
    from ..viz import _font

    return _font(max(10, round(min(image.size) / 30)))


def label_map(result: SegmaResult) -> np.ndarray:
    """(H, W) uint16: 0 background, k for the k-th region of ``shown_regions(result)`` (1-based).

    Larger regions are painted first, so where regions overlap the smaller one keeps its pixels.
    """
    _check_masks(result)
    regions = shown_regions(result)
    if len(regions) > np.iinfo(np.uint16).max:
        raise ConfigError(f"{len(regions)} regions do not fit a 16-bit label map (at most 65535).")
    width, height = result.size
    out = np.zeros((height, width), dtype=np.uint16)
    value = {id(r): k for k, r in enumerate(regions, start=1)}
    for region in _largest_first(regions):
        out[np.asarray(region.mask, dtype=bool)] = value[id(region)]
    return out


def label_json(result: SegmaResult) -> dict[str, Any]:
    """Grounded-SAM's ``label.json`` for ``label_map(result)``: background first, then one entry per value k."""
    entries: list[dict[str, Any]] = [{"value": 0, "label": "background"}]
    for k, region in enumerate(shown_regions(result), start=1):
        entries.append(
            {
                "value": k,
                "label": region.label,
                "logit": round(float(region.score), 4),
                "box": [float(v) for v in region.box],
            }
        )
    return {"caption": result.caption, "mask": entries}


# ---- per folder: COCO and the features table ----


def coco_document(entries: Iterable[tuple[str, SegmaResult]], *, include_pending: bool = True) -> dict[str, Any]:
    """A COCO instance-segmentation document of ``(file_name, result)`` pairs.

    Holds ``exported_regions`` of each image; categories are the class names found, sorted, ids from 1.
    Annotations carry COCO's fields (RLE segmentation, area, xywh bbox, iscrowd 0) plus ``score``, ``source``,
    ``region_id`` and ``status``.
    """
    entries = list(entries)
    names = sorted(
        {r.label for _, result in entries for r in exported_regions(result, include_pending=include_pending)}
    )
    category_id = {name: i for i, name in enumerate(names, start=1)}
    images, annotations = [], []
    for image_id, (file_name, result) in enumerate(entries, start=1):
        _check_masks(result)
        width, height = result.size
        images.append({"id": image_id, "file_name": str(file_name), "width": width, "height": height})
        for region in exported_regions(result, include_pending=include_pending):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id[region.label],
                    "segmentation": mask_to_rle(region.mask),
                    "area": float(region.area),
                    "bbox": region.bbox_xywh,
                    "iscrowd": 0,
                    "score": float(region.score),
                    "source": region.source,
                    "region_id": int(region.id),
                    "status": region.status,
                }
            )
    return {
        "info": {"description": PIPELINE_DESCRIPTION, "contributor": "hubkit", "version": _hubkit_version()},
        "licenses": [],
        "images": images,
        "categories": [{"id": i, "name": name, "supercategory": "object"} for name, i in category_id.items()],
        "annotations": annotations,
    }


def features_table(entries: Iterable[tuple[str, SegmaResult]]) -> list[dict[str, Any]]:
    """One row per region (rejected ones included, with their status): ``TABLE_COLUMNS`` then the 61 features
    named by ``FEATURE_NAMES``; a region without features gets empty cells."""
    names = FEATURE_NAMES
    rows = []
    for file_name, result in entries:
        for region in result.regions:
            row: dict[str, Any] = {
                "image": str(file_name),
                "region_id": int(region.id),
                "label": region.label,
                "score": float(region.score),
                "source": region.source,
                "area": region.area,
                "status": region.status,
            }
            values = _features(region, f"{file_name} region {region.id}")
            row.update(zip(names, [""] * len(names) if values is None else values.tolist(), strict=True))
            rows.append(row)
    return rows


def write_features_csv(entries: Iterable[tuple[str, SegmaResult]], path: str | Path) -> Path:
    """``features_table`` as CSV (header always written, even with no region)."""
    rows = features_table(entries)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[*TABLE_COLUMNS, *FEATURE_NAMES], lineterminator="\n")
    writer.writeheader()
    names = set(FEATURE_NAMES)
    # Features as float32's shortest repr ("0.14285715", not the float64 "0.1428571492433548").
    writer.writerows({k: str(np.float32(v)) if k in names and v != "" else v for k, v in row.items()} for row in rows)
    return _atomic_write(Path(path), text.getvalue().encode("utf-8"))


def write_folder_outputs(out_dir: str | Path, entries: Iterable[tuple[str, SegmaResult]]) -> dict[str, Path]:
    """The folder-level files: ``coco.json`` and ``features.csv``; returns their paths."""
    entries = list(entries)
    out_dir = Path(out_dir)
    coco = _write_json(out_dir / "coco.json", coco_document(entries))
    return {"coco": coco, "features": write_features_csv(entries, out_dir / "features.csv")}


# ---- the per-image record ----


def save_result(result: SegmaResult, out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write ``{stem}.overlay.png``, ``{stem}.labels.png``, ``{stem}.label.json`` and ``{stem}.regions.json``
    into ``out_dir``; returns ``{"overlay", "labels", "label_json", "regions"}`` -> path."""
    if not stem or Path(stem).name != stem:
        raise ConfigError(f"stem={stem!r} must be a plain file name stem (no folder); e.g. the image's name.")
    out_dir = Path(out_dir)
    paths = {
        "overlay": _atomic_write(out_dir / f"{stem}.overlay.png", _png(overlay(result))),
        "labels": _atomic_write(out_dir / f"{stem}.labels.png", _png(Image.fromarray(label_map(result)))),
        "label_json": _write_json(out_dir / f"{stem}.label.json", label_json(result), indent=2),
        "regions": _write_json(out_dir / f"{stem}.regions.json", result_record(result)),
    }
    return paths


def result_record(result: SegmaResult) -> dict[str, Any]:
    """The JSON-ready ``regions.json`` content of a result (``load_result`` reads it back)."""
    _check_masks(result)
    width, height = result.size
    regions = []
    for region in result.regions:
        values = _features(region, f"region {region.id}")
        regions.append(
            {
                "id": int(region.id),
                "label": region.label,
                "score": float(region.score),
                "source": region.source,
                "status": region.status,
                "box": [float(v) for v in region.box],
                "area": region.area,
                "mask": mask_to_rle(region.mask),
                "features": None if values is None else values.tolist(),
            }
        )
    return {
        "format": REGIONS_FORMAT,
        "version": REGIONS_VERSION,
        "image": {"width": width, "height": height},
        "caption": result.caption,
        "classes": list(result.classes),
        "classes_source": result.classes_source,
        "llm_answer": result.llm_answer,
        "preset": result.preset,
        "domain": result.domain,
        "models": dict(result.models),
        "timings": {k: float(v) for k, v in result.timings.items()},
        "skipped": list(result.skipped),
        "regions": regions,
    }


def load_result(path: str | Path, image) -> SegmaResult:
    """Read a ``regions.json`` back into a SegmaResult for ``image`` (a path or PIL image of the same size).

    Masks come back bit-identical and features as float32. A file that does not parse, or lacks what a
    regions.json holds, raises ConfigError naming it.
    """
    from ..tasks import to_pil

    path = Path(path)
    image = image if isinstance(image, Image.Image) else to_pil(image)
    try:
        record = json.loads(path.read_bytes())
        result = _from_record(record, image)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:  # JSONDecodeError is a ValueError
        raise ConfigError(
            f"{path} is not a readable Segma regions.json ({type(err).__name__}: {err}); it may be cut short by a "
            "killed run: delete it and label the image again."
        ) from None
    return result


def _from_record(record: dict[str, Any], image: Image.Image) -> SegmaResult:
    if not isinstance(record, dict) or record.get("format") != REGIONS_FORMAT:
        raise ConfigError(f"not a Segma regions.json (its 'format' is not {REGIONS_FORMAT!r})")
    if int(record["version"]) > REGIONS_VERSION:
        raise ConfigError(f"written by a newer hubkit (version {record['version']}); upgrade hubkit to read it")
    size = (int(record["image"]["width"]), int(record["image"]["height"]))
    if image.size != size:
        raise ConfigError(
            f"recorded for a {size[0]}x{size[1]} image, but the image given is {image.width}x{image.height}"
        )
    regions = []
    for item in record["regions"]:
        mask = rle_to_mask(item["mask"])
        if mask.shape != (size[1], size[0]) or int(mask.sum()) != int(item["area"]):
            raise ConfigError(f"region {item['id']}: its mask does not match the recorded size or area")
        if item["status"] not in STATUSES:
            raise ConfigError(f"region {item['id']}: status {item['status']!r} is not one of {', '.join(STATUSES)}")
        features = item["features"]
        regions.append(
            Region(
                id=int(item["id"]),
                mask=mask,
                box=tuple(float(v) for v in item["box"]),
                label=str(item["label"]),
                score=float(item["score"]),
                source=item["source"],
                features=None if features is None else np.asarray(features, dtype=np.float32),
                status=item["status"],
            )
        )
    return SegmaResult(
        image=image,
        regions=regions,
        caption=str(record["caption"]),
        classes=[str(c) for c in record["classes"]],
        classes_source=record["classes_source"],
        llm_answer=str(record["llm_answer"]),
        preset=str(record["preset"]),
        domain=record["domain"],
        models={str(k): str(v) for k, v in record["models"].items()},
        timings={str(k): float(v) for k, v in record["timings"].items()},
        skipped=[str(s) for s in record["skipped"]],
    )


# ---- helpers ----


def _features(region: Region, where: str) -> np.ndarray | None:
    if region.features is None:
        return None
    values = np.asarray(region.features, dtype=np.float32).reshape(-1)
    if values.size != N_FEATURES:
        raise ConfigError(f"{where}: features must hold {N_FEATURES} values, got {values.size}")
    return values


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_json(path: Path, data: Any, *, indent: int | None = None) -> Path:
    text = json.dumps(data, ensure_ascii=False, indent=indent, separators=None if indent else (",", ":"))
    return _atomic_write(path, (text + "\n").encode("utf-8"))


def _atomic_write(path: Path, data: bytes) -> Path:
    """Write to a temp file in the same folder, then os.replace: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _hubkit_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("hubkit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
