"""The PixCell adapter: a trainable condition MLP plus LoRA on the denoiser's attention, saved together in one folder.

What trains (`AdapterSpec`):

- ``mlp="residual"`` (default): the model's ``condition_mlp`` (zero-initialised residual MLP in front of
  ``caption_projection``); ``mlp="caption_projection"``: the denoiser's own projection (``caption_projection``, or
  ``encoder_hid_proj`` in a UNet) made trainable instead; ``mlp="none"``: LoRA only.
  The MLP trains as a peft ``modules_to_save`` copy: each adapter carries its own, switching adapters switches it,
  and ``PeftModel.disable_adapter()`` (the Space's "base" column) runs the untouched original.
- LoRA on ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of every attention (``lora_scope="all"``: self- and
  cross-attention, as the seed does) or of the cross-attention only (``"cross"``: ``attn2.*``, as PixCell's
  authors do), rank `r`, `alpha`; gaussian init by default (the authors').

One adapter folder::

    adapter_config.json            PEFT LoRA config (modules_to_save names the MLP)
    adapter_model.safetensors      LoRA A/B + the MLP copy (PEFT keys): what `hubkit.load(..., adapters=[folder])`
                                   and `load_adapter` read
    condition_mlp.safetensors      the MLP alone, keyed by its path in the base (``condition_mlp.net.0.weight``)
    pixcell_adapter.json           the AdapterSpec, the MLP's config and the base's shape facts (checked on load)
    pytorch_lora_weights.safetensors   optional diffusers-style LoRA export (``transformer.<module>.lora_A.weight``,
                                   ``lora_adapter_metadata`` in the safetensors header)

    peft_model = add_adapter(model, AdapterSpec(r=8, lora_scope="cross"))   # trainable LoRA + MLP
    save_adapter(peft_model, folder, spec=spec, base_id="StonyBrook-CVLab/PixCell-256", diffusers_export=True)
    peft_model = load_adapter(load_pixcell(base_folder), folder)            # or hubkit.load(task, base, adapters=[..])

A training loop that writes the PEFT files itself (hubkit.training) calls `write_adapter_extras` from its
``export_fn`` for the other files; `MLP_PARAMETERS` is the regex of the MLP's parameters (its own learning rate).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import AdapterMismatchError, ConfigError

logger = logging.getLogger(__name__)
ADAPTER_INFO_FILE = "pixcell_adapter.json"
MLP_FILE = "condition_mlp.safetensors"
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_EXCLUDE = r"^(vae|encoder|condition_mlp)\."  # the VAE's mid-block attention also has to_q ...: never adapted
# The trainable MLP copies' parameters, for an optimizer group with its own learning rate.
MLP_PARAMETERS = r"(condition_mlp|caption_projection|encoder_hid_proj)\.modules_to_save\."
MLP_CHOICES = ("residual", "caption_projection", "none")
SCOPES = ("all", "cross")


@dataclass(frozen=True)
class AdapterSpec:
    """What an adapter trains; written into ``pixcell_adapter.json``."""

    mlp: str = "residual"  # residual | caption_projection | none
    lora_scope: str = "all"  # all: self + cross attention (the seed's); cross: attn2 only (PixCell's authors')
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    init: str = "gaussian"  # peft init_lora_weights: "gaussian" (the authors') or "default" (Kaiming A, zero B)

    def __post_init__(self):
        if self.mlp not in MLP_CHOICES:
            raise ConfigError(f"mlp must be one of {', '.join(MLP_CHOICES)}, got {self.mlp!r}")
        if self.lora_scope not in SCOPES:
            raise ConfigError(f"lora_scope must be 'all' (self + cross attention) or 'cross', got {self.lora_scope!r}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0 or self.alpha <= 0:
            raise ConfigError(f"LoRA r must be a positive integer and alpha positive, got r={self.r!r}, "
                              f"alpha={self.alpha!r}")  # fmt: skip
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in ("gaussian", "default"):
            raise ConfigError(f"init must be 'gaussian' or 'default', got {self.init!r}")

    @property
    def lora_targets(self) -> tuple[str, ...]:
        if self.lora_scope == "cross":
            return tuple(f"attn2.{name}" for name in ATTENTION_PROJECTIONS)
        return ATTENTION_PROJECTIONS

    def modules_to_save(self, model) -> tuple[str, ...]:
        """The module trained in full inside the adapter, named as peft matches it (a suffix of its path)."""
        if self.mlp == "residual":
            return ("condition_mlp",)
        if self.mlp == "caption_projection":
            return ("caption_projection",) if _base(model).kind == "transformer" else ("encoder_hid_proj",)
        return ()


def _base(model):
    from .model import _base as base_of

    return base_of(model)


def lora_config(model, spec: AdapterSpec):
    """The peft LoraConfig of `spec` on this model (targets resolved against its modules)."""
    from ..adapters import lora_config as hubkit_lora_config

    modules = spec.modules_to_save(model)
    return hubkit_lora_config(
        _base(model),
        spec.lora_targets,
        r=spec.r,
        alpha=spec.alpha,
        dropout=spec.dropout,
        exclude=LORA_EXCLUDE,
        init_lora_weights="gaussian" if spec.init == "gaussian" else True,
        modules_to_save=list(modules) or None,
    )


def add_adapter(model, spec: AdapterSpec = AdapterSpec(), *, name: str = "default"):
    """Attach a new trainable adapter (LoRA + the MLP copy) to a PixCellModel; return the PeftModel.

    Only the adapter's parameters require grad; peft's gaussian LoRA init keeps B at zero, so the new adapter starts
    as the base model."""
    from peft import PeftModel, get_peft_model

    config = lora_config(model, spec)
    if isinstance(model, PeftModel):
        model.add_adapter(name, config)
        model.set_adapter(name)
        return model
    return get_peft_model(model, config, adapter_name=name)


def _mlp_state(model, spec: AdapterSpec, name: str) -> dict[str, torch.Tensor]:
    """The adapter's MLP copy, keyed by the module's path in the base model."""
    base = _base(model)
    out = {}
    for path, module in base.named_modules():
        if not path or not any(path == m or path.endswith("." + m) for m in spec.modules_to_save(model)):
            continue
        copies = getattr(module, "modules_to_save", None)
        if copies is None or name not in copies:
            raise AdapterMismatchError(f"{path} has no trained copy for adapter {name!r}; was it added by add_adapter?")
        for key, value in copies[name].state_dict().items():
            out[f"{path}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
    return out


def _lora_state(model, name: str) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def export_diffusers_lora(model, path: str | Path, *, name: str = "default") -> Path:
    """Write the adapter's LoRA weights as diffusers saves them (``pytorch_lora_weights.safetensors``): keys
    ``transformer.transformer_blocks.0.attn1.to_q.lora_A.weight`` (``unet.`` for a UNet) and the LoRA config as
    ``lora_adapter_metadata`` in the header. The condition MLP is not part of it (see ``condition_mlp.safetensors``)."""
    from safetensors.torch import save_file

    path = Path(path)
    prefix = "base_model.model."
    state = {k.removeprefix(prefix): v for k, v in _lora_state(model, name).items() if ".lora_" in k}
    kind = _base(model).kind
    config = model.peft_config[name].to_dict()
    keep = ("r", "lora_alpha", "lora_dropout", "target_modules", "init_lora_weights", "use_dora", "use_rslora")
    metadata = {f"{kind}.{k}": (sorted(v) if isinstance(v, (set, list, tuple)) else v) for k, v in config.items()
                if k in keep}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path, metadata={"format": "pt", "lora_adapter_metadata": json.dumps(metadata, sort_keys=True)})
    return path


def write_adapter_extras(
    model,
    folder: str | Path,
    *,
    spec: AdapterSpec,
    name: str = "default",
    base_id: str | None = None,
    diffusers_export: bool = False,
) -> list[Path]:
    """Write ``condition_mlp.safetensors``, ``pixcell_adapter.json`` (and the diffusers export) into `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    mlp = _mlp_state(model, spec, name) if spec.mlp != "none" else {}
    if mlp:
        save_file(mlp, folder / MLP_FILE, metadata={"format": "pt"})
        written.append(folder / MLP_FILE)
    base = _base(model)
    info: dict[str, Any] = {
        "format": "hubkit-pixcell-adapter",
        "version": 1,
        "spec": asdict(spec),
        "lora_targets": list(spec.lora_targets),
        "modules_to_save": list(spec.modules_to_save(model)),
        "condition_mlp": base.condition_mlp.config if spec.mlp == "residual" else None,
        "mlp_file": MLP_FILE if mlp else None,
        "base_model": base_id,
        "base": base.describe(),
    }
    (folder / ADAPTER_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    written.append(folder / ADAPTER_INFO_FILE)
    if diffusers_export:
        written.append(export_diffusers_lora(model, folder / DIFFUSERS_LORA_FILE, name=name))
    return written


def save_adapter(
    model,
    folder: str | Path,
    *,
    spec: AdapterSpec,
    name: str = "default",
    base_id: str | None = None,
    diffusers_export: bool = False,
) -> Path:
    """Save adapter `name` of a PeftModel (from `add_adapter`) as the one folder the module docstring describes."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_lora_state(model, name), folder / "adapter_model.safetensors", metadata={"format": "pt"})
    model.peft_config[name].save_pretrained(folder)
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = base_id  # the id users load it on, not a local path
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    write_adapter_extras(model, folder, spec=spec, name=name, base_id=base_id, diffusers_export=diffusers_export)
    logger.info("saved PixCell adapter %s to %s", name, folder)
    return folder


def read_adapter_info(folder: str | Path) -> dict | None:
    path = Path(folder) / ADAPTER_INFO_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise AdapterMismatchError(f"{path} is not valid JSON: {err}") from None


def check_adapter_fits(model, folder: str | Path) -> None:
    """Refuse (AdapterMismatchError) an adapter whose ``pixcell_adapter.json`` records a base of another shape."""
    info = read_adapter_info(folder)
    if info is None:
        return
    have, made_for = _base(model).describe(), info.get("base") or {}
    wrong = {k: (v, have.get(k)) for k, v in made_for.items() if k in have and have[k] != v}
    if wrong:
        detail = "; ".join(f"{k} {theirs} (this base: {ours})" for k, (theirs, ours) in wrong.items())
        raise AdapterMismatchError(
            f"Adapter {folder} was trained on a base of another shape ({info.get('base_model') or 'unknown id'}): "
            f"{detail}. Load it on the base it was trained for."
        )


def load_adapter(model, folder: str | Path, *, name: str = "default", base_id: str | None = None):
    """Put a saved adapter (LoRA + its MLP copy) on a PixCellModel (or a PeftModel around one); return the
    PeftModel with `name` active. Checks the base's shape first, then hubkit.adapters.attach_adapter checks keys
    and tensor shapes."""
    from ..adapters import attach_adapter

    check_adapter_fits(model, folder)
    model = attach_adapter(model, folder, name=name, base_id=base_id)
    model.set_adapter(name)
    return model
