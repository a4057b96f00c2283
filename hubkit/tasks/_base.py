"""The task contract and its registry: one module per model family, looked up by name."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import pickle
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..errors import (
    ConfigError,
    DuplicateTaskError,
    InvalidImageError,
    MissingModelFileError,
    TaskDefinitionError,
    UnknownArgumentError,
    UnknownTaskError,
    UnsafePickleError,
    UnsafeWeightsError,
)

logger = logging.getLogger(__name__)
TASKS: dict[str, Task] = {}
MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs with a clear error, not an OOM
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
TINY_NAMESPACE = "hubkit-tiny"  # where `hubkit bootstrap` puts the tiny bases in the local store


@dataclass(frozen=True)
class LoraPreset:
    """Which modules LoRA adapts, named as the seeds named them; resolved against the loaded model."""

    targets: tuple[str, ...]
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # Modules whose names match this regex are never adapted (e.g. heads trained from scratch).
    exclude: str | None = None


@dataclass(frozen=True)
class TinyModel:
    """A tiny random-weight stand-in of a family, for tests and offline demos: built by `hubkit.tiny.build(family)`
    and stored by `hubkit bootstrap` as ``hubkit-tiny/<family>``."""

    family: str
    build: Callable[[Path], None]  # writes the folder: a `build(out)` of a module in hubkit/tiny/
    mimics: str  # the real Hub repo whose classes, file layout and preprocessing it copies

    @property
    def repo_name(self) -> str:
        return f"{TINY_NAMESPACE}/{self.family}"


@dataclass(frozen=True)
class LoadOptions:
    dtype: Any = None
    device: str = "cpu"
    quantize: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    extra: dict = field(default_factory=dict)


class Task:
    """One model family end to end: the one record of its facts (the class attributes) and how to load it, predict
    and save outputs (the methods). Subclasses set the attributes and implement the methods; `register_task` checks
    the record and adds it to the registry, which everything else reads (`lora plan`, cards, `hubkit.tiny`,
    `hubkit bootstrap`, the Spaces)."""

    name: ClassVar[str]
    pipeline_tag: ClassVar[str]  # the Hub pipeline tag of the family's cards
    library_name: ClassVar[str] = "transformers"  # the library the base model loads with: transformers, diffusers
    # The model classes a base's config names (config.json `architectures`, or a diffusers `_class_name`): how
    # `hubkit lora plan` maps a config to this task's LoRA preset.
    architectures: ClassVar[tuple[str, ...]]
    # The `library_name` classes that load the weights and the processor, as the cards' "how to load" shows them.
    auto_model: ClassVar[str]
    auto_processor: ClassVar[str | None] = "AutoProcessor"  # None: the family has no processor
    default_base: ClassVar[str]  # the real Hub id the recipes and Spaces use
    # Tiny random-weight stand-ins (hubkit.tiny) for offline tests and demos; the first is the task's own.
    tiny_models: ClassVar[tuple[TinyModel, ...]]
    output_type: ClassVar[str]  # what predict returns, for docs and the CLI
    preset: ClassVar[LoraPreset]
    # Extra predict() arguments a task needs beyond images (e.g. labels to detect); used by tests and the CLI.
    example_kwargs: ClassVar[dict] = {}
    # Files the processor reads, checked before anything loads so a missing one is named (transformers only says
    # "Can't load image processor"). Each entry is a group of alternatives: any one of them will do.
    processor_files: ClassVar[tuple[tuple[str, ...], ...]] = (("preprocessor_config.json", "processor_config.json"),)
    # The keyword arguments predict() takes beyond the images, read off its signature when the class is made.
    _predict_arguments: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        predict = cls.__dict__.get("predict")
        if predict is not None:
            cls._predict_arguments = _keyword_arguments(cls, predict)
            cls.predict = _refusing_unknown_arguments(predict)

    @property
    def tiny_family(self) -> str:
        """The hubkit.tiny family tests and offline demos use for this task (its first tiny model)."""
        return self.tiny_models[0].family

    def predict_arguments(self) -> tuple[str, ...]:
        """The keyword arguments predict() takes beyond the images (what ``--arg NAME=VALUE`` may name)."""
        return self._predict_arguments

    def check_predict_arguments(self, kwargs: Mapping[str, Any]) -> None:
        """Raise UnknownArgumentError if `kwargs` names an argument predict() does not take (predict checks this
        itself; call it to fail before loading anything)."""
        unknown = set(kwargs) - set(self._predict_arguments)
        if unknown:
            raise UnknownArgumentError(self.name, unknown, self._predict_arguments)

    def card_fields(self) -> dict[str, Any]:
        """The facts `hubkit.cards.adapter_card` needs about an adapter of this task."""
        return {
            "pipeline_tag": self.pipeline_tag,
            "auto_class": self.auto_model,
            "auto_processor": self.auto_processor,
            "base_library": self.library_name,
        }

    def load(self, folder: Path, options: LoadOptions) -> tuple[Any, Any]:
        """Return (model, processor) from a local folder; tasks with more parts override this."""
        self.check_files(folder)
        with refusing_pickles(folder):
            model = self.model_class(folder).from_pretrained(folder, **pretrained_kwargs(options))
        processor = None
        if self.auto_processor is not None:
            processor = getattr(importlib.import_module(self.library_name), self.auto_processor).from_pretrained(folder)
        return model, processor

    def check_files(self, folder: Path) -> None:
        """Raise MissingModelFileError naming the first of `processor_files` the folder lacks."""
        for group in self.processor_files:
            if not any((Path(folder) / name).is_file() for name in group):
                raise MissingModelFileError(
                    folder,
                    group,
                    task=self.name,
                    needed_for=f"processor ({self.auto_processor})",
                    hint=(
                        f"Copy it from the Hub repo the weights came from (e.g. {self.default_base}), or write it "
                        "with processor.save_pretrained(folder)."
                    ),
                )

    def model_class(self, folder: Path | None = None):
        """The transformers / diffusers class the weights load into (used to build from a config): `auto_model`
        from `library_name` unless the task overrides this."""
        return getattr(importlib.import_module(self.library_name), self.auto_model)

    def predict(self, model, processor, images: list[Image.Image]) -> list[Any]:
        """One output per image. Subclasses add keyword-only arguments by name (no ``**kwargs``): any other
        keyword raises UnknownArgumentError before the task runs."""
        raise NotImplementedError

    def save_output(self, output: Any, out_dir: Path, stem: str) -> list[Path]:
        """Write one prediction as files; return their paths."""
        raise NotImplementedError


def _keyword_arguments(cls: type, predict) -> tuple[str, ...]:
    """The names predict(self, model, processor, images, ...) takes by keyword after the images."""
    params = list(inspect.signature(predict).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise TaskDefinitionError(
            cls, "declares predict(**kwargs): name each predict argument, so unknown ones are refused for the user"
        )
    by_keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params[4:] if p.kind in by_keyword)


def _refusing_unknown_arguments(predict):
    @functools.wraps(predict)
    def checked(self, model, processor, images, *args, **kwargs):
        self.check_predict_arguments(kwargs)
        return predict(self, model, processor, images, *args, **kwargs)

    return checked


# What a task record must set (class attributes without a usable default).
_REQUIRED = ("name", "pipeline_tag", "library_name", "architectures", "auto_model", "default_base", "tiny_models")
_REQUIRED += ("output_type", "preset")


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: check the task's record and add it to the registry under ``cls.name``.

    Refuses (TaskDefinitionError) a record missing a required fact, and (DuplicateTaskError) a name, tiny family or
    architecture another registered task already claims. Registering the same class again (a module reload)
    replaces it.
    """
    missing = [attr for attr in _REQUIRED if not getattr(cls, attr, None)]
    if missing:
        raise TaskDefinitionError(cls, f"sets no {', '.join(missing)}")
    if not all(isinstance(t, TinyModel) for t in cls.tiny_models):
        raise TaskDefinitionError(cls, f"has tiny_models that are not TinyModel records: {cls.tiny_models!r}")
    new = f"task {cls.name!r} ({_qualname(cls)})"
    for other in TASKS.values():
        if _qualname(type(other)) == _qualname(cls):  # the same definition, re-imported
            continue
        shared = {
            "task name": {cls.name} & {other.name},
            "tiny family": {t.family for t in cls.tiny_models} & {t.family for t in other.tiny_models},
            "architecture": set(cls.architectures) & set(other.architectures),
        }
        for what, values in shared.items():
            if values:
                theirs = f"task {other.name!r} ({_qualname(type(other))})"
                raise DuplicateTaskError(what, sorted(values)[0], registered=theirs, new=new)
    TASKS[cls.name] = cls()
    return cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def get_task(name: str) -> Task:
    from . import _all  # noqa: F401  (imports every task module so they register)

    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(name, list(TASKS)) from None


