"""Export a Plantset multimodal data set as a Hub data set (ImageFolder + ``metadata.jsonl`` + card) and push it.

Layout of ``out_dir``::

    README.md          dataset card: task category image-classification, the classes with their counts
    classes.json       the sorted class list (a label's index there is its label_id in training)
    train/<class>/...  the images; train/metadata.jsonl: {"file_name", "label", "text", "description"} per image
    test/...           the same for the held-out images, when test_fraction > 0

``label`` is the class *name* (a string): ``load_dataset("imagefolder", data_dir=...)`` never reads the card, so
names read the same everywhere; classes.json gives the ids.

    from datasets import load_dataset
    ds = load_dataset("imagefolder", data_dir="out/plantset")   # or load_dataset("me/plantset") once pushed
    ds["train"][0]["label"], ds["train"][0]["text"]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import uuid
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

from ..errors import ConfigError, DataError
from ..hub import push, sha256_file
from .texts import PlantSample, read_jsonl, read_multimodal

logger = logging.getLogger(__name__)

TASK_CATEGORIES = ("image-classification",)
EXPORT_FILES = ("README.md", "classes.json", "train/metadata.jsonl")


def export_plant_dataset(
    multimodal_jsonl: str | Path,
    root_dir: str | Path,
    out_dir: str | Path,
    *,
    test_fraction: float = 0.0,
    seed: int = 0,
    name: str | None = None,
    license: str = "other",
) -> Path:
    """Write the samples of `multimodal_jsonl` (images under `root_dir`) as an ImageFolder data set in `out_dir`
    (which must not exist or be empty; it appears complete or not at all). `test_fraction` > 0 holds out that share
    of each class (at least one image of a class with two or more) as a `test` split."""
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction={test_fraction!r}: give a share in [0, 1), e.g. 0.2.")
    samples, classes = read_multimodal(multimodal_jsonl, root_dir)
    languages = sorted({str(row.get("language") or "") for row in read_jsonl(multimodal_jsonl)} - {""})
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir} already exists and is not an empty folder; export to a new folder, or delete it.")
    splits = _split(samples, test_fraction, seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex}.tmp"
    work.mkdir()
    try:
        for split, members in splits.items():
            _write_split(work / split, members, Path(root_dir))
        (work / "classes.json").write_text(json.dumps(classes, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        card = _card(splits, classes, work, name=name, license=license, languages=languages)
        (work / "README.md").write_text(card, encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above): os.replace moves a folder onto a missing path only
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("exported %s to %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()), out_dir)
    return out_dir


def push_plant_dataset(
    multimodal_jsonl: str | Path,
    root_dir: str | Path,
    repo_id: str,
    *,
    hub=None,
    message: str | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
    name: str | None = None,
    license: str = "other",
):
    """Export (see `export_plant_dataset`) into a temporary folder and push it as a data set repo
    (``repo_type="dataset"``) through `hubkit.hub`; returns the RevisionInfo."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hubkit-plant-export-") as tmp:
        out = export_plant_dataset(
            multimodal_jsonl,
            root_dir,
            Path(tmp) / "dataset",
            test_fraction=test_fraction,
            seed=seed,
            name=name,
            license=license,
        )
        return push_exported(out, repo_id, hub=hub, message=message)


def push_exported(out_dir: str | Path, repo_id: str, *, hub=None, message: str | None = None):
    """Push a folder `export_plant_dataset` wrote as a data set repo; returns the RevisionInfo."""
    out_dir = Path(out_dir)
    missing = [f for f in EXPORT_FILES if not (out_dir / f).is_file()]
    if missing:
        raise ConfigError(
            f"{out_dir} is not a Plantset export (no {', '.join(missing)}); make one with export_plant_dataset first."
        )
    if message is None:
        n = sum(
            sum(1 for line in p.read_text(encoding="utf-8").splitlines() if line.strip())
            for p in out_dir.glob("*/metadata.jsonl")
        )
        message = f"Plantset data set: {n} images"
    return push(out_dir, repo_id, hub=hub, repo_type="dataset", message=message)


