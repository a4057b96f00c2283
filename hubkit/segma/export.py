"""Export Segma results as a Hub data set (ImageFolder + ``metadata.jsonl`` + ``coco.json`` + card) and push it.

Layout of ``out_dir`` (``export_dataset``)::

    README.md        dataset card: task categories, classes with counts, models, adapters, preset, review
    metadata.jsonl   one line per image: {"file_name", "caption", "objects": {"bbox", "categories", "segmentation"}}
    coco.json        the same regions in COCO (category ids as listed in the card)
    <file names>     the images

``objects.bbox`` is COCO xywh in pixels, ``objects.categories`` holds class *names* and ``objects.segmentation``
COCO RLE dicts (``pycocotools.mask.decode`` reads them). Names, not ids: ``load_dataset("imagefolder",
data_dir=...)`` never reads the card, so ids declared there as a ``ClassLabel`` would reach users as bare
integers; names read the same everywhere, and coco.json carries the ids.

    from datasets import load_dataset
    ds = load_dataset("imagefolder", data_dir="out/labels")   # or load_dataset("me/labels") once pushed
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from PIL import Image

from ..errors import ConfigError, DataError
from ..hub import push, sha256_file
from .outputs import PIPELINE_DESCRIPTION, coco_document, exported_regions, mask_to_rle, shown_regions
from .regions import SegmaResult

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF"}
IMAGE_EXTENSIONS[".tiff"] = "TIFF"
TASK_CATEGORIES = ("object-detection", "image-segmentation")
EXPORT_FILES = ("README.md", "metadata.jsonl", "coco.json")


def export_dataset(
    entries: Iterable[tuple[str | Path | Image.Image, str, SegmaResult]],
    out_dir: str | Path,
    *,
    reviewed: bool,
    models: Mapping[str, str] | None = None,
    adapters: Mapping[str, str] | None = None,
    preset: str | None = None,
    name: str | None = None,
    include_pending: bool = True,
    license: str = "unknown",
) -> Path:
    """Write ``(image, file_name, result)`` entries as a Hub ImageFolder data set in ``out_dir``; returns it.

    ``image`` is a path (copied when its format matches ``file_name``'s extension, converted otherwise) or a PIL
    image (saved in the format of ``file_name``'s extension). Exported regions are the labelled, non-rejected
    ones (``exported_regions``); pending ones too unless ``include_pending=False``. ``reviewed`` says whether a
    person reviewed the labels; it goes on the card with ``models`` (stage -> model id; default: what the
    results recorded), ``adapters`` (stage -> adapter; default: the "+adapter" part of the recorded models),
    ``preset`` and ``license``. ``out_dir`` must not exist or be empty; the folder appears complete or not at
    all. Refuses an export with no region left (DataError).
    """
    items = _checked_entries(entries)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir} already exists and is not an empty folder; export to a new folder, or delete it.")
    kept = [exported_regions(result, include_pending=include_pending) for _, _, result in items]
    if not any(kept):
        raise DataError(_empty_reason(items, include_pending))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex}.tmp"
    work.mkdir()
    try:
        _write_images(items, work)
        with open(work / "metadata.jsonl", "w", encoding="utf-8") as fh:
            for (_, file_name, result), regions in zip(items, kept, strict=True):
                fh.write(json.dumps(_metadata_line(file_name, result, regions), ensure_ascii=False) + "\n")
        coco = coco_document([(f, r) for _, f, r in items], include_pending=include_pending)
        (work / "coco.json").write_text(json.dumps(coco, ensure_ascii=False, separators=(",", ":")) + "\n")
        card = _card(
            items,
            coco,
            work,
            reviewed=reviewed,
            models=models,
            adapters=adapters,
            preset=preset,
            name=name,
            include_pending=include_pending,
            license=license,
        )
        (work / "README.md").write_text(card, encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); os.replace moves a folder onto a missing path
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("exported %d images, %d regions to %s", len(items), len(coco["annotations"]), out_dir)
    return out_dir


def push_dataset(out_dir: str | Path, repo_id: str, *, hub=None, message: str | None = None):
    """Push an ``export_dataset`` folder as a data set repo (``repo_type="dataset"``); returns the RevisionInfo."""
    out_dir = Path(out_dir)
    missing = [f for f in EXPORT_FILES if not (out_dir / f).is_file()]
    if missing:
        raise ConfigError(
            f"{out_dir} is not a Segma export (no {', '.join(missing)}); make one with export_dataset first."
        )
    if message is None:
        with open(out_dir / "metadata.jsonl", encoding="utf-8") as fh:
            n_images = sum(1 for line in fh if line.strip())
        message = f"Segma Vision data set: {n_images} images"
    return push(out_dir, repo_id, hub=hub, repo_type="dataset", message=message)


# ---- pieces ----


def _checked_entries(entries) -> list[tuple[str | Path | Image.Image, str, SegmaResult]]:
    items, seen = [], set()
    for entry in entries:
        try:
            source, file_name, result = entry
        except (TypeError, ValueError):
            raise ConfigError(f"Each entry is (image, file_name, SegmaResult); got {entry!r:.80}") from None
        file_name = _checked_name(file_name)
        if file_name.lower() in seen:
            raise ConfigError(f"file_name {file_name!r} is used twice; give every image its own file name.")
        seen.add(file_name.lower())
        if not isinstance(result, SegmaResult):
            raise ConfigError(f"{file_name}: expected a SegmaResult, got {type(result).__name__}")
        items.append((source, file_name, result))
    if not items:
        raise DataError("Nothing to export: no image was given.")
    return items


def _checked_name(file_name) -> str:
    text = str(file_name).replace("\\", "/")
    path = PurePosixPath(text)
    if not text or path.is_absolute() or ".." in path.parts or text != path.as_posix():
        raise ConfigError(f"file_name {file_name!r} must be a relative path inside the data set, like 'img_001.png'.")
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ConfigError(
            f"file_name {file_name!r} needs an image extension ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "the data set stores the image under that name."
        )
    return text


def _empty_reason(items, include_pending: bool) -> str:
    statuses = Counter(r.status for _, _, result in items for r in result.regions)
    unlabelled = sum(len(shown_regions(res)) - len(res.labelled()) for _, _, res in items)
    parts = [f"{n} {status}" for status, n in sorted(statuses.items())]
    held = ", ".join(parts) if parts else "no regions at all"
    hint = " (pending ones are left out: include_pending=False)" if not include_pending and statuses["pending"] else ""
    extra = f"; {unlabelled} have no class label" if unlabelled else ""
    return (
        f"Nothing to export: no labelled region is left in {len(items)} images ({held}{extra}){hint}. "
        "Accept or label regions in review, or label more images."
    )


def _write_images(items, folder: Path) -> None:
    from ..tasks import to_pil

    for source, file_name, result in items:
        target = folder / file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        fmt = IMAGE_EXTENSIONS[target.suffix.lower()]
        if isinstance(source, Image.Image):
            image = source
        else:
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"{file_name}: image source {str(path)!r} is not a file.")
            if IMAGE_EXTENSIONS.get(path.suffix.lower()) == fmt:
                try:
                    with Image.open(path) as img:
                        size = img.size
                except (OSError, Image.DecompressionBombError) as err:
                    raise ConfigError(
                        f"{file_name}: image source {str(path)!r} is not a readable image ({err})"
                    ) from None
                _check_size(file_name, size, result)
                shutil.copyfile(path, target)
                continue
            image = to_pil(path, name=file_name)
        _check_size(file_name, image.size, result)
        if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("RGB")
        image.save(target, format=fmt)


def _check_size(file_name: str, size: tuple[int, int], result: SegmaResult) -> None:
    if tuple(size) != tuple(result.size):
        raise ConfigError(
            f"{file_name}: the image is {size[0]}x{size[1]} but its result's masks are for "
            f"{result.size[0]}x{result.size[1]}; pass the image the result was made from."
        )


def _metadata_line(file_name: str, result: SegmaResult, regions) -> dict:
    return {
        "file_name": file_name,
        "caption": result.caption,
        "objects": {
            "bbox": [r.bbox_xywh for r in regions],
            "categories": [r.label for r in regions],
            "segmentation": [mask_to_rle(r.mask) for r in regions],
        },
    }


def _merged_models(items) -> dict[str, str]:
    seen: dict[str, list[str]] = {}
    for _, _, result in items:
        for stage, model in result.models.items():
            if model not in seen.setdefault(stage, []):
                seen[stage].append(model)
    return {stage: ", ".join(models) for stage, models in seen.items()}


def _count(n: int, what: str, plural: str | None = None) -> str:
    return f"{n:,} {what if n == 1 else plural or what + 's'}"


def _content_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "README.md"):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _card(items, coco, folder: Path, *, reviewed, models, adapters, preset, name, include_pending, license) -> str:
    from ..cards import dataset_card

    models = dict(models) if models is not None else _merged_models(items)
    if adapters is None:
        adapters = {stage: m.split("+", 1)[1] for stage, m in models.items() if "+" in m}
    presets = [preset] if preset else sorted({result.preset for _, _, result in items})
    per_class = Counter(a["category_id"] for a in coco["annotations"])
    images_per_class = Counter((a["category_id"], a["image_id"]) for a in coco["annotations"])
    statuses = Counter(a["status"] for a in coco["annotations"])
    rejected = sum(1 for _, _, res in items for r in res.regions if r.status == "rejected")
    left_pending = (
        0 if include_pending else sum(1 for _, _, res in items for r in res.labelled() if r.status == "pending")
    )
    n_images, n_regions = len(items), len(coco["annotations"])

    lines = [f"Images labelled by {PIPELINE_DESCRIPTION}.", ""]
    n_classes = len(coco["categories"])
    lines += [
        f"{_count(n_images, 'image')}, {_count(n_regions, 'region')} in {_count(n_classes, 'class', 'classes')}.",
        "",
    ]
    lines += ["## Classes", "", "| id | class | regions | images |", "|---:|---|---:|---:|"]
    for cat in coco["categories"]:
        n_img = sum(1 for (cid, _) in images_per_class if cid == cat["id"])
        lines.append(f"| {cat['id']} | {cat['name']} | {per_class[cat['id']]:,} | {n_img:,} |")
    lines += ["", "## How it was made", ""]
    if reviewed:
        review = f"yes: {_count(statuses['accepted'], 'region')} accepted by a person"
        if statuses["pending"]:
            review += f", {statuses['pending']:,} not reviewed (kept as the models labelled them)"
    else:
        review = "no: labels are the models' output, not checked by a person; check them before training on them"
    lines.append(f"- Reviewed by a person: {review}.")
    left_out = [_count(rejected, "rejected region")] + (
        [_count(left_pending, "pending region")] if left_pending else []
    )
    lines.append(f"- Left out: {', '.join(left_out)}.")
    lines.append(f"- Preset: {', '.join(presets) or 'not recorded'}.")
    lines += ["- Models:"] + ([f"  - {stage}: `{m}`" for stage, m in models.items()] or ["  - not recorded"])
    lines += ["- Adapters:"] + ([f"  - {stage}: `{a}`" for stage, a in adapters.items()] or ["  - none"])
    lines += [
        "",
        "## Format",
        "",
        "ImageFolder with `metadata.jsonl`: `objects.bbox` holds COCO `[x, y, width, height]` boxes in pixels,",
        "`objects.categories` the class names, `objects.segmentation` COCO RLE masks (`{size: [h, w], counts}`).",
        "`coco.json` holds the same regions in COCO format, with the class ids above and each region's score,",
        "source model and review status.",
        "",
        "```python",
        "from datasets import load_dataset",
        "from pycocotools import mask as mask_utils",
        "",
        'ds = load_dataset("imagefolder", data_dir="path/to/this/folder")  # or load_dataset("<repo id>")',
        'objects = ds["train"][0]["objects"]',
        'masks = [mask_utils.decode(rle) for rle in objects["segmentation"]]  # (H, W) uint8 each',
        "```",
    ]
    card = dataset_card(
        pretty_name=name or "Segma Vision labels",
        license=license,
        task_categories=TASK_CATEGORIES,
        tags=["segma-vision", "hubkit", "coco", "human-reviewed" if reviewed else "auto-labelled"],
        description="\n".join(lines),
        num_samples=n_images,
        content_hash=_content_hash(folder),
        source="hubkit.segma.export_dataset",
    )
    # Tell the Hub (and load_dataset(repo or folder)) what the data is: without it, coco.json can outvote the
    # images when it infers the file type (one .json against one .png) and the data set loads as JSON.
    suffixes = sorted({Path(f).suffix for _, f, _ in items})
    paths = ["metadata.jsonl", *(f"**/*{s}" for s in suffixes)]
    card.data.configs = [{"config_name": "default", "data_files": [{"split": "train", "path": paths}]}]
    return str(card)
