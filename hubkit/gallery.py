"""The gallery: every model, adapter and data set in a store, read from their cards and files.

All the logic of the Streamlit gallery Space (`spaces/gallery/`) lives here so it is tested without Streamlit:
`list_entries` reads a store (README YAML, ``model-index`` metrics, ``adapter_config.json`` / ``config.json``,
parameter counts from safetensors headers, never the weights), `filter_entries` / `facets` drive the sidebar,
`leaderboard` ranks entries of one task and data set by a metric whose direction `metric_direction` knows,
`compare` puts 2-4 adapters side by side, and `space_link` names the Space that serves an entry.

```python
from hubkit import gallery

entries = gallery.list_entries()  # the local store ($HUBKIT_HOME); "hf" + namespace= for the Hub
board = gallery.leaderboard(entries, "depth-estimation", metric="abs_rel")  # lower is better, best first
```
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

import yaml
from huggingface_hub.errors import SafetensorsParsingError
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from huggingface_hub.repocard_data import model_index_to_eval_results

from . import hub
from .errors import ConfigError, HubkitError

__all__ = [
    "KINDS",
    "KNOWN_TASKS",
    "METRIC_DIRECTIONS",
    "TASK_SPACES",
    "Comparison",
    "GalleryEntry",
    "Leaderboard",
    "LeaderboardRow",
    "MetricResult",
    "compare",
    "facets",
    "filter_entries",
    "headline_metric",
    "leaderboard",
    "leaderboard_options",
    "list_entries",
    "metric_direction",
    "safetensors_parameters",
    "space_link",
]

logger = logging.getLogger(__name__)

KINDS = ("model", "adapter", "dataset")
HIGHER, LOWER = "higher", "lower"
# Which way is better, per metric family. A name matches a key exactly, by a "_"-separated prefix word
# ("rmse_log" -> rmse, "f1_macro" -> f1) or by its last word ("top5_accuracy" -> accuracy, "mean_iou" -> iou).
METRIC_DIRECTIONS: dict[str, str] = {
    **dict.fromkeys(
        (
            "accuracy",
            "acc",
            "f1",
            "auc",
            "roc_auc",
            "iou",
            "miou",
            "dice",
            "psnr",
            "ssim",
            "bleu",
            "rouge",
            "recall@k",
            "recall",
            "precision",
            "map",
            "ap",
            "cider",
            "meteor",
            "ndcg",
            "mrr",
            "d1",
            "d2",
            "d3",
            "delta1",
            "delta2",
            "delta3",
            "top1",
            "top5",
            "clip_score",
            "is",
            "inception_score",
        ),
        HIGHER,
    ),
    **dict.fromkeys(
        (
            "abs_rel",
            "sq_rel",
            "rmse",
            "mae",
            "mse",
            "silog",
            "log10",
            "loss",
            "perplexity",
            "ppl",
            "fid",
            "frechet",
            "kid",
            "lpips",
            "latency",
            "size",
            "colour_distance",
            "color_distance",
            "ece",
            "error",
            "wer",
            "cer",
        ),
        LOWER,
    ),
}
# The Space that serves each task (the Space's own task constants: spaces_support.DEPTH_TASK, pipelines.segma,
# plant.demo.TASK, pixcell.demo.TASK; the search Space embeds with an image-embedding or classification backbone).
TASK_SPACES: dict[str, str] = {
    "depth-estimation": "depth",
    "plant-disease": "plant",
    "histology-generation": "pixcell",
    "mask-generation": "segma",
    "image-to-text": "segma",
    "zero-shot-object-detection": "segma",
    "label-extraction": "segma",
    "image-embedding": "search",
    "image-classification": "search",
}
# hubkit.tasks.list_tasks() spelled out: the registry imports torch, a gallery need not (a test keeps them equal).
KNOWN_TASKS = (*TASK_SPACES, "conditional-image-generation")
# Domain from tags first (a classification adapter tagged "plant" is a plant model), then from the task.
_TAG_DOMAINS = {
    "depth": "depth", "zivid": "depth", "segmentation": "segmentation", "segma": "segmentation", "sam": "segmentation",
    "plant": "plant", "plant-disease": "plant", "histology": "histology", "histopathology": "histology",
    "pathology": "histology", "segma-vision": "segmentation", "visual-search": "search", "search": "search",
    "retrieval": "search",
}  # fmt: skip
_TASK_DOMAINS = {
    "depth-estimation": "depth",
    "mask-generation": "segmentation",
    "image-to-text": "segmentation",
    "zero-shot-object-detection": "segmentation",
    "label-extraction": "segmentation",
    "plant-disease": "plant",
    "histology-generation": "histology",
    "image-embedding": "search",
    "image-feature-extraction": "search",
    "image-classification": "classification",
    "conditional-image-generation": "generation",
    "image-to-image": "generation",
    "image-segmentation": "segmentation",
    "object-detection": "segmentation",
}
_LORA_KEYS = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "use_rslora", "bias")
_CONFIG_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_labels", "image_size")
_HF_INCLUDE = ["README.md", "adapter_config.json", "config.json"]  # Hub reads fetch these, never the weights
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader when libyaml is there
_MAX_HEADER = 100 * 2**20  # a safetensors header larger than this is not one


class MetricResult(NamedTuple):
    name: str
    value: float
    dataset: str
    split: str | None


@dataclass
class GalleryEntry:
    """One repo of the store as the gallery shows it; `warning` says what could not be read."""

    repo_id: str
    repo_type: str
    kind: str  # "model" | "adapter" | "dataset"
    task: str | None = None
    base: str | None = None
    domain: str | None = None
    tags: list[str] = field(default_factory=list)
    metrics: list[MetricResult] = field(default_factory=list)
    revision: str | None = None
    updated: str | None = None  # ISO 8601
    parameters: int | None = None
    card_text: str = ""
    pipeline_tag: str | None = None
    library_name: str | None = None
    license: str | None = None
    datasets: list[str] = field(default_factory=list)
    dataset_revision: str | None = None
    library_versions: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the LoRA config (adapters) or config.json highlights
    files: list[str] = field(default_factory=list)
    warning: str | None = None


# -- reading a store ------------------------------------------------------------------------------------------------
def list_entries(store: str | hub.Store | None = None, *, namespace: str | None = None) -> list[GalleryEntry]:
    """Every model, adapter and data set in `store` (``hub.get_store`` name or object; the default store when None).

    `namespace` keeps one owner's repos (on the Hub it is the author listed; without it the Hub lists yours). A repo
    whose card or files cannot be read still gets an entry, with what is known and a `warning`.
    """
    store = hub.get_store(store)
    if isinstance(store, hub.HfStore):
        refs = [ref for t in ("model", "dataset") for ref in store.list_repos(t, author=namespace)]
    else:
        refs = [ref for t in ("model", "dataset") for ref in store.list_repos(t)]
    entries = [_read_entry(store, ref) for ref in refs if namespace is None or ref.namespace == namespace]
    _infer_base_tasks(entries)
    for entry in entries:
        entry.domain = _domain(entry)
    return sorted(entries, key=lambda e: (KINDS.index(e.kind), e.repo_id))


def _read_entry(store: hub.Store, ref: hub.RepoRef) -> GalleryEntry:
    entry = GalleryEntry(ref.repo_id, ref.repo_type, "dataset" if ref.repo_type == "dataset" else "model")
    problems: list[str] = []
    try:
        info = store.resolve_revision(ref.repo_id, repo_type=ref.repo_type)
        entry.revision, entry.updated, entry.files = info.id, info.time or None, sorted(info.files)
        if isinstance(store, hub.HfStore):
            folder = store.pull(ref.repo_id, repo_type=ref.repo_type, revision=info.id, include=_HF_INCLUDE)
        else:
            folder = store.pull(ref.repo_id, repo_type=ref.repo_type, revision=info.id)
    except (HubkitError, OSError) as err:
        entry.warning = f"Could not read the repo: {err}"
        return entry
    if not entry.files:
        entry.files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    _read_card(entry, folder, problems)
    _read_files(entry, folder, problems)
    if isinstance(store, hub.HfStore) and entry.repo_type == "model":
        entry.parameters = _hub_parameters(store, entry, problems)
    entry.task = _task(entry)
    entry.warning = " ".join(problems) or None
    return entry


def _read_card(entry: GalleryEntry, folder: Path, problems: list[str]) -> None:
    path = folder / "README.md"
    if not path.is_file():
        problems.append("The repo has no card (README.md).")
        return
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        problems.append(f"The card cannot be read ({err}).")
        return
    match = REGEX_YAML_BLOCK.search(text)
    entry.card_text = text[match.end() :] if match else text
    meta: Any = {}
    if match:
        try:
            meta = yaml.load(match.group(2), Loader=_YamlLoader) or {}
        except yaml.YAMLError as err:
            problems.append(f"The card's YAML metadata does not parse ({_first_line(err)}).")
            meta = {}
    if not isinstance(meta, dict):
        problems.append("The card's YAML metadata is not a mapping.")
        meta = {}
    entry.pipeline_tag = _str(meta.get("pipeline_tag"))
    entry.library_name = _str(meta.get("library_name"))
    entry.license = _str(meta.get("license"))
    entry.base = _str(meta.get("base_model"), first=True)
    entry.tags = _strs(meta.get("tags"))
    entry.datasets = _strs(meta.get("datasets"))
    if entry.repo_type == "dataset":
        entry.pipeline_tag = entry.pipeline_tag or _str(meta.get("task_categories"), first=True)
    if meta.get("base_model_relation") == "adapter" and entry.repo_type == "model":
        entry.kind = "adapter"
    if "model-index" in meta:
        try:
            _, results = model_index_to_eval_results(meta["model-index"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            problems.append(f"The card's model-index cannot be parsed ({type(err).__name__}: {_first_line(err)}).")
            results = []
        for r in results:
            value = _number(r.metric_value)
            if value is None:
                problems.append(f"Metric {r.metric_type!r} has a non-numeric value {r.metric_value!r}; left out.")
                continue
            name = str(r.metric_type or r.metric_name)
            entry.metrics.append(MetricResult(name, value, str(r.dataset_name or r.dataset_type), r.dataset_split))
            entry.dataset_revision = entry.dataset_revision or _str(r.dataset_revision)
    entry.dataset_revision = entry.dataset_revision or _body_field(entry.card_text, "Data set revision / content hash")
    entry.library_versions = _library_versions(entry.card_text)


def _read_files(entry: GalleryEntry, folder: Path, problems: list[str]) -> None:
    adapter_config = folder / "adapter_config.json"
    if entry.repo_type == "model" and adapter_config.is_file():
        entry.kind = "adapter"
        config = _json(adapter_config, problems)
        entry.config = {k: config[k] for k in _LORA_KEYS if k in config}
        entry.base = entry.base or _str(config.get("base_model_name_or_path"))
    elif (folder / "config.json").is_file():
        config = _json(folder / "config.json", problems)
        entry.config = {k: config[k] for k in _CONFIG_KEYS if k in config}
    if entry.repo_type == "model":
        total, found = 0, False
        for path in sorted(folder.rglob("*.safetensors")):
            try:
                total += safetensors_parameters(path)
                found = True
            except (OSError, ValueError) as err:
                problems.append(f"{path.name}: header unreadable ({_first_line(err)}).")
        entry.parameters = total if found else None


def safetensors_parameters(path: str | Path) -> int:
    """Number of values in a safetensors file, from its JSON header alone (the tensors are never read)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("shorter than a safetensors header")
        (size,) = struct.unpack("<Q", raw)
        if size > _MAX_HEADER:
            raise ValueError(f"header of {size} bytes is not a safetensors header")
        header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def _hub_parameters(store: hub.HfStore, entry: GalleryEntry, problems: list[str]) -> int | None:
    """Parameter counts of a Hub repo from its safetensors headers (HTTP range reads, not the weights)."""
    names = [f for f in entry.files if f.endswith(".safetensors")]
    total = 0
    for name in names:
        try:
            meta = store._call(  # hubkit's error mapping (unreachable, auth, missing) for a huggingface_hub call
                store.api.parse_safetensors_file_metadata,
                entry.repo_id,
                name,
                revision=entry.revision,
                ctx=(entry.repo_id, entry.repo_type, entry.revision),
            )
        except (HubkitError, SafetensorsParsingError) as err:
            problems.append(f"{name}: header unreadable ({_first_line(err)}).")
            return None
        total += sum(meta.parameter_count.values())
    return total if names else None


