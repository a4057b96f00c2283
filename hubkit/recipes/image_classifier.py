"""The image-classifier recipe: fine-tune a transformers classifier (ResNet, ViT, EfficientNet, ...) on a
class-per-folder tree, every weight trained, the head re-labelled to the folders' classes.

Its output is a full model folder (config.json, model.safetensors, preprocessor_config.json) that
`hubkit predict`, the search Space's category probe and `hubkit optimize` load as they are.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import hub
from ..errors import ConfigError
from ..training import TrainConfig, TrainingSetup, option
from ..training.trainable import Trainable

logger = logging.getLogger(__name__)
TASK = "image-classification"


@dataclass(frozen=True)
class ImageClassifierConfig(TrainConfig):
    base: str = option("image classifier to start from (its head is re-labelled to the data's classes)",
                       "microsoft/resnet-50")  # fmt: skip
    data: str = option("images, one sub-folder per class: a folder or a dataset repo", "")
    heldout: float = option("share of each class held out for the accuracy", 0.25)
    learning_rate: float = option("peak learning rate (AdamW)", 1e-3)
    batch_size: int = option("samples per process per micro-batch", 16)
    epochs: int = option("passes over the training split", 5)


def class_names(root) -> list[str]:
    from ..optimize.data import read_image_folder

    return sorted({name for _, name in read_image_folder(root)})


def load_relabelled(folder, classes: list[str]):
    """The base classifier with a head for `classes` (a new, randomly initialised head when they differ)."""
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    id2label = dict(enumerate(classes))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the re-sized head's "newly initialized" notice is expected here
    try:
        model = AutoModelForImageClassification.from_pretrained(
            folder, num_labels=len(classes), id2label=id2label, label2id={v: k for k, v in id2label.items()},
            ignore_mismatched_sizes=True,
        )  # fmt: skip
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


def _logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=pixel_values).logits


def _loss(model, batch) -> torch.Tensor:
    device = next(model.parameters()).device
    return F.cross_entropy(_logits(model, batch["pixel_values"].to(device)).float(), batch["labels"].to(device))


def image_classifier_setup(config: ImageClassifierConfig) -> TrainingSetup:
    from transformers import AutoImageProcessor

    from ..optimize.data import load_classification_data
    from ..optimize.train import accuracy_fn

    if not config.data:
        raise ConfigError("data is required: a folder (or dataset repo) of images, one sub-folder per class")
    folder = hub.resolve(config.base)
    root = hub.resolve(config.data, repo_type="dataset")
    classes = class_names(root)
    if len(classes) < 2:
        raise ConfigError(f"{config.data!r} has {len(classes)} class folder(s); a classifier needs at least 2")
    processor = AutoImageProcessor.from_pretrained(folder)
    label2id = {name: i for i, name in enumerate(classes)}
    data = load_classification_data(root, processor, label2id, heldout=config.heldout, seed=config.seed)
    logger.info("%d classes; %d train / %d held-out images", len(classes), len(data.train), len(data.heldout))

    def export(model, out, result) -> None:
        processor.save_pretrained(out)  # the folder then loads like the base: model + its preprocessing

    return TrainingSetup(
        task=TASK,
        load_base=lambda: load_relabelled(folder, classes),
        train_dataset=data.train,
        eval_dataset=data.heldout,
        loss_fn=_loss,
        evaluate_fn=functools.partial(accuracy_fn, logits=_logits),
        trainable=Trainable(lora=False),
        dataset_name=Path(config.data).name if Path(config.data).is_dir() else config.data,
        card_notes=f"Classes ({len(classes)}): " + ", ".join(f"`{c}`" for c in classes),
        export_fn=export,
    )
