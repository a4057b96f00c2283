"""What a recipe trains: LoRA (targets + exclude), full copies of new heads, modules trained in place, or the
whole model; parameter groups with their own learning rate; a preparation hook (k-bit, checkpointing)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParamGroup:
    """Parameters whose name matches `pattern` (a regex, searched) train with their own lr / weight decay."""

    pattern: str
    lr: float | None = None
    weight_decay: float | None = None

    def __post_init__(self):
        try:
            re.compile(self.pattern)
        except re.error as err:
            raise ConfigError(f"ParamGroup pattern {self.pattern!r} is not a regex: {err}") from None
        if self.lr is not None and self.lr < 0:
            raise ConfigError(f"ParamGroup {self.pattern!r}: lr must be >= 0, got {self.lr}")


@dataclass(frozen=True)
class Trainable:
    """The recipe's declaration of what trains (the loop reads LoRA rank / alpha / dropout from the config).

    - `lora`: adapt the task preset's modules (or `lora_targets`); `lora_exclude` (default: the preset's) is
      kept whatever the targets, so a custom target list never reaches into a VAE or a new head.
    - `modules_to_save`: modules copied and trained in full inside the adapter (a new classifier head, a
      projection MLP); saved in adapter_model.safetensors and switched with the adapter.
    - `full_modules`: modules trained in place without LoRA (small conditioning MLPs); saved as
      trained_modules.safetensors in the adapter folder and restored into the base when the adapter loads.
    - `lora=False` and no `full_modules`: the whole model trains (a distilled student) and is saved in full.
    - `groups`: parameter groups, first match wins; the rest use the config's learning_rate / weight_decay.
    - `prepare`: called on the base before LoRA is attached (k-bit preparation, gradient checkpointing).
    """

    lora: bool = True
    lora_targets: tuple[str, ...] | None = None
    lora_exclude: str | None = None
    modules_to_save: tuple[str, ...] = ()
    full_modules: tuple[str, ...] = ()
    groups: tuple[ParamGroup, ...] = ()
    prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = field(default=None, compare=False)

    @property
    def saves_adapter(self) -> bool:
        return self.lora or bool(self.full_modules)


def kbit_preparation(*, gradient_checkpointing: bool = True) -> Callable[[torch.nn.Module], torch.nn.Module]:
    """QLoRA's preparation of a k-bit base (norms in fp32, input grads, checkpointing), as a `prepare` hook."""

    def prepare(model: torch.nn.Module) -> torch.nn.Module:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )

    return prepare


def _modules(model: torch.nn.Module, names: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    found = {}
    for name in names:
        try:
            found[name] = model.get_submodule(name)
        except AttributeError:
            tops = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(
                f"full_modules: {type(model).__name__} has no module {name!r}; top level: {tops}"
            ) from None
    return found


def build_trainable_model(base: torch.nn.Module, trainable: Trainable, config, preset) -> torch.nn.Module:
    """The model the loop trains: `base` prepared, with LoRA attached (or not), and the right parameters unfrozen."""
    from peft import get_peft_model

    from ..adapters import lora_config

    if trainable.prepare is not None:
        base = trainable.prepare(base)
    if trainable.lora:
        targets = config.lora_targets or trainable.lora_targets or preset.targets
        peft_config = lora_config(
            base,
            targets,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            exclude=trainable.lora_exclude if trainable.lora_exclude is not None else preset.exclude,
            modules_to_save=list(trainable.modules_to_save) or None,
        )
        model = get_peft_model(base, peft_config)
    else:
        if trainable.modules_to_save:
            raise ConfigError("modules_to_save needs lora=True (they are saved inside the adapter)")
        model = base
        model.requires_grad_(not trainable.full_modules)
    for module in _modules(_base_of(model), trainable.full_modules).values():
        module.requires_grad_(True)
    for param in model.parameters():  # trainable weights stay fp32 under fp16 / bf16 autocast
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    return model


def _base_of(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def optimizer_groups(model: torch.nn.Module, groups: tuple[ParamGroup, ...], *, lr: float, weight_decay: float):
    """AdamW parameter groups: the recipe's groups (first matching pattern wins), then the rest."""
    buckets: list[list[torch.nn.Parameter]] = [[] for _ in range(len(groups) + 1)]
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        index = next((i for i, g in enumerate(groups) if re.search(g.pattern, name)), len(groups))
        buckets[index].append(param)
    out = []
    for group, params in zip((*groups, None), buckets, strict=True):
        if not params:
            if group is not None:
                logger.warning("parameter group %r matches no trainable parameter", group.pattern)
            continue
        out.append(
            {
                "params": params,
                "lr": lr if group is None or group.lr is None else group.lr,
                "weight_decay": weight_decay if group is None or group.weight_decay is None else group.weight_decay,
                "name": "default" if group is None else group.pattern,
            }
        )
    if not out:
        raise ConfigError("Nothing to train: the recipe's trainable declaration leaves every parameter frozen")
    return out


def trained_module_state(model: torch.nn.Module, names: tuple[str, ...], full_state: dict | None = None) -> dict:
    """The tensors of the modules trained in place, keyed by their path in the base model, on the host."""
    if not names:
        return {}
    base = _base_of(model)
    state = {}
    for name, module in _modules(base, names).items():
        for key, value in module.state_dict().items():
            state[f"{name}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
    return state