def _task(entry: GalleryEntry) -> str | None:
    """The hubkit task: a registered task named in the tags (cards tag it), else the pipeline tag."""
    return next((t for t in entry.tags if t in KNOWN_TASKS), None) or entry.pipeline_tag


def _infer_base_tasks(entries: list[GalleryEntry]) -> None:
    """A base card rarely names the hubkit task (a plant model says image-classification): take the task most of
    the adapters trained on it have."""
    for entry in entries:
        if entry.kind != "model" or (entry.task and entry.task != entry.pipeline_tag):
            continue
        votes = Counter(e.task for e in entries if e.kind == "adapter" and e.base == entry.repo_id and e.task)
        if votes:
            entry.task = votes.most_common(1)[0][0]


def _domain(entry: GalleryEntry) -> str | None:
    for tag in entry.tags:
        if tag.lower() in _TAG_DOMAINS:
            return _TAG_DOMAINS[tag.lower()]
    return _TASK_DOMAINS.get(entry.task or "") or _TASK_DOMAINS.get(entry.pipeline_tag or "")


# -- filters --------------------------------------------------------------------------------------------------------
def filter_entries(
    entries: Iterable[GalleryEntry],
    *,
    task: str | None = None,
    base: str | None = None,
    domain: str | None = None,
    tag: str | None = None,
    kind: str | None = None,
    text: str | None = None,
) -> list[GalleryEntry]:
    """Entries matching every filter given (None or "" matches all); `text` searches repo ids, case-insensitive."""
    needle = (text or "").strip().lower()
    return [
        e
        for e in entries
        if (not task or e.task == task)
        and (not base or e.base == base or (e.kind != "adapter" and e.repo_id == base))
        and (not domain or e.domain == domain)
        and (not tag or tag in e.tags)
        and (not kind or e.kind == kind)
        and (not needle or needle in e.repo_id.lower())
    ]


