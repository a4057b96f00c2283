"""The SAM recipe: prompted-mask fine-tuning of SAM on a Segma export or a COCO folder; config, data, loss, metrics.

Two variants (`variant`):

- ``encoder`` (the Segma seed's "Fine-tuning SAM avec LoRA"): LoRA r 16 / alpha 32 / dropout 0.1 on the image
  encoder's ``qkv``, ``proj``, ``mlp.lin1``, ``mlp.lin2``; prompt encoder and mask decoder frozen (the task preset);
  AdamW lr 1e-4 (torch's default weight decay 0.01), 10 epochs.
- ``decoder`` (transformers' SAM fine-tuning tutorial): vision and prompt encoders frozen, the mask decoder trains,
  with LoRA on its attention / MLP projections, or in full (``decoder_full``, lr 1e-5 as the tutorial). The frozen
  encoder's image embeddings are computed once per image and process and reused (``cache_embeddings``).

One training sample per annotated object: the image (the processor's ``pixel_values``, computed once per image),
the object's mask in the model's 256 x 256 low-res frame (the processor's ``segmentation_maps`` path: longest side
resized, padded) and a prompt: its ground-truth box widened by 0-``box_jitter`` px per side (seeded per epoch and
sample, as the tutorial's ``get_bounding_box``) or one random point inside the mask; ``multimask_output=False``. The
loss is Dice + BCE on the low-res logits (`dice_ce_loss`, monai's ``DiceCELoss(sigmoid=True, squared_pred=True)``).

Evaluation (the seed's ``evaluate_sam_performance``): every held-out object prompted with its exact box (or, with
``prompt: point``, the mask's innermost point), masks upscaled to the image with the processor's
``post_process_masks``; mean IoU, Dice and boundary F over objects, and seconds per object.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import hub
from ..data.segma import DetectionData, SegmaSample, read_detection_data, split_samples
from ..errors import ConfigError, DataError
from ..metrics.segmentation import boundary_f_score, dice_score, mask_iou
from ..tasks import LoadOptions, get_task
from ..training import TrainConfig, TrainingSetup, option
from ..training.trainable import Trainable

logger = logging.getLogger(__name__)
TASK = "mask-generation"
VARIANTS = ("encoder", "decoder")
PROMPTS = ("box", "point")
# The mask decoder's two-way transformer (attention projections, MLPs) and the hypernetwork / IoU-head MLPs.
DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "mlp.lin1", "mlp.lin2", "proj_in", "proj_out")
DECODER_EXCLUDE = r"(.*\.)?(vision_encoder|prompt_encoder)\..*"  # mlp.lin1 / lin2 also name encoder layers
_CACHE = "_hubkit_embedding_cache"


@dataclass(frozen=True)
class SamLoraConfig(TrainConfig):
    """The Segma seed's SAM LoRA recipe (trainers/configs/sam_lora.yaml); the decoder variant is transformers'
    tutorial (trainers/configs/sam_decoder.yaml)."""

    base: str = option("base SAM model", "facebook/sam-vit-base")
    variant: str = option("encoder: LoRA on the image encoder (the seed); decoder: train the mask decoder", "encoder")
    decoder_full: bool = option("decoder variant: train the whole mask decoder instead of LoRA on it", False)
    prompt: str = option("training prompt: box (the ground-truth box, jittered) or point (one in the mask)", "box")
    box_jitter: int = option("widen each side of the training box by 0..N pixels (random, seeded)", 20)
    cache_embeddings: bool = option("decoder variant: encode each image once and reuse it (frozen encoder)", True)
    iou_loss_weight: float = option(
        "decoder variant: weight of SAM's own IoU-head loss (MSE between the predicted IoU and the mask's IoU with the "
        "target), so the automatic masks' predicted-IoU filter stays true after fine-tuning; 0 = off", 1.0
    )  # fmt: skip
    val_fraction: float = option("fraction of images held out for evaluation", 0.2)
    lora_dropout: float = option("dropout on the LoRA input (the seed's 0.1)", 0.1)
    learning_rate: float = option("AdamW learning rate (the seed's 1e-4; 1e-5 for the full decoder)", 1e-4)
    weight_decay: float = option("AdamW weight decay (torch's default, which the seed's AdamW(lr=1e-4) uses)", 0.01)
    lr_schedule: str = option("the seed steps at a constant rate", "constant")
    max_grad_norm: float = option("gradient clipping (0 = off, as the seed)", 0.0)
    batch_size: int = option("objects per process per micro-batch (the tutorial's 2)", 2)

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            (self.variant in VARIANTS, "variant", f"one of {VARIANTS}"),
            (self.prompt in PROMPTS, "prompt", f"one of {PROMPTS}"),
            (self.box_jitter >= 0, "box_jitter", "zero or more pixels"),
            (0 <= self.val_fraction < 1, "val_fraction", "in [0, 1)"),
            (self.iou_loss_weight >= 0, "iou_loss_weight", "zero or more"),
            (not self.decoder_full or self.variant == "decoder", "decoder_full", "false unless variant is decoder"),
        ]
        for ok, name, what in checks:
            if not ok:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name)!r}")


def trainable_for(config: SamLoraConfig) -> Trainable:
    """What trains: the task preset (image encoder) or the mask decoder (LoRA, or in place when decoder_full)."""
    if config.variant == "encoder":
        return Trainable()  # hubkit.tasks.sam's preset: qkv / proj / mlp.lin1 / mlp.lin2, decoder + prompt excluded
    if config.decoder_full:
        return Trainable(lora=False, full_modules=("mask_decoder",))
    return Trainable(lora_targets=DECODER_TARGETS, lora_exclude=DECODER_EXCLUDE)


# -- loss ------------------------------------------------------------------------------------------------------
def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1e-5) -> torch.Tensor:
    """The seed's ``compute_segmentation_loss``, written as monai's ``DiceCELoss(sigmoid=True, squared_pred=True,
    reduction="mean")`` computes it for one channel (monai >= 1.2; monai itself is not a dependency):

        p = sigmoid(logits);  dice = 1 - (2 sum(p t) + 1e-5) / (sum(p^2) + sum(t^2) + 1e-5)   per sample and channel
        loss = mean(dice) + BCEWithLogits(logits, t) (mean over every pixel)

    `logits` and `target` are (B, 1, h, w); the target is the ground-truth mask in the low-res frame (0 / 1)."""
    if logits.shape != target.shape:
        raise DataError(f"dice_ce_loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    logits, target = logits.float(), target.float()
    prob = torch.sigmoid(logits)
    dims = tuple(range(2, logits.ndim))
    intersection = (prob * target).sum(dims)
    denominator = (prob * prob).sum(dims) + (target * target).sum(dims)  # squared_pred
    dice = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    return dice.mean() + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


# -- data ------------------------------------------------------------------------------------------------------
def load_processor(folder: Path):
    """The base's SamProcessor without loading its weights (as hubkit.tasks.sam loads it)."""
    from transformers import AutoProcessor, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    if (folder / "preprocessor_config.json").is_file() or (folder / "processor_config.json").is_file():
        return AutoProcessor.from_pretrained(folder)
    return SamProcessor(image_processor=SamImageProcessorPil())