# ---- pieces ----


def _split(samples: list[PlantSample], test_fraction: float, seed: int) -> dict[str, list[PlantSample]]:
    if not samples:
        raise DataError("Nothing to export: the multimodal JSONL lists no image.")
    if test_fraction == 0:
        return {"train": list(samples)}
    by_class: dict[str, list[PlantSample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda s: s.path.as_posix())
        rng.shuffle(members)
        n_test = 0 if len(members) < 2 else min(len(members) - 1, max(1, round(len(members) * test_fraction)))
        test += members[:n_test]
        train += members[n_test:]
    return {"train": train, "test": test}


def _file_name(sample: PlantSample, root_dir: Path) -> str:
    try:
        rel = sample.path.relative_to(root_dir).as_posix()
    except ValueError:
        rel = f"{sample.label}/{sample.path.name}"
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        rel = f"{sample.label}/{sample.path.name}"
    return rel


def _write_split(folder: Path, members: list[PlantSample], root_dir: Path) -> None:
    folder.mkdir(parents=True)
    used: set[str] = set()
    lines = []
    for sample in members:
        file_name = _file_name(sample, root_dir)
        while file_name.lower() in used:  # two sources with one name: keep both
            pure = PurePosixPath(file_name)
            file_name = str(pure.with_stem(pure.stem + "_"))
        used.add(file_name.lower())
        target = folder / file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample.path, target)
        lines.append(
            {"file_name": file_name, "label": sample.label, "text": sample.text, "description": sample.description}
        )
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")


def _content_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "README.md"):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _card(splits, classes: list[str], folder: Path, *, name, license, languages) -> str:
    from ..cards import dataset_card

    counts = {split: Counter(s.label for s in members) for split, members in splits.items()}
    without_text = sorted({s.label for members in splits.values() for s in members if not s.text})
    n_images = sum(len(m) for m in splits.values())
    split_names = list(splits)
    lines = [
        "Plant leaf photos labelled with their disease class, each with a symptom text and the class's reference "
        "description (Plantset: image + text classification).",
        "",
        f"{n_images:,} images in {len(classes):,} classes"
        + (f" ({', '.join(f'{k} {len(v):,}' for k, v in splits.items())})" if len(splits) > 1 else "")
        + (f"; texts in {', '.join(languages)}" if languages else "")
        + ".",
        "",
        "## Classes",
        "",
        "| id | class | " + " | ".join(split_names) + " |",
        "|---:|---|" + "---:|" * len(split_names),
    ]
    for index, label in enumerate(classes):
        lines.append(f"| {index} | {label} | " + " | ".join(f"{counts[s][label]:,}" for s in split_names) + " |")
    if without_text:
        lines += ["", f"Classes without text (their `text` is empty): {', '.join(without_text)}."]
    lines += [
        "",
        "## Format",
        "",
        "ImageFolder with a `metadata.jsonl` per split: `label` is the class name (its index in `classes.json` is",
        "the label id used in training), `text` the symptom text given to the model with the image, `description`",
        "the class's reference description.",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'ds = load_dataset("imagefolder", data_dir="path/to/this/folder")  # or load_dataset("<repo id>")',
        'ds["train"][0]["label"], ds["train"][0]["text"]',
        "```",
    ]
    card = dataset_card(
        pretty_name=name or "Plantset leaf diseases",
        license=license,
        task_categories=TASK_CATEGORIES,
        tags=["plantset", "hubkit", "plant-disease", "image-text"],
        description="\n".join(lines),
        num_samples=n_images,
        content_hash=_content_hash(folder),
        source="hubkit.plant.export_plant_dataset",
    )
    if languages:
        card.data.language = languages
    # The splits' image folders + metadata only: classes.json must not make the Hub read the data set as JSON.
    card.data.configs = [
        {"config_name": "default", "data_files": [{"split": s, "path": f"{s}/**"} for s in split_names]}
    ]
    return str(card)
