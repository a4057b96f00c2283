"""Cards written to disk must load back through huggingface_hub with the same metadata and eval results."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import DatasetCard, ModelCard, RepoCard

from hubkit import cards
from hubkit.cards import (
    Metric,
    adapter_card,
    card_summary,
    dataset_card,
    model_card,
    read_card,
    space_card,
    validate_card,
)
from hubkit.errors import CardError, HubkitError

BASE = "depth-anything/Depth-Anything-V2-Small-hf"
SECRET = "hf_abcdefghijklmnopqrstuvwxyz0123"


def _adapter(**overrides):
    kwargs = {
        "model_name": "depth-anything-nyu-lora",
        "base_model": BASE,
        "pipeline_tag": "depth-estimation",
        "tags": ("depth", "lora", "indoor", "depth"),
        "datasets": ("hubkit/nyu-mini",),
        "training_config": {
            "learning_rate": 1e-4,
            "lora": {"r": 8, "alpha": 16, "target_modules": ("query", "value")},
            "output_dir": Path("out/depth"),
            "hf_token": SECRET,
            "push": {"token": "secret-value"},
            "secrets": ["s3cr3t"],
            "max_new_tokens": 5,
            "pad_token_id": 0,
        },
        "trainable_params": 442_368,
        "total_params": 25_227_457,
        "metrics": [
            Metric("abs_rel", 0.123, "NYU mini", "hubkit/nyu-mini"),
            Metric("delta1", 0.875, "NYU mini", "hubkit/nyu-mini", split="test"),
        ],
        "dataset_revision": "sha256:0123abcd",
        "repo_id": "me/depth-anything-nyu-lora",
        "task": "depth",
        "auto_class": "AutoModelForDepthEstimation",
        "auto_processor": "AutoImageProcessor",
    }
    kwargs.update(overrides)
    return adapter_card(**kwargs)


def _save(card, tmp_path: Path) -> Path:
    path = tmp_path / "README.md"
    if isinstance(card, str):
        path.write_text(card, encoding="utf-8")
    else:
        card.save(path)
    return path


def test_adapter_card_metadata_round_trips(tmp_path):
    loaded = ModelCard.load(_save(_adapter(), tmp_path))
    data = loaded.data
    assert data.base_model == BASE
    assert data.base_model_relation == "adapter"
    assert data.library_name == "peft"
    assert data.pipeline_tag == "depth-estimation"
    assert data.tags == ["lora", "peft", "depth", "indoor"]
    assert data.datasets == ["hubkit/nyu-mini"]
    assert data.license == "apache-2.0"
    assert data.model_name == "depth-anything-nyu-lora"
    got = {(r.metric_type, r.metric_value, r.dataset_name, r.dataset_type, r.dataset_split) for r in data.eval_results}
    assert got == {
        ("abs_rel", 0.123, "NYU mini", "hubkit/nyu-mini", "validation"),
        ("delta1", 0.875, "NYU mini", "hubkit/nyu-mini", "test"),
    }
    assert {r.task_type for r in data.eval_results} == {"depth-estimation"}
    assert {r.dataset_revision for r in data.eval_results} == {"sha256:0123abcd"}
    assert validate_card(tmp_path) == []


def test_adapter_card_body(tmp_path):
    text = ModelCard.load(_save(_adapter(), tmp_path)).text
    assert "trainable params: 442,368 || all params: 25,227,457 || trainable%: 1.7535" in text
    assert 'hubkit.load("depth", base="depth-anything/Depth-Anything-V2-Small-hf", ' in text
    assert 'adapters=["me/depth-anything-nyu-lora"])' in text
    assert 'PeftModel.from_pretrained(base, "me/depth-anything-nyu-lora")' in text
    assert "from transformers import AutoImageProcessor, AutoModelForDepthEstimation\n\n" in text
    assert f'processor = AutoImageProcessor.from_pretrained("{BASE}")\nbase = AutoModelForDepthEstimation' in text
    assert "| abs_rel | 0.123 | NYU mini | validation |" in text
    assert "| delta1 | 0.875 | NYU mini | test |" in text
    assert "sha256:0123abcd" in text
    assert "- huggingface_hub: " in text
    config_block = text.split("```yaml\n", 1)[1].split("\n```", 1)[0]
    config = yaml.safe_load(config_block)
    assert config["learning_rate"] == 1e-4
    assert config["lora"] == {"r": 8, "alpha": 16, "target_modules": ["query", "value"]}
    assert config["output_dir"] == "out/depth"
    assert config["max_new_tokens"] == 5 and config["pad_token_id"] == 0


def test_secrets_never_reach_the_card(tmp_path):
    text = _save(_adapter(notes=None), tmp_path).read_text(encoding="utf-8")
    config = yaml.safe_load(text.split("```yaml\n", 1)[1].split("\n```", 1)[0])
    assert config["hf_token"] == "***"
    assert config["push"]["token"] == "***" and config["secrets"] == "***"
    assert SECRET not in text and "secret-value" not in text and "s3cr3t" not in text


def test_hf_token_in_any_value_is_redacted():
    card = _adapter(training_config={"command": f"hf upload --token {SECRET}"})
    assert SECRET not in str(card)


def test_adapter_card_without_optional_parts():
    card = _adapter(training_config=None, trainable_params=None, total_params=None, metrics=(), repo_id=None)
    assert card.data.eval_results is None
    assert "model-index" not in card.data.to_dict()
    assert "Parameter counts were not recorded." in card.text
    assert "<your-namespace>/depth-anything-nyu-lora" in card.text


def test_card_says_what_the_folder_holds_and_how_to_load_it(tmp_path):
    modules = ModelCard.load(_save(_adapter(weights="modules", repo_id="me/decoder"), tmp_path))
    assert "trained_modules.safetensors" in modules.text and "restore_trained_modules(model" in modules.text
    assert "A LoRA adapter" not in modules.text and "PeftModel" not in modules.text
    assert modules.data.library_name == "transformers" and "peft" not in modules.data.tags
    full = _adapter(weights="full")
    assert "every weight" in full.text and "PeftModel" not in full.text and full.data.base_model_relation == "finetune"
    lora = _adapter()
    assert "A LoRA adapter" in lora.text and lora.data.library_name == "peft" and "lora" in lora.data.tags
    with pytest.raises(CardError, match="weights must be"):
        _adapter(weights="merged")


def test_metric_task_type_override(tmp_path):
    card = _adapter(metrics=[Metric("miou", 0.5, "ADE", "ade20k", task_type="image-segmentation")])
    assert ModelCard.load(_save(card, tmp_path)).data.eval_results[0].task_type == "image-segmentation"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model_name": ""},
        {"base_model": ""},
        {"trainable_params": 10, "total_params": 5},
    ],
)
def test_adapter_card_bad_arguments(kwargs):
    with pytest.raises(CardError):
        _adapter(**kwargs)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.5", True])
def test_metric_value_must_be_finite_number(value):
    with pytest.raises(CardError, match="finite number"):
        Metric("acc", value, "d", "d")


def test_card_summary():
    summary = card_summary(_adapter())
    assert summary["repo_type"] == "model"
    assert summary["base_model"] == BASE
    assert summary["model_name"] == "depth-anything-nyu-lora"
    assert "model-index" not in summary
    expected = {"metric": "abs_rel", "value": 0.123, "dataset": "NYU mini", "split": "validation"}
    assert expected in summary["eval_results"]
    yaml.safe_dump(summary)  # plain builtins only


def test_card_summary_of_space(tmp_path):
    _save(space_card(title="Depth", short_description="Depth maps"), tmp_path)
    summary = card_summary(read_card(tmp_path, repo_type="space"))
    assert summary["repo_type"] == "space"
    assert summary["title"] == "Depth"
    assert summary["eval_results"] == []


def test_model_card_round_trips(tmp_path):
    card = model_card(
        model_name="tiny-depth",
        pipeline_tag="depth-estimation",
        tags=["tiny", "test"],
        description="Random weights for tests.",
        base_model=BASE,
    )
    loaded = ModelCard.load(_save(card, tmp_path))
    assert loaded.data.library_name == "transformers"
    assert loaded.data.pipeline_tag == "depth-estimation"
    assert loaded.data.tags == ["tiny", "test"]
    assert loaded.data.base_model == BASE
    assert "Random weights for tests." in loaded.text
    assert validate_card(tmp_path) == []


def test_dataset_card_round_trips(tmp_path):
    card = dataset_card(
        pretty_name="NYU mini",
        task_categories=("depth-estimation",),
        tags=["depth"],
        description="A few indoor scenes.",
        num_samples=1234,
        content_hash="sha256:feedbeef",
        source="https://example.org/nyu",
    )
    loaded = DatasetCard.load(_save(card, tmp_path))
    assert loaded.data.license == "other"
    assert loaded.data.pretty_name == "NYU mini"
    assert loaded.data.task_categories == ["depth-estimation"]
    assert loaded.data.size_categories == ["1K<n<10K"]
    assert loaded.data.tags == ["depth"]
    assert "1,234" in loaded.text and "sha256:feedbeef" in loaded.text and "https://example.org/nyu" in loaded.text
    assert validate_card(tmp_path, repo_type="dataset") == []


@pytest.mark.parametrize(("n", "bucket"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (2_000_000, "1M<n<10M")])
def test_size_categories(n, bucket):
    card = dataset_card(pretty_name="x", description="x", num_samples=n)
    assert card.data.size_categories == [bucket]


def test_space_card_yaml(tmp_path):
    text = space_card(
        title="Depth demo",
        models=["me/depth-lora", "me/depth-lora"],
        datasets=("hubkit/nyu-mini",),
        tags=["depth"],
        short_description="Depth maps from one photo",
        suggested_hardware="t4-small",
        hf_oauth=True,
        body="Upload an image.",
    )
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert list(meta)[:4] == ["title", "emoji", "colorFrom", "colorTo"]
    assert meta["emoji"] == "🔭"
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == cards._installed_version("gradio")
    assert meta["python_version"] == "3.11"
    assert meta["app_file"] == "app.py"
    assert meta["models"] == ["me/depth-lora"]
    assert meta["datasets"] == ["hubkit/nyu-mini"]
    assert meta["suggested_hardware"] == "t4-small"
    assert meta["hf_oauth"] is True and meta["hf_oauth_scopes"] == ["write-repos"]
    loaded = RepoCard.load(_save(text, tmp_path))
    assert loaded.data.title == "Depth demo"
    assert loaded.data.colorFrom == "indigo"
    assert "Upload an image." in loaded.text
    assert validate_card(tmp_path, repo_type="space") == []


def test_space_card_without_oauth_has_no_oauth_keys():
    meta = yaml.safe_load(space_card(title="x", short_description="x", sdk_version="5.0.0").split("---\n")[1])
    assert "hf_oauth" not in meta and "hf_oauth_scopes" not in meta and "suggested_hardware" not in meta
    assert meta["sdk_version"] == "5.0.0"


def test_space_short_description_limit():
    space_card(title="x", short_description="a" * 60)
    with pytest.raises(CardError, match="at most 60"):
        space_card(title="x", short_description="a" * 61)


@pytest.mark.parametrize("kwargs", [{"sdk": "flask"}, {"color_from": "teal"}, {"title": ""}])
def test_space_card_bad_arguments(kwargs):
    with pytest.raises(CardError):
        space_card(**{"title": "x", "short_description": "x", **kwargs})


def test_read_card_types(tmp_path):
    _save(_adapter(), tmp_path)
    assert isinstance(read_card(tmp_path), ModelCard)
    assert isinstance(read_card(tmp_path / "README.md"), ModelCard)
    assert isinstance(read_card(tmp_path, repo_type="dataset"), DatasetCard)
    with pytest.raises(CardError, match="repo_type"):
        read_card(tmp_path, repo_type="kernel")


def test_read_card_missing_readme(tmp_path):
    with pytest.raises(CardError, match="README.md") as info:
        read_card(tmp_path)
    assert isinstance(info.value, HubkitError) and isinstance(info.value, ValueError)
    with pytest.raises(CardError, match="README.md"):
        read_card(str(tmp_path / "README.md"))  # a str must not fall through to a Hub download
    assert "README.md not found" in validate_card(tmp_path)[0]


@pytest.mark.parametrize(
    "front_matter",
    ["license: [apache-2.0\n", "- just\n- a list\n"],
    ids=["broken-yaml", "not-a-mapping"],
)
def test_read_card_broken_yaml(tmp_path, front_matter):
    (tmp_path / "README.md").write_text(f"---\n{front_matter}---\n# hi\n", encoding="utf-8")
    with pytest.raises(CardError, match="README.md"):
        read_card(tmp_path)
    assert "does not parse" in validate_card(tmp_path)[0]


def _write_meta(tmp_path: Path, meta: dict) -> Path:
    (tmp_path / "README.md").write_text("---\n" + yaml.safe_dump(meta) + "---\n# card\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("repo_type", "meta", "expected"),
    [
        ("model", {"library_name": "transformers"}, ["'license'", "'pipeline_tag'"]),
        ("model", {"license": "mit", "pipeline_tag": "depth-estimation", "library_name": "peft"}, ["'base_model'"]),
        ("model", {"license": "mit", "pipeline_tag": "x", "model-index": [{"results": []}]}, ["'model-index'"]),
        ("model", {"license": "mit", "pipeline_tag": "x", "model-index": {"name": "x"}}, ["'model-index'"]),
        ("dataset", {"pretty_name": "x"}, ["'license'"]),
        ("space", {"emoji": "x"}, ["'title'", "'sdk'", "'app_file'"]),
        ("space", {"title": "x", "sdk": "flask", "app_file": "app.py"}, ["flask"]),
        ("space", {"title": "x", "sdk": "gradio", "app_file": "app.py"}, ["'sdk_version'"]),
        ("space", {"title": "x", "sdk": "docker"}, []),
    ],
)
def test_validate_card_problems(tmp_path, repo_type, meta, expected):
    problems = validate_card(_write_meta(tmp_path, meta), repo_type=repo_type)
    assert len(problems) == len(expected), problems
    for problem, needle in zip(problems, expected, strict=True):
        assert needle in problem and "README.md" in problem


def test_broken_model_index_is_a_card_error(tmp_path):
    _write_meta(tmp_path, {"license": "mit", "model-index": [{"results": []}]})
    with pytest.raises(CardError):
        read_card(tmp_path)


def test_no_f_string_yaml_in_cards_module():
    """Front matter comes from CardData / yaml, never from hand-written ``---`` or ``key: {value}`` f-strings."""
    source = inspect.getsource(cards)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            literal = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            assert "---" not in literal, literal
            assert not re.search(r"(?m)^\s*-?\s*[\w-]+:\s*\{\}", literal), literal  # `key: {value}` YAML lines
    assert "yaml.dump(" not in source  # safe_dump only
    templates = Path(cards.__file__).parent / "templates"
    for name in ("adapter_card.md", "model_card.md", "dataset_card.md", "space_readme.md"):
        assert (templates / name).read_text(encoding="utf-8").startswith("---\n{{ card_data }}\n---\n"), name


def test_adapter_card_load_snippet_follows_the_task_record(tmp_path):
    """The plain-PEFT snippet names the classes of the task's record; a diffusers base gets the hubkit one only."""
    from hubkit.tasks import get_task, list_tasks

    for name in list_tasks():
        task = get_task(name)
        fields = task.card_fields()
        text = _adapter(task=name, **fields, tags=(), metrics=()).text
        assert f'hubkit.load("{name}", base="{BASE}"' in text
        if task.library_name == "transformers":
            assert f'base = {task.auto_model}.from_pretrained("{BASE}")' in text
            assert (f" = {task.auto_processor}.from_pretrained" in text) == (task.auto_processor is not None)
        else:
            assert "PeftModel" not in text and f"The base is a {task.library_name} model" in text
    plain = _adapter(auto_class="AutoModel", auto_processor=None).text  # the defaults: no processor line
    assert "from transformers import AutoModel\n\nbase = AutoModel.from_pretrained" in plain
    assert "processor =" not in plain