def innermost_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the mask pixel farthest from its border: a deterministic point prompt."""
    from scipy.ndimage import distance_transform_edt

    y, x = np.unravel_index(int(np.argmax(distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1])), mask.shape)
    return float(x), float(y)


class SamPromptDataset(torch.utils.data.Dataset):
    """One item per annotated object: ``pixel_values`` (its image's, computed once), ``labels`` (the mask in the
    low-res frame), a prompt in the model's input frame (``input_boxes`` (1, 4), or ``input_points`` (1, 1, 2) with
    ``input_labels``) and ``image_id``. Training items draw their jitter / point from (seed, epoch, index), so DDP
    processes and a resumed run draw the same; evaluation items (``jitter=None``) use the exact box or the mask's
    innermost point. ``images`` keeps each image's full-size masks and exact prompts for `evaluate`."""

    def __init__(self, samples, processor, *, prompt: str, jitter: int | None, seed: int, first_id: int = 0):
        self.processor, self.prompt, self.jitter, self.seed, self.epoch = processor, prompt, jitter, seed, 0
        self.pixels: list[torch.Tensor] = []
        self.images: list[dict] = []  # per image: sizes, full-size masks, boxes, points
        self.items: list[tuple[int, int]] = []  # (image index, object index)
        self.labels: list[torch.Tensor] = []  # per item
        for sample in samples:
            masks, boxes = self._objects(sample)
            if not masks:
                continue
            inputs = processor(
                images=sample.image(), segmentation_maps=[m.astype(np.uint8) for m in masks], return_tensors="pt"
            )
            original = tuple(int(v) for v in inputs["original_sizes"][0])
            reshaped = tuple(int(v) for v in inputs["reshaped_input_sizes"][0])
            index = len(self.images)
            self.pixels.append(inputs["pixel_values"][0])
            self.images.append(
                {
                    "id": first_id + index,
                    "original": original,
                    "reshaped": reshaped,
                    "masks": masks,
                    "boxes": boxes,
                    "points": [innermost_point(m) for m in masks],
                    "path": str(sample.image_path),
                }
            )
            for k, label in enumerate(inputs["labels"]):
                self.items.append((index, k))
                self.labels.append((label > 0).to(torch.uint8))

    @staticmethod
    def _objects(sample: SegmaSample) -> tuple[list[np.ndarray], list[tuple[float, ...]]]:
        masks, boxes = [], []
        for obj in sample.objects:
            mask = obj.mask(sample.height, sample.width)
            if not mask.any():
                logger.warning("%s: object %r has an empty mask; skipped", sample.image_path.name, obj.label)
                continue
            ys, xs = np.nonzero(mask)  # the tight box of the mask: what SAM should return for it
            masks.append(mask)
            boxes.append((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
        return masks, boxes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def scale(self, image: dict) -> np.ndarray:
        """(sx, sy): image pixels -> model-input pixels, as SamProcessor._normalize_coordinates scales prompts."""
        (oh, ow), (rh, rw) = image["original"], image["reshaped"]
        return np.array([rw / ow, rh / oh])

    def __getitem__(self, i: int) -> dict:
        index, k = self.items[i]
        image = self.images[index]
        item = {"pixel_values": self.pixels[index], "labels": self.labels[i], "image_id": image["id"]}
        rng = np.random.default_rng((self.seed, self.epoch, i)) if self.jitter is not None else None
        if self.prompt == "box":
            x1, y1, x2, y2 = image["boxes"][k]
            if rng is not None and self.jitter:  # the tutorial's get_bounding_box: widen each side, stay inside
                (oh, ow), dx1, dy1, dx2, dy2 = image["original"], *rng.integers(0, self.jitter + 1, size=4)
                x1, y1, x2, y2 = max(0, x1 - dx1), max(0, y1 - dy1), min(ow, x2 + dx2), min(oh, y2 + dy2)
            box = np.array([x1, y1, x2, y2]) * np.tile(self.scale(image), 2)
            item["input_boxes"] = torch.tensor(box, dtype=torch.float32)[None]
        else:
            if rng is not None:
                ys, xs = np.nonzero(image["masks"][k])
                pick = int(rng.integers(len(xs)))
                point = (float(xs[pick]), float(ys[pick]))
            else:
                point = image["points"][k]
            item["input_points"] = torch.tensor(np.array(point) * self.scale(image), dtype=torch.float32)[None, None]
            item["input_labels"] = torch.ones(1, 1, dtype=torch.int64)
        return item


# -- model calls -----------------------------------------------------------------------------------------------
def _base_of(model):
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _prompt_inputs(batch: dict, device) -> dict:
    if "input_boxes" in batch:
        return {"input_boxes": batch["input_boxes"].to(device)}
    return {"input_points": batch["input_points"].to(device), "input_labels": batch["input_labels"].to(device)}


def cached_embeddings(model, pixel_values: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
    """The frozen image encoder's output for each image, computed once per image and model. Held on the model, in
    host memory (ViT-B: 4 MiB per image), and moved to the batch's device per step."""
    base = _base_of(model)
    cache = base.__dict__.setdefault(_CACHE, {})
    keys = image_ids.tolist()
    missing = [i for i, key in enumerate(keys) if key not in cache]
    if missing:
        with torch.no_grad():
            fresh = base.get_image_embeddings(pixel_values[missing])
        for i, embedding in zip(missing, fresh, strict=True):
            cache[keys[i]] = embedding.to("cpu")
    return torch.stack([cache[key] for key in keys]).to(pixel_values.device)


def make_loss(*, cache: bool, iou_weight: float = 0.0):
    """The loop's loss: SAM on the batch's prompts, one mask each, Dice + BCE against the low-res target; with
    `iou_weight`, plus SAM's IoU-head loss (MSE against the IoU of the thresholded mask with the target), which also
    gives the IoU head's parameters a gradient (DDP needs every trained parameter used)."""

    def loss_fn(model, batch) -> torch.Tensor:
        param = next(p for p in model.parameters())
        pixels = batch["pixel_values"].to(param.device)
        if cache:
            image = {"image_embeddings": cached_embeddings(model, pixels, batch["image_id"])}
        else:
            image = {"pixel_values": pixels}
        out = model(**image, **_prompt_inputs(batch, param.device), multimask_output=False)
        logits = out.pred_masks[:, 0]  # (B, 1 prompt, 1 mask, h, w) -> (B, 1, h, w)
        target = batch["labels"][:, None].to(param.device)
        loss = dice_ce_loss(logits, target)
        if iou_weight:
            with torch.no_grad():
                pred = logits > 0
                truth = target > 0.5
                inter = (pred & truth).flatten(1).sum(1).float()
                union = (pred | truth).flatten(1).sum(1).float()
                actual = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
            loss = loss + iou_weight * torch.nn.functional.mse_loss(out.iou_scores.reshape(-1).float(), actual)
        return loss

    return loss_fn


@torch.no_grad()
def predict_objects(model, dataset: SamPromptDataset, index: int) -> np.ndarray:
    """(K, H, W) bool: the masks for one image's objects from their evaluation prompts, at the image's size."""
    image = dataset.images[index]
    param = next(model.parameters())
    scale = dataset.scale(image)
    feed: dict = {"pixel_values": dataset.pixels[index][None].to(param.device)}
    if dataset.prompt == "box":
        boxes = np.array(image["boxes"]) * np.tile(scale, 2)
        feed["input_boxes"] = torch.tensor(boxes, dtype=torch.float32, device=param.device)[None]
    else:
        points = np.array(image["points"]) * scale
        feed["input_points"] = torch.tensor(points, dtype=torch.float32, device=param.device)[None, :, None]
        feed["input_labels"] = torch.ones(1, len(points), 1, dtype=torch.int64, device=param.device)
    low = model(**feed, multimask_output=False).pred_masks[0].float().cpu()  # (K, 1, h, w)
    masks = dataset.processor.post_process_masks([low], [image["original"]], [image["reshaped"]])[0]
    return masks[:, 0].numpy().astype(bool)


@torch.no_grad()
def evaluate(model, loader) -> dict[str, float]:
    """The seed's evaluate_sam_performance on the held-out objects: mean IoU, Dice, boundary F (2 px) and
    avg_inference_time, the seconds per object (encoder, prompts, decoder and upscaling; an image's objects share
    one encoding)."""
    dataset: SamPromptDataset = loader.dataset
    model.eval()
    scores = {"mean_iou": [], "mean_dice": [], "mean_boundary_acc": []}
    seconds = 0.0
    for index, image in enumerate(dataset.images):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        masks = predict_objects(model, dataset, index)
        seconds += time.perf_counter() - start
        for pred, truth in zip(masks, image["masks"], strict=True):
            scores["mean_iou"].append(mask_iou(pred, truth))
            scores["mean_dice"].append(dice_score(pred, truth))
            scores["mean_boundary_acc"].append(boundary_f_score(pred, truth))
    objects = len(scores["mean_iou"])
    out = {name: float(np.mean(values)) for name, values in scores.items()}
    return {**out, "avg_inference_time": seconds / max(objects, 1)}


@torch.no_grad()
def eval_images(model, loader, *, count: int = 4, height: int = 128) -> dict:
    """Predicted masks beside the ground truth for the first held-out images (for TensorBoard), NHWC uint8."""
    from PIL import Image

    from ..tasks.sam import MaskPrediction, overlay

    dataset: SamPromptDataset = loader.dataset
    rows = []
    for index, image in enumerate(dataset.images[:count]):
        picture = Image.open(image["path"]).convert("RGB")
        pred = predict_objects(model, dataset, index)
        panels = [
            overlay(MaskPrediction(m, np.ones(len(m)), np.zeros((len(m), 4)), picture))
            for m in (pred, np.stack(image["masks"]))
        ]
        row = Image.fromarray(np.concatenate(panels, axis=1)).resize((2 * height, height))  # one shape for all
        rows.append(np.asarray(row))
    return {"eval/masks_pred_vs_truth": np.stack(rows)} if rows else {}


# -- setup -----------------------------------------------------------------------------------------------------
def datasets(config: SamLoraConfig, data: DetectionData, processor) -> tuple[SamPromptDataset, SamPromptDataset]:
    train_samples, val_samples = split_samples(data.samples, val_fraction=config.val_fraction, seed=config.seed)
    train = SamPromptDataset(train_samples, processor, prompt=config.prompt, jitter=config.box_jitter, seed=config.seed)
    val = SamPromptDataset(
        val_samples, processor, prompt=config.prompt, jitter=None, seed=config.seed, first_id=len(train.images)
    )
    if not len(train):
        raise DataError(f"{data.root}: no object with a mask in the training split ({data.summary()})")
    return train, val


def sam_setup(config: SamLoraConfig) -> TrainingSetup:
    """Everything the loop needs to fine-tune SAM on a Segma export / COCO folder (a folder or a dataset repo)."""
    if not config.data:
        raise ConfigError("data is required: a Segma export or COCO folder, or a dataset repo id")
    task = get_task(TASK)
    folder = hub.resolve(config.base)
    data = read_detection_data(config.data)
    processor = load_processor(folder)
    train_ds, val_ds = datasets(config, data, processor)
    logger.info("%s; %d train / %d held-out objects", data.summary(), len(train_ds), len(val_ds))
    cache = config.variant == "decoder" and config.cache_embeddings

    def load_base():
        model, _ = task.load(folder, LoadOptions())
        return model

    what = {
        "encoder": "LoRA on the image encoder (qkv, proj, mlp.lin1, mlp.lin2); prompt encoder and mask decoder frozen",
        "decoder": "the mask decoder trained in full; image and prompt encoders frozen"
        if config.decoder_full
        else "LoRA on the mask decoder; image and prompt encoders frozen",
    }[config.variant]
    prompt = (
        f"its ground-truth box widened by 0-{config.box_jitter} px per side"
        if config.prompt == "box"
        else "a random point inside its mask"
    )
    eval_prompt = "its exact ground-truth box" if config.prompt == "box" else "its mask's innermost point"
    return TrainingSetup(
        task=TASK,
        load_base=load_base,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        loss_fn=make_loss(cache=cache, iou_weight=config.iou_loss_weight if config.variant == "decoder" else 0.0),
        evaluate_fn=evaluate,
        eval_images_fn=eval_images,
        dataset_name=Path(config.data).name if Path(config.data).is_dir() else config.data,
        dataset_type="segma-coco",
        dataset_revision=data.fingerprint,
        trainable=trainable_for(config),
        card_notes=(
            f"Trained: {what}. Each object is one sample, prompted with {prompt} (`multimask_output=False`); "
            "loss Dice + BCE on the low-res mask logits (monai's DiceCELoss with sigmoid and squared_pred). "
            f"Evaluated on {len(val_ds.images)} held-out images ({len(val_ds)} objects), each object prompted with "
            f"{eval_prompt}, its mask upscaled to the image size: mean IoU, Dice, boundary F (`mean_boundary_acc`, "
            "2 px tolerance) over objects, and `avg_inference_time` in seconds per object."
            + (
                " This folder holds the trained mask decoder (`trained_modules.safetensors`), not a LoRA adapter: "
                "load it into a base with `hubkit.adapters.restore_trained_modules(model, folder)`."
                if config.decoder_full
                else ""
            )
        ),
    )
