"""Hub-format README.md cards for adapters, models, data sets and Spaces.

Metadata always goes through huggingface_hub's ``ModelCardData`` / ``DatasetCardData`` / ``SpaceCardData`` and
bodies come from the jinja templates in ``hubkit/templates/``; no YAML is ever assembled from strings.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import DatasetCardData, EvalResult, ModelCardData, SpaceCardData
from huggingface_hub.repocard import DatasetCard, ModelCard, RepoCard, SpaceCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from hubkit.errors import CardError

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
REDACTED = "***"
CARD_CLASSES: dict[str, type[RepoCard]] = {"model": ModelCard, "dataset": DatasetCard, "space": SpaceCard}
SPACE_SDKS = ("gradio", "streamlit", "docker", "static")
SPACE_COLORS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
SIZE_CATEGORIES = ("n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B")
SIZE_CATEGORIES += ("10B<n<100B", "100B<n<1T", "n>1T")
SHORT_DESCRIPTION_MAX = 60  # the Hub rejects longer Space short descriptions
ADAPTER_TAGS = ("lora", "peft")
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "huggingface_hub", "hubkit")
# A config key is secret when its last word is one of these (hf_token, wandb_api_key; not max_new_tokens, pad_token_id).
_SECRET_KEY = re.compile(r"(?i)(?:^|[_\-.])(token|secrets?|passw(or)?d|(api|access|secret|private)_?key|credentials?)$")
_HF_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


@dataclass(frozen=True)
class Metric:
    """One evaluation result; becomes an entry of the card's ``model-index``."""

    name: str
    value: float
    dataset_name: str
    dataset_type: str
    split: str = "validation"
    task_type: str | None = None  # None: the card's pipeline_tag

    def __post_init__(self) -> None:
        if not self.name or not self.dataset_name or not self.dataset_type:
            raise CardError(f"Metric needs a name, dataset_name and dataset_type; got {self!r}.")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise CardError(f"Metric {self.name!r} has value {self.value!r}; pass a finite number.")
        object.__setattr__(self, "value", float(self.value))


def adapter_card(
    *,
    model_name: str,
    base_model: str,
    pipeline_tag: str,
    tags: Iterable[str] = (),
    datasets: Iterable[str] = (),
    license: str = "apache-2.0",
    training_config: Mapping[str, Any] | None = None,
    trainable_params: int | None = None,
    total_params: int | None = None,
    metrics: Sequence[Metric] = (),
    dataset_revision: str | None = None,
    repo_id: str | None = None,
    task: str | None = None,
    notes: str | None = None,
    auto_class: str = "AutoModel",
    auto_processor: str | None = None,
    base_library: str = "transformers",
    weights: str = "lora",
) -> ModelCard:
    """Card for a LoRA adapter repo: PEFT metadata, eval results as ``model-index``, load snippets, config.

    `auto_class` / `auto_processor` are the classes that load the base and its processor in the plain-PEFT snippet
    (a task's record has them: ``adapter_card(..., **get_task(name).card_fields())``); a base that is not a
    transformers model (`base_library`) gets the hubkit snippet only. `weights` says what the folder holds: "lora"
    (a PEFT adapter, possibly with modules trained in place beside it), "modules" (only modules trained in full, as
    trained_modules.safetensors, restored into the base) or "full" (the whole model).
    """
    if weights not in ("lora", "modules", "full"):
        raise CardError(f"weights must be 'lora', 'modules' or 'full', got {weights!r}.")
    _require(model_name=model_name, base_model=base_model, pipeline_tag=pipeline_tag, license=license)
    eval_results = [
        EvalResult(
            task_type=m.task_type or pipeline_tag,
            dataset_type=m.dataset_type,
            dataset_name=m.dataset_name,
            dataset_split=m.split,
            dataset_revision=dataset_revision,
            metric_type=m.name,
            metric_value=m.value,
        )
        for m in metrics
    ]
    data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        library_name="peft" if weights == "lora" else base_library,
        pipeline_tag=pipeline_tag,
        license=license,
        tags=_unique([*(ADAPTER_TAGS if weights == "lora" else ("hubkit",)), *tags]),
        datasets=_unique(datasets) or None,
        eval_results=eval_results or None,
        base_model_relation="adapter" if weights != "full" else "finetune",
    )
    adapter_repo = repo_id or (model_name if "/" in model_name else f"<your-namespace>/{model_name}")
    config_yaml = _config_yaml(training_config) if training_config else ""
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "adapter_card.md"),
        model_name=model_name,  # to_dict() drops it into model-index, the template still needs it
        task=task or pipeline_tag,
        adapter_repo=adapter_repo,
        auto_class=auto_class,
        auto_processor=auto_processor,
        auto_imports=", ".join(sorted({auto_class, auto_processor} - {None})),
        base_library=base_library,
        param_line=_param_line(trainable_params, total_params),
        metric_rows=list(metrics),
        dataset_revision=dataset_revision,
        training_config_yaml=config_yaml,
        versions=[(n, v) for n in VERSIONED_PACKAGES if (v := _installed_version(n))],
        notes=notes,
        weights=weights,
    )


