"""The bundled architecture configs build offline and match their recorded parameter counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "hubkit" / "model_configs"
PARAMS = json.loads((CONFIG_ROOT / "params.json").read_text())
FOLDERS = sorted(p.parent for p in CONFIG_ROOT.rglob("config.json"))


def _repo_id(config_file_dir: Path) -> str:
    top = config_file_dir.relative_to(CONFIG_ROOT).parts[0]
    org, _, name = top.partition("--")
    return f"{org}/{name}"


def _build_on_meta(folder: Path):
    raw = json.loads((folder / "config.json").read_text())
    if "_class_name" in raw:  # a diffusers model (the UNet), not a transformers one
        diffusers = pytest.importorskip("diffusers")
        model_cls = getattr(diffusers, raw["_class_name"])
        config = model_cls.load_config(folder)
        with torch.device("meta"):
            return model_cls.from_config(config)
    if raw.get("model_type") == "plant-vlm":  # a hubkit model family (hubkit.plant), not a transformers one
        from hubkit.plan import build_on_meta

        return build_on_meta(folder)[0]
    config = transformers.AutoConfig.from_pretrained(folder)
    model_cls = getattr(transformers, config.architectures[0])
    with torch.device("meta"):
        return model_cls(config)


def test_every_bundled_config_has_a_count_and_vice_versa():
    assert sorted(_repo_id(f) for f in FOLDERS) == sorted(PARAMS)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: str(f.relative_to(CONFIG_ROOT)))
def test_config_builds_with_recorded_parameter_count(folder: Path):
    model = _build_on_meta(folder)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[_repo_id(folder)]


def test_depth_anything_v2_small_lora_figure(capsys):
    peft = pytest.importorskip("peft")
    model = _build_on_meta(CONFIG_ROOT / "depth-anything--Depth-Anything-V2-Small-hf")
    assert sum(p.numel() for p in model.parameters()) == 24_785_089
    lora = peft.LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj"])
    peft_model = peft.get_peft_model(model, lora)
    assert peft_model.get_nb_trainable_parameters() == (442_368, 25_227_457)
    peft_model.print_trainable_parameters()
    assert "trainable params: 442,368 || all params: 25,227,457 || trainable%: 1.7535" in capsys.readouterr().out


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: str(f.relative_to(CONFIG_ROOT)))
def test_bundled_config_maps_to_a_task(folder: Path):
    """`hubkit lora plan` picks the preset of the task whose record lists the architecture the config names."""
    from hubkit.tasks import task_for_architecture

    raw = json.loads((folder / "config.json").read_text())
    architecture = raw.get("_class_name") or raw["architectures"][0]
    task = task_for_architecture(architecture)
    assert task is not None, architecture
    expected = "diffusers" if "_class_name" in raw else "hubkit.plant" if raw.get("model_type") == "plant-vlm" else None
    assert task.library_name == (expected or "transformers")


def test_every_task_default_base_is_bundled():
    """Every task's real default base plans offline, and maps back to that task."""
    from hubkit.plan import build_on_meta, bundled_config_dir
    from hubkit.tasks import get_task, list_tasks, task_for_architecture

    for name in list_tasks():
        task = get_task(name)
        folder = bundled_config_dir(task.default_base)
        assert folder is not None, task.default_base
        _, architecture = build_on_meta(folder)
        assert task_for_architecture(architecture) is task, (name, architecture)
