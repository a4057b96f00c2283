"""One optimised model as a folder (and a store repo): how it is saved, and how it loads back to run.

Every variant folder holds `hubkit_variant.json` (its kind and format), `config.json` and the processor's
`preprocessor_config.json`, and its weights in one of four formats:

- `transformers`: `model.safetensors` (fp32, maybe sparse); loads with `AutoModelForImageClassification`.
- `pruned`: `model.safetensors` + `pruned_structure.json` (constructor arguments of the layers whose shapes the
  config no longer describes); loads as the config's model with those layers rebuilt, then the weights (strict).
- `torchao`: `model.safetensors` holding int8 weights + scales as torchao tensor subclasses, flattened by torchao's
  safetensors support (the layout in the file's header metadata); loads into the config's model with
  `load_state_dict(assign=True)`: no pickle, no re-quantization.
- `onnx`: `model.onnx` (QDQ int8 or fp32, BatchNorm folded); loads with ONNX Runtime on CPU.

`load_variant(folder_or_repo)` returns a `VariantModel` whose `logits(pixel_values)` runs any of them the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

VARIANT_FILE = "hubkit_variant.json"
STRUCTURE_FILE = "pruned_structure.json"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"
FORMATS = ("transformers", "pruned", "torchao", "onnx")
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx_data")


class LogitsModule(torch.nn.Module):
    """pixel_values -> logits, for export, tracing and the training loop (no save_pretrained of its own, so the
    loop saves its state dict and reloads it into a copy of the same structure)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