def task_for_architecture(architecture: str) -> Task | None:
    """The registered task whose family has `architecture` (a config's `architectures` entry or a diffusers
    `_class_name`), or None."""
    from . import _all  # noqa: F401  (imports every task module so they register)

    return next((task for task in TASKS.values() if architecture in task.architectures), None)


def pretrained_kwargs(options: LoadOptions) -> dict:
    """Safe defaults for from_pretrained: safetensors only and no remote code unless opted in."""
    kwargs: dict[str, Any] = {"trust_remote_code": options.trust_remote_code}
    if not options.allow_pickle:
        kwargs["use_safetensors"] = True
    if options.dtype is not None:
        kwargs["dtype"] = options.dtype
    if options.quantize:
        kwargs["quantization_config"] = quantization_config(options.quantize)
        kwargs["device_map"] = options.device if options.device != "cpu" else {"": "cpu"}
    return kwargs


@contextlib.contextmanager
def refusing_pickles(folder: Path) -> Iterator[None]:
    """Turn the UnpicklingError torch.load(weights_only=True) raises inside from_pretrained into UnsafePickleError."""
    try:
        yield
    except pickle.UnpicklingError as err:
        pickles = sorted(p for p in Path(folder).rglob("*") if p.suffix in PICKLE_SUFFIXES)
        raise UnsafePickleError.from_unpickling(pickles[0] if len(pickles) == 1 else folder, err) from None


