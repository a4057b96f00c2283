"""Clean an image classification set: drop what cannot train, report near duplicates, resize copies.

    report = clean_dataset("PlantVillage/", min_size=256, target_size=512, resize="pad", output_dir="clean/")
    report.kept, report.dropped_per_reason, report.near_duplicates

The source is a class-per-folder tree (`<data_dir>/<class>/**/<image>`) or a manifest (CSV with a header, or
JSONL) with a path and a label per image (paths relative to the manifest's folder, or absolute). Each file is read
once and dropped, in this order, when it is:

- ``unreadable``: not an image PIL can identify (or not readable at all), ``missing`` (a manifest path that does not
  exist), ``no_class`` (a file at the top of the tree, outside any class folder);
- ``truncated``: identified, but ``verify()`` or a full decode fails (cut files, bad chunks);
- ``too_small``: its shorter side is under ``min_size``;
- ``duplicate``: the same bytes (SHA-256) as an image kept before it in path order: the first one is kept.

Near duplicates (perceptual hash — a 64-bit DCT pHash — within ``near_duplicate_distance`` bits) are reported in
pairs, never dropped: a person decides. With ``output_dir`` the kept images are written there resized to
``target_size`` x ``target_size``, keeping their aspect: ``resize="pad"`` (the default) letterboxes the whole image
onto a black square, ``"crop"`` scales the shorter side to ``target_size`` and cuts the centre square, ``"none"``
copies the files unchanged. Without ``output_dir`` nothing is written but the lists: the originals are listed in
place, not resized.

``dataset_clean.jsonl`` holds one line per kept image: path (relative to the output folder, or to the data folder
when nothing was copied; posix), label, width, height, sha256 (of the listed file), phash (16 hex digits); and
``source`` (the original path) when the file is a copy. ``clean_report.json`` beside it holds the counts per class
and per reason, each dropped file with its reason and the near-duplicate pairs. Every file is written to a temporary
name and renamed into place.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, DataError
from .texts import read_jsonl, write_jsonl_atomic, write_text_atomic

logger = logging.getLogger(__name__)

RESIZE_MODES = ("pad", "crop", "none")
DROP_REASONS = ("unreadable", "missing", "no_class", "truncated", "too_small", "duplicate")
PATH_COLUMNS = ("path", "file_name", "filename", "filepath", "file", "image", "image_path")
LABEL_COLUMNS = ("label", "class", "classe", "class_name", "category")
CLEAN_FILE, REPORT_FILE = "dataset_clean.jsonl", "clean_report.json"


@dataclass
class CleanReport:
    output_file: Path
    report_file: Path
    root: Path  # the folder the listed paths are relative to
    source_root: Path  # the folder the dropped and near-duplicate paths are relative to
    resized: bool  # True: the listed files are copies in output_dir at target_size (unless resize == "none")
    resize: str
    min_size: int
    target_size: int
    near_duplicate_distance: int
    total: int
    kept: int
    per_class: dict[str, int]  # kept images per class
    dropped_per_reason: dict[str, int]
    dropped: list[dict] = field(default_factory=list)  # {"path", "label", "reason", "detail"}
    near_duplicates: list[dict] = field(default_factory=list)  # {"a", "b", "label_a", "label_b", "distance"}

    def to_json(self) -> dict:
        data = asdict(self)
        for key in ("output_file", "report_file", "root", "source_root"):
            data[key] = str(data[key])
        data["paths_relative_to"] = data.pop("root")  # the listed (kept) images
        data["source_paths_relative_to"] = data.pop("source_root")  # dropped files, near-duplicate pairs
        return data

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in self.dropped_per_reason.items() if v) or "none"
        return (
            f"{self.kept} of {self.total} images kept in {len(self.per_class)} classes; dropped: {reasons}; "
            f"{len(self.near_duplicates)} near-duplicate pair(s) reported"
        )


@dataclass(frozen=True)
class _Item:
    file: Path  # on disk
    rel: str  # posix, relative to the source root (the output path too)
    label: str | None


def clean_dataset(
    source: str | Path,
    *,
    min_size: int = 256,
    target_size: int = 512,
    resize: str = "pad",
    output_dir: str | Path | None = None,
    output_file: str | Path | None = None,
    near_duplicate_distance: int = 6,
) -> CleanReport:
    """Clean a class-per-folder tree or a manifest (see the module docstring); returns the report, which is also
    written as `clean_report.json` beside `output_file` (default: `dataset_clean.jsonl` in `output_dir`, else in
    the data folder)."""
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize={resize!r}: use 'pad' (letterbox to a square), 'crop' (centre crop) or 'none'.")
    for name, value in (("min_size", min_size), ("target_size", target_size)):
        if type(value) is not int or value < 1:
            raise ConfigError(f"{name}={value!r} must be a positive number of pixels.")
    if not 0 <= near_duplicate_distance <= 64:
        raise ConfigError(f"near_duplicate_distance={near_duplicate_distance!r}: give 0 to 64 bits (pHash is 64 bits).")
    root, items, dropped = _scan(Path(source))
    out_root = Path(output_dir) if output_dir is not None else None
    if out_root is not None and out_root.resolve() == root.resolve():
        raise ConfigError(f"output_dir {str(out_root)!r} is the data folder; give another folder, originals are kept.")
    output_file = Path(output_file) if output_file is not None else (out_root or root) / CLEAN_FILE

    kept_rows: list[dict] = []
    seen: dict[str, str] = {}  # sha256 -> rel of the kept image
    hashes: list[int] = []
    for item in sorted(items, key=lambda i: i.rel):
        row, reason, detail = _check(item, min_size, seen)
        if reason:
            dropped.append({"path": item.rel, "label": item.label, "reason": reason, "detail": detail})
            continue
        image, data = row.pop("_image"), row.pop("_bytes")
        seen[row["sha256"]] = item.rel
        if out_root is not None:
            row.update(_write_copy(image, data, item, out_root, resize, target_size))
        hashes.append(phash(image))
        row["phash"] = f"{hashes[-1]:016x}"
        kept_rows.append(row)

    pairs = near_duplicate_pairs(np.array(hashes, dtype=np.uint64), near_duplicate_distance)
    near = [
        {
            "a": kept_rows[i].get("source", kept_rows[i]["path"]),
            "b": kept_rows[j].get("source", kept_rows[j]["path"]),
            "label_a": kept_rows[i]["label"],
            "label_b": kept_rows[j]["label"],
            "distance": d,
        }
        for i, j, d in pairs
    ]
    write_jsonl_atomic(output_file, kept_rows)
    dropped.sort(key=lambda d: d["path"])
    report = CleanReport(
        output_file=output_file,
        report_file=output_file.parent / REPORT_FILE,
        root=out_root or root,
        source_root=root,
        resized=out_root is not None and resize != "none",
        resize=resize,
        min_size=min_size,
        target_size=target_size,
        near_duplicate_distance=near_duplicate_distance,
        total=len(items) + sum(1 for d in dropped if d["reason"] in ("no_class", "missing")),
        kept=len(kept_rows),
        per_class=dict(sorted(Counter(r["label"] for r in kept_rows).items())),
        dropped_per_reason={r: sum(1 for d in dropped if d["reason"] == r) for r in DROP_REASONS},
        dropped=dropped,
        near_duplicates=near,
    )
    write_text_atomic(report.report_file, json.dumps(report.to_json(), ensure_ascii=False, indent=1) + "\n")
    logger.info("hubkit clean: %s", report.summary())
    if not kept_rows:
        raise DataError(
            f"No image of {str(source)!r} survived cleaning ({report.summary()}); see {report.report_file} "
            "for each file's reason, or lower --min-size."
        )
    return report


# -- scanning ---------------------------------------------------------------------------------------------------


def _scan(source: Path) -> tuple[Path, list[_Item], list[dict]]:
    """(root the paths are relative to, items to check, files dropped before reading)."""
    if not source.exists():
        raise DataError(
            f"{str(source)!r} does not exist; give a class-per-folder image tree or a CSV / JSONL manifest."
        )
    if source.is_file():
        return _scan_manifest(source)
    items, dropped = [], []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue  # folders, hidden files (.DS_Store), our own temporary files
        if len(rel.parts) == 1:
            if path.name not in (CLEAN_FILE, REPORT_FILE):
                dropped.append(
                    {"path": rel.as_posix(), "label": None, "reason": "no_class", "detail": "not inside a class folder"}
                )
            continue
        items.append(_Item(path, rel.as_posix(), rel.parts[0]))
    if not items:
        raise DataError(
            f"{str(source)!r} holds no class folder with files; lay it out as <class>/<image>, one folder per class."
        )
    return source, items, dropped


def _scan_manifest(manifest: Path) -> tuple[Path, list[_Item], list[dict]]:
    root = manifest.parent
    if manifest.suffix.lower() == ".csv":
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    elif manifest.suffix.lower() in (".jsonl", ".json"):
        rows = read_jsonl(manifest, required=(), empty_hint="list one image per line")
        columns = sorted({k for row in rows for k in row})
    else:
        raise DataError(f"{str(manifest)!r} is neither a folder nor a .csv / .jsonl manifest.")
    path_col = next((c for c in PATH_COLUMNS if c in columns), None)
    label_col = next((c for c in LABEL_COLUMNS if c in columns), None)
    if path_col is None or label_col is None:
        wanted = [n for n, c in (("path", path_col), ("label", label_col)) if c is None]
        raise DataError(
            f"Manifest {str(manifest)!r} has no {' / '.join(wanted)} column (columns: "
            f"{', '.join(columns) or 'none'}); name them 'path' and 'label'."
        )
    items, dropped, used = [], [], set()
    for number, row in enumerate(rows, 2 if manifest.suffix.lower() == ".csv" else 1):
        raw, label = str(row.get(path_col) or "").strip(), str(row.get(label_col) or "").strip()
        if not raw or not label:
            raise DataError(
                f"{manifest}, row {number}: empty {path_col if not raw else label_col!r}; fill it or remove the row."
            )
        path = Path(raw) if Path(raw).is_absolute() else root / raw
        pure = PurePosixPath(raw.replace("\\", "/"))
        rel = pure.as_posix() if not pure.is_absolute() and ".." not in pure.parts else f"{label}/{pure.name}"
        while rel in used:  # two absolute paths with one name: keep both
            rel = str(PurePosixPath(rel).with_stem(PurePosixPath(rel).stem + "_"))
        used.add(rel)
        if not path.is_file():
            dropped.append({"path": rel, "label": label, "reason": "missing", "detail": f"{path} does not exist"})
            continue
        items.append(_Item(path, rel, label))
    if not items and not dropped:
        raise DataError(f"Manifest {str(manifest)!r} lists no image.")
    return root, items, dropped


# -- checking one file -----------------------------------------------------------------------------------------


def _check(item: _Item, min_size: int, seen: dict[str, str]) -> tuple[dict, str | None, str]:
    """(row, None, "") for a kept image, else ({}, reason, detail)."""
    try:
        data = item.file.read_bytes()
    except OSError as err:
        return {}, "unreadable", f"cannot read: {err.strerror or err}"
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # structure and checksums, without decoding
    except UnidentifiedImageError:
        return {}, "unreadable", "not an image file PIL can identify"
    except Image.DecompressionBombError as err:
        return {}, "unreadable", str(err)
    except Exception as err:  # noqa: BLE001 (PIL raises OSError, SyntaxError, struct.error, ... on corrupt files)
        return {}, "truncated", f"{type(err).__name__}: {err}"
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # a full decode: catches files cut in the pixel data
        image = ImageOps.exif_transpose(image)
    except Exception as err:  # noqa: BLE001
        return {}, "truncated", f"{type(err).__name__}: {err}"
    width, height = image.size
    if min(width, height) < min_size:
        return {}, "too_small", f"{width}x{height}, shorter side under min_size {min_size}"
    sha = hashlib.sha256(data).hexdigest()
    if sha in seen:
        return {}, "duplicate", f"same bytes as {seen[sha]}"
    row = {"path": item.rel, "label": item.label, "width": width, "height": height, "sha256": sha}
    return {**row, "_image": image, "_bytes": data}, None, ""


def _write_copy(image: Image.Image, data: bytes, item: _Item, out_root: Path, resize: str, size: int) -> dict:
    """Write the kept image under out_root (resized unless resize == "none"); the row fields that change."""
    target = out_root / item.rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if resize == "none":
            tmp.write_bytes(data)
            width, height, sha = image.width, image.height, hashlib.sha256(data).hexdigest()
        else:
            out = resize_image(image, size, resize)
            fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(target.suffix.lower())
            if fmt is None and target.suffix.lower() not in (".png", ".webp", ".bmp", ".tif", ".tiff"):
                # an odd extension (.gif): write PNG under "<name>.gif.png", which no kept "<name>.png" can be
                target = target.with_name(target.name + ".png")
                tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            buffer = io.BytesIO()
            out.save(
                buffer,
                format=fmt or Image.registered_extensions().get(target.suffix.lower(), "PNG"),
                **({"quality": 95} if fmt == "JPEG" else {}),
            )
            tmp.write_bytes(buffer.getvalue())
            width, height, sha = out.width, out.height, hashlib.sha256(buffer.getvalue()).hexdigest()
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "path": target.relative_to(out_root).as_posix(),
        "width": width,
        "height": height,
        "sha256": sha,
        "source": item.rel,
    }


def resize_image(image: Image.Image, size: int, mode: str = "pad") -> Image.Image:
    """A `size` x `size` RGB copy keeping the aspect ratio: "pad" fits the whole image and letterboxes it on black,
    "crop" fills the square and cuts the centre."""
    image = image.convert("RGB")
    if mode == "pad":
        return ImageOps.pad(image, (size, size), method=Image.BICUBIC, color=(0, 0, 0))
    if mode == "crop":
        return ImageOps.fit(image, (size, size), method=Image.BICUBIC)
    raise ConfigError(f"resize={mode!r}: use 'pad' or 'crop' to make squares.")


# -- perceptual hash -------------------------------------------------------------------------------------------


def phash(image: Image.Image, hash_size: int = 8) -> int:
    """64-bit DCT perceptual hash (pHash): the sign of the low-frequency DCT coefficients of a 32 x 32 grey copy
    against their median. Near-identical pictures (re-encoded, resized, slightly brightened) differ by a few bits."""
    from scipy.fft import dctn

    grey = np.asarray(image.convert("L").resize((hash_size * 4, hash_size * 4), Image.LANCZOS), np.float64)
    low = dctn(grey, type=2, norm="ortho")[:hash_size, :hash_size].ravel()
    bits = low > np.median(low[1:])  # the DC term (overall brightness) left out of the median
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: int, b: int) -> int:
    return (int(a) ^ int(b)).bit_count()


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int, *, chunk: int = 256) -> list[tuple[int, int, int]]:
    """(i, j, distance) for i < j with Hamming distance <= max_distance, in chunks of rows (memory: chunk x n)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    pairs = []
    for start in range(0, len(hashes), chunk):
        block = hashes[start : start + chunk]
        dist = np.bitwise_count(block[:, None] ^ hashes[None, :])
        rows, cols = np.nonzero(dist <= max_distance)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if start + r < c:
                pairs.append((start + r, c, int(dist[r, c])))
    return pairs
