"""The labelled images `hubkit optimize` needs: a class-per-folder tree split into train / calibration / held-out.

The folder names must be the teacher's class names (its config's id2label); images are preprocessed once with the
model's own processor, so every variant is measured on exactly the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class TensorSet(torch.utils.data.Dataset):
    """(pixel_values, labels) tensors as the shared training loop's batches."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor):
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


@dataclass
class ClassificationData:
    train: TensorSet  # recovery fine-tune and distillation
    heldout: TensorSet  # accuracy of every variant; never trained or calibrated on
    classes: list[str]
    root: Path

    def calibration(self, count: int) -> np.ndarray:
        """`count` training images (float32 NCHW) for static quantization: calibration never sees the held-out
        split, so the reported accuracy stays honest."""
        return self.train.pixels[: max(1, count)].numpy().astype(np.float32)


def read_image_folder(root: str | Path) -> list[tuple[Path, str]]:
    """(image path, class name) for every image under `root/<class>/`, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Data folder {str(root)!r} does not exist; give a folder with one sub-folder per class.")
    items = [
        (path, folder.name)
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise DataError(f"No images in {str(root)!r}: expected {root}/<class name>/<image>.png")
    return items


def load_classification_data(
    root: str | Path, processor, label2id: dict[str, int], *, heldout: float = 0.25, seed: int = 0
) -> ClassificationData:
    """Read `root/<class>/*`, map folder names through the model's `label2id`, split each class into train and
    held-out (a `heldout` fraction, at least one image), and preprocess with `processor`."""
    if not 0 < heldout < 1:
        raise DataError(f"heldout must be a fraction in (0, 1), got {heldout!r}")
    items = read_image_folder(root)
    unknown = sorted({name for _, name in items} - set(label2id))
    if unknown:
        raise DataError(
            f"Class folders {unknown[:5]} of {str(root)!r} are not classes of the model "
            f"(its labels: {sorted(label2id)[:10]}); name the folders after the model's labels."
        )
    rng = np.random.default_rng(seed)
    train, held = [], []
    for name in sorted({n for _, n in items}):
        paths = [p for p, n in items if n == name]
        order = rng.permutation(len(paths))
        cut = max(1, round(len(paths) * heldout)) if len(paths) > 1 else 0
        held += [(paths[i], label2id[name]) for i in order[:cut]]
        train += [(paths[i], label2id[name]) for i in order[cut:]]
    if not train or not held:
        raise DataError(f"{str(root)!r} has too few images to split into train and held-out sets.")
    return ClassificationData(_tensors(train, processor), _tensors(held, processor), sorted(label2id), Path(root))


def _tensors(items: list[tuple[Path, int]], processor) -> TensorSet:
    images = []
    for path, _ in items:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except OSError as err:
            raise DataError(f"Cannot read image {str(path)!r}: {err}") from None
    pixels = processor(images=images, return_tensors="pt")["pixel_values"].float()
    return TensorSet(pixels, torch.tensor([label for _, label in items]))
