"""The Plantset recipe: a PlantVLM (leaf photo + optional symptom text -> disease class + description) trained on a
`multimodal_dataset.jsonl` (`hubkit data map-text`); config, data, loss, metrics, export.

What trains (`finetune`):

- ``lora`` (default): LoRA on the encoders' convolutions / attention and MLP projections; the projections, the
  cross-attention fusion, the classifier and the description head are new and train in full (PEFT
  ``modules_to_save``). BatchNorm statistics of a frozen CNN stay as pretrained.
- ``full``: every weight trains (small backbones: resnet18, efficientnet_b0).

Loss: cross-entropy on the classes (optionally with ``class_weights: balanced``, n / (C * count) per class) +
``description_weight`` x the description head's teacher-forced token cross-entropy. Each sample's text is dropped
with probability ``text_dropout`` so the model is also trained to classify from the image alone.

Evaluation on the held-out split (stratified per class) each epoch: accuracy, macro / weighted F1 and one-vs-rest
AUC with the texts, the same without any text (``*_image_only``), and the description perplexity. The run's folder
holds the LoRA adapter and, written by `export`, the merged self-contained model, so the pushed repo loads with
``PlantVLM.from_pretrained(repo_id)`` alone.

Batch shapes are fixed for XLA: texts are padded to ``text_max_length`` and descriptions to
``description_max_length``, the training loader drops its last partial batch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import hub
from ..errors import ConfigError, DataError, HubkitError
from ..plant import _encoders
from ..plant.model import NEW_MODULES, NEW_MODULES_PATTERN, PlantVLM, PlantVLMConfig, is_plant_folder, read_config
from ..training import TrainConfig, TrainingSetup, option
from ..training.trainable import Trainable

logger = logging.getLogger(__name__)
TASK = "plant-disease"
FINETUNE = ("lora", "full")
CLASS_WEIGHTS = ("none", "balanced")
JSONL_NAME = "multimodal_dataset.jsonl"


@dataclass(frozen=True)
class PlantVLMTrainConfig(TrainConfig):
    """The Plantset seed's train.py / scaler_tpu.py (trainers/configs/plant_vlm.yaml holds its values)."""

    base: str = option(
        "a PlantVLM (folder or repo) to start from; empty: a new one on vision_backbone + text_model", ""
    )
    jsonl_file: str = option("the multimodal JSONL (`hubkit data map-text`); default: <data>/" + JSONL_NAME, "")
    root_dir: str = option("folder the JSONL's image paths are relative to; default: the JSONL's folder", "")
    num_classes: int = option("number of classes (the data set's class list must have this many)", 133)
    vision_backbone: str = option("resnet18/50/101, efficientnet_b0..b7, vit_base, a Hub id or folder", "resnet50")
    text_model: str = option(
        "text encoder: a BERT / RoBERTa / MiniLM or causal LM id or folder", "microsoft/DialoGPT-medium"
    )
    vision_dim: int = option("vision projection width", 768)
    text_dim: int = option("text projection width", 768)
    fusion_dim: int = option("fusion width", 512)
    num_attention_heads: int = option("cross-attention heads", 8)
    num_attention_layers: int = option("cross-attention blocks", 2)
    text_pooling: str = option("attention or mean pooling of the text tokens", "attention")
    dropout: float = option("dropout in the fusion and heads", 0.1)
    text_dropout: float = option("drop each training sample's text with this probability (image-only training)", 0.3)
    text_max_length: int = option("text tokens per sample (padded: fixed shapes for XLA)", 128)
    description_max_length: int = option("description tokens per sample (padded)", 64)
    description_layers: int = option("decoder layers of the description head", 2)
    description_weight: float = option("weight of the description loss beside the classification loss", 0.5)
    class_weights: str = option("none or balanced (n / (C * count) per class)", "none")
    finetune: str = option("lora (encoders; fusion + heads in full) or full (everything, small backbones)", "lora")
    val_fraction: float = option("fraction of each class held out for evaluation", 0.2)
    augment: bool = option("random horizontal / vertical flips (seeded per epoch and sample)", True)
    learning_rate: float = option("AdamW learning rate", 1e-4)
    weight_decay: float = option("AdamW weight decay", 0.01)
    epochs: int = option("passes over the training split (the seed's 100)", 100)
    batch_size: int = option("images per process per micro-batch (the seed's 32)", 32)
    warmup_steps: int = option("linear warmup steps", 500)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.base:  # the card names the pretrained vision backbone as the base model
            object.__setattr__(self, "base", _encoders.backbone_id(self.vision_backbone))
        checks = [
            (self.num_classes >= 2, "num_classes", "at least 2"),
            (self.finetune in FINETUNE, "finetune", f"one of {FINETUNE}"),
            (self.class_weights in CLASS_WEIGHTS, "class_weights", f"one of {CLASS_WEIGHTS}"),
            (0 <= self.val_fraction < 1, "val_fraction", "in [0, 1)"),
            (0 <= self.text_dropout <= 1, "text_dropout", "in [0, 1]"),
            (self.description_weight >= 0, "description_weight", "zero or more"),
        ]
        for ok, name, what in checks:
            if not ok:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name)!r}")

    @property
    def builds_new_model(self) -> bool:
        return self.base == _encoders.backbone_id(self.vision_backbone)

    def model_config(self, classes: list[str]) -> PlantVLMConfig:
        return PlantVLMConfig(
            num_classes=len(classes),
            class_names=list(classes),
            vision_backbone=self.vision_backbone,
            text_model=self.text_model,
            vision_dim=self.vision_dim,
            text_dim=self.text_dim,
            fusion_dim=self.fusion_dim,
            num_attention_heads=self.num_attention_heads,
            num_attention_layers=self.num_attention_layers,
            text_pooling=self.text_pooling,
            dropout=self.dropout,
            text_dropout=self.text_dropout,
            text_max_length=self.text_max_length,
            description_layers=self.description_layers,
            description_max_length=self.description_max_length,
        )


