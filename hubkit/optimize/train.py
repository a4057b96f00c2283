"""Full fine-tuning through the shared loop (`hubkit.training`, `Trainable(lora=False)`): the pruned model's
recovery and the student's distillation. The loop saves the whole model, reloads it as its last check, and the
trained weights come back from that folder."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..training import TrainConfig, TrainingSetup, build_config, train
from ..training.trainable import Trainable
from .data import TensorSet
from .variant import LogitsModule

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 60
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError(f"fine-tune steps, batch_size and learning_rate must be positive, got {self}")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 5.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))."""
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise ConfigError(f"distillation needs temperature > 0 and alpha in [0, 1], got {temperature}, {alpha}")
    ce = F.cross_entropy(student_logits.float(), labels)
    kl = F.kl_div(
        F.log_softmax(student_logits.float() / temperature, dim=-1),
        F.softmax(teacher_logits.float() / temperature, dim=-1),
        reduction="batchmean",
    )
    return alpha * ce + (1 - alpha) * temperature**2 * kl


def accuracy_fn(model, loader, *, logits: Callable | None = None) -> dict[str, float]:
    """Top-1 accuracy over `loader`; `logits(model, pixel_values)` where the model's output is not the logits."""
    device = next(model.parameters()).device
    right = total = 0
    for batch in loader:
        pixels = batch["pixel_values"].to(device)
        pred = (logits(model, pixels) if logits else model(pixels)).argmax(-1).cpu()
        right += int((pred == batch["labels"]).sum())
        total += len(pred)
    return {"accuracy": right / max(total, 1)}


def finetune(
    model: torch.nn.Module,
    train_set: TensorSet,
    eval_set: TensorSet,
    out_dir: Path,
    *,
    base_name: str,
    settings: FinetuneSettings,
    teacher: torch.nn.Module | None = None,
    temperature: float = 5.0,
    alpha: float = 0.5,
    task: str = "image-classification",
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Train every weight of `model` (a transformers classifier) for `settings.steps` steps; with a `teacher`,
    on the distillation loss. Returns the trained model (a new object, loaded from what the loop saved) and the
    loop's held-out metrics."""
    template = LogitsModule(copy.deepcopy(model).train())
    teacher_fn: Callable | None = None
    if teacher is not None:
        teacher_module = LogitsModule(teacher).eval()
        teacher_module.requires_grad_(False)
        teacher_fn = teacher_module

    def loss_fn(net, batch):
        logits = net(batch["pixel_values"])
        if teacher_fn is None:
            return F.cross_entropy(logits.float(), batch["labels"])
        with torch.no_grad():
            soft = teacher_fn(batch["pixel_values"])
        return distillation_loss(logits, soft, batch["labels"], temperature=temperature, alpha=alpha)

    config = build_config(
        TrainConfig,
        dict(
            base=base_name,
            output_dir=str(out_dir),
            learning_rate=settings.learning_rate,
            max_steps=settings.steps,
            epochs=1,
            batch_size=min(settings.batch_size, len(train_set)),
            lr_schedule="cosine",
            warmup_steps=min(5, settings.steps // 10),
            mixed_precision="no",
            report_to="none",
            eval_before=False,
            eval_every=0,
            log_every=max(1, settings.steps // 5),
            seed=settings.seed,
        ),
    )
    setup = TrainingSetup(
        task=task,
        load_base=lambda: copy.deepcopy(template),
        train_dataset=train_set,
        eval_dataset=eval_set,
        loss_fn=loss_fn,
        evaluate_fn=accuracy_fn,
        trainable=Trainable(lora=False),
        card_notes="Intermediate training output of `hubkit optimize`; the variant folder is the deliverable.",
    )
    result = train(config, setup)
    from safetensors.torch import load_file

    trained = copy.deepcopy(template)
    trained.load_state_dict(load_file(result.adapter_dir / "model.safetensors"))
    return trained.model.eval(), dict(result.metrics)


def build_student(teacher_config, image_size: int, *, kind: str = "mobilenet_v2", width: float = 0.35):
    """A small random-initialised transformers classifier with the teacher's labels (offline: no pretrained
    student weights). kind: mobilenet_v2 (MobileNetV2, `width` = depth multiplier) or resnet (a 4-stage basic-block
    ResNet, `width` scales 64-128-256-512 channels)."""
    from transformers import (
        MobileNetV2Config,
        MobileNetV2ForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
    )

    labels = dict(id2label=dict(teacher_config.id2label), label2id=dict(teacher_config.label2id))
    if kind == "mobilenet_v2":
        config = MobileNetV2Config(image_size=image_size, depth_multiplier=width, **labels)
        return MobileNetV2ForImageClassification(config)
    if kind == "resnet":
        sizes = [max(8, int(c * width)) for c in (64, 128, 256, 512)]
        config = ResNetConfig(
            embedding_size=sizes[0], hidden_sizes=sizes, depths=[1, 1, 1, 1], layer_type="basic", **labels
        )
        return ResNetForImageClassification(config)
    raise ConfigError(f"student kind must be 'mobilenet_v2' or 'resnet', got {kind!r}")