@dataclass
class VariantModel:
    """A loaded variant: `logits(pixel_values)` on float32 NCHW arrays, whatever the runtime."""

    name: str
    format: str
    folder: Path
    runtime: Any  # a torch module (eval mode) or an onnxruntime InferenceSession
    id2label: dict[int, str]
    info: dict

    def logits(self, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(pixel_values, torch.Tensor):
            pixel_values = pixel_values.detach().cpu().numpy()
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if self.format == "onnx":
            return self.runtime.run(None, {"pixel_values": pixel_values})[0]
        with torch.inference_mode():
            return self.runtime(pixel_values=torch.from_numpy(pixel_values)).logits.float().numpy()

    def parameters(self) -> int:
        if self.format == "onnx":
            return int(self.info.get("parameters", 0))
        return sum(_numel(p) for p in self.runtime.parameters())


def _numel(param: torch.Tensor) -> int:
    return int(np.prod(param.shape))


def weights_size(folder: str | Path) -> int:
    """Bytes of the weight files (safetensors / ONNX) in `folder`: the size a deployment ships."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def write_variant_info(folder: Path, *, name: str, format: str, kind: str, source: str, **extra) -> dict:
    if format not in FORMATS:
        raise ConfigError(f"variant format must be one of {FORMATS}, got {format!r}")
    info = {"name": name, "format": format, "kind": kind, "source": source, **extra}
    (folder / VARIANT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def load_variant(folder_or_repo: str | Path, **pull_kwargs) -> VariantModel:
    """Load a variant folder or store repo written by `hubkit optimize` (or a plain transformers classifier)."""
    from .. import hub

    folder = hub.resolve(folder_or_repo, **pull_kwargs)
    info_path = folder / VARIANT_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"name": folder.name, "format": "transformers"}
    fmt = info.get("format")
    config = _config(folder)
    id2label = {int(k): v for k, v in config.id2label.items()}
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        runtime = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    elif fmt == "transformers":
        from transformers import AutoModelForImageClassification

        runtime = AutoModelForImageClassification.from_pretrained(folder)
    elif fmt == "pruned":
        runtime = _load_pruned(folder, config)
    elif fmt == "torchao":
        runtime = _load_torchao(folder, config)
    else:
        raise ConfigError(f"{folder}: unknown variant format {fmt!r} in {VARIANT_FILE} (known: {FORMATS})")
    if isinstance(runtime, torch.nn.Module):
        runtime.eval()
    return VariantModel(info.get("name", folder.name), fmt, folder, runtime, id2label, info)


def _config(folder: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


def _from_config(config) -> torch.nn.Module:
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_config(config)


# --- pruned models: the config's model with the pruned layers rebuilt to the saved shapes --------------------------

_ARGS = {
    torch.nn.Conv2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"),
    torch.nn.Linear: ("in_features", "out_features"),
    torch.nn.BatchNorm2d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    torch.nn.LayerNorm: ("normalized_shape", "eps", "elementwise_affine"),
}


def module_structure(model: torch.nn.Module, reference: torch.nn.Module) -> dict[str, dict]:
    """The constructor arguments of every layer of `model` whose shape differs from the same layer of `reference`
    (the unpruned model built from the same config)."""
    ref = dict(reference.named_modules())
    out = {}
    for name, module in model.named_modules():
        kind = type(module)
        if kind not in _ARGS:
            continue
        args = {a: _plain(getattr(module, a)) for a in _ARGS[kind]}
        if kind in (torch.nn.Conv2d, torch.nn.Linear):
            args["bias"] = module.bias is not None
        if kind is torch.nn.LayerNorm:
            args["bias"] = getattr(module, "bias", None) is not None
        other = ref.get(name)
        same = (
            other is not None
            and type(other) is kind
            and all(
                tuple(p.shape) == tuple(q.shape)
                for p, q in zip(module.state_dict().values(), other.state_dict().values(), strict=False)
            )
        )
        if not same or getattr(other, "groups", None) != getattr(module, "groups", None):
            out[name] = {"type": kind.__name__, "args": args}
    return out


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def rebuild_structure(model: torch.nn.Module, structure: dict[str, dict]) -> torch.nn.Module:
    by_name = {cls.__name__: cls for cls in _ARGS}
    for name, spec in structure.items():
        cls = by_name.get(spec.get("type"))
        if cls is None:
            raise ConfigError(f"{STRUCTURE_FILE}: layer {name!r} has unknown type {spec.get('type')!r}")
        args = dict(spec["args"])
        for key in ("kernel_size", "stride", "padding", "dilation", "normalized_shape"):
            if isinstance(args.get(key), list):
                args[key] = tuple(args[key])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, cls(**args))
    return model


def save_pruned(model: torch.nn.Module, folder: Path) -> dict[str, dict]:
    """Write a pruned transformers classifier: config, weights, and the shapes of the layers its config does not
    describe any more (`pruned_structure.json`). Returns that structure."""
    from safetensors.torch import save_file

    model.config.save_pretrained(folder)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, folder / WEIGHTS_FILE)
    structure = module_structure(model, _from_config(model.config))
    (folder / STRUCTURE_FILE).write_text(json.dumps(structure, indent=1) + "\n")
    return structure


def _load_pruned(folder: Path, config) -> torch.nn.Module:
    from safetensors.torch import load_file

    structure = json.loads((folder / STRUCTURE_FILE).read_text())
    model = rebuild_structure(_from_config(config), structure)
    model.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=True)
    return model


# --- torchao int8: tensor subclasses through torchao's safetensors support -----------------------------------------


def save_torchao(model: torch.nn.Module, folder: Path) -> None:
    from .quantize import require_torchao

    require_torchao()
    from safetensors.torch import save_file
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors, metadata = flatten_tensor_state_dict(state)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / WEIGHTS_FILE, metadata=metadata)


def _load_torchao(folder: Path, config) -> torch.nn.Module:
    from .quantize import require_torchao

    require_torchao()
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    with safe_open(str(folder / WEIGHTS_FILE), "pt") as handle:
        metadata = handle.metadata()
    state = unflatten_tensor_state_dict(load_file(folder / WEIGHTS_FILE), metadata)
    state = state[0] if isinstance(state, tuple) else state
    model = _from_config(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model