def facets(entries: Iterable[GalleryEntry]) -> dict[str, list[str]]:
    """The values each filter can take, sorted: {"task": [...], "base": [...], "domain": [...], "tag": [...]}."""
    entries = list(entries)
    bases = {e.base for e in entries if e.base} | {e.repo_id for e in entries if e.kind == "model"}
    return {
        "task": sorted({e.task for e in entries if e.task}),
        "base": sorted(bases),
        "domain": sorted({e.domain for e in entries if e.domain}),
        "tag": sorted({t for e in entries for t in e.tags}),
        "kind": [k for k in KINDS if any(e.kind == k for e in entries)],
    }


# -- metrics and the leaderboard ------------------------------------------------------------------------------------
def metric_direction(name: str) -> tuple[str, bool]:
    """("higher" | "lower", known). Unknown metrics count as higher-is-better, and say so (known=False)."""
    key = re.sub(r"[\s\-/]+", "_", name.strip().lower())
    if re.fullmatch(r"(recall|r|hit|hits|precision|p|ndcg|map)@\d+", key):
        return HIGHER, True
    words = [w for w in re.split(r"[_@.]+", key) if w]
    candidates = [key, *("_".join(words[:n]) for n in range(len(words), 0, -1)), words[-1] if words else ""]
    for candidate in candidates:
        if candidate in METRIC_DIRECTIONS:
            return METRIC_DIRECTIONS[candidate], True
    return HIGHER, False