# -- data ------------------------------------------------------------------------------------------------------
def data_files(config: PlantVLMTrainConfig) -> tuple[Path, Path]:
    """(the JSONL, the image root) from jsonl_file / root_dir / data."""
    if config.jsonl_file:
        jsonl = Path(config.jsonl_file)
    elif config.data:
        jsonl = hub.resolve(config.data, repo_type="dataset") / JSONL_NAME
    else:
        raise ConfigError("jsonl_file is required (or data: a folder / dataset repo holding " + JSONL_NAME + ")")
    if not jsonl.is_file():
        raise ConfigError(f"jsonl_file {str(jsonl)!r} does not exist; write it with `hubkit data map-text`")
    return jsonl, Path(config.root_dir) if config.root_dir else jsonl.parent


def stratified_split(samples, *, val_fraction: float, seed: int) -> tuple[list, list]:
    """Hold out round(val_fraction x n) samples of each class (at least one when the class has two or more)."""
    by_class: dict[int, list[int]] = {}
    for i, sample in enumerate(samples):
        by_class.setdefault(sample.label_id, []).append(i)
    rng = np.random.default_rng(seed)
    val: set[int] = set()
    for indices in by_class.values():
        count = int(round(val_fraction * len(indices)))
        if val_fraction > 0 and len(indices) >= 2:
            count = min(max(count, 1), len(indices) - 1)
        val.update(rng.permutation(indices)[:count].tolist())
    return [s for i, s in enumerate(samples) if i not in val], [s for i, s in enumerate(samples) if i in val]


