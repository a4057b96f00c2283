"""The Grounding DINO recipe: fine-tune transformers' GroundingDinoForObjectDetection on a COCO / Segma detection set.

The seed's section "4. Fine-tuning Grounding DINO", mapped onto transformers 5:

- Text prompt: the data set's class names joined as the detection task's processor call joins them
  (``["cat", "remote control"]`` -> ``"cat. remote control."``, lower-cased). A box's label is the index of its class
  phrase in that prompt, and its box is normalised ``(cx, cy, w, h)`` by the image's own size: the model computes
  its own loss (Hungarian matching, focal loss over text tokens, L1 + GIoU, the two-stage encoder loss) when given
  ``labels=[{"class_labels": ..., "boxes": ...}]`` per image.
- The seed replaces ``class_embed`` by an ``nn.Linear(in_features, num_custom_classes)``. That does not apply here:
  Grounding DINO's class logits are the similarities between each query and each text token
  (``GroundingDinoContrastiveEmbedding`` has no weights), so new classes are new words in the prompt, not new
  output units. The head group therefore holds the box heads only (``bbox_embed``: one MLP per decoder layer, also
  used by the decoder's box refinement).
- Parameter groups (seed values): backbone 1e-5 (the Swin image backbone ``model.backbone`` and the BERT text
  backbone ``model.text_backbone``), transformer 1e-4 (everything else: the feature enhancer ``model.encoder``, the
  decoder, the input projections; this is ``learning_rate``), heads 1e-3, weight decay 1e-4 everywhere.
- ``lora: true`` (default): LoRA on the transformer's attention (query / key / value / out_proj, deformable
  value_proj / output_proj) and FFN (fc1 / fc2) linears, the box heads trained in full, in place (see
  `head_modules`: saved beside the adapter as ``trained_modules.safetensors`` and restored into the base when the
  adapter loads, so ``predict(adapter="base")`` keeps them), the backbones frozen. ``lora: false``: full
  fine-tuning with the three groups; the whole model is saved with its processor, loadable as a base.
- transformers computes the two-stage encoder loss (``loss_*_enc``) on detached proposals: only its text side gets
  a gradient, the proposal heads (``enc_output``, ``encoder_output_bbox_embed``) never train (`freeze_unreachable`),
  and under LoRA most of that term is a floor under the loss curve.
- Metrics: COCO mAP@[.5:.95] (``map``) and mAP@.5 (``map_50``) on the held-out split, by pycocotools' COCOeval
  (what torchmetrics' MeanAveragePrecision computes with backend="pycocotools"; that class also needs torchvision,
  which hubkit does not install), over the boxes of the detection task's own ``predict`` (same prompt,
  post-processing and label assignment as ``hubkit.load("zero-shot-object-detection", ...)``) at box threshold 0:
  every query's box, of which COCOeval keeps the 100 best per image.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import hub
from ..data.segma import DetectionData, SegmaSample, read_detection_data, split_samples
from ..errors import ConfigError, DataError
from ..tasks import LoadOptions, get_task
from ..training import TrainConfig, TrainingSetup, option
from ..training.trainable import ParamGroup, Trainable

logger = logging.getLogger(__name__)
TASK = "zero-shot-object-detection"
HEADS = r"(class_embed|bbox_embed)"  # the seed's head names; class_embed has no weights in transformers
BACKBONES = r"(^|\.)model\.(backbone|text_backbone)\."  # Swin (image) and BERT (text)
FFN = ("fc1", "fc2")  # the feature enhancer's and decoder's feed-forward linears (the backbones' are excluded)


@dataclass(frozen=True)
class GroundingDinoConfig(TrainConfig):
    """The seed's Grounding DINO recipe (trainers/configs/grounding_dino.yaml holds its values)."""

    base: str = option("base Grounding DINO: Hub id, store repo or folder", "IDEA-Research/grounding-dino-tiny")
    learning_rate: float = option("transformer learning rate (feature enhancer, decoder, projections)", 1e-4)
    backbone_lr: float = option("learning rate of the Swin and BERT backbones (full fine-tuning only)", 1e-5)
    head_lr: float = option("learning rate of the box heads (bbox_embed)", 1e-3)
    weight_decay: float = option("AdamW weight decay, every group", 1e-4)
    lora: bool = option("LoRA on the transformer + box heads in full; false: full fine-tuning", True)
    val_fraction: float = option("fraction of images held out for mAP", 0.2)
    augment: bool = option("horizontal flip (p=0.5), boxes flipped with the image", True)
    eval_box_threshold: float = option("box score threshold for mAP (0: every query, COCOeval keeps the top 100)", 0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("backbone_lr", "head_lr"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be zero or more, got {getattr(self, name)!r}")
        if not 0 <= self.eval_box_threshold < 1:
            raise ConfigError(f"eval_box_threshold must be in [0, 1), got {self.eval_box_threshold!r}")


# -- data ---------------------------------------------------------------------------------------------------------
def check_classes(classes: Sequence[str]) -> list[str]:
    """The class names as prompt phrases: each one non-empty, without '.', unique once lower-cased."""
    lowered = [str(c).strip().lower() for c in classes]
    bad = [c for c in classes if not str(c).strip() or "." in str(c)]
    if bad:
        raise DataError(f"class names become prompt phrases separated by '.': {bad!r} cannot be one; rename them")
    clashes = sorted({c for c in lowered if lowered.count(c) > 1})
    if clashes:
        raise DataError(f"classes {clashes!r} differ only by case; the prompt is lower-cased, so merge or rename them")
    return list(classes)


def prompt_for(classes: Sequence[str]) -> str:
    """The prompt the processor builds from a label list: lower-cased phrases, each ending with '.'."""
    return " ".join(f"{c.strip().lower()}." for c in classes)


def check_prompt(processor, classes: Sequence[str], max_text_len: int) -> None:
    """Raise DataError when the prompt does not keep one phrase per class inside the model's text length."""
    ids = processor.tokenizer(prompt_for(classes))["input_ids"]
    dot = processor.tokenizer.convert_tokens_to_ids(".")
    if len(ids) > max_text_len or ids.count(dot) != len(classes):
        raise DataError(
            f"the prompt of {len(classes)} classes is {len(ids)} tokens ({ids.count(dot)} phrases); Grounding DINO "
            f"reads at most {max_text_len} tokens: train on fewer or shorter class names"
        )


def normalised_boxes(sample: SegmaSample) -> torch.Tensor:
    """(N, 4) float32 (cx, cy, w, h) of the sample's boxes, divided by the image size."""
    if not sample.objects:
        return torch.zeros(0, 4)
    xywh = torch.tensor([o.bbox for o in sample.objects], dtype=torch.float32)
    size = torch.tensor([sample.width, sample.height] * 2, dtype=torch.float32)
    cxcywh = torch.cat([xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]], 1)
    return (cxcywh / size).clamp(0, 1)


class DetectionDataset(torch.utils.data.Dataset):
    """One item per image: the PIL image, the class index of each box and its normalised (cx, cy, w, h) box.

    With ``augment``: a horizontal flip (p=0.5) drawn from (seed, epoch, index); call ``set_epoch`` every epoch.
    ``masks=True`` adds each object's (H, W) bool mask, flipped with the image (for the joint recipe).
    """

    def __init__(self, samples: Sequence[SegmaSample], classes: Sequence[str], *, augment: bool = False,
                 seed: int = 0, masks: bool = False):  # fmt: skip
        self.samples, self.classes = list(samples), list(classes)
        self.augment, self.seed, self.masks, self.epoch = augment, seed, masks, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def flipped(self, index: int) -> bool:
        return self.augment and bool(np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = sample.image()
        boxes = normalised_boxes(sample)
        item = {"class_labels": torch.tensor([self.classes.index(o.label) for o in sample.objects], dtype=torch.long)}
        masks = None
        if self.masks:
            masks = np.zeros((len(sample.objects), sample.height, sample.width), bool)
            for k, obj in enumerate(sample.objects):
                masks[k] = obj.mask(sample.height, sample.width)
        if self.flipped(index):
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            boxes[:, 0] = 1 - boxes[:, 0]
            masks = masks[:, :, ::-1] if masks is not None else None
        item.update(image=image, boxes=boxes)
        if masks is not None:
            item["masks"] = torch.from_numpy(np.ascontiguousarray(masks))
        return item


class DetectionCollator:
    """Batches images + one prompt per image through the Grounding DINO processor; labels as the model's loss wants.

    A class (not a closure) so data loader workers can pickle it."""

    def __init__(self, processor, classes: Sequence[str]):
        self.processor, self.classes = processor, list(classes)

    def __call__(self, items: list[dict]) -> dict:
        inputs = self.processor(images=[i["image"] for i in items], text=[self.classes] * len(items),
                                return_tensors="pt")  # fmt: skip
        batch = dict(inputs)
        batch["labels"] = [{"class_labels": i["class_labels"], "boxes": i["boxes"]} for i in items]
        return batch


def detector_inputs(batch: dict, model) -> dict:
    """The batch's model inputs on the model's device (pixels in its dtype), labels included."""
    param = next(model.parameters())
    out = {k: v.to(param.device) for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor)}
    out["pixel_values"] = out["pixel_values"].to(param.dtype)
    out["labels"] = [{k: v.to(param.device) for k, v in t.items()} for t in batch["labels"]]
    return out


@contextlib.contextmanager
def local_box_count(active: bool = True):
    """transformers' DETR-family loss all-reduces its box count across processes whenever accelerate runs, so a loss
    one process computes alone (the loop's reload check runs on the main process only, in eval mode) would wait
    forever for the others under DDP. Inside this context the loss counts its own boxes, as in one process."""
    if not active:
        yield
        return
    from unittest import mock

    from transformers.loss import loss_for_object_detection

    with mock.patch.object(loss_for_object_detection, "is_accelerate_available", lambda: False):
        yield


def detection_loss(model, batch: dict) -> torch.Tensor:
    """The model's own loss (Hungarian matching, focal text-token loss, L1 + GIoU, two-stage encoder loss); in eval
    mode with a local box count (`local_box_count`)."""
    with local_box_count(not model.training):
        return model(**detector_inputs(batch, model)).loss


# -- metrics ------------------------------------------------------------------------------------------------------
def coco_map(predictions: Sequence[dict], truths: Sequence[dict]) -> dict[str, float]:
    """COCO box mAP@[.5:.95] and mAP@.5 with pycocotools' COCOeval: what torchmetrics' MeanAveragePrecision(
    iou_type="bbox", backend="pycocotools") computes (that class also needs torchvision, which hubkit does not).

    One dict per image: predictions ``{"boxes": (N, 4) xyxy, "scores": (N,), "labels": (N,)}``, truths
    ``{"boxes": (M, 4) xyxy, "labels": (M,)}``, labels as class indices."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box) -> list[float]:
        x1, y1, x2, y2 = (float(v) for v in box)
        return [x1, y1, x2 - x1, y2 - y1]

    labels = {int(c) for t in truths for c in t["labels"]} | {int(c) for p in predictions for c in p["labels"]}
    gt, found = {"images": [], "annotations": [], "categories": [{"id": c} for c in sorted(labels)]}, []
    for image_id, (pred, truth) in enumerate(zip(predictions, truths, strict=True)):
        gt["images"].append({"id": image_id})
        for box, label in zip(truth["boxes"], truth["labels"], strict=True):
            w, h = xywh(box)[2:]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "bbox": xywh(box),
                                      "category_id": int(label), "area": w * h, "iscrowd": 0})  # fmt: skip
        found += [{"image_id": image_id, "bbox": xywh(box), "score": float(score), "category_id": int(label)}
                  for box, score, label in zip(pred["boxes"], pred["scores"], pred["labels"], strict=True)]  # fmt: skip
    if not gt["annotations"] or not found:
        return {"map": 0.0, "map_50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(found), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"map": max(float(evaluator.stats[0]), 0.0), "map_50": max(float(evaluator.stats[1]), 0.0)}


@torch.no_grad()
def detection_map(model, processor, samples: Sequence[SegmaSample], classes: Sequence[str], *,
                  box_threshold: float = 0.0) -> dict[str, float]:  # fmt: skip
    """COCO mAP@[.5:.95] and mAP@.5 of `model` on `samples`, through the detection task's predict."""
    task = get_task(TASK)
    was_training = model.training
    model.eval()
    predictions, truths = [], []
    for sample in samples:
        found = task.predict(model, processor, [sample.image()], labels=list(classes), box_threshold=box_threshold)[0]
        predictions.append({"boxes": found.boxes, "scores": found.scores,
                            "labels": [classes.index(x) for x in found.labels]})  # fmt: skip
        truths.append({"boxes": [o.box_xyxy for o in sample.objects],
                       "labels": [classes.index(o.label) for o in sample.objects]})  # fmt: skip
    model.train(was_training)
    return coco_map(predictions, truths)


def make_evaluate(processor, classes: Sequence[str], box_threshold: float):
    def evaluate(model, loader) -> dict[str, float]:
        return detection_map(model, processor, loader.dataset.samples, classes, box_threshold=box_threshold)

    return evaluate


def make_eval_images(processor, classes: Sequence[str], *, count: int = 4, side: int = 256, threshold: float = 0.3):
    """Annotated detections on the first validation images (for TensorBoard), each resized to `side` x `side`."""
    from ..tasks.detection import annotate

    task = get_task(TASK)

    def eval_images(model, loader) -> dict:
        rows = []
        for sample in loader.dataset.samples[:count]:
            found = task.predict(model, processor, [sample.image()], labels=list(classes), box_threshold=threshold)[0]
            rows.append(np.asarray(annotate(found).resize((side, side))))
        return {"eval/detections": np.stack(rows)} if rows else {}

    return eval_images


# -- what trains --------------------------------------------------------------------------------------------------
def lora_targets() -> tuple[str, ...]:
    """The detection task's attention preset plus the FFN linears (fc1 / fc2) of the transformer."""
    return (*get_task(TASK).preset.targets, *FFN)


def head_modules(model_config, prefix: str = "") -> tuple[str, ...]:
    """The box heads LoRA runs train in place (`Trainable.full_modules`): the decoder's ``bbox_embed`` MLPs, whose
    weights the output heads share (one MLP for every layer when ``decoder_bbox_embed_share``, as in the released
    checkpoints). Trained in place, the tie holds: the decoder's box refinement and the box outputs use the same
    trained head, as in the original model. (peft's modules_to_save would copy the output heads and the decoder's
    tied copies apart; the decoder's copies, reached only through detached reference points, would never train,
    and DDP refuses parameters without a gradient.) The two-stage encoder's box head is left out: transformers
    computes its loss on detached proposals."""
    count = 1 if model_config.decoder_bbox_embed_share else model_config.decoder_layers
    return tuple(f"{prefix}model.decoder.bbox_embed.{i}" for i in range(count))


def freeze_unreachable(model):
    """`prepare` hook for full fine-tuning: the parameters no loss reaches become buffers (still saved under their
    names). transformers computes the two-stage encoder loss on detached proposals (`enc_output`, `enc_output_norm`,
    `encoder_output_bbox_embed`) and the Swin backbone's final layer norm is not used; full fine-tuning would
    otherwise mark them trainable and DDP refuses parameters that never get a gradient."""
    inner = model.model
    unreachable = [inner.enc_output, inner.enc_output_norm]
    head = getattr(inner, "encoder_output_bbox_embed", None)
    if head is not None and head is not inner.decoder.bbox_embed:  # shared with the decoder when configured so
        unreachable.append(head)
    swin = getattr(getattr(inner.backbone.conv_encoder, "model", None), "swin", None)
    if swin is not None and isinstance(getattr(swin, "layernorm", None), torch.nn.Module):
        unreachable.append(swin.layernorm)
    for module in unreachable:
        for sub in module.modules():
            for name, param in list(sub.named_parameters(recurse=False)):
                del sub._parameters[name]
                sub.register_buffer(name, param.detach())
    return model


def trainable_for(config, model_config) -> Trainable:
    heads = ParamGroup(HEADS, lr=config.head_lr)
    if not config.lora:
        groups = (heads, ParamGroup(BACKBONES, lr=config.backbone_lr))
        return Trainable(lora=False, groups=groups, prepare=freeze_unreachable)
    return Trainable(
        lora=True,
        lora_targets=lora_targets(),
        lora_exclude=get_task(TASK).preset.exclude,
        full_modules=head_modules(model_config),
        groups=(heads,),  # the backbones are frozen under LoRA; the rest (LoRA) uses learning_rate
    )


def processor_files(processor) -> dict[str, bytes]:
    """The processor's files, to save beside a fully fine-tuned model so the folder loads as a base."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        processor.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def dataset_label(data: str) -> str:
    return Path(data).name if Path(data).is_dir() else data


def load_detection_data(config) -> tuple[DetectionData, list[SegmaSample], list[SegmaSample]]:
    if not config.data:
        raise ConfigError("data is required: a COCO folder / Segma export, or a dataset repo id")
    data = read_detection_data(config.data)
    check_classes(data.classes)
    train_samples, val_samples = split_samples(data.samples, val_fraction=config.val_fraction, seed=config.seed)
    logger.info("%s; %d train / %d val", data.summary(), len(train_samples), len(val_samples))
    return data, train_samples, val_samples


def grounding_dino_setup(config: GroundingDinoConfig) -> TrainingSetup:
    """Everything the loop needs to fine-tune Grounding DINO (LoRA or full) on a COCO-format data set."""
    from transformers import AutoConfig, AutoProcessor

    task = get_task(TASK)
    folder = hub.resolve(config.base)  # a folder, or a repo in the store / on the Hub
    data, train_samples, val_samples = load_detection_data(config)
    processor = AutoProcessor.from_pretrained(folder)
    model_config = AutoConfig.from_pretrained(folder)
    check_prompt(processor, data.classes, model_config.max_text_len)

    def load_base():
        model, _ = task.load(folder, LoadOptions())
        return model

    trainable = trainable_for(config, model_config)
    return TrainingSetup(
        task=TASK,
        load_base=load_base,
        train_dataset=DetectionDataset(train_samples, data.classes, augment=config.augment, seed=config.seed),
        eval_dataset=DetectionDataset(val_samples, data.classes),
        loss_fn=detection_loss,
        evaluate_fn=make_evaluate(processor, data.classes, config.eval_box_threshold),
        eval_images_fn=make_eval_images(processor, data.classes),
        collate_fn=DetectionCollator(processor, data.classes),
        dataset_name=dataset_label(config.data),
        dataset_type="coco",
        dataset_revision=data.fingerprint,
        extra_files={} if config.lora else processor_files(processor),
        trainable=trainable,
        card_notes=(
            f"Prompt: `{prompt_for(data.classes)}` (pass `labels={data.classes!r}` to predict). "
            f"{'LoRA on the transformer, box heads trained in full' if config.lora else 'Full fine-tuning'}; "
            f"learning rates: backbone {config.backbone_lr:g}, transformer {config.learning_rate:g}, heads "
            f"{config.head_lr:g}. mAP@[.5:.95] (`map`) and mAP@.5 (`map_50`): pycocotools COCOeval "
            f"on the held-out split, box threshold {config.eval_box_threshold:g}."
        ),
    )