def headline_metric(entry: GalleryEntry) -> tuple[str, float] | None:
    """The metric to show beside an entry: the card's first metric whose direction is known, else its first."""
    if not entry.metrics:
        return None
    best = next((m for m in entry.metrics if metric_direction(m.name)[1]), entry.metrics[0])
    return best.name, best.value


class LeaderboardRow(NamedTuple):
    rank: int
    repo_id: str
    kind: str
    base: str | None
    value: float
    split: str | None
    updated: str | None


@dataclass
class Leaderboard:
    task: str
    dataset: str | None
    metric: str | None
    direction: str  # "higher" | "lower": which is better; rows are sorted best first
    known_direction: bool
    rows: list[LeaderboardRow]

    @property
    def direction_note(self) -> str:
        if self.metric is None:
            return "No metrics recorded for this task."
        if not self.known_direction:
            return f"{self.metric}: direction unknown, ranked as higher is better."
        return f"{self.metric}: {self.direction} is better."


def leaderboard_options(entries: Iterable[GalleryEntry], task: str) -> dict[str, list[str]]:
    """{dataset: [metric names]} recorded by the cards of `task`, most results first."""
    counts: Counter[tuple[str, str]] = Counter(
        (m.dataset, m.name) for e in entries if e.task == task for m in e.metrics
    )
    by_dataset: dict[str, Counter[str]] = {}
    for (dataset, name), n in counts.items():
        by_dataset.setdefault(dataset, Counter())[name] += n
    order = sorted(by_dataset, key=lambda d: (-sum(by_dataset[d].values()), d))
    return {d: sorted(by_dataset[d], key=lambda m: (-by_dataset[d][m], m)) for d in order}