def model_card(
    *,
    model_name: str,
    pipeline_tag: str,
    library_name: str = "transformers",
    tags: Iterable[str] = (),
    license: str = "apache-2.0",
    description: str,
    base_model: str | None = None,
) -> ModelCard:
    """Card for a plain (non-adapter) model repo, e.g. a tiny random-weight test model."""
    _require(model_name=model_name, pipeline_tag=pipeline_tag, license=license)
    data = ModelCardData(
        base_model=base_model,
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        license=license,
        tags=_unique(tags) or None,
    )
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "model_card.md"),
        model_name=model_name,
        description=description,
        versions=[(n, v) for n in VERSIONED_PACKAGES if (v := _installed_version(n))],
    )


def dataset_card(
    *,
    pretty_name: str,
    license: str = "other",
    task_categories: Iterable[str] = (),
    tags: Iterable[str] = (),
    description: str,
    num_samples: int | None = None,
    content_hash: str | None = None,
    source: str | None = None,
) -> DatasetCard:
    """Card for a data set repo; ``size_categories`` is derived from ``num_samples``."""
    _require(pretty_name=pretty_name, license=license)
    if num_samples is not None and (type(num_samples) is not int or num_samples < 0):
        raise CardError(f"num_samples={num_samples!r} must be a non-negative integer.")
    size = None if num_samples is None else [SIZE_CATEGORIES[min(max(len(str(num_samples)) - 3, 0), 10)]]
    data = DatasetCardData(
        pretty_name=pretty_name,
        license=license,
        task_categories=_unique(task_categories) or None,
        size_categories=size,
        tags=_unique(tags) or None,
    )
    return DatasetCard.from_template(
        data,
        template_path=str(TEMPLATES / "dataset_card.md"),
        description=description,
        num_samples_text=f"{num_samples:,}" if num_samples is not None else "not recorded",
        content_hash=content_hash,
        source=source,
    )


def space_card(
    *,
    title: str,
    emoji: str = "🔭",
    color_from: str = "indigo",
    color_to: str = "blue",
    sdk: str = "gradio",
    sdk_version: str | None = None,
    python_version: str = "3.11",
    app_file: str = "app.py",
    models: Iterable[str] = (),
    datasets: Iterable[str] = (),
    license: str = "apache-2.0",
    tags: Iterable[str] = (),
    short_description: str,
    suggested_hardware: str | None = None,
    hf_oauth: bool = False,
    body: str = "",
) -> str:
    """README.md text (Spaces YAML front matter + body) for a Space."""
    _require(title=title, short_description=short_description, app_file=app_file)
    if len(short_description) > SHORT_DESCRIPTION_MAX:
        raise CardError(
            f"short_description is {len(short_description)} characters ({short_description!r}); "
            f"the Hub allows at most {SHORT_DESCRIPTION_MAX}. Shorten it and put details in the body."
        )
    if sdk not in SPACE_SDKS:
        raise CardError(f"sdk={sdk!r} is not a Spaces SDK; use one of {', '.join(SPACE_SDKS)}.")
    for arg, color in (("color_from", color_from), ("color_to", color_to)):
        if color not in SPACE_COLORS:
            raise CardError(f"{arg}={color!r} is not a Spaces color; use one of {', '.join(SPACE_COLORS)}.")
    if sdk in ("gradio", "streamlit"):
        sdk_version = sdk_version or _installed_version(sdk)
        if not sdk_version:
            raise CardError(f"sdk_version is required for sdk={sdk!r} and {sdk} is not installed; pass sdk_version.")
    else:
        python_version = None  # only read for gradio / streamlit Spaces
    # Build in the order people expect at the top of a Space README; SpaceCardData would put its own fields first.
    fields = {
        "title": title,
        "emoji": emoji,
        "colorFrom": color_from,
        "colorTo": color_to,
        "sdk": sdk,
        "sdk_version": sdk_version,
        "python_version": python_version,
        "app_file": app_file,
        "short_description": short_description,
        "suggested_hardware": suggested_hardware,
        "hf_oauth": True if hf_oauth else None,
        "hf_oauth_scopes": ["write-repos"] if hf_oauth else None,
        "models": _unique(models) or None,
        "datasets": _unique(datasets) or None,
        "license": license,
        "tags": _unique(tags) or None,
    }
    data = SpaceCardData(**fields)
    data.to_yaml(original_order=list(fields))  # side effect: reorders the fields from_template will dump
    card = SpaceCard.from_template(
        data, template_path=str(TEMPLATES / "space_readme.md"), body=body.strip(), short_description=short_description
    )
    return str(card)


def read_card(path_or_dir: str | Path, *, repo_type: str = "model") -> RepoCard:
    """Load README.md (or the given file) as a ModelCard / DatasetCard / SpaceCard; CardError when unusable."""
    return _load(path_or_dir, repo_type)


