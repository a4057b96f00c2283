"""The Segma Space's logic: model menus per stage, one call per action (run, review, add, export), input checks.

`spaces/segma/app.py` builds the widgets and calls these; nothing here imports Gradio, so it is tested without a
browser. Models come from the process's shared pool (`hubkit.pool`): the base-vs-adapted comparison runs the same
pipeline twice, the second time with the adapters loaded but off (`SegmaConfig.base_only`), so no model loads twice.

    demo = SegmaDemo()
    run = demo.run("coins.png", classes="coin, shadow")     # a SegmaRun: result (+ base result with adapters)
    demo.review(run, {3: "reject", 5: "euro coin"})
    dataset = demo.add(run, [])
    info = demo.export(dataset, "me/coins-labels")           # pushed to the local store: info.repo_id, info.revision
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from PIL import Image

from .. import hub
from ..errors import ConfigError, DataError, HubkitError
from ..pipelines.segma import (
    CAPTION_TASK,
    DETECT_TASK,
    LABELS_TASK,
    SAM_MODEL_TYPES,
    SAM_PRESETS,
    SAM_TASK,
    TINY_SAM_OVERRIDES,
    SegmaConfig,
    SegmaPipeline,
)
from ..spaces_support import (
    ADAPTER_NOT_AVAILABLE,
    MAX_DEMO_PIXELS,
    RequestDirs,
    available_adapters,
    available_bases,
    check_upload,
    default_base,
    resolve_adapter,
)
from .export import export_dataset, push_dataset
from .features import FEATURE_NAMES
from .outputs import coco_document, label_json, overlay, write_features_csv
from .regions import UNLABELLED, SegmaResult

logger = logging.getLogger(__name__)

STAGE_TASKS = {"sam": SAM_TASK, "captioner": CAPTION_TASK, "labeler": LABELS_TASK, "detector": DETECT_TASK}
STAGE_TITLES = {"sam": "SAM", "captioner": "BLIP (caption)", "labeler": "LLM (classes)", "detector": "Grounding DINO"}
PRESETS = tuple(SAM_PRESETS)
DOMAIN_CHOICES = ("none", "medical", "automotive", "industrial", "nature")
TABLE_HEADERS = ("id", "label", "score", "area", "source", "status", "area_ratio", "aspect_ratio", "compactness")
GEOMETRY = [FEATURE_NAMES.index(name) for name in TABLE_HEADERS[-3:]]
CLASS_SOURCES = {
    "llm": "the LLM (from the caption)",
    "fallback": "the caption's nouns (the LLM named none)",
    "given": "you (the LLM was skipped)",
    "none": "nowhere: no class to look for, so only SAM's automatic masks",
}
BASES_ENV = "HUBKIT_SEGMA_BASES"  # more bases a request may load (comma-separated; "*": any), beside the menus
QUANTIZE_ENV = "HUBKIT_SEGMA_LLM_QUANTIZE"  # "nf4" (CUDA) or "int8": a 7B LLM in 16 bits alone fills a T4
TINY_PREFIX = "hubkit-tiny/"
# Random-weight models caption in random tokens: a short greedy caption says as much as 50 tokens of 3 beams.
TINY_RUN_OPTIONS = {"max_caption_tokens": 12, "num_beams": 1}
TINY_NOTE = (
    "These are `hubkit bootstrap`'s **random-weight demo models** (`hubkit-tiny/*`): the captions, classes and "
    "masks are noise. They run the whole path offline; pick real bases (online) for real labels."
)
DISPLAY_SIDE = 512  # overlays of smaller images are drawn at 2x, 3x...: labels are sized for the drawn image
MAX_DATASET_IMAGES = 100  # per session: the images and masks live in the browser session's state, in memory
FILE_STEM = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class SegmaRun:
    """One image's run in the Space: `result` is the adapted run (or the only one), `base` the same models with
    the adapters off (None without adapters); `files` the downloads of `result` as it stands after review."""

    run_id: str
    file_name: str
    result: SegmaResult
    base: SegmaResult | None
    bases: dict[str, str]
    adapters: dict[str, str]
    tiny: bool
    seconds: float
    files: list[Path] = field(default_factory=list)


@dataclass
class DatasetEntry:
    """A reviewed image in a session's data set: a snapshot of its result when it was added."""

    run_id: str
    file_name: str
    result: SegmaResult