def leaderboard(
    entries: Iterable[GalleryEntry], task: str, dataset: str | None = None, metric: str | None = None
) -> Leaderboard:
    """Entries of `task` ranked by `metric` on `dataset`, best first (ties share a rank).

    Without `dataset` / `metric`, the data set and metric the most cards report. Ranking across data sets would
    compare unlike numbers, so a board is always one data set.
    """
    entries = [e for e in entries if e.task == task]
    options = leaderboard_options(entries, task)
    if dataset is None:
        dataset = next(iter(options), None)
    elif options and dataset not in options:
        raise ConfigError(f"No card of task {task!r} reports data set {dataset!r}; known: {', '.join(options)}.")
    metrics = options.get(dataset or "", [])
    if metric is None:
        metric = metrics[0] if metrics else None
    elif metrics and metric not in metrics:
        raise ConfigError(f"No {task!r} card reports {metric!r} on {dataset!r}; known: {', '.join(metrics)}.")
    direction, known = metric_direction(metric) if metric else (HIGHER, True)
    results = [
        (e, m)
        for e in entries
        for m in e.metrics
        if m.name == metric and m.dataset == dataset and math.isfinite(m.value)
    ]
    sign = -1.0 if direction == HIGHER else 1.0
    results.sort(key=lambda em: (sign * em[1].value, em[0].repo_id, em[1].split or ""))
    rows: list[LeaderboardRow] = []
    for i, (e, m) in enumerate(results):
        rank = rows[-1].rank if rows and rows[-1].value == m.value else i + 1
        rows.append(LeaderboardRow(rank, e.repo_id, e.kind, e.base, m.value, m.split, e.updated))
    return Leaderboard(task, dataset, metric, direction, known, rows)


# -- comparison -----------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    repo_ids: list[str]
    metrics: list[dict[str, Any]]  # {"metric", "dataset", "split", "direction", "best", repo_id: value | None}
    config: list[dict[str, Any]]  # {"field", repo_id: value}


