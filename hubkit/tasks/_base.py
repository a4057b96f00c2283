"""The task contract and its registry: one module per model family, looked up by name."""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..errors import (
    ConfigError,
    InvalidImageError,
    MissingModelFileError,
    UnknownTaskError,
    UnsafePickleError,
    UnsafeWeightsError,
)

logger = logging.getLogger(__name__)
TASKS: dict[str, Task] = {}
MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs with a clear error, not an OOM
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


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
class LoadOptions:
    dtype: Any = None
    device: str = "cpu"
    quantize: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    extra: dict = field(default_factory=dict)


class Task:
    """One model family end to end. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    pipeline_tag: ClassVar[str]
    default_base: ClassVar[str]  # the real Hub id the recipes and Spaces use
    tiny_family: ClassVar[str]  # hubkit.tiny family for offline tests and demos
    output_type: ClassVar[str]  # what predict returns, for docs and the CLI
    preset: ClassVar[LoraPreset]
    # Extra predict() arguments a task needs beyond images (e.g. labels to detect); used by tests and the CLI.
    example_kwargs: ClassVar[dict] = {}

    # The transformers auto class that reads the folder's processor files.
    processor_loader: ClassVar[str] = "AutoProcessor"
    # Files the processor reads, checked before anything loads so a missing one is named (transformers only says
    # "Can't load image processor"). Each entry is a group of alternatives: any one of them will do.
    processor_files: ClassVar[tuple[tuple[str, ...], ...]] = (("preprocessor_config.json", "processor_config.json"),)

    def load(self, folder: Path, options: LoadOptions) -> tuple[Any, Any]:
        """Return (model, processor) from a local folder; tasks with more parts override this."""
        import transformers

        self.check_files(folder)
        with refusing_pickles(folder):
            model = self.model_class(folder).from_pretrained(folder, **pretrained_kwargs(options))
        return model, getattr(transformers, self.processor_loader).from_pretrained(folder)

    def check_files(self, folder: Path) -> None:
        """Raise MissingModelFileError naming the first of `processor_files` the folder lacks."""
        for group in self.processor_files:
            if not any((Path(folder) / name).is_file() for name in group):
                raise MissingModelFileError(
                    folder,
                    group,
                    task=self.name,
                    needed_for=f"processor ({self.processor_loader})",
                    hint=(
                        f"Copy it from the Hub repo the weights came from (e.g. {self.default_base}), or write it "
                        "with processor.save_pretrained(folder)."
                    ),
                )

    def model_class(self, folder: Path | None = None):
        """The transformers / diffusers class the weights load into (used to build from a config)."""
        raise NotImplementedError

    def predict(self, model, processor, images: list[Image.Image], **kwargs) -> list[Any]:
        raise NotImplementedError

    def save_output(self, output: Any, out_dir: Path, stem: str) -> list[Path]:
        """Write one prediction as files; return their paths."""
        raise NotImplementedError


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls()
    return cls


def get_task(name: str) -> Task:
    from . import _all  # noqa: F401  (imports every task module so they register)

    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(name, list(TASKS)) from None


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