def quantization_config(kind: str):
    if kind not in ("int8", "nf4"):
        raise ConfigError(f"quantize must be None, 'int8' or 'nf4', got {kind!r}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"quantize={kind!r} needs bitsandbytes: pip install 'hubkit[quant]' (4-bit NF4 needs a CUDA GPU)."
        ) from None
    import torch
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def check_safe_folder(folder: Path, options: LoadOptions) -> None:
    """Refuse a folder whose only weights are pickles unless the user opted in."""
    weights = [p for p in folder.rglob("*") if p.suffix in (".safetensors", *PICKLE_SUFFIXES)]
    if weights and not any(p.suffix == ".safetensors" for p in weights) and not options.allow_pickle:
        raise UnsafeWeightsError(
            f"{folder} holds only pickle weights ({', '.join(p.name for p in weights[:3])}); pickles can run code. "
            "Convert them to safetensors, or opt in with allow_pickle=True (--allow-pickle), which loads them "
            "with torch.load(weights_only=True)."
        )


def to_pil(image: Any, *, name: str = "image") -> Image.Image:
    """Turn a path, PIL image or numpy array into an RGB PIL image, or raise InvalidImageError saying why."""
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as img:
                _check_pixels(img.width, img.height, name)  # from the header, before decoding a huge file
                img.load()
                image = img.copy()
        except FileNotFoundError:
            raise InvalidImageError(f"{name}: no such file {str(image)!r}") from None
        except (OSError, Image.DecompressionBombError, ValueError) as err:
            raise InvalidImageError(f"{name}: {str(image)!r} is not a readable image ({err})") from None
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image, name)
    if not isinstance(image, Image.Image):
        raise InvalidImageError(f"{name}: expected a path, PIL image or numpy array, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise InvalidImageError(f"{name}: the image is empty ({image.width}x{image.height})")
    _check_pixels(image.width, image.height, name)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float greyscale: scale to 8 bit
        arr = np.asarray(image, dtype=np.float64)
        image = _array_to_pil(arr, name)
    if image.mode == "RGBA" or image.mode == "LA" or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").split()[-1])
        return background
    return image.convert("RGB")


def _check_pixels(width: int, height: int, name: str) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidImageError(f"{name}: {width}x{height} is over {MAX_IMAGE_PIXELS:,} pixels; downscale it first")


def _array_to_pil(arr: np.ndarray, name: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise InvalidImageError(f"{name}: array of shape {arr.shape} is not HxW, HxWx3 or HxWx4")
    if arr.size == 0:
        raise InvalidImageError(f"{name}: the array is empty {arr.shape}")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise InvalidImageError(f"{name}: the array holds NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if arr.dtype.kind == "f" and lo >= 0 and hi <= 1:
            arr = arr * 255.0
        elif hi > 255 or lo < 0:
            arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)
