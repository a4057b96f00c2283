"""Segmentation / detection data for the Segma recipes: the data sets the Segma Space and `hubkit segma export`
write (ImageFolder + metadata.jsonl + coco.json), plain COCO folders, and a synthetic "shapes on textures" set whose
boxes, masks and captions are known.

    data = read_detection_data("me/photo-labels")        # a dataset repo id (store / Hub) or a folder
    data.classes, data.samples[0].objects[0].label, data.samples[0].objects[0].mask()
    train, val = split_samples(data.samples, val_fraction=0.2, seed=0)
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .. import hub
from ..errors import DataError

logger = logging.getLogger(__name__)
COCO_NAMES = ("coco.json", "_annotations.coco.json", "annotations.json")  # Segma export, Roboflow, plain


@dataclass(frozen=True)
class SegmaObject:
    label: str
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels (COCO)
    rle: dict | None = field(default=None, repr=False)  # COCO RLE; None: box only
    polygons: tuple | None = field(default=None, repr=False)
    status: str | None = None  # Segma exports: "accepted" / "pending"; None for plain COCO

    @property
    def box_xyxy(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.bbox
        return (x, y, x + w, y + h)

    def mask(self, height: int, width: int) -> np.ndarray:
        """(H, W) bool: the RLE or polygons decoded, else the filled box."""
        from pycocotools import mask as mask_utils

        if self.rle is not None:
            rle = dict(self.rle)
            if isinstance(rle.get("counts"), list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(rle, height, width)
            return mask_utils.decode(rle).astype(bool)
        if self.polygons:
            rles = mask_utils.frPyObjects([list(p) for p in self.polygons], height, width)
            return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
        out = np.zeros((height, width), bool)
        x1, y1, x2, y2 = (int(round(v)) for v in self.box_xyxy)
        out[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = True
        return out


@dataclass(frozen=True)
class SegmaSample:
    image_path: Path
    width: int
    height: int
    objects: tuple[SegmaObject, ...]
    caption: str = ""

    def image(self) -> Image.Image:
        from ..tasks import to_pil

        return to_pil(str(self.image_path))


@dataclass(frozen=True)
class DetectionData:
    root: Path
    samples: list[SegmaSample]
    classes: list[str]  # sorted class names; a class's index is its label id in the recipes
    fingerprint: str  # content hash of the annotation file, for cards

    def summary(self) -> str:
        n = sum(len(s.objects) for s in self.samples)
        return f"{len(self.samples)} images, {n} objects, {len(self.classes)} classes ({', '.join(self.classes[:8])})"


def read_detection_data(source: str | Path, *, revision: str | None = None) -> DetectionData:
    """A Segma export or a COCO folder (`coco.json`, `_annotations.coco.json`, `annotations.json`, or
    `annotations/instances_*.json` beside the images), given as a folder or a dataset repo id."""
    root = hub.resolve(source, repo_type="dataset", **({"revision": revision} if revision else {}))
    coco_file = next((root / name for name in COCO_NAMES if (root / name).is_file()), None)
    if coco_file is None:
        found = sorted((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else []
        coco_file = found[0] if found else None
    if coco_file is None:
        raise DataError(
            f"{root} holds no COCO annotations: expected one of {', '.join(COCO_NAMES)} or "
            "annotations/instances_*.json (a `hubkit segma export` data set, or a COCO folder)"
        )
    try:
        coco = json.loads(coco_file.read_text())
        categories = {c["id"]: str(c["name"]) for c in coco["categories"]}
        images = {i["id"]: i for i in coco["images"]}
        annotations = coco.get("annotations", [])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{coco_file} is not COCO JSON ({type(err).__name__}: {err})") from None
    captions = _captions(root / "metadata.jsonl")
    per_image: dict[int, list[SegmaObject]] = {i: [] for i in images}
    for ann in annotations:
        if ann.get("image_id") not in per_image or ann.get("category_id") not in categories:
            raise DataError(f"{coco_file}: annotation {ann.get('id')} names an unknown image or category")
        seg = ann.get("segmentation")
        rle = seg if isinstance(seg, dict) else None
        polygons = tuple(tuple(p) for p in seg) if isinstance(seg, list) and seg else None
        per_image[ann["image_id"]].append(
            SegmaObject(
                categories[ann["category_id"]], tuple(float(v) for v in ann["bbox"]), rle, polygons, ann.get("status")
            )
        )
    samples = []
    for image_id, info in sorted(images.items()):
        path = _image_path(root, coco_file, info["file_name"])
        samples.append(
            SegmaSample(
                path, int(info["width"]), int(info["height"]), tuple(per_image[image_id]),
                captions.get(info["file_name"], ""),
            )
        )  # fmt: skip
    used = sorted({o.label for s in samples for o in s.objects})
    if not used:
        raise DataError(f"{coco_file} has no annotation: nothing to train on")
    return DetectionData(root, samples, used, hub.sha256_file(coco_file)[:16])


def split_samples(samples: Sequence, *, val_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded shuffle split; at least one sample on each side when there are two or more."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = list(samples)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * val_fraction)
    if val_fraction > 0 and len(order) >= 2:
        n_val = min(max(n_val, 1), len(order) - 1)
    return order[n_val:], order[:n_val]


def _captions(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            out[str(record["file_name"])] = str(record.get("caption") or "")
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path} line {number} is not a metadata record ({err})") from None
    return out


def _image_path(root: Path, coco_file: Path, file_name: str) -> Path:
    for folder in (coco_file.parent, root, root / "images", coco_file.parent.parent / "images"):
        candidate = (folder / file_name).resolve()
        if candidate.is_file() and candidate.is_relative_to(root.resolve()):
            return candidate
    raise DataError(f"{file_name} (listed in {coco_file.name}) is not in {root}")


# -- a learnable synthetic set --------------------------------------------------------------------------------
SHAPES = ("disc", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220), "yellow": (235, 210, 40)}
SHAPE_COLOUR = {"disc": "red", "square": "blue", "triangle": "yellow"}  # a class has one look: learnable


def make_shapes_dataset(root: str | Path, *, images: int = 12, size: int = 96, seed: int = 0) -> Path:
    """`images` pictures of 1-3 coloured shapes (disc / square / triangle) on scikit-image textures, written as a
    Segma export (ImageFolder + metadata.jsonl with captions + coco.json + card): every box, mask and caption known."""
    from skimage import data, draw
    from skimage.transform import resize

    from ..segma.export import export_dataset
    from ..segma.regions import Region, SegmaResult

    rng = np.random.default_rng(seed)
    textures = [data.brick(), data.grass(), data.gravel()]
    entries = []
    for index in range(images):
        texture = textures[index % len(textures)]
        y0, x0 = rng.integers(0, texture.shape[0] - size), rng.integers(0, texture.shape[1] - size)
        patch = texture[y0 : y0 + 2 * size, x0 : x0 + 2 * size]
        grey = (resize(patch, (size, size), anti_aliasing=True) * 255 if patch.dtype != np.uint8 else
                np.asarray(Image.fromarray(patch).resize((size, size))))  # fmt: skip
        canvas = np.repeat(np.asarray(grey, np.uint8)[..., None], 3, axis=2) // 2 + 40  # dim: shapes stand out
        regions, names = [], []
        occupied = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(1, 4))):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            radius = int(rng.integers(size // 8, size // 4))
            cy, cx = (int(v) for v in rng.integers(radius + 1, size - radius - 1, size=2))
            mask = np.zeros((size, size), bool)
            if shape == "disc":
                mask[draw.disk((cy, cx), radius, shape=mask.shape)] = True
            elif shape == "square":
                mask[cy - radius : cy + radius, cx - radius : cx + radius] = True
            else:
                rows = [cy - radius, cy + radius, cy + radius]
                cols = [cx, cx - radius, cx + radius]
                mask[draw.polygon(rows, cols, shape=mask.shape)] = True
            if (mask & occupied).any():
                continue  # keep shapes apart: one object per pixel
            occupied |= mask
            canvas[mask] = COLOURS[SHAPE_COLOUR[shape]]
            ys, xs = np.nonzero(mask)
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            regions.append(Region(len(regions) + 1, mask, box, shape, 1.0, "manual", status="accepted"))
            names.append(f"{SHAPE_COLOUR[shape]} {shape}")
        image = Image.fromarray(canvas)
        counted = Counter(names)
        words = [f"a {n}" if k == 1 else f"{('two', 'three')[k - 2]} {n}s" for n, k in counted.items()]
        caption = " and ".join(words) + f" on {('brick', 'grass', 'gravel')[index % 3]}"
        result = SegmaResult(image=image, regions=regions, caption=caption, classes=sorted({r.label for r in regions}))
        result.models["source"] = "hubkit.data.segma.make_shapes_dataset"
        entries.append((image, f"shape_{index:03d}.png", result))
    return export_dataset(entries, Path(root), reviewed=True, name="Synthetic shapes on textures", license="cc0-1.0")