@dataclass
class ExportInfo:
    repo_id: str
    revision: str
    images: int
    regions: int
    listing: str  # what `hubkit ls --repo-type dataset` prints for the store pushed to
    archive: Path  # the data set folder as a zip, for a download


def parse_classes(text: str | Sequence[str] | None) -> list[str] | None:
    """Class names from "a, b, c" (or a list); None when nothing is given (the LLM chooses)."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    names = [t.strip() for t in items if t.strip()]
    return names or None


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _overlay(result: SegmaResult, side: int) -> Image.Image:
    return overlay(result, scale=max(1, side // max(result.size)))


def _check_adapter_base(stage: str, name: str, folder: Path, base: str) -> None:
    """Refuse an adapter trained on another base before loading anything, by the rule of
    `hubkit.adapters.check_base` (both sides repo ids), in words for the page (that error names the folder)."""
    try:
        trained = str(json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or "")
    except (OSError, ValueError, AttributeError):
        return  # the load reports it
    both_repo_ids = trained.count("/") == 1 and base.count("/") == 1 and not Path(trained).exists()
    if both_repo_ids and not Path(base).exists() and trained != base:
        raise HubkitError(
            f"The {STAGE_TITLES[stage]} adapter {name!r} was trained on {trained!r}, not on the base {base!r}: "
            f"pick an adapter from the menu for this base, or the base {trained!r}."
        )


def _timings(result: SegmaResult) -> str:
    return " · ".join(f"{stage} {seconds:.2f}" for stage, seconds in result.timings.items())


def _is_tiny(base: str | None) -> bool:
    return str(base or "").startswith(TINY_PREFIX)


def _file_name(image: Any, file_name: str | None) -> str:
    """A data set file name for an upload: its stem made safe, as .png (the export saves the decoded image)."""
    if file_name is None and isinstance(image, (str, Path)):
        file_name = PurePath(str(image)).name
    stem = FILE_STEM.sub("-", PurePath(file_name or "image").stem).strip("-.") or "image"
    return f"{stem[:80]}.png"


class SegmaDemo:
    """The Segma Space's logic on the process's shared model pool; nothing loads at construction.

    Bases a request may load are those the menus offer plus ``HUBKIT_SEGMA_BASES``; adapters are checked by
    `hubkit.spaces_support.resolve_adapter` (the store's adapters, Hub ids online, operator folders), as in the
    depth Space. Exports go to `hub_name` (default: the server's local store), never to the Hub from a visitor's
    click.
    """

    def __init__(
        self,
        *,
        device: str | None = None,
        max_pixels: int = MAX_DEMO_PIXELS,
        outputs: RequestDirs | None = None,
        pool=None,
        hub_name: str = "local",
    ):
        self.device = device or os.environ.get("HUBKIT_DEVICE", "auto")
        self.max_pixels = max_pixels
        self.outputs = outputs or RequestDirs("hubkit-segma-")
        self.hub_name = hub_name
        self._pool = pool
        self._admitted: set[tuple[str, str, str]] = set()  # (store, stage, base) checked once
        self._lock = threading.Lock()

    # -- menus ------------------------------------------------------------------------------------------
    @staticmethod
    def _stage(stage: str) -> str:
        if stage not in STAGE_TASKS:
            raise ConfigError(f"Unknown stage {stage!r}; stages: {', '.join(STAGE_TASKS)}")
        return STAGE_TASKS[stage]

    def default_base(self, stage: str) -> str:
        """The real Hub id when the store holds it or the Hub answers; offline, `hubkit bootstrap`'s tiny model."""
        return default_base(self._stage(stage))

    def default_bases(self) -> dict[str, str]:
        return {stage: self.default_base(stage) for stage in STAGE_TASKS}

    def available_bases(self, stage: str) -> list[str]:
        """The stage's default first, then the store's other bases for its task (SAM: every model type's port
        too when the real models are reachable, for the medical and satellite presets)."""
        bases = available_bases(self._stage(stage))
        if stage == "sam" and not _is_tiny(bases[0]):
            bases += [repo for repo, _ in SAM_MODEL_TYPES.values() if repo not in bases]
        return bases

    def available_adapters(self, stage: str, base: str | None = None) -> list[str]:
        return available_adapters(self._stage(stage), base or self.default_base(stage))

    def allowed_bases(self, stage: str) -> set[str] | None:
        """Bases a request may load for `stage`: the menu's plus ``HUBKIT_SEGMA_BASES`` ("*": any; None)."""
        extra = {b.strip() for b in os.environ.get(BASES_ENV, "").split(",") if b.strip()}
        if "*" in extra:
            return None
        return set(self.available_bases(stage)) | extra

    def _check_base(self, stage: str, base: str) -> None:
        key = (str(hub.local_home()), stage, base)
        with self._lock:
            if key in self._admitted:
                return
        allowed = self.allowed_bases(stage)
        if allowed is not None and base not in allowed:
            raise HubkitError(
                f"{STAGE_TITLES[stage]} base {base!r} is not offered here. Choose one of: {', '.join(sorted(allowed))} "
                f"(the server's {BASES_ENV} can allow more)."
            )
        with self._lock:
            self._admitted.add(key)

    # -- running ----------------------------------------------------------------------------------------
    def pipeline(self, bases: Mapping[str, str], adapters: Mapping[str, Path] | None = None, **fields) -> SegmaPipeline:
        """The pipeline for these bases; the tiny SAM gets the tiny overrides (its predicted IoU is ~0, so the
        preset's filters would drop every mask)."""
        options = dict(TINY_SAM_OVERRIDES) if _is_tiny(bases["sam"]) else {}
        if _is_tiny(bases["captioner"]):
            fields = {**TINY_RUN_OPTIONS, **fields}
        config = SegmaConfig(
            **bases,
            adapters={stage: [folder] for stage, folder in (adapters or {}).items()},
            sam_options=options,
            load_options={"device": self.device},
            llm_quantize=os.environ.get(QUANTIZE_ENV) or None,
            **fields,
        )
        return SegmaPipeline(config, pool=self._pool)

    def run(
        self,
        image: Any,
        *,
        preset: str = "general",
        domain: str | None = None,
        bases: Mapping[str, str | None] | None = None,
        adapters: Mapping[str, str | None] | None = None,
        classes: str | Sequence[str] | None = None,
        box_threshold: float = 0.25,
        text_threshold: float = 0.2,
        file_name: str | None = None,
        progress: Callable[[float, str], None] | None = None,
    ) -> SegmaRun:
        """Label `image` (path, PIL image or array) with the bases (stage -> repo id; missing: the defaults) and
        at most one adapter per stage. With an adapter, the base models' result comes too (`SegmaRun.base`).

        Raises InvalidImageError for an unusable upload, HubkitError for a base or adapter this server does not
        offer, ConfigError for a bad preset / domain / threshold; all before any model loads. `progress(share,
        what)` hears of each pass (the models load in the first one).
        """
        say = progress or (lambda share, what: None)
        started = time.perf_counter()
        pil = check_upload(image, max_pixels=self.max_pixels)
        domain = None if domain in (None, "", "none") else domain
        picked = {stage: str(b) for stage, b in (bases or {}).items() if b}
        unknown = sorted((set(picked) | set(adapters or {})) - set(STAGE_TASKS))
        if unknown:
            raise ConfigError(f"Unknown stage(s) {unknown}; stages: {', '.join(STAGE_TASKS)}")
        chosen = {stage: picked.get(stage) or self.default_base(stage) for stage in STAGE_TASKS}
        for stage, base in chosen.items():
            self._check_base(stage, base)
        names = {stage: a for stage, a in (adapters or {}).items() if a}
        if not all(isinstance(a, str) for a in names.values()):  # API callers can send any JSON
            raise HubkitError(ADAPTER_NOT_AVAILABLE)
        folders = {stage: resolve_adapter(name) for stage, name in names.items()}  # one message for every refusal
        for stage, folder in folders.items():
            _check_adapter_base(stage, names[stage], folder, chosen[stage])
        fields = {
            "preset": preset,
            "domain": domain,
            "classes": parse_classes(classes),
            "box_threshold": box_threshold,
            "text_threshold": text_threshold,
        }
        pipeline = self.pipeline(chosen, folders, **fields)  # bad fields fail here, before any model loads
        passes = 2 if folders else 1
        say(0.0, "Labelling: caption, classes, boxes, masks (the first run loads the models)")
        result = pipeline.run(pil)
        for stage, name in names.items():  # the adapter as the user named it, not its folder in the store
            if stage in result.models:
                result.models[stage] = f"{chosen[stage]} + {name}"
        base = None
        if folders:
            # The labeler stage ignores base_only (it always uses its first adapter), so its adapter is left out
            # here: the pool then runs it with adapters off, which is what base_only means.
            base_adapters = {stage: f for stage, f in folders.items() if stage != "labeler"}
            say(1 / passes, "Labelling again with the base models (adapters off)")
            base = self.pipeline(chosen, base_adapters, base_only=True, **fields).run(pil)
        run = SegmaRun(
            run_id=uuid.uuid4().hex,
            file_name=_file_name(image, file_name),
            result=result,
            base=base,
            bases=chosen,
            adapters=names,
            tiny=any(_is_tiny(b) for b in chosen.values()),
            seconds=0.0,
        )
        say(0.95, "Writing COCO JSON, label.json and the features CSV")
        run.files = self.write_files(run)
        run.seconds = time.perf_counter() - started
        return run

    def write_files(self, run: SegmaRun) -> list[Path]:
        """The downloads of `run.result` as it stands (rejected regions left out): COCO JSON, Grounded-SAM's
        label.json and the features CSV, in a new request folder."""
        folder = self.outputs.new()
        stem = Path(run.file_name).stem
        coco = folder / f"{stem}.coco.json"
        coco.write_text(json.dumps(coco_document([(run.file_name, run.result)]), ensure_ascii=False) + "\n")
        labels = folder / f"{stem}.label.json"
        labels.write_text(json.dumps(label_json(run.result), ensure_ascii=False, indent=2) + "\n")
        features = write_features_csv([(run.file_name, run.result)], folder / f"{stem}.features.csv")
        return [coco, labels, features]

    # -- review -----------------------------------------------------------------------------------------
    def review(self, run: SegmaRun | None, decisions: Mapping[int, str]) -> SegmaRun:
        """Apply {region id: "accept" | "reject" | new label} to the run's (adapted) result; rewrites its files."""
        run = self._reviewable(run)
        if not decisions:
            raise ConfigError("Pick a region first: choose its id in the Region list.")
        try:
            decisions = {int(rid): str(d) for rid, d in decisions.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"Region ids are numbers; got {sorted(decisions, key=str)!r}") from None
        run.result.review(decisions)
        run.files = self.write_files(run)
        return run

    def accept_all(self, run: SegmaRun | None) -> SegmaRun:
        """Accept every region not rejected."""
        run = self._reviewable(run)
        todo = {r.id: "accept" for r in run.result.regions if r.status != "rejected"}
        if not todo:
            raise DataError("Every region is rejected: pick one and press Accept to bring it back.")
        return self.review(run, todo)

    @staticmethod
    def _reviewable(run: SegmaRun | None) -> SegmaRun:
        if run is None:
            raise DataError("Nothing to review: upload an image (or pick an example) and press Run first.")
        if not run.result.regions:
            raise DataError("Nothing to review: this run found no region. Try other classes or another preset.")
        return run

    # -- views ------------------------------------------------------------------------------------------
    @staticmethod
    def overlays(run: SegmaRun, *, side: int = DISPLAY_SIDE) -> tuple[Image.Image, Image.Image | None]:
        """The adapted overlay (rejected regions gone) and the base's (None without adapters); images smaller
        than `side` are drawn at a whole multiple of their size, so boxes and labels stay sharp and readable."""
        return _overlay(run.result, side), (_overlay(run.base, side) if run.base is not None else None)

    @staticmethod
    def table(run: SegmaRun | None) -> list[list[Any]]:
        """One row per region: TABLE_HEADERS."""
        if run is None:
            return []
        rows = []
        for r in run.result.regions:
            geometry = ["" if r.features is None else round(float(r.features[i]), 4) for i in GEOMETRY]
            rows.append([r.id, r.label, round(r.score, 3), r.area, r.source, r.status, *geometry])
        return rows

    @staticmethod
    def region_choices(run: SegmaRun | None) -> list[tuple[str, int]]:
        """(label shown, region id) for the review menu."""
        if run is None:
            return []
        return [(f"{r.id} · {r.label} ({r.status})", r.id) for r in run.result.regions]

    @staticmethod
    def summary(run: SegmaRun) -> str:
        """Markdown: caption, classes and where they came from, models, counts, seconds per stage."""
        result = run.result
        lines = ["⚠️ Random-weight demo models: the labels below are noise.", ""] if run.tiny else []
        lines += [
            f"**Caption:** {result.caption or '(none)'}",
            "",
            f"**Classes:** {', '.join(result.classes) or '(none)'} — from {CLASS_SOURCES[result.classes_source]}",
            "",
        ]
        shown = [r for r in result.regions if r.status != "rejected"]
        labelled = len(result.labelled())
        lines.append(
            f"**Regions:** {len(result.regions)} found · {labelled} labelled · "
            f"{sum(r.label == UNLABELLED for r in shown)} unlabelled (automatic masks) · "
            f"{sum(r.status == 'accepted' for r in result.regions)} accepted · "
            f"{sum(r.status == 'rejected' for r in result.regions)} rejected"
        )
        lines += ["", "**Models:** " + " · ".join(f"{k}: `{v}`" for k, v in result.models.items())]
        lines += ["", f"**Seconds per stage:** {_timings(result)}"]
        if run.base is not None:
            lines += ["", f"**Base run (adapters off):** {_timings(run.base)}"]
        lines.append(f"\nTotal {run.seconds:.1f} s" + (" for both runs" if run.base is not None else ""))
        return "\n".join(lines)

    # -- the session's data set ------------------------------------------------------------------------
    @staticmethod
    def add(run: SegmaRun | None, dataset: Sequence[DatasetEntry] | None) -> tuple[list[DatasetEntry], str]:
        """The session's data set with `run` added (a snapshot of its review now), and a line saying what
        happened; adding the same run again replaces its earlier snapshot."""
        if run is None:
            raise DataError("Nothing to add: upload an image (or pick an example) and press Run first.")
        entries = list(dataset or [])
        snapshot = copy.deepcopy(run.result)
        for i, entry in enumerate(entries):
            if entry.run_id == run.run_id:
                entries[i] = DatasetEntry(run.run_id, entry.file_name, snapshot)
                return entries, f"Updated {entry.file_name} with its latest review ({_count(len(entries), 'image')})."
        if len(entries) >= MAX_DATASET_IMAGES:
            raise DataError(
                f"The data set holds {len(entries)} images, the most one session keeps: export it, then start another."
            )
        taken = {e.file_name.lower() for e in entries}
        name, stem, n = run.file_name, Path(run.file_name).stem, 2
        while name.lower() in taken:
            name, n = f"{stem}-{n}.png", n + 1
        entries.append(DatasetEntry(run.run_id, name, snapshot))
        kept = len(snapshot.labelled())
        note = "" if kept else " It has no labelled region yet: label or accept some, then add it again."
        counts = f"{_count(kept, 'labelled region')} ({_count(len(entries), 'image')} in the data set)"
        return entries, f"Added {name}: {counts}.{note}"

    def export(
        self, dataset: Sequence[DatasetEntry] | None, repo_id: str | None, *, accepted_only: bool = False
    ) -> ExportInfo:
        """Export the session's reviewed images as a data set (`export_dataset(..., reviewed=True)`) into a request
        folder and push it to the store as `repo_id` (a new revision if it exists)."""
        repo_id = (repo_id or "").strip()
        if not repo_id:
            raise ConfigError("Type a repo id for the data set, as namespace/name (e.g. me/coins-labels).")
        hub.parse_repo_id(repo_id, "dataset")  # InvalidRepoIdError says what is wrong and the form to use
        if not dataset:
            raise DataError("The data set is empty: run an image, review it, then press “Add image to data set”.")
        folder = self.outputs.new()
        out = export_dataset(
            [(e.result.image, e.file_name, e.result) for e in dataset],
            folder / "dataset",
            reviewed=True,
            include_pending=not accepted_only,
            name=repo_id.split("/")[1],
        )
        revision = push_dataset(out, repo_id, hub=self.hub_name, message=f"Segma Space: {len(dataset)} images")
        archive = Path(shutil.make_archive(str(folder / repo_id.replace("/", "--")), "zip", out))
        with open(out / "metadata.jsonl", encoding="utf-8") as fh:
            regions = sum(len(json.loads(line)["objects"]["categories"]) for line in fh if line.strip())
        listing = "\n".join(
            f"{ref.repo_type:<8} {ref.repo_id}" for ref in hub.list_repos(hub=self.hub_name, repo_type="dataset")
        )
        return ExportInfo(repo_id, revision.id, len(dataset), regions, listing, archive)
