"""The joint recipe: Grounding DINO, SAM and a region classifier trained together on one COCO / Segma data set.

The seed's "Pipeline End-to-End Fine-tuning" (`EndToEndPipelineLoss`, weights segmentation 1.0, detection 1.0,
classification 0.5), on the parts of the pipeline that see pixels:

- Detection: Grounding DINO with LoRA (the Grounding DINO recipe's targets and box heads), its own loss (Hungarian
  matching, focal text-token loss, L1 + GIoU) with the class names as the prompt. The seed's alternative, SmoothL1
  on matched boxes, is close to that loss's L1 term.
- Segmentation: SAM with LoRA on its mask decoder (as the SAM recipe's decoder variant: the two-way transformer's
  attention and MLPs, the hypernetwork MLPs; not the IoU head, which no loss here trains), vision and prompt
  encoders frozen, prompted with one box per ground-truth object; BCE on the low-res mask logits (the seed's), or
  Dice + BCE. Which box prompts SAM (`box_prompts`):
  ``auto`` (default): the detection Hungarian-matched to the object when its IoU with the ground truth reaches
  `prompt_iou`, else the ground-truth box; early in training, when the detector is poor, SAM learns from the
  ground-truth boxes, and as it improves SAM learns from (and back-propagates into) the boxes it will get in use.
  ``detected``: always the matched detection. ``gt``: always the ground-truth box (the transformers SAM tutorial's
  teacher forcing). Ground-truth prompts are jittered by up to `box_jitter` of the box side while training. A
  detected box stays in the graph: the segmentation loss reaches the detector's box head and LoRA through SAM's
  prompt encoder, which is what makes the pipeline train end to end.
- Classification: a small MLP head (`RegionHead`) over the SAM region embedding: SAM's image embedding averaged
  under the predicted soft mask (sigmoid of the low-res logits). That input is differentiable, so the
  classification loss also trains SAM's decoder (and, through the prompts, the detector). The 61 HLBB features
  (`region_input: hlbb`) are the alternative: hand-made colour / texture / shape statistics of the ground-truth mask,
  not differentiable, so the head then trains beside the two models rather than through them.

Both models and the head are one `SegmaJointModel` (one PEFT adapter for the loop: checkpoints, resume, DDP, the
reload check). `export_parts` then splits the saved adapter into parts that load alone: ``adapters/sam``
(``hubkit.load("mask-generation", sam_base, adapters=[...])``), ``adapters/grounding_dino``
(``hubkit.load("zero-shot-object-detection", dino_base, adapters=[...])``) and ``adapters/region_head``
(``RegionHead.load``: safetensors + config.json).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import hub
from ..errors import ConfigError, HubkitError
from ..tasks import LoadOptions, get_task
from ..training import TrainConfig, TrainingSetup, option
from ..training.trainable import ParamGroup, Trainable
from . import grounding_dino as gd
from .sam_lora import DECODER_TARGETS

logger = logging.getLogger(__name__)
TASK = "mask-generation"  # the run's card; the detector part gets its own card and task
SAM_TARGETS = DECODER_TARGETS  # the SAM recipe's decoder variant: attention, MLPs, hypernetwork / IoU-head MLPs
# DINO's backbones, SAM's encoders, and SAM's IoU head (no loss here trains its score)
FROZEN = r"(.*\.)?(backbone|text_backbone|vision_encoder|prompt_encoder|iou_prediction_head)\..*"
PROMPTS = ("auto", "detected", "gt")
REGION_INPUTS = ("sam", "hlbb")
SEG_LOSSES = ("bce", "dice_bce")
HEAD_WEIGHTS, HEAD_CONFIG = "model.safetensors", "config.json"
HEAD_FILE = "region_head.json"  # the head's config beside the joint adapter, until export_parts splits it out
PARTS = {"sam": "mask-generation", "grounding_dino": "zero-shot-object-detection"}


@dataclass(frozen=True)
class SegmaJointConfig(TrainConfig):
    """The seed's end-to-end recipe (trainers/configs/segma_joint.yaml holds its values)."""

    base: str = option("SAM base: Hub id, store repo or folder", "facebook/sam-vit-base")
    detector_base: str = option(
        "Grounding DINO base: Hub id, store repo or folder", "IDEA-Research/grounding-dino-tiny"
    )
    learning_rate: float = option("learning rate of both models' LoRA", 1e-4)
    head_lr: float = option("learning rate of the box heads and the region head (trained in full)", 1e-3)
    weight_decay: float = option("AdamW weight decay", 1e-4)
    segmentation_weight: float = option("weight of the segmentation loss (seed: 1.0)", 1.0)
    detection_weight: float = option("weight of the detection loss (seed: 1.0)", 1.0)
    classification_weight: float = option("weight of the classification loss (seed: 0.5)", 0.5)
    seg_loss: str = option("bce (the seed's, on the low-res logits) or dice_bce", "bce")
    box_prompts: str = option("SAM's box prompts: auto, detected or gt (see the module docstring)", "auto")
    prompt_iou: float = option("auto: a detection prompts SAM when its IoU with the ground truth reaches this", 0.5)
    box_jitter: float = option("jitter of ground-truth box prompts while training, as a fraction of the box side", 0.1)
    region_input: str = option("region head input: sam (mask-pooled SAM embedding) or hlbb (61 features)", "sam")
    head_hidden: int = option("hidden width of the region head MLP", 256)
    val_fraction: float = option("fraction of images held out for evaluation", 0.2)
    augment: bool = option("horizontal flip (p=0.5) of image, boxes and masks", True)
    eval_box_threshold: float = option("box score threshold for the detector's mAP (0: every query)", 0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = (("seg_loss", SEG_LOSSES), ("box_prompts", PROMPTS), ("region_input", REGION_INPUTS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        weights = (self.segmentation_weight, self.detection_weight, self.classification_weight)
        if min(weights) < 0 or max(weights) == 0:
            raise ConfigError(f"loss weights must be >= 0 and not all 0, got {weights}")
        if not 0 <= self.prompt_iou <= 1 or not 0 <= self.box_jitter < 1:
            raise ConfigError(f"prompt_iou must be in [0, 1] and box_jitter in [0, 1), got {self.prompt_iou}, "
                              f"{self.box_jitter}")  # fmt: skip
        if self.head_hidden <= 0 or self.head_lr < 0:
            raise ConfigError(f"head_hidden must be positive and head_lr >= 0, got {self.head_hidden}, {self.head_lr}")


# -- the region head ----------------------------------------------------------------------------------------------
class RegionHead(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear: region features (SAM embedding or HLBB) -> class logits."""

    def __init__(self, in_features: int, classes: Sequence[str], *, hidden: int = 256, input: str = "sam"):
        super().__init__()
        self.classes, self.input = list(classes), input
        self.net = nn.Sequential(
            nn.LayerNorm(in_features), nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, len(classes))
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    def config(self) -> dict:
        return {"in_features": self.net[0].normalized_shape[0], "hidden": self.net[1].out_features,
                "classes": self.classes, "input": self.input}  # fmt: skip

    @classmethod
    def load(cls, folder: str | Path) -> RegionHead:
        """A head saved by `export_parts` (config.json + model.safetensors), a folder or a repo's subfolder."""
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            config = json.loads((folder / HEAD_CONFIG).read_text())
            head = cls(config["in_features"], config["classes"], hidden=config["hidden"], input=config["input"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise HubkitError(f"{folder} is not a region head folder ({HEAD_CONFIG}: {err})") from None
        head.load_state_dict(load_file(folder / HEAD_WEIGHTS))
        return head.eval()


def region_embedding(image_embedding: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """(N, C): SAM's image embedding (C, h, w) averaged under each soft mask (N, 4h, 4w low-res logits)."""
    weights = nn.functional.adaptive_avg_pool2d(torch.sigmoid(mask_logits.float())[:, None], image_embedding.shape[-2:])
    pooled = (weights * image_embedding.float()[None]).sum((2, 3))
    return pooled / weights.sum((2, 3)).clamp_min(1e-6)


# -- boxes and losses ---------------------------------------------------------------------------------------------
def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    centre, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat([centre - size / 2, centre + size / 2], -1)


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of a[i] with b[i] (xyxy)."""
    inter = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp_min(1e-9)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    bce = nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
    if kind == "bce":
        return bce
    prob = torch.sigmoid(logits.float()).flatten(1)
    dice = 1 - (2 * (prob * target.flatten(1)).sum(1) + 1) / (prob.sum(1) + target.flatten(1).sum(1) + 1)
    return bce + dice.mean()


class SegmaJointModel(nn.Module):
    """Grounding DINO + SAM + region head, one forward returning the seed's weighted loss and its parts."""

    def __init__(self, detector: nn.Module, sam: nn.Module, region_head: RegionHead, config: SegmaJointConfig):
        super().__init__()
        self.detector, self.sam, self.region_head = detector, sam, region_head
        self.weights = (config.segmentation_weight, config.detection_weight, config.classification_weight)
        self.prompts, self.prompt_iou, self.jitter = config.box_prompts, config.prompt_iou, config.box_jitter
        self.seg_loss, self.region_input = config.seg_loss, config.region_input

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        trains = any(p.requires_grad for p in self.sam.vision_encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):  # frozen encoder: no activations kept
            return self.sam.get_image_embeddings(pixel_values)

    def prompt_boxes(self, detected, labels, input_ids) -> list[torch.Tensor]:
        """Per image, the normalised xyxy box prompting SAM for each ground-truth object (see `box_prompts`)."""
        truths = [cxcywh_to_xyxy(t["boxes"]) for t in labels]
        if self.training and self.jitter > 0:
            truths = [b + (torch.rand_like(b) * 2 - 1) * self.jitter * (b[:, 2:] - b[:, :2]).repeat(1, 2)
                      for b in truths]  # fmt: skip
        if self.prompts == "gt":
            return [b.clamp(0, 1) for b in truths]
        from transformers.loss.loss_grounding_dino import GroundingDinoHungarianMatcher
        from transformers.models.grounding_dino.modeling_grounding_dino import build_label_maps

        cfg = self.detector.config
        matcher = GroundingDinoHungarianMatcher(class_cost=cfg.class_cost, bbox_cost=cfg.bbox_cost,
                                                giou_cost=cfg.giou_cost)  # fmt: skip
        outputs = {"logits": detected.logits, "pred_boxes": detected.pred_boxes,
                   "label_maps": build_label_maps(detected.logits, input_ids)}  # fmt: skip
        out = []
        for i, ((queries, objects), truth) in enumerate(zip(matcher(outputs, labels), truths, strict=True)):
            found = torch.zeros_like(truth)
            found[objects.to(truth.device)] = cxcywh_to_xyxy(detected.pred_boxes[i, queries.to(truth.device)]).to(
                truth.dtype)  # fmt: skip
            if self.prompts == "auto":
                good = paired_iou(found.detach(), cxcywh_to_xyxy(labels[i]["boxes"])) >= self.prompt_iou
                found = torch.where(good[:, None], found, truth)
            out.append(found.clamp(0, 1))
        return out

    def forward(self, detector: dict, labels: list[dict], sam_pixel_values: torch.Tensor, sam_sizes: torch.Tensor,
                masks: list[torch.Tensor], features: list[torch.Tensor] | None = None) -> dict:  # fmt: skip
        detected = self.detector(**detector, labels=labels)
        prompts = self.prompt_boxes(detected, labels, detector["input_ids"])
        embeddings = self.image_embeddings(sam_pixel_values.to(next(self.sam.parameters()).dtype))
        seg, logits, targets = [], [], []
        for i, boxes in enumerate(prompts):
            if not len(boxes):
                continue
            height, width = (float(v) for v in sam_sizes[i])
            scale = boxes.new_tensor([width, height, width, height])
            out = self.sam(image_embeddings=embeddings[i : i + 1], input_boxes=(boxes * scale)[None].to(
                embeddings.dtype), multimask_output=False)  # fmt: skip
            mask_logits = out.pred_masks[0, :, 0]
            seg.append(segmentation_loss(mask_logits, masks[i].float(), self.seg_loss))
            region = region_embedding(embeddings[i], mask_logits) if self.region_input == "sam" else features[i]
            logits.append(self.region_head(region.float()))
            targets.append(labels[i]["class_labels"])
        zero = detected.loss * 0
        parts = {
            "segmentation": torch.stack(seg).mean() if seg else zero,
            "detection": detected.loss,
            "classification": nn.functional.cross_entropy(torch.cat(logits), torch.cat(targets)) if logits else zero,
        }
        loss = sum(w * parts[k] for w, k in zip(self.weights, parts, strict=True))  # parts in the weights' order
        return {"loss": loss, **parts}


# -- data ---------------------------------------------------------------------------------------------------------
class JointDataset(gd.DetectionDataset):
    """The detection items plus each object's mask and, for `region_input: hlbb`, its 61 HLBB features."""

    def __init__(self, samples, classes, *, augment: bool = False, seed: int = 0, hlbb: bool = False):
        super().__init__(samples, classes, augment=augment, seed=seed, masks=True)
        self.hlbb = hlbb

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        if self.hlbb:
            from ..segma.features import hlbb_features_batch

            item["features"] = torch.from_numpy(hlbb_features_batch(item["image"], item["masks"].numpy()))
        return item


def low_res_targets(masks: torch.Tensor, reshaped: Sequence[int], input_size: int, low_res: int) -> torch.Tensor:
    """(N, H, W) bool masks -> (N, low_res, low_res) soft targets laid out as SAM's low-res logits: the image resized
    to `reshaped` (h, w) inside the padded `input_size` square, at low_res / input_size of that scale."""
    height, width = (round(int(v) * low_res / input_size) for v in reshaped)
    small = nn.functional.interpolate(
        masks[:, None].float(), size=(height, width), mode="bilinear", align_corners=False
    )
    return nn.functional.pad(small[:, 0], (0, low_res - width, 0, low_res - height))


class JointCollator:
    """Grounding DINO inputs + labels (as the detection recipe), SAM pixels and sizes, low-res mask targets."""

    def __init__(self, detector_processor, sam_processor, classes: Sequence[str], *, input_size: int, low_res: int):
        self.detection = gd.DetectionCollator(detector_processor, classes)
        self.sam_processor, self.input_size, self.low_res = sam_processor, input_size, low_res

    def __call__(self, items: list[dict]) -> dict:
        detection = self.detection(items)
        labels = detection.pop("labels")
        sam = self.sam_processor(images=[i["image"] for i in items], return_tensors="pt")
        sizes = sam["reshaped_input_sizes"]
        batch = {
            "detector": detection,
            "labels": labels,
            "sam_pixel_values": sam["pixel_values"],
            "sam_sizes": sizes,
            "masks": [
                low_res_targets(i["masks"], s.tolist(), self.input_size, self.low_res)
                for i, s in zip(items, sizes, strict=True)
            ],  # fmt: skip
        }
        if "features" in items[0]:
            batch["features"] = [i["features"] for i in items]
        return batch


def joint_loss(model, batch: dict) -> torch.Tensor:
    from accelerate.utils import send_to_device

    param = next(model.parameters())
    batch = send_to_device(batch, param.device)
    batch["detector"]["pixel_values"] = batch["detector"]["pixel_values"].to(param.dtype)
    with gd.local_box_count(not model.training):  # the reload check runs on the main process alone
        return model(**batch)["loss"]


def sam_processor_for(folder: Path):
    """SAM's processor as the mask-generation task loads it (Meta's preprocessing when the folder has none)."""
    from transformers import AutoProcessor, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    if (folder / "preprocessor_config.json").is_file() or (folder / "processor_config.json").is_file():
        return AutoProcessor.from_pretrained(folder)
    return SamProcessor(image_processor=SamImageProcessorPil())


# -- evaluation ---------------------------------------------------------------------------------------------------
def parts_of(model) -> SegmaJointModel:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def _filled(masks: np.ndarray, objects) -> np.ndarray:
    """The masks, each empty one replaced by its object's box rectangle (at least one pixel)."""
    out = masks.astype(bool, copy=True)
    height, width = out.shape[-2:]
    for k, obj in enumerate(objects):
        if not out[k].any():
            x0, y0, x1, y1 = (int(round(v)) for v in obj.box_xyxy)
            x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
            out[k, y0 : max(min(y1, height), y0 + 1), x0 : max(min(x1, width), x0 + 1)] = True
    return out


def evaluate_joint(model, samples, classes, detector_processor, sam_processor, *, box_threshold: float = 0.0) -> dict:
    """Detector mAP (the detection task's predict), SAM mask IoU for ground-truth box prompts (the mask-generation
    task's post-processing) and the region head's accuracy on those masks."""
    from ..metrics.segmentation import mask_iou
    from ..segma.features import hlbb_features_batch

    joint = parts_of(model)
    metrics = gd.detection_map(joint.detector, detector_processor, samples, classes, box_threshold=box_threshold)
    ious, hits, count = [], 0, 0
    param = next(joint.sam.parameters())
    for sample in samples:
        if not sample.objects:
            continue
        image = sample.image()
        inputs = sam_processor(images=image, return_tensors="pt")
        embedding = joint.sam.get_image_embeddings(inputs["pixel_values"].to(param.device, param.dtype))
        scale = (inputs["reshaped_input_sizes"][0].double() / inputs["original_sizes"][0].double()).flip(0).repeat(2)
        boxes = torch.tensor([o.box_xyxy for o in sample.objects], dtype=torch.float64) * scale
        out = joint.sam(image_embeddings=embedding, input_boxes=boxes[None].to(param.device, param.dtype),
                        multimask_output=False)  # fmt: skip
        logits = out.pred_masks[0, :, 0].float()
        masks = sam_processor.post_process_masks([logits[:, None].cpu()], inputs["original_sizes"],
                                                 inputs["reshaped_input_sizes"])[0][:, 0].numpy()  # fmt: skip
        for mask, obj in zip(masks, sample.objects, strict=True):
            ious.append(mask_iou(mask, obj.mask(sample.height, sample.width)))
        if joint.region_input == "sam":
            region = region_embedding(embedding[0], logits)
        else:  # HLBB needs pixels: a mask SAM left empty (early in training) falls back to its prompt box
            region = torch.from_numpy(hlbb_features_batch(image, _filled(masks, sample.objects))).to(param.device)
        predicted = joint.region_head(region.float()).argmax(-1).cpu().tolist()
        hits += sum(p == classes.index(o.label) for p, o in zip(predicted, sample.objects, strict=True))
        count += len(sample.objects)
    metrics.update(mask_iou=float(np.mean(ious)) if ious else 0.0, accuracy=hits / count if count else 0.0)
    return metrics


# -- setup --------------------------------------------------------------------------------------------------------
def region_in_features(config, sam_config) -> int:
    from ..segma.features import N_FEATURES

    return sam_config.vision_config.output_channels if config.region_input == "sam" else N_FEATURES


def joint_trainable(config, detector_config) -> Trainable:
    return Trainable(
        lora=True,
        lora_targets=(*gd.lora_targets(), *SAM_TARGETS),
        lora_exclude=FROZEN,
        modules_to_save=("region_head",),
        full_modules=gd.head_modules(detector_config, prefix="detector."),
        groups=(ParamGroup(r"(bbox_embed|region_head)", lr=config.head_lr),),
    )


def segma_joint_setup(config: SegmaJointConfig) -> TrainingSetup:
    """Everything the loop needs to train Grounding DINO + SAM + the region head together."""
    from transformers import AutoConfig, AutoProcessor

    sam_folder, dino_folder = hub.resolve(config.base), hub.resolve(config.detector_base)
    data, train_samples, val_samples = gd.load_detection_data(config)
    detector_processor, sam_processor = AutoProcessor.from_pretrained(dino_folder), sam_processor_for(sam_folder)
    detector_config, sam_config = AutoConfig.from_pretrained(dino_folder), AutoConfig.from_pretrained(sam_folder)
    gd.check_prompt(detector_processor, data.classes, detector_config.max_text_len)
    vision = sam_config.vision_config
    input_size, low_res = vision.image_size, 4 * (vision.image_size // vision.patch_size)
    in_features = region_in_features(config, sam_config)

    def load_base() -> SegmaJointModel:
        detector, _ = get_task(gd.TASK).load(dino_folder, LoadOptions())
        sam, _ = get_task(TASK).load(sam_folder, LoadOptions())
        with torch.random.fork_rng():  # the same head every time: the loop loads the base twice
            torch.manual_seed(config.seed)
            head = RegionHead(in_features, data.classes, hidden=config.head_hidden, input=config.region_input)
        return SegmaJointModel(detector, sam, head, config)

    hlbb = config.region_input == "hlbb"
    head_config = {"in_features": in_features, "hidden": config.head_hidden, "classes": data.classes,
                   "input": config.region_input, "sam_base": config.base,
                   "pooling": "SAM image embedding averaged under sigmoid(low-res mask logits)" if not hlbb else
                   "hubkit.segma.features.hlbb_features_batch of each mask"}  # fmt: skip

    def evaluate(model, loader) -> dict:
        return evaluate_joint(model, loader.dataset.samples, data.classes, detector_processor, sam_processor,
                              box_threshold=config.eval_box_threshold)  # fmt: skip

    return TrainingSetup(
        task=TASK,
        load_base=load_base,
        train_dataset=JointDataset(train_samples, data.classes, augment=config.augment, seed=config.seed, hlbb=hlbb),
        eval_dataset=JointDataset(val_samples, data.classes, hlbb=hlbb),
        loss_fn=joint_loss,
        evaluate_fn=evaluate,
        collate_fn=JointCollator(
            detector_processor, sam_processor, data.classes, input_size=input_size, low_res=low_res
        ),  # fmt: skip
        dataset_name=gd.dataset_label(config.data),
        dataset_type="coco",
        dataset_revision=data.fingerprint,
        trainable=joint_trainable(config, detector_config),
        extra_files={HEAD_FILE: json.dumps(head_config, indent=2)},
        # the parts are written before the loop's push, so one revision carries them
        export_fn=lambda model, folder, result: export_parts(folder, config, metrics=result.metrics),
        card_notes=(
            f"One adapter over Grounding DINO (`{config.detector_base}`), SAM (`{config.base}`) and a region head, "
            f"trained with loss {config.segmentation_weight:g} x segmentation ({config.seg_loss}) + "
            f"{config.detection_weight:g} x detection + {config.classification_weight:g} x classification; SAM "
            f"prompted with `{config.box_prompts}` boxes. Each part loads alone from `adapters/sam`, "
            "`adapters/grounding_dino` and `adapters/region_head`. Metrics on the held-out split: the detector's "
            "COCO mAP (`map`, `map_50`), SAM's mask IoU for ground-truth box prompts (`mask_iou`), the region head's "
            "accuracy on those masks (`accuracy`)."
        ),
    )


# -- the parts, each loadable alone -------------------------------------------------------------------------------
def _part_adapter(adapter_config: dict, state: dict, prefix: str, base: str) -> tuple[dict, dict]:
    """The adapter config and tensors of one submodule (`prefix`: "sam." / "detector.") of the joint adapter."""
    root = "base_model.model."
    tensors = {root + k[len(root + prefix) :]: v for k, v in state.items() if k.startswith(root + prefix)}
    modules = {k[len(root) :].split(".lora_")[0] for k in tensors if ".lora_" in k}
    targets = [t for t in adapter_config["target_modules"] if any(m == t or m.endswith("." + t) for m in modules)]
    saved = [m for m in adapter_config.get("modules_to_save") or [] if any(f".{m}." in "." + k for k in tensors)]
    config = {**adapter_config, "target_modules": sorted(targets), "modules_to_save": saved or None,
              "base_model_name_or_path": base}  # fmt: skip
    return config, tensors


def export_parts(adapter_dir: str | Path, config: SegmaJointConfig, *, metrics: dict | None = None) -> dict[str, Path]:
    """Split the run's joint adapter into ``adapters/sam``, ``adapters/grounding_dino`` (PEFT folders with cards, the
    detector's with its box heads as trained_modules.safetensors; each attached to a fresh base as a check) and
    ``adapters/region_head`` (safetensors + config.json)."""
    from safetensors.torch import load_file, save_file

    from .. import cards
    from ..adapters import TRAINED_MODULES_FILE, attach_adapter
    from ..training import config_dict

    adapter_dir = Path(adapter_dir)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    state = load_file(adapter_dir / "adapter_model.safetensors")
    trained = load_file(adapter_dir / TRAINED_MODULES_FILE) if (adapter_dir / TRAINED_MODULES_FILE).is_file() else {}
    metrics = metrics or {}
    out = {}
    bases = {"sam": (config.base, "sam.", ("mask_iou",)),
             "grounding_dino": (config.detector_base, "detector.", ("map", "map_50"))}  # fmt: skip
    for name, (base, prefix, names) in bases.items():
        folder = adapter_dir / "adapters" / name
        folder.mkdir(parents=True, exist_ok=True)
        part_config, tensors = _part_adapter(adapter_config, state, prefix, base)
        (folder / "adapter_config.json").write_text(json.dumps(part_config, indent=2))
        save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
        in_place = {k[len(prefix) :]: v for k, v in trained.items() if k.startswith(prefix)}  # the box heads
        if in_place:
            save_file(in_place, folder / TRAINED_MODULES_FILE, metadata={"format": "pt"})
        task = get_task(PARTS[name])
        fresh, _ = task.load(hub.resolve(base), LoadOptions())
        attach_adapter(fresh, folder, name="export-check", check_base_model=False)  # refuses a part that does not fit
        label = gd.dataset_label(config.data)
        card = cards.adapter_card(
            model_name=part_repo_name((config.push_to_hub or adapter_dir.parent.name).split("/")[-1], name),
            base_model=base,
            **task.card_fields(),
            tags=[task.name, "segma"],
            datasets=[label] if "/" in label else [],
            training_config=config_dict(config),
            metrics=[
                cards.Metric(name=k, value=float(metrics[k]), dataset_name=label, dataset_type="coco")
                for k in names
                if k in metrics
            ],
            task=task.name,
            notes=f"The {name} part of a joint Segma run (hubkit.recipes.segma_joint); it loads alone on {base}.",
        )
        card.save(folder / "README.md")
        out[name] = folder
    head_folder = adapter_dir / "adapters" / "region_head"
    head_folder.mkdir(parents=True, exist_ok=True)
    root = "base_model.model.region_head."
    save_file({k[len(root) :]: v for k, v in state.items() if k.startswith(root)}, head_folder / HEAD_WEIGHTS,
              metadata={"format": "pt"})  # fmt: skip
    (head_folder / HEAD_CONFIG).write_text((adapter_dir / HEAD_FILE).read_text())
    RegionHead.load(head_folder)  # refuses weights that do not fit the config
    out["region_head"] = head_folder
    return out


def part_repo_name(repo: str, part: str) -> str:
    """Where a part of the joint adapter `repo` is pushed on its own: ``me/segma-joint`` -> ``me/segma-joint-sam``."""
    return f"{repo}-{part.replace('_', '-')}"


def push_parts(parts: dict[str, Path], repo_id: str, *, hub_name: str | None = None) -> dict[str, str]:
    """Push each part to a repo of its own (`part_repo_name`), so Space adapter menus and `hubkit.load` find it by id;
    return {part: revision id}."""
    revisions = {}
    for name, folder in parts.items():
        info = hub.push(folder, part_repo_name(repo_id, name), hub=hub_name, message=f"the {name} part of {repo_id}")
        revisions[name] = info.id
    return revisions