def validate_card(path_or_dir: str | Path, *, repo_type: str = "model") -> list[str]:
    """Human-readable problems with a card on disk; an empty list means it is fine."""
    _check_repo_type(repo_type)
    try:
        raw = _load(path_or_dir, repo_type, card_cls=RepoCard)  # plain CardData: model-index not parsed yet
    except CardError as err:
        return [str(err)]
    path = _card_path(path_or_dir)
    meta = raw.data.to_dict()
    problems: list[str] = []

    def missing(*keys: str) -> None:
        problems.extend(f"{path}: missing '{key}' in the YAML metadata." for key in keys if not meta.get(key))

    if repo_type == "model":
        missing("license", "pipeline_tag")
        if meta.get("library_name") == "peft":
            missing("base_model")
        if "model-index" in meta:
            try:
                model_index_to_eval_results(meta["model-index"])
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                problems.append(f"{path}: 'model-index' cannot be parsed ({type(err).__name__}: {err}).")
    elif repo_type == "dataset":
        missing("license")
    else:
        sdk = meta.get("sdk")
        missing("title", "sdk")
        if sdk != "docker":  # docker Spaces run their Dockerfile, not an app_file
            missing("app_file")
        if sdk and sdk not in SPACE_SDKS:
            problems.append(f"{path}: sdk {sdk!r} is not one of {', '.join(SPACE_SDKS)}.")
        if sdk in ("gradio", "streamlit"):
            missing("sdk_version")
        if len(str(meta.get("short_description", ""))) > SHORT_DESCRIPTION_MAX:
            problems.append(f"{path}: short_description is longer than {SHORT_DESCRIPTION_MAX} characters.")
    return problems


def card_summary(card: RepoCard) -> dict[str, Any]:
    """Plain dict of a card's metadata plus its eval results, for display (``hubkit card REPO``)."""
    meta = card.data.to_dict()
    model_index = meta.pop("model-index", None)
    results = getattr(card.data, "eval_results", None)
    model_name = getattr(card.data, "model_name", None)
    if results is None and model_index:
        try:
            model_name, results = model_index_to_eval_results(model_index)
        except (KeyError, TypeError, ValueError, AttributeError):
            logger.warning("Could not parse model-index of the card; eval results left out of the summary.")
    summary: dict[str, Any] = {"repo_type": card.repo_type, **meta}
    if model_name:
        summary["model_name"] = model_name
    keys = {"metric": "metric_type", "value": "metric_value", "dataset": "dataset_name", "split": "dataset_split"}
    summary["eval_results"] = [{key: getattr(r, attr) for key, attr in keys.items()} for r in results or []]
    return summary


def _require(**fields: Any) -> None:
    for name, value in fields.items():
        if not isinstance(value, str) or not value.strip():
            raise CardError(f"{name}={value!r} must be a non-empty string.")


def _unique(values: Iterable[str] | str) -> list[str]:
    """Deduplicate, keep order; also turns tuples into lists (the Hub's yaml.dump would tag tuples as Python)."""
    if isinstance(values, str):
        values = [values]
    return list(dict.fromkeys(str(v) for v in values if v))


def _load(path_or_dir: str | Path, repo_type: str, card_cls: type[RepoCard] | None = None) -> RepoCard:
    _check_repo_type(repo_type)
    path = _card_path(path_or_dir)
    try:
        # A str that is not a file would make RepoCard.load download from the Hub, hence _card_path first.
        return (card_cls or CARD_CLASSES[repo_type]).load(path, repo_type=repo_type)
    except (yaml.YAMLError, ValueError) as err:
        raise CardError(f"{path}: the card's YAML metadata does not parse ({err}).") from err


def _check_repo_type(repo_type: str) -> None:
    if repo_type not in CARD_CLASSES:
        raise CardError(f"repo_type={repo_type!r} is not one of {', '.join(CARD_CLASSES)}.")


def _card_path(path_or_dir: str | Path) -> Path:
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / "README.md"
    if not path.is_file():
        raise CardError(f"{path}: no card here (README.md not found).")
    return path


def _plain(value: Any) -> Any:
    """Convert a config value into YAML-safe builtins (dataclasses, paths, tuples, sets, enums...)."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def redact_secrets(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a config with token / secret / password values replaced by "***" (for any file we write)."""
    return _redact(_plain(dict(mapping)))


def _redact(value: Any, key: str = "") -> Any:
    """Replace secret-looking values (by key name, or an hf_ token anywhere) with '***'."""
    if _SECRET_KEY.search(key) and value not in (None, "", False, {}, []):
        logger.info("Redacted %r from the training config in the card.", key)
        return REDACTED
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    if isinstance(value, str):
        return _HF_TOKEN_VALUE.sub(REDACTED, value)
    return value


def _config_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(_redact(_plain(config)), sort_keys=False, allow_unicode=True).strip()


def _param_line(trainable: int | None, total: int | None) -> str | None:
    """The line peft's ``print_trainable_parameters`` prints."""
    if trainable is None or total is None:
        return None
    if trainable < 0 or total <= 0 or trainable > total:
        raise CardError(
            f"trainable_params={trainable!r}, total_params={total!r}: need 0 <= trainable <= total, total > 0."
        )
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
