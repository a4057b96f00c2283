"""Training configuration: YAML recipe -> CLI overrides -> one frozen dataclass.

Every recipe subclasses `TrainConfig` with its own fields. `parse_config(cls, argv)` reads
`--config recipe.yaml`, applies `--key value` overrides (dashes or underscores), checks types and
values, and returns the frozen config; `config_dict(config)` is what goes into checkpoints and cards.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, HubkitError

SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = ("auto", "no", "fp16", "bf16")
TRACKERS = ("tensorboard", "trackio", "none")


def option(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    if default is dataclasses.MISSING and "default_factory" not in kw:
        return field(metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text}, **kw)


@dataclass(frozen=True)
class TrainConfig:
    """Fields every trainer shares. Recipes add theirs in a subclass."""

    base: str = option("base model: Hub id, store repo or folder", "")
    data: str = option("data set folder or dataset repo", "")
    output_dir: str = option("where checkpoints, logs and the final adapter go", "outputs/run")
    lora_r: int = option("LoRA rank", 16)
    lora_alpha: int = option("LoRA alpha (scale = alpha / r)", 32)
    lora_dropout: float = option("dropout on the LoRA input", 0.05)
    lora_targets: list[str] | None = option("module names to adapt; default: the task's preset", None)
    learning_rate: float = option("peak learning rate (AdamW)", 5e-5)
    weight_decay: float = option("AdamW weight decay", 0.0)
    epochs: int = option("passes over the training split", 10)
    max_steps: int = option("stop after this many optimizer steps (0 = run all epochs)", 0)
    batch_size: int = option("samples per process per micro-batch", 4)
    grad_accum: int = option("micro-batches per optimizer step", 1)
    mixed_precision: str = option("auto (bf16/fp16 on GPU, fp32 on CPU), no, fp16, bf16", "auto")
    gradient_checkpointing: bool = option("trade compute for memory in the base model", False)
    lr_schedule: str = option("constant, linear or cosine decay after warmup", "cosine")
    warmup_steps: int = option("linear warmup steps", 0)
    max_grad_norm: float = option("gradient clipping (0 = off)", 1.0)
    seed: int = option("seed for weights, data order, augmentation and dropout", 0)
    checkpoint_every: int = option("save a resumable checkpoint every N steps (0 = only at the end)", 0)
    keep_checkpoints: int = option("keep the newest K checkpoints", 2)
    resume: str | None = option("'latest' or a checkpoint folder to resume from", None)
    eval_every: int = option("evaluate every N steps (0 = at the end of each epoch)", 0)
    log_every: int = option("log the training loss every N steps", 10)
    report_to: str = option("tensorboard, trackio or none", "tensorboard")
    push_to_hub: str | None = option("repo id to push the adapter to at the end", None)
    hub: str | None = option("store to push to: local, hf or a folder (default: $HUBKIT_HUB or local)", None)
    num_workers: int = option("data loader worker processes (decode and augment off the main process)", 0)
    eval_before: bool = option("evaluate the base before training, for the card's before / after table", True)
    compile: bool = option("torch.compile the model (inductor): faster steps after a one-time compile", False)

    def __post_init__(self) -> None:
        checks = [
            (self.lora_r > 0, "lora_r", "a positive integer"),
            (self.lora_alpha > 0, "lora_alpha", "positive"),
            (0 <= self.lora_dropout < 1, "lora_dropout", "in [0, 1)"),
            (self.learning_rate > 0, "learning_rate", "positive"),
            (self.epochs > 0 or self.max_steps > 0, "epochs", "positive (or set max_steps)"),
            (self.batch_size > 0, "batch_size", "a positive integer"),
            (self.grad_accum > 0, "grad_accum", "a positive integer"),
            (self.mixed_precision in PRECISIONS, "mixed_precision", f"one of {PRECISIONS}"),
            (self.lr_schedule in SCHEDULES, "lr_schedule", f"one of {SCHEDULES}"),
            (self.report_to in TRACKERS, "report_to", f"one of {TRACKERS}"),
            (self.keep_checkpoints > 0, "keep_checkpoints", "at least 1"),
            (self.max_steps >= 0 and self.warmup_steps >= 0, "max_steps / warmup_steps", "zero or more"),
        ]
        for ok, name, what in checks:
            if not ok:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name.split(' ')[0])!r}")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Turn a YAML / CLI value into the field's type, or raise ConfigError naming the field."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            return [_coerce(name, item.strip() if isinstance(item, str) else item, args[0]) for item in items]
        if hint is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return hint(value)
    except (ValueError, TypeError):
        raise ConfigError(f"{name}: {value!r} is not a valid {getattr(hint, '__name__', hint)}") from None


def load_recipe(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"Recipe {str(path)!r} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"Recipe {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Recipe {str(path)!r} must be a mapping of field: value")
    return data


def build_config(cls, values: dict) -> Any:
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"Unknown config key(s) {unknown} for {cls.__name__}. Known: {', '.join(sorted(types_))}")
    return cls(**{k: _coerce(k, v, types_[k]) for k, v in values.items()})


def parse_config(cls, argv: list[str] | None = None, *, description: str | None = None):
    """`--config recipe.yaml` then `--key value` overrides -> a frozen `cls`."""
    parser = argparse.ArgumentParser(description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="YAML recipe; CLI flags override it")
    for f in dataclasses.fields(cls):
        flags = sorted({f"--{f.name}", f"--{f.name.replace('_', '-')}"})
        parser.add_argument(*flags, dest=f.name, help=f.metadata.get("help", ""), metavar="VALUE")
    args = vars(parser.parse_args(argv))
    recipe = load_recipe(args.pop("config")) if "config" in args else {}
    return build_config(cls, {**recipe, **args})


def run_trainer(main, cls, *, description: str | None = None, argv: list[str] | None = None) -> None:
    """A trainer's entry point: parse `cls` from the recipe and flags, run `main`, and end a failure with
    one line on stderr and exit code 1 (HUBKIT_DEBUG=1 shows the traceback)."""
    import logging
    import os
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(parse_config(cls, argv, description=description))
    except (HubkitError, OSError) as err:
        if os.environ.get("HUBKIT_DEBUG"):
            raise
        print(f"{Path(sys.argv[0]).name}: {err}", file=sys.stderr)
        sys.exit(1)


def config_dict(config) -> dict:
    """A plain dict of the resolved config (for YAML, checkpoints and cards)."""
    return dataclasses.asdict(config)


def dump_yaml(config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..cards import redact_secrets

    path.write_text(yaml.safe_dump(redact_secrets(config_dict(config)), sort_keys=False))
    return path