def compare(entries: Sequence[GalleryEntry]) -> Comparison:
    """2-4 adapters side by side: every metric any of them reports (best marked), then their LoRA configs."""
    entries = list(entries)
    if not 2 <= len(entries) <= 4:
        raise ConfigError(f"compare takes 2 to 4 adapters, got {len(entries)}: pick between two and four.")
    not_adapters = [e.repo_id for e in entries if e.kind != "adapter"]
    if not_adapters:
        raise ConfigError(f"compare works on adapters; {', '.join(not_adapters)} are not adapters.")
    ids = [e.repo_id for e in entries]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"compare got the same adapter twice: {', '.join(ids)}.")
    keys: dict[tuple[str, str, str | None], None] = {}
    for e in entries:
        keys.update(dict.fromkeys((m.name, m.dataset, m.split) for m in e.metrics))
    metric_rows = []
    for name, dataset, split in keys:
        direction, known = metric_direction(name)
        values = {e.repo_id: _value(e, name, dataset, split) for e in entries}
        present = {k: v for k, v in values.items() if v is not None}
        pick = max if direction == HIGHER else min
        best = pick(present, key=present.get) if len(present) > 1 else None
        note = direction if known else f"{direction} (assumed)"
        metric_rows.append(
            {"metric": name, "dataset": dataset, "split": split, "direction": note, "best": best, **values}
        )
    fields = ["base", "task", "parameters", "revision", "updated", "dataset_revision"]
    fields += list(dict.fromkeys(k for e in entries for k in e.config))
    config_rows = []
    for name in fields:
        row = {"field": name}
        for e in entries:
            value = e.config.get(name) if name in e.config else getattr(e, name, None)
            row[e.repo_id] = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        config_rows.append(row)
    return Comparison(ids, metric_rows, config_rows)


def _value(entry: GalleryEntry, name: str, dataset: str, split: str | None) -> float | None:
    return next((m.value for m in entry.metrics if (m.name, m.dataset, m.split) == (name, dataset, split)), None)


# -- links ----------------------------------------------------------------------------------------------------------
def space_link(entry: GalleryEntry) -> str | None:
    """`/spaces/<space>/?base=<repo>&adapter=<repo>` for the Space serving the entry's task; None when none does."""
    if entry.kind == "dataset" or not entry.task:
        return None
    space = TASK_SPACES.get(entry.task)
    if space is None:
        return None
    if entry.kind == "adapter":
        if not entry.base:
            return None
        query = {"base": entry.base, "adapter": entry.repo_id}
    else:
        query = {"base": entry.repo_id}
    return f"/spaces/{space}/?{urlencode(query, safe='/')}"


# -- small readers --------------------------------------------------------------------------------------------------
def _library_versions(body: str) -> dict[str, str]:
    """The "## Library versions" list of hubkit's card templates: `- name: version` lines."""
    match = re.search(r"^#+\s*Library versions\s*$(.*?)(?=^#|\Z)", body, re.M | re.S | re.I)
    if not match:
        return {}
    return dict(re.findall(r"^\s*[-*]\s*([\w.\-]+)\s*:\s*(\S+)\s*$", match.group(1), re.M))


def _body_field(body: str, label: str) -> str | None:
    match = re.search(rf"{re.escape(label)}:\s*`?([^`\n]+?)`?\.?\s*$", body, re.M)
    value = match.group(1).strip() if match else None
    return None if not value or value == "not recorded" else value


def _json(path: Path, problems: list[str]) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        problems.append(f"{path.name} does not parse ({_first_line(err)}).")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path.name} is not a JSON object.")
        return {}
    return data


def _str(value: Any, *, first: bool = False) -> str | None:
    if first and isinstance(value, list):
        value = value[0] if value else None
    return str(value) if value not in (None, "") and not isinstance(value, (dict, list)) else None


def _strs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, (str, int, float)) and str(v)]
    return []


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