class PlantDataset(torch.utils.data.Dataset):
    """Items of fixed shapes: ``pixel_values``, ``input_ids`` / ``attention_mask`` (padded to text_max_length),
    ``has_text``, ``description_ids`` / ``description_mask`` (description + eos, padded), ``labels``."""

    def __init__(self, samples, model: PlantVLM, *, augment: bool, seed: int):
        self.samples, self.augment, self.seed, self.epoch = list(samples), augment, seed, 0
        self.processor, self.tokenizer, self.config = model.image_processor, model.tokenizer, model.config

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _description(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        length, cfg = self.config.description_max_length, self.config
        ids = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=length - 1)["input_ids"]
        ids = [*ids, cfg.eos_token_id]
        mask = [1] * len(ids) + [0] * (length - len(ids))
        return torch.tensor(ids + [cfg.pad_token_id] * (length - len(ids))), torch.tensor(mask, dtype=torch.bool)

    def __getitem__(self, i: int) -> dict:
        from ..tasks import to_pil

        sample = self.samples[i]
        try:
            image = to_pil(sample.path, name=str(sample.path))
        except HubkitError as err:
            raise DataError(f"{err}; clean the data set with `hubkit data clean`") from None
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        if self.augment:
            flips = np.random.default_rng((self.seed, self.epoch, i)).integers(0, 2, size=2)
            dims = [d for d, f in zip((-1, -2), flips, strict=True) if f]
            pixels = pixels.flip(dims) if dims else pixels
        text = sample.text.strip()
        encoded = self.tokenizer(
            text, padding="max_length", truncation=True, max_length=self.config.text_max_length, return_tensors="pt"
        )
        description_ids, description_mask = self._description(sample.description)
        return {
            "pixel_values": pixels,
            "input_ids": encoded["input_ids"][0],
            "attention_mask": encoded["attention_mask"][0],
            "has_text": torch.tensor(bool(text)),
            "description_ids": description_ids,
            "description_mask": description_mask,
            "labels": torch.tensor(sample.label_id),
        }


def class_weights(samples, num_classes: int) -> torch.Tensor:
    """sklearn's "balanced": n_samples / (n_classes x count) per class (1 for a class with no training sample)."""
    counts = np.bincount([s.label_id for s in samples], minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


# -- loss and metrics ------------------------------------------------------------------------------------------
_INPUTS = ("pixel_values", "input_ids", "attention_mask", "has_text", "description_ids", "description_mask")


def _device_inputs(model, batch: dict, keys=_INPUTS) -> dict:
    param = next(p for p in model.parameters() if p.is_floating_point())
    return {k: batch[k].to(param.device) for k in keys if k in batch}


def make_loss(*, weights: torch.Tensor | None, description_weight: float):
    def loss_fn(model, batch) -> torch.Tensor:
        out = model(**_device_inputs(model, batch))
        labels = batch["labels"].to(out.logits.device)
        w = weights.to(out.logits.device) if weights is not None else None
        loss = torch.nn.functional.cross_entropy(out.logits.float(), labels, weight=w)
        if description_weight and out.description_loss is not None:
            loss = loss + description_weight * out.description_loss
        return loss

    return loss_fn


HEADLINE = ("accuracy", "f1_macro", "f1_weighted", "auc_ovr_macro")


@torch.no_grad()
def predict_loader(model, loader, *, with_text: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, C), labels (N,)) over a loader, with the samples' texts or without any."""
    model.eval()
    keys = ("pixel_values", "input_ids", "attention_mask", "has_text") if with_text else ("pixel_values",)
    probs, labels = [], []
    for batch in loader:
        logits = model(**_device_inputs(model, batch, keys)).logits.float()
        probs.append(logits.softmax(dim=-1).cpu())
        labels.append(batch["labels"])
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


