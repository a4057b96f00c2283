"""`hubkit.load`: a base model + processor + any number of LoRA adapters, ready to predict.

Adapters stay resident: switching the active one is `set_adapter` (no reload of the base); `merge`
folds one into the base weights for zero-overhead inference and `unmerge` takes it out again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import hub
from .adapters import TRAINED_MODULES_FILE, attach_adapter
from .errors import AdapterMismatchError, HubkitError
from .tasks import LoadOptions, get_task, to_pil

logger = logging.getLogger(__name__)
BASE = "base"  # the name that means "no adapter"
PEFT_BASE = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch (adapter_names)


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    source: str
    folder: Path
    revision: str | None
    nbytes: int


def _dtype(value) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[str(value)]
    except KeyError:
        raise HubkitError(f"Unknown dtype {value!r}: use float32, bfloat16 or float16") from None


def _device(value: str | None) -> str:
    if value in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(value).startswith("cuda") and not torch.cuda.is_available():
        raise HubkitError(f"device={value!r} but this torch has no CUDA device; use cpu or auto")
    return value


class Predictor:
    """A task's base model with resident adapters."""

    def __init__(self, task, model, processor, *, base_id: str, options: LoadOptions):
        self.task = task
        self.model = model
        self.processor = processor
        self.base_id = base_id
        self.options = options
        self.adapters: dict[str, AdapterInfo] = {}
        self.active: str = BASE
        self.merged: str | None = None

    def __repr__(self) -> str:
        return f"Predictor(task={self.task.name!r}, base={self.base_id!r}, adapters={list(self.adapters)})"

    # -- adapters ------------------------------------------------------------------------------
    def add_adapter(
        self, source: str | Path, *, name: str | None = None, revision: str | None = None, check_base: bool = True
    ) -> str:
        """Load an adapter (repo id or folder) beside the others and make it active."""
        name = name or Path(str(source)).name
        if name == BASE or name in self.adapters:
            raise HubkitError(f"Adapter name {name!r} is {'reserved' if name == BASE else 'already loaded'}")
        folder = hub.resolve(source, revision=revision) if not Path(str(source)).is_dir() else Path(source)
        if not (folder / "adapter_config.json").is_file() and (folder / TRAINED_MODULES_FILE).is_file():
            raise AdapterMismatchError(
                f"{source} holds modules trained in full ({TRAINED_MODULES_FILE}), not a LoRA adapter: load them "
                "into a base with hubkit.adapters.restore_trained_modules(predictor.model, folder)"
            )
        self.unmerge()
        self.model = attach_adapter(
            self.model,
            folder,
            name=name,
            base_id=self.base_id,
            allow_pickle=self.options.allow_pickle,
            check_base_model=check_base,
        )
        self.model.to(next(self.model.get_base_model().parameters()).device)
        nbytes = sum(
            p.numel() * p.element_size() for n, p in self.model.named_parameters() if f".{name}." in n and "lora_" in n
        )
        self.adapters[name] = AdapterInfo(name, str(source), folder, revision, nbytes)
        self.set_adapter(name)
        return name

    def set_adapter(self, name: str) -> None:
        """Make `name` (or "base") the adapter predictions use. Does not reload anything."""
        if name != BASE and name not in self.adapters:
            raise AdapterMismatchError(f"No adapter {name!r} loaded; loaded: {', '.join(self.adapters) or 'none'}")
        if self.merged and self.merged != name:
            self.unmerge()
        if name != BASE and self.model.active_adapter != name:
            self.model.set_adapter(name)
        self.active = name

    def set_scale(self, name: str, scale: float) -> None:
        """Scale adapter `name`'s contribution (1.0 = as trained, 0 = off)."""
        from peft.tuners.lora import LoraLayer

        if name not in self.adapters:
            raise AdapterMismatchError(f"No adapter {name!r} loaded; loaded: {', '.join(self.adapters) or 'none'}")
        if self.merged == name:
            self.unmerge()
        for module in self.model.modules():
            if isinstance(module, LoraLayer) and name in module.scaling:
                module.set_scale(name, scale)

    def merge(self, name: str | None = None) -> None:
        """Fold adapter `name` (default: the active one) into the base weights."""
        name = name or self.active
        if name == BASE:
            raise HubkitError("No adapter is active; nothing to merge")
        self.set_adapter(name)
        if self.merged != name:
            self.model.merge_adapter([name])
            self.merged = name

    def unmerge(self) -> None:
        if self.merged:
            self.model.unmerge_adapter()
            self.merged = None

    def remove_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise AdapterMismatchError(f"No adapter {name!r} loaded")
        self.unmerge()
        if len(self.adapters) == 1:
            self.model = self.model.unload()
        else:
            self.model.delete_adapter(name)
        del self.adapters[name]
        self.active = next(iter(self.adapters), BASE)
        if self.active != BASE:
            self.model.set_adapter(self.active)

    @contextlib.contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        """Temporarily predict with adapter `name` ("base" = adapters off)."""
        previous = self.active
        name = name or self.active
        if name == BASE and self.adapters:
            self.unmerge()
            with self.model.disable_adapter():
                yield
            return
        self.set_adapter(name)
        try:
            yield
        finally:
            if previous != name:
                self.set_adapter(previous)

    # -- prediction ----------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, images: Any | Sequence[Any], *, adapter: str | None = None, **kwargs) -> Any:
        """Predict on one image (returns one output) or a list (returns a list)."""
        single = not isinstance(images, (list, tuple))
        pil = [to_pil(img, name=f"image {i}") for i, img in enumerate([images] if single else images)]
        self.model.eval()
        with self.using(adapter):
            outputs = self.task.predict(self.model, self.processor, pil, **kwargs)
        return outputs[0] if single else outputs

    @torch.inference_mode()
    def forward_mixed(self, adapters: Sequence[str], **inputs: Any) -> Any:
        """One forward pass of the model on a batch whose row i uses adapter `adapters[i]` ("base": none).

        peft's per-sample `adapter_names`, so requests for different adapters of one base share a pass. Every
        adapter must be attached already (`add_adapter`); a merged adapter is unmerged first. `inputs` are the
        model's tensors (e.g. pixel_values), batch-first; returns the model's output.
        """
        names = list(adapters)
        unknown = sorted({n for n in names if n != BASE and n not in self.adapters})
        if unknown:
            raise AdapterMismatchError(
                f"No adapter {', '.join(map(repr, unknown))} loaded; loaded: {', '.join(self.adapters) or 'none'}"
            )
        self.model.eval()
        if not self.adapters:  # a plain model: every row is the base
            return self.model(**inputs)
        self.unmerge()
        if all(n == BASE for n in names):
            with self.model.disable_adapter():
                return self.model(**inputs)
        return self.model(**inputs, adapter_names=[PEFT_BASE if n == BASE else n for n in names])

    def compare(self, images: Any, **kwargs) -> dict[str, Any]:
        """Predictions of the base and of every loaded adapter, side by side."""
        return {name: self.predict(images, adapter=name, **kwargs) for name in [BASE, *self.adapters]}


def load(
    task: str,
    base: str | Path | None = None,
    *,
    adapters: Sequence[str | Path] = (),
    revision: str | None = None,
    dtype: Any = None,
    device: str | None = "cpu",
    quantize: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    hub_name: str | None = None,
) -> Predictor:
    """Load `task`'s base (repo id or folder; default: the task's real Hub id) with `adapters`.

    Reads come from the local store first, then the Hugging Face Hub (see hubkit.hub.pull).
    """
    from .tasks import check_safe_folder

    spec = get_task(task)
    base_id = str(base or spec.default_base)
    path = Path(base_id).expanduser()
    folder = path if path.is_dir() else hub.pull(base_id, revision=revision, hub=hub_name)
    options = LoadOptions(
        dtype=_dtype(dtype),
        device=_device(device),
        quantize=quantize,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    check_safe_folder(folder, options)
    model, processor = spec.load(folder, options)
    if not quantize:
        model.to(options.device)
    model.eval()
    predictor = Predictor(spec, model, processor, base_id=base_id, options=options)
    for source in adapters:
        predictor.add_adapter(source)
    return predictor
