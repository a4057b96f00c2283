"""LoRA adapters: resolve targets to what a model has, read adapters safely, attach, remap old keys, count.

Adapters are PEFT folders (`adapter_config.json` + `adapter_model.safetensors`). Everything that
puts an adapter on a base goes through `attach_adapter`, which refuses (never silently half-loads)
an adapter whose base, key names or shapes do not fit.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from .errors import AdapterConfigError, AdapterMismatchError, ConfigError, UnsafePickleError, UnsafeWeightsError

logger = logging.getLogger(__name__)
TRAINED_MODULES_FILE = "trained_modules.safetensors"  # modules trained in place, saved beside an adapter
# peft 0.21 still calls transformers 5's deprecated `is_gradient_checkpointing` on every wrap; users can't act on it.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning)

# Module names changed between transformers 4 and 5 (ViT / DINOv2 family attention). Old name -> new.
TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "query": ("q_proj",),
    "key": ("k_proj",),
    "value": ("v_proj",),
    "dense": ("o_proj",),
    "q_proj": ("query",),
    "k_proj": ("key",),
    "v_proj": ("value",),
}
# State-dict key renames for adapters saved against transformers 4 module paths.
LEGACY_KEY_RENAMES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\.attention\.attention\.query\."), ".attention.q_proj."),
    (re.compile(r"\.attention\.attention\.key\."), ".attention.k_proj."),
    (re.compile(r"\.attention\.attention\.value\."), ".attention.v_proj."),
    (re.compile(r"\.attention\.output\.dense\."), ".attention.o_proj."),
]


def _leaf_names(model: torch.nn.Module) -> list[str]:
    """Names of the adaptable modules: leaves, with already-adapted layers counted as the layer they wrap."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = []
    for name, module in model.named_modules():
        if not name or ".base_layer" in name or ".lora_" in name or name.startswith("lora_"):
            continue
        if isinstance(module, BaseTunerLayer) or not list(module.children()):
            names.append(name)
    return names


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def resolve_targets(
    model: torch.nn.Module, targets: Iterable[str], *, exclude: str | None = None
) -> tuple[list[str], list[str]]:
    """Map target names (as a recipe wrote them) to names this model has.

    Returns (targets to give peft, full names of the matched modules). Raises AdapterMismatchError
    naming the targets that match nothing, with the model's module names that look closest.
    """
    leaves = [n for n in _leaf_names(model) if not (exclude and re.search(exclude, n))]
    resolved, matched, missing = [], [], []
    for target in targets:
        for candidate in (target, *TARGET_ALIASES.get(target, ())):
            hits = [n for n in leaves if _matches(n, candidate)]
            if hits:
                resolved.append(candidate)
                matched.extend(hits)
                break
        else:
            missing.append(target)
    if missing:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in leaves})
        raise AdapterMismatchError(
            f"LoRA targets {missing} match no module of {type(model).__name__}. "
            f"Module names it has: {', '.join(suffixes[:40])}"
        )
    return list(dict.fromkeys(resolved)), sorted(set(matched))


def lora_config(
    model: torch.nn.Module,
    targets: Sequence[str],
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    exclude: str | None = None,
    init_lora_weights: bool | str = True,
    modules_to_save: list[str] | None = None,
):
    """A peft LoraConfig whose target modules are exactly the (resolved) modules of this model; the modules
    named in `modules_to_save` (new heads, projection MLPs) train in full and are saved with the adapter."""
    from peft import LoraConfig

    if r <= 0 or alpha <= 0:
        raise ConfigError(f"LoRA r and alpha must be positive integers, got r={r}, alpha={alpha}")
    resolved, _ = resolve_targets(model, targets, exclude=exclude)
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=resolved,
        # peft full-matches a string exclude; ours is a search pattern (e.g. keep a VAE out of a UNet preset)
        exclude_modules=f".*(?:{exclude}).*" if exclude else None,
        init_lora_weights=init_lora_weights,
        modules_to_save=modules_to_save,
    )


def parameter_line(trainable: int, total: int) -> str:
    """The line peft's print_trainable_parameters prints."""
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total), counting shared tensors once, as peft does."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


# -- reading adapter folders ---------------------------------------------------------------
def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _names_or_pattern(value: object) -> bool:
    return value is None or isinstance(value, str) or _is_names(value)


