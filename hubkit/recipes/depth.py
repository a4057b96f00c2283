"""The depth recipe: Depth Anything V2 (or DPT) + LoRA on Zivid RGB + XYZ pairs; config, data, loss, mm metrics.

Targets: a relative-depth base (Depth Anything V2 "-hf", depth_estimation_type "relative") predicts
inverse depth (bigger = nearer), so it trains against inverse depth and is evaluated after a
least-squares scale-and-shift fit in inverse-depth space, converted back to mm. A metric base predicts
metres and trains and evaluates against metres directly.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import hub
from ..data.zivid import ZividDepthDataset, scan_zivid, split
from ..errors import ConfigError
from ..metrics.depth import DepthMetricAccumulator, align_inverse, masked_mse_normalised, silog_loss, ssi_loss
from ..tasks import LoadOptions, get_task
from ..training import TrainConfig, TrainingSetup, option

logger = logging.getLogger(__name__)
LOSSES = ("masked_mse", "silog", "ssi")
TASK = "depth-estimation"


@dataclass(frozen=True)
class DepthLoraConfig(TrainConfig):
    """The seed notebook's recipe (trainers/configs/depth_zivid.yaml holds its values)."""

    base: str = option("base depth model", "depth-anything/Depth-Anything-V2-Small-hf")
    input_size: int = option("square input side in pixels (a multiple of 14)", 518)
    loss: str = option("masked_mse (the seed's), silog (DA-V2 metric fine-tuning) or ssi", "masked_mse")
    silog_lambda: float = option("variance weight of the SiLog loss", 0.5)
    val_fraction: float = option("fraction of pairs held out for evaluation", 0.2)
    augment: bool = option("flip / scale-crop / colour jitter, image and depth kept aligned", True)


def is_relative(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.config, "depth_estimation_type", "relative") != "metric"


def _target(depth_mm: torch.Tensor, valid: torch.Tensor, relative: bool) -> torch.Tensor:
    safe = torch.where(valid, depth_mm, torch.ones_like(depth_mm))
    return torch.where(valid, 1000.0 / safe if relative else safe / 1000.0, torch.zeros_like(depth_mm))


def make_loss(name: str, silog_lambda: float = 0.5, *, relative: bool = True):
    if name not in LOSSES:
        raise ConfigError(f"loss must be one of {LOSSES}, got {name!r}")
    task = get_task(TASK)

    def loss_fn(model, batch) -> torch.Tensor:
        device = next(p for p in model.parameters()).device
        pixels = batch["pixel_values"].to(device)
        depth_mm, valid = batch["depth"].to(device), batch["valid"].to(device)
        pred = task.forward(model, pixels).float()
        target = _target(depth_mm, valid, relative)
        if name == "masked_mse":  # the seed notebook's loss
            return masked_mse_normalised(pred, target, valid)
        if name == "silog":  # Depth Anything V2's metric-depth fine-tuning loss
            return silog_loss(pred.clamp_min(1e-6), target, valid, lam=silog_lambda)
        return ssi_loss(pred, target, valid)

    return loss_fn


@torch.no_grad()
def evaluate(model, loader) -> dict[str, float]:
    """DA-V2 metric-depth metrics in mm on valid pixels, averaged over validation samples."""
    task = get_task(TASK)
    device = next(model.parameters()).device
    relative = is_relative(model)
    acc = DepthMetricAccumulator()
    model.eval()  # metrics without dropout, whoever calls
    for batch in loader:
        pred = task.forward(model, batch["pixel_values"].to(device)).float().cpu()
        for p, depth_mm, valid in zip(pred, batch["depth"], batch["valid"], strict=True):
            if valid.sum() < 2:
                continue
            pred_mm = align_inverse(p, depth_mm, valid)[0] if relative else p * 1000.0
            acc.update(pred_mm, depth_mm, valid)
    return acc.compute()


@torch.no_grad()
def eval_images(model, loader, *, count: int = 4) -> dict:
    """Colourised predictions beside the ground truth for the first validation samples (for TensorBoard)."""
    import numpy as np

    from ..viz import colorize_depth

    task = get_task(TASK)
    device = next(model.parameters()).device
    batch = next(iter(loader))
    pred = task.forward(model, batch["pixel_values"][:count].to(device)).float().cpu().numpy()
    rows = []
    for p, depth_mm, valid in zip(pred, batch["depth"].numpy(), batch["valid"].numpy(), strict=False):
        predicted, _ = colorize_depth(p, relative=is_relative(model))
        truth, _ = colorize_depth(np.where(valid, depth_mm, np.nan), valid=valid, relative=False)
        rows.append(np.concatenate([predicted, truth], axis=1))
    return {"eval/depth_pred_vs_truth": np.stack(rows)}


def data_fingerprint(samples) -> str:
    """A content hash of the data set files, recorded in the card."""
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: s.stem):
        for path in (sample.image_path, sample.depth_path):
            digest.update(Path(path).name.encode())
            digest.update(hub.sha256_file(path).encode())
    return digest.hexdigest()[:16]


def processor_normalisation(folder: Path) -> dict:
    """mean / std from the base's own image processor: what `hubkit.load(...).predict` normalises with."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)
    if getattr(processor, "do_normalize", True) is False:
        return {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    return {"mean": tuple(processor.image_mean), "std": tuple(processor.image_std)}


def depth_setup(config) -> TrainingSetup:
    """Everything the loop needs for Depth Anything LoRA on a Zivid-format folder."""
    if not config.data:
        raise ConfigError("data is required: a Zivid-format folder with images/ and depth/")
    task = get_task(TASK)
    folder = hub.resolve(config.base)
    data_dir = hub.resolve(config.data, repo_type="dataset")  # a folder, or a dataset repo in the store
    report = scan_zivid(data_dir)
    train_samples, val_samples = split(report.samples, val_fraction=config.val_fraction, seed=config.seed)
    logger.info("%s; %d train / %d val", report.summary(), len(train_samples), len(val_samples))
    norm = processor_normalisation(folder)
    train_ds = ZividDepthDataset(
        train_samples, size=config.input_size, augment=config.augment, seed=config.seed, **norm
    )
    val_ds = ZividDepthDataset(val_samples, size=config.input_size, augment=False, seed=config.seed, **norm)

    def load_base():
        model, _ = task.load(folder, LoadOptions())
        return model

    from transformers import AutoConfig

    # from the config alone: the base is loaded once for training and once for the final reload check
    relative = getattr(AutoConfig.from_pretrained(folder), "depth_estimation_type", "relative") != "metric"
    return TrainingSetup(
        task=TASK,
        load_base=load_base,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        loss_fn=make_loss(config.loss, config.silog_lambda, relative=relative),
        evaluate_fn=evaluate,
        eval_images_fn=eval_images,
        dataset_name=Path(config.data).name if Path(config.data).is_dir() else config.data,
        dataset_type="zivid-rgb-xyz",
        dataset_revision=data_fingerprint(report.samples),
        card_notes=(
            "Evaluated in millimetres on the validation split's valid pixels with Depth Anything V2's "
            "metric-depth metrics. "
            + (
                "The base predicts relative inverse depth, so each prediction was aligned to the ground truth "
                "by a least-squares scale and shift in inverse-depth space before the metrics."
                if relative
                else "The base predicts metric depth; no alignment was applied."
            )
        ),
    )