@torch.no_grad()
def evaluate(model, loader) -> dict[str, float]:
    """Accuracy, F1 (macro, weighted), AUC (one-vs-rest, macro) with the texts and without (``*_image_only``), and
    the description head's perplexity on the reference descriptions."""
    from ..metrics.classification import classification_metrics

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = base.class_names
    out: dict[str, float] = {}
    for suffix, with_text in (("", True), ("_image_only", False)):
        probs, labels = predict_loader(model, loader, with_text=with_text)
        metrics = classification_metrics(probs, labels, class_names=names, from_logits=False)
        out.update({f"{k}{suffix}": float(metrics[k]) for k in HEADLINE})
    total, tokens = 0.0, 0
    for batch in loader:
        result = model(**_device_inputs(model, batch))
        total += float(result.description_loss) * int(result.description_tokens)
        tokens += int(result.description_tokens)
    out["description_perplexity"] = float(np.exp(total / max(tokens, 1)))
    return out


# -- setup -----------------------------------------------------------------------------------------------------
def _encoder_types(config: PlantVLMTrainConfig) -> tuple[str, str]:
    if not config.builds_new_model:
        saved = read_config(hub.resolve(config.base))
        return saved.vision_config["model_type"], saved.text_config["model_type"]
    types = []
    for name in (config.vision_backbone, config.text_model):
        file = _encoders.encoder_folder(name) / "config.json"
        types.append(json.loads(file.read_text()).get("model_type", "") if file.is_file() else "")
    return types[0], types[1]


def trainable_for(config: PlantVLMTrainConfig) -> Trainable:
    if config.finetune == "full":
        return Trainable(lora=False)
    targets = tuple(dict.fromkeys(t for kind in _encoder_types(config) for t in _encoders.lora_targets(kind)))
    return Trainable(lora_targets=targets, lora_exclude=NEW_MODULES_PATTERN, modules_to_save=NEW_MODULES)


def build_model(config: PlantVLMTrainConfig, classes: list[str]) -> PlantVLM:
    """A new PlantVLM on the pretrained encoders, or the `base` PlantVLM pointed at the data set's classes."""
    if config.builds_new_model:
        return PlantVLM.from_encoders(config.model_config(classes))
    folder = hub.resolve(config.base)
    if not is_plant_folder(folder):
        raise ConfigError(
            f"base {config.base!r} is not a PlantVLM (its config.json has no model_type 'plant-vlm'); leave base "
            "empty to build a new model on vision_backbone + text_model"
        )
    model = PlantVLM.from_pretrained(folder).with_classes(classes)
    model.config.text_dropout = config.text_dropout  # a training setting, not the architecture
    return model


def make_export(probe_dataset: torch.utils.data.Dataset, report_samples=(), references: dict | None = None):
    """The loop's export hook: write the merged, self-contained PlantVLM (config.json, model.safetensors, tokenizer,
    image processor, classes.json) beside the adapter, after checking it predicts as the trained model on a sample;
    then the classes' reference descriptions (descriptions.json) and the full evaluation report on `report_samples`
    (evaluation/: metrics.json, confusion_matrix.png, per_class_f1.png, classification_report.md)."""
    from ..plant.evaluate import DESCRIPTIONS_FILE, REPORT_DIR, evaluate_plant_model

    def export(model, folder: Path, result) -> None:
        final = model
        if hasattr(model, "merge_and_unload"):  # LoRA: merge; finetune full: the loop saved the whole model already
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(folder)
            batch = torch.utils.data.default_collate([probe_dataset[0]])
            keys = ("pixel_values", "input_ids", "attention_mask", "has_text")
            was_training = model.training
            model.eval()
            merged.eval()
            with torch.no_grad():
                expected = model(**_device_inputs(model, batch, keys)).logits.float()
                got = merged(**_device_inputs(merged, batch, keys)).logits.float()
            model.train(was_training)
            if not torch.allclose(expected, got, rtol=1e-3, atol=1e-4):
                raise HubkitError(
                    f"the merged model in {folder} does not predict as the trained adapter ({got} vs {expected})"
                )
            logger.info("wrote the merged PlantVLM (%d classes) to %s", merged.config.num_classes, folder)
            final = merged
        if references:
            (folder / DESCRIPTIONS_FILE).write_text(json.dumps(references, ensure_ascii=False, indent=2) + "\n")
        if report_samples:
            if next(final.parameters()).device.type == "xla":
                # The report decodes descriptions token by token: on XLA each new length is a new graph to compile
                # (minutes each), so it runs on the host, on the model just written (what the push carries).
                final = PlantVLM.from_pretrained(folder).eval()
            evaluate_plant_model(final, list(report_samples), folder / REPORT_DIR)

    return export


