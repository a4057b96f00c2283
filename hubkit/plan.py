"""`hubkit lora plan`: which modules LoRA adapts on a base, and the parameter counts, without weights.

The architecture is built on the meta device from a config.json: bundled for the Hub ids the recipes
use (hubkit/model_configs), else read from the local store or a folder. No download, no memory.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import hub
from .adapters import lora_config, parameter_line, resolve_targets
from .errors import ConfigError, RepoNotFoundError
from .tasks import get_task, task_for_architecture

BUNDLED = Path(__file__).resolve().parent / "model_configs"


@dataclass(frozen=True)
class LoraPlan:
    base: str
    task: str
    architecture: str
    targets: tuple[str, ...]
    modules: tuple[str, ...]
    r: int
    alpha: int
    trainable: int
    total: int

    @property
    def line(self) -> str:
        return parameter_line(self.trainable, self.total)


def bundled_config_dir(repo_id: str) -> Path | None:
    folder = BUNDLED / repo_id.replace("/", "--")
    if (folder / "config.json").is_file():
        return folder
    denoiser = _denoiser_dir(folder)  # a diffusers pipeline's unet/ or transformer/ (PixCell)
    return denoiser if denoiser != folder else None


def find_config(base: str) -> Path:
    """A folder with the base's config.json: a path, a bundled config, or the store (local, then Hub)."""
    path = Path(base).expanduser()
    if path.is_dir():
        return _denoiser_dir(path)
    bundled = bundled_config_dir(base)
    if bundled:
        return bundled
    try:
        folder = hub.pull(base, include=["config.json", "unet/config.json", "transformer/config.json"])
    except RepoNotFoundError as err:
        known = ", ".join(sorted(p.name.replace("--", "/") for p in BUNDLED.iterdir() if p.is_dir()))
        err.add_note(f"Offline plans are bundled for: {known}")
        raise
    return _denoiser_dir(folder)


def _denoiser_dir(folder: Path) -> Path:
    """A diffusers pipeline folder's denoiser (unet/ or transformer/, e.g. PixCell), else the folder itself."""
    return next((folder / sub for sub in ("unet", "transformer") if (folder / sub / "config.json").is_file()), folder)


def build_on_meta(config_dir: Path) -> tuple[torch.nn.Module, str]:
    raw = json.loads((config_dir / "config.json").read_text())
    with torch.device("meta"):
        if "_class_name" in raw:
            import diffusers

            cls = getattr(diffusers, raw["_class_name"])
            return cls.from_config(cls.load_config(config_dir)), raw["_class_name"]
        hubkit_task = task_for_architecture((raw.get("architectures") or [""])[0])
        if hubkit_task is not None and hubkit_task.library_name.startswith("hubkit."):  # a hubkit model family
            cls = getattr(importlib.import_module(hubkit_task.library_name), raw["architectures"][0])
            return cls.from_config(raw), raw["architectures"][0]
        import transformers

        config = transformers.AutoConfig.from_pretrained(config_dir)
        arch = (config.architectures or [None])[0]
        if arch is None or not hasattr(transformers, arch):
            raise ConfigError(f"{config_dir}/config.json names no architecture hubkit can build ({arch!r})")
        return getattr(transformers, arch)(config), arch


def plan(
    base: str,
    *,
    preset: str | None = None,
    r: int | None = None,
    alpha: int | None = None,
    targets: list[str] | None = None,
) -> LoraPlan:
    """Resolve the LoRA targets for `base` and count parameters as peft would."""
    from peft import get_peft_model

    model, arch = build_on_meta(find_config(base))
    # The task whose LoRA preset applies: the one whose record lists the architecture the config names.
    task_name = preset or getattr(task_for_architecture(arch), "name", None)
    if task_name is None and not targets:
        raise ConfigError(f"No LoRA preset for architecture {arch}: pass --preset TASK or --targets a,b")
    spec = get_task(task_name) if task_name else None
    wanted = tuple(targets or spec.preset.targets)
    exclude = spec.preset.exclude if spec and not targets else None
    r = r if r is not None else (spec.preset.r if spec else 16)
    alpha = alpha if alpha is not None else (spec.preset.alpha if spec else 2 * r)
    resolved, modules = resolve_targets(model, wanted, exclude=exclude)
    peft_model = get_peft_model(model, lora_config(model, wanted, r=r, alpha=alpha, exclude=exclude))
    trainable, total = peft_model.get_nb_trainable_parameters()
    return LoraPlan(base, task_name or "custom", arch, tuple(resolved), tuple(modules), r, alpha, trainable, total)