# adapter_config.json fields that peft reads without checking (a wrong type ends in a bare TypeError deep inside it):
# field -> (test, what the field must be)
CONFIG_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "peft_type": (lambda v: isinstance(v, str), "a string such as 'LORA'"),
    "base_model_name_or_path": (lambda v: v is None or isinstance(v, str), "a repo id or path (a string) or null"),
    "r": (lambda v: _is_int(v) and v > 0, "a positive integer (the LoRA rank)"),
    "lora_alpha": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "lora_dropout": (lambda v: _is_number(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "target_modules": (_names_or_pattern, "a list of module names, a regex string or null"),
    "exclude_modules": (_names_or_pattern, "a list of module names, a regex string or null"),
    "modules_to_save": (lambda v: v is None or _is_names(v), "a list of module names or null"),
    "layers_to_transform": (
        lambda v: v is None or _is_int(v) or (isinstance(v, list) and all(map(_is_int, v))),
        "an integer, a list of integers or null",
    ),
    "rank_pattern": (lambda v: v is None or isinstance(v, dict), "an object (module pattern -> rank) or null"),
    "alpha_pattern": (lambda v: v is None or isinstance(v, dict), "an object (module pattern -> alpha) or null"),
    "bias": (lambda v: isinstance(v, str) and v in ("none", "all", "lora_only"), "'none', 'all' or 'lora_only'"),
    "fan_in_fan_out": (lambda v: isinstance(v, bool), "true or false"),
    "use_rslora": (lambda v: isinstance(v, bool), "true or false"),
    "use_dora": (lambda v: isinstance(v, bool), "true or false"),
    "init_lora_weights": (lambda v: isinstance(v, (bool, str)), "true, false or an init method name"),
}


def check_adapter_config(config: object, path: Path) -> dict:
    """Return `config` if it is a JSON object whose known fields have usable types; else AdapterConfigError."""
    if not isinstance(config, dict):
        raise AdapterConfigError(path, None, config, "a JSON object")
    for field, (ok, expected) in CONFIG_FIELDS.items():
        if field in config and not ok(config[field]):
            raise AdapterConfigError(path, field, config[field], expected)
    return config


def load_pickle_weights(path: Path):
    """torch.load(weights_only=True) a pickle the user opted in to; UnsafePickleError for what weights_only refuses."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # a class, a function (os.system), an opcode weights_only will not run
        raise UnsafePickleError.from_unpickling(path, err) from None


def read_adapter(folder: str | Path, *, allow_pickle: bool = False) -> tuple[dict, dict[str, torch.Tensor]]:
    """Return (adapter_config as a dict, state dict) from a PEFT folder; safetensors unless opted in."""
    folder = Path(folder)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterMismatchError(f"{folder} is not a PEFT adapter folder: adapter_config.json is missing")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        raise AdapterMismatchError(f"{config_file} is not valid JSON: {err}") from None
    config = check_adapter_config(config, config_file)
    safe = folder / "adapter_model.safetensors"
    pickled = folder / "adapter_model.bin"
    if safe.is_file():
        from safetensors.torch import load_file

        try:
            return config, load_file(safe)
        except Exception as err:  # safetensors raises its own error types for truncated / corrupt files
            raise AdapterMismatchError(f"{safe} is corrupt or truncated: {err}") from None
    if pickled.is_file():
        if not allow_pickle:
            raise UnsafeWeightsError(
                f"{pickled} is a pickle, which can run code when loaded. Convert it to safetensors, or opt in "
                "with allow_pickle=True (--allow-pickle) to load it with torch.load(weights_only=True)."
            )
        try:
            state = load_pickle_weights(pickled)
        except (RuntimeError, EOFError, KeyError, ValueError) as err:  # truncated, empty, not a torch file
            raise AdapterMismatchError(f"{pickled} is corrupt or truncated: {type(err).__name__}: {err}") from None
        if not isinstance(state, dict):
            raise AdapterMismatchError(f"{pickled} holds a {type(state).__name__}, not a state dict of tensors")
        odd = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
        if odd is not None:
            raise AdapterMismatchError(
                f"{pickled} holds {type(state[odd]).__name__} at {odd!r}; an adapter state dict maps names to tensors"
            )
        return config, state
    raise AdapterMismatchError(f"{folder} has no adapter_model.safetensors (or adapter_model.bin)")


def remap_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, new in LEGACY_KEY_RENAMES:
            key = pattern.sub(new, key)
        out[key] = value
    return out


def _strip_adapter_name(key: str, name: str) -> str:
    return key.replace(f".{name}.", ".")


def _describe(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_base(adapter_config: dict, base_id: str | None, *, folder: Path) -> None:
    """Refuse an adapter made for another base, when both sides name a Hub repo."""
    recorded = adapter_config.get("base_model_name_or_path")
    if not recorded or not base_id or Path(base_id).exists() or Path(recorded).exists():
        return
    if recorded.count("/") == 1 and base_id.count("/") == 1 and recorded != base_id:
        raise AdapterMismatchError(
            f"Adapter {folder} was trained on {recorded!r} but the base is {base_id!r}. Load it on {recorded!r}, "
            "or pass check_base=False if the bases are the same architecture and weights."
        )


def attach_adapter(
    model: torch.nn.Module,
    folder: str | Path,
    *,
    name: str,
    base_id: str | None = None,
    allow_pickle: bool = False,
    check_base_model: bool = True,
):
    """Load a PEFT adapter folder onto `model` (a base or a PeftModel) as adapter `name`; return the PeftModel."""
    from peft import LoraConfig, PeftModel
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    folder = Path(folder)
    config_dict, state = read_adapter(folder, allow_pickle=allow_pickle)
    if check_base_model:
        check_base(config_dict, base_id, folder=folder)
    if config_dict.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatchError(f"{folder} is a {config_dict.get('peft_type')} adapter; hubkit loads LoRA only")
    known = set(LoraConfig.__dataclass_fields__)
    try:
        config = LoraConfig(**{k: v for k, v in config_dict.items() if k in known})
    except (TypeError, ValueError) as err:  # fields CONFIG_FIELDS does not check; peft's own validation
        raise AdapterMismatchError(
            f"{folder / 'adapter_config.json'} is not a LoRA config peft accepts: {err}"
        ) from None
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if isinstance(config.target_modules, (list, set, tuple)):  # names may predate transformers 5
        config.target_modules = set(resolve_targets(base, sorted(config.target_modules))[0])
    config.inference_mode = True
    fresh = not isinstance(model, PeftModel)
    was_training = model.training
    try:
        if fresh:
            model = PeftModel(model, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    except ValueError as err:  # peft's NoMatchingPeftModuleError and friends
        raise AdapterMismatchError(f"Adapter {folder} targets modules {type(base).__name__} lacks: {err}") from None

    def undo() -> None:  # leave the base exactly as it was before this call
        if fresh:
            model.unload()
        else:
            model.delete_adapter(name)

    expected = {
        _strip_adapter_name(k, name): v
        for k, v in get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False).items()
    }
    if set(state) != set(expected):
        state = remap_legacy_keys(state)
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        undo()
        raise AdapterMismatchError(
            f"Adapter {folder} does not fit {type(base).__name__}: "
            f"missing keys: {_describe(missing) or 'none'}; unexpected keys: {_describe(unexpected) or 'none'}"
        )
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        undo()
        key, got, want = wrong[0]
        raise AdapterMismatchError(
            f"Adapter {folder} has shapes that do not fit the base ({len(wrong)} tensors), e.g. {key}: "
            f"adapter {got} vs base {want}. It was trained on a different model size."
        )
    try:  # modules the run trained in place (e.g. a conditioning MLP): into the base, shared by its adapters
        restore_trained_modules(model, folder)
    except AdapterMismatchError:
        undo()
        raise
    set_peft_model_state_dict(model, state, adapter_name=name)
    model.train(was_training)  # peft switches to train mode (dropout on); keep what the caller had
    logger.info("attached adapter %s from %s (%d tensors)", name, folder, len(state))
    return model


def restore_trained_modules(model: torch.nn.Module, folder: str | Path) -> list[str]:
    """Load trained_modules.safetensors from an adapter folder into the base (in place); return the modules."""
    from safetensors.torch import load_file

    path = Path(folder) / TRAINED_MODULES_FILE
    if not path.is_file():
        return []
    state = load_file(path)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = base.state_dict()
    unknown = sorted(k for k in state if k not in own)
    if unknown:
        raise AdapterMismatchError(f"{path} holds tensors {type(base).__name__} lacks: {unknown[:5]}")
    shapes = [k for k in state if tuple(own[k].shape) != tuple(state[k].shape)]
    if shapes:
        k = shapes[0]
        raise AdapterMismatchError(f"{path}: {k} has shape {tuple(state[k].shape)}, the base has {tuple(own[k].shape)}")
    # remove_duplicate=False: a tied weight saved under its second name (an output head tied to an embedding) is found
    params = dict(base.named_parameters(remove_duplicate=False))
    params.update(dict(base.named_buffers(remove_duplicate=False)))
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value.to(params[key].dtype))
    return sorted({k.rsplit(".", 1)[0] for k in state})