def dataset_fingerprint(jsonl: Path) -> str:
    return hashlib.sha256(jsonl.read_bytes()).hexdigest()[:16]


def plant_setup(config: PlantVLMTrainConfig) -> TrainingSetup:
    """Everything the loop needs to train a PlantVLM on a multimodal JSONL."""
    from ..plant.evaluate import reference_descriptions
    from ..plant.texts import read_multimodal

    jsonl, root = data_files(config)
    samples, classes = read_multimodal(jsonl, root)
    if len(classes) != config.num_classes:
        raise ConfigError(
            f"num_classes is {config.num_classes} but {jsonl.name} has {len(classes)} classes; pass "
            f"--num-classes {len(classes)}"
        )
    train_samples, val_samples = stratified_split(samples, val_fraction=config.val_fraction, seed=config.seed)
    if not train_samples:
        raise DataError(f"{jsonl}: no training sample left after holding out val_fraction={config.val_fraction}")
    logger.info("%d classes; %d train / %d held-out images", len(classes), len(train_samples), len(val_samples))
    template = build_model(config, classes)  # the tokenizer and processor the data sets use
    train_ds = PlantDataset(train_samples, template, augment=config.augment, seed=config.seed)
    val_ds = PlantDataset(val_samples, template, augment=False, seed=config.seed)
    weights = class_weights(train_samples, len(classes)) if config.class_weights == "balanced" else None
    first = [template]

    def load_base() -> PlantVLM:
        if first:  # the first call reuses the model built above; later ones (the reload check) build afresh
            return first.pop()
        torch.manual_seed(config.seed)
        return build_model(config, classes)

    shown = ", ".join(f"`{c}`" for c in classes[:200]) + (" ..." if len(classes) > 200 else "")
    what = (
        "LoRA on the encoders' layers; projections, fusion, classifier and description head trained in full"
        if config.finetune == "lora"
        else "every weight trained in full"
    )
    return TrainingSetup(
        task=TASK,
        load_base=load_base,
        train_dataset=train_ds,
        eval_dataset=val_ds if len(val_ds) else None,
        loss_fn=make_loss(weights=weights, description_weight=config.description_weight),
        evaluate_fn=evaluate,
        dataset_name=jsonl.resolve().parent.name or jsonl.stem,
        dataset_type="plantset-multimodal",
        dataset_revision=dataset_fingerprint(jsonl),
        trainable=trainable_for(config),
        export_fn=make_export(
            val_ds if len(val_ds) else train_ds, val_samples or train_samples, reference_descriptions(samples)
        ),  # fmt: skip
        card_notes=(
            f"A PlantVLM (vision `{config.vision_backbone}`, text `{config.text_model}`; {what}). Load the "
            "self-contained model in this repo with `hubkit.plant.PlantVLM.from_pretrained(repo_id)` or "
            "`hubkit.load('plant-disease', repo_id)`. Metrics on the held-out split (stratified per class), with the "
            "symptom texts and, as `*_image_only`, without them; `description_perplexity` is the description "
            f"head's on the reference descriptions.\n\n"
            f"![Confusion matrix (held-out, row-normalised)](evaluation/confusion_matrix.png)\n\n"
            "The full report is in `evaluation/`: metrics.json (per-class precision / recall / F1 / AUC, top "
            "confusions), classification_report.md, per_class_f1.png, descriptions.jsonl (generated vs reference)."
            f"\n\n**Classes ({len(classes)}):** {shown}"
        ),
    )
