"""The BLIP captioning recipe (seed 000, "2. Fine-tuning BLIP"): LoRA on the task preset or full fine-tuning of
BlipForConditionalGeneration on image + caption pairs, with the Segma pipeline's domain prompt prefixes.

Data: a Segma export / COCO folder with captions in metadata.jsonl (a folder or a dataset repo), an ImageFolder
with metadata.jsonl captions, a CSV file (`image,caption`) or a JSONL file (`{"image": ..., "caption": ...}`), image
paths relative to the file. With a `domain`, the pipeline's prefix (`hubkit.pipelines.segma.CAPTION_PROMPTS`, e.g.
"Medical image showing:") is put before every target caption, so the model learns to continue it, and generation
at evaluation starts from the prefix as the pipeline's caption stage does.

Loss: BLIP's own language-model loss, `model(pixel_values, input_ids, labels=input_ids with padding -100)`, the
first token set to BLIP's [DEC] start token as `generate` does. Held-out metrics: corpus BLEU-4 and ROUGE-L (F) of
beam-search captions (3 beams, at most 50 new tokens: the pipeline's settings), plus a few sample captions before
and after training in the card.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import hub
from ..errors import ConfigError, DataError
from ..tasks import LoadOptions, get_task, to_pil
from ..training import TrainConfig, TrainingSetup, option
from ..training.trainable import Trainable

logger = logging.getLogger(__name__)
TASK = "image-to-text"
CAPTION_FILES = (".csv", ".jsonl")


@dataclass(frozen=True)
class BlipCaptionConfig(TrainConfig):
    """The seed's TrainingArguments (trainers/configs/blip_caption.yaml holds them): lr 5e-5, 5 epochs, batch 8,
    500 warmup steps, linear decay (the Trainer's default schedule), mixed precision where the device has it."""

    base: str = option("base captioner: Hub id, store repo or folder", "Salesforce/blip-image-captioning-base")
    learning_rate: float = option("peak learning rate (AdamW; the seed's 5e-5)", 5e-5)
    epochs: int = option("passes over the training split (the seed's 5)", 5)
    batch_size: int = option("images per process per micro-batch (the seed's 8)", 8)
    warmup_steps: int = option("linear warmup steps (the seed's 500)", 500)
    lr_schedule: str = option("constant, linear or cosine decay after warmup (linear: the Trainer's)", "linear")
    full: bool = option("fine-tune every weight (the seed's Trainer) instead of LoRA on the task preset", False)
    domain: str | None = option("caption domain (medical, automotive, nature, ...): the pipeline's prompt prefix", None)
    max_length: int = option("caption tokens kept in training, prefix included", 48)
    val_fraction: float = option("fraction of the captioned images held out for BLEU / ROUGE", 0.2)
    num_beams: int = option("beams when generating held-out captions (the pipeline's 3)", 3)
    max_new_tokens: int = option("new tokens per generated caption (the pipeline's 50)", 50)
    samples: int = option("held-out images whose captions before / after training go on the card", 4)

    def __post_init__(self) -> None:
        super().__post_init__()
        caption_prefix(self.domain)  # an unknown domain fails when the config is built
        for name in ("max_length", "num_beams", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.samples < 0:
            raise ConfigError(f"samples must be zero or more, got {self.samples!r}")


def caption_prefix(domain: str | None) -> str | None:
    """The pipeline's caption prompt for `domain` (`hubkit.pipelines.segma.DOMAINS` -> `CAPTION_PROMPTS`)."""
    from ..pipelines.segma import CAPTION_PROMPTS, DOMAINS

    if domain is None or domain == "":
        return None
    if domain not in DOMAINS or DOMAINS[domain][0] is None:
        known = sorted(d for d, (key, _) in DOMAINS.items() if key is not None)
        raise ConfigError(f"domain={domain!r} has no caption prompt; known: {', '.join(known)} (or none)")
    return CAPTION_PROMPTS[DOMAINS[domain][0]]


# -- data -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaptionPair:
    image_path: Path
    caption: str


@dataclass(frozen=True)
class CaptionData:
    pairs: list[CaptionPair]
    name: str  # for the card's `datasets`
    fingerprint: str  # content hash of the captions file


def _record_image(record: dict, where: str) -> str:
    for key in ("image", "file_name"):
        if record.get(key):
            return str(record[key])
    raise DataError(f"{where} names no image: expected an 'image' (or 'file_name') field, got {sorted(record)}")


def _record_caption(record: dict) -> str:
    return str(record.get("caption") or record.get("text") or "").strip()


def _pairs_from_records(records, folder: Path, source: Path) -> list[CaptionPair]:
    pairs = []
    for where, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{where} is not a record with 'image' and 'caption' fields")
        caption = _record_caption(record)
        if not caption:
            continue  # an uncaptioned image (a Segma export of a run without the caption stage)
        path = Path(_record_image(record, where)).expanduser()
        path = path if path.is_absolute() else folder / path
        if not path.is_file():
            raise DataError(f"{where}: image {str(path)!r} does not exist (paths are relative to {source.parent})")
        pairs.append(CaptionPair(path, caption))
    return pairs


def _read_csv(path: Path) -> list[CaptionPair]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise DataError(f"{path} must have the columns image,caption; found {reader.fieldnames}")
        rows = [(f"{path} row {n}", row) for n, row in enumerate(reader, 2)]
    return _pairs_from_records(rows, path.parent, path)


def _read_jsonl(path: Path, folder: Path | None = None) -> list[CaptionPair]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((f"{path} line {number}", json.loads(line)))
        except ValueError as err:
            raise DataError(f"{path} line {number} is not JSON ({err})") from None
    return _pairs_from_records(records, folder or path.parent, path)


def read_caption_data(source: str | Path) -> CaptionData:
    """Image + caption pairs from a CSV / JSONL file, a Segma export or COCO folder with metadata.jsonl captions,
    or an ImageFolder with metadata.jsonl (folders may be dataset repo ids in the store)."""
    from ..data.segma import COCO_NAMES, read_detection_data

    path = Path(str(source)).expanduser()
    if path.is_file():
        if path.suffix.lower() not in CAPTION_FILES:
            raise DataError(f"{path}: a captions file must be .csv (image,caption) or .jsonl (image, caption)")
        pairs = _read_csv(path) if path.suffix.lower() == ".csv" else _read_jsonl(path)
        name, fingerprint = path.name, hub.sha256_file(path)[:16]
    else:
        root = hub.resolve(source, repo_type="dataset")
        has_coco = any((root / n).is_file() for n in COCO_NAMES) or (root / "annotations").is_dir()
        if has_coco:
            data = read_detection_data(root)
            pairs = [CaptionPair(Path(s.image_path), s.caption.strip()) for s in data.samples if s.caption.strip()]
            fingerprint = data.fingerprint
        elif (root / "metadata.jsonl").is_file():
            pairs = _read_jsonl(root / "metadata.jsonl", root)
            fingerprint = hub.sha256_file(root / "metadata.jsonl")[:16]
        else:
            raise DataError(f"{root} holds no captions: expected metadata.jsonl (with coco.json or not)")
        name = root.name if path.is_dir() else str(source)
    if not pairs:
        raise DataError(f"{source} has no captioned image: nothing to train a captioner on")
    return CaptionData(pairs, name, fingerprint)


def split_prefix(caption: str, prefix: str | None) -> str:
    """The caption without the domain prefix (a Segma export of a domain run already starts with it)."""
    if prefix and caption.lower().startswith(prefix.lower()):
        return caption[len(prefix) :].strip()
    return caption.strip()


class CaptionDataset(torch.utils.data.Dataset):
    """Pixels (the base processor's) and the target text (`prefix caption`) of each pair; decoded on access."""

    def __init__(self, pairs: list[CaptionPair], image_processor, prefix: str | None):
        self.pairs, self.image_processor, self.prefix = pairs, image_processor, prefix

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        pair = self.pairs[i]
        pixels = self.image_processor(images=to_pil(str(pair.image_path)), return_tensors="pt")["pixel_values"][0]
        reference = split_prefix(pair.caption, self.prefix)
        text = f"{self.prefix} {reference}" if self.prefix else reference
        return {"pixel_values": pixels, "text": text, "reference": reference, "name": pair.image_path.name}


def make_collate(tokenizer, *, bos_token_id: int, max_length: int):
    def collate(items: list[dict]) -> dict:
        texts = [it["text"] for it in items]
        enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
        ids = enc["input_ids"].clone()
        ids[:, 0] = bos_token_id  # [CLS] -> [DEC]: what BLIP's generate starts every caption with
        return {
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "input_ids": ids,
            "attention_mask": enc["attention_mask"],
            "labels": ids.masked_fill(enc["attention_mask"] == 0, -100),
            "references": [it["reference"] for it in items],
            "names": [it["name"] for it in items],
        }

    return collate


def caption_loss(model, batch) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model(
        pixel_values=batch["pixel_values"].to(device),
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        labels=batch["labels"].to(device),
    )
    return out.loss.float()


# -- evaluation -----------------------------------------------------------------------------------------------
def _normalise(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def caption_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU-4 and ROUGE-L F-measure (torchmetrics; ROUGE-L alone needs neither nltk nor a download) on
    lower-cased word tokens (BLIP's vocabulary is uncased)."""
    from torchmetrics.text import BLEUScore, ROUGEScore

    preds = [_normalise(p) for p in predictions]
    refs = [_normalise(r) for r in references]
    bleu = BLEUScore(n_gram=4)(preds, [[r] for r in refs])
    rouge = ROUGEScore(rouge_keys=("rougeL",))(preds, refs)["rougeL_fmeasure"]
    return {"bleu4": float(bleu), "rougeL": float(rouge)}


@torch.no_grad()
def generate_captions(model, tokenizer, pixel_values, *, prompt: str | None, num_beams: int, max_new_tokens: int):
    """Beam-search captions (deterministic); with `prompt`, the continuation after it (the prompt left out)."""
    param = next(model.parameters())
    n = len(pixel_values)
    kwargs: dict = {}
    start = 1  # BLIP's generate returns [DEC] + the caption
    if prompt:
        enc = tokenizer([prompt] * n, return_tensors="pt")
        kwargs = {
            "input_ids": enc["input_ids"].to(param.device),
            "attention_mask": enc["attention_mask"].to(param.device),
        }
        start = enc["input_ids"].shape[1] - 1  # generate drops the prompt's trailing [SEP]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    room = getattr(base.config.text_config, "max_position_embeddings", 512) - start - 1
    ids = model.generate(
        pixel_values=pixel_values.to(param.device, param.dtype),
        num_beams=num_beams,
        max_new_tokens=max(1, min(max_new_tokens, room)),
        do_sample=False,
        **kwargs,
    )
    return [t.strip() for t in tokenizer.batch_decode(ids[:, start:], skip_special_tokens=True)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "(empty)"


class CaptionEvaluator:
    """`evaluate_fn` for the loop: BLEU-4 / ROUGE-L on the held-out split, and sample captions for the card.

    The loop writes the card from `setup.card_notes` and `setup.extra_files` after the final evaluation, so each
    call refreshes them with the samples of the model it evaluated ("after") beside those of the base ("before":
    the adapter switched off, or a fresh base when every weight trains)."""

    def __init__(self, tokenizer, config: BlipCaptionConfig, load_base, notes: str):
        self.tokenizer, self.config, self.load_base, self.notes = tokenizer, config, load_base, notes
        self.prompt = caption_prefix(config.domain)
        self.setup: TrainingSetup | None = None
        self.before: list[str] | None = None

    def _generate(self, model, pixel_values) -> list[str]:
        c = self.config
        return generate_captions(
            model,
            self.tokenizer,
            pixel_values,
            prompt=self.prompt,
            num_beams=c.num_beams,
            max_new_tokens=c.max_new_tokens,
        )

    def _base_captions(self, model, pixels) -> list[str]:
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                return self._generate(model, pixels)
        param = next(model.parameters())
        base = self.load_base().to(param.device).eval()
        try:
            return self._generate(base, pixels)
        finally:
            del base

    def __call__(self, model, loader) -> dict[str, float]:
        preds, refs, names, pixels = [], [], [], []
        for batch in loader:
            preds += self._generate(model, batch["pixel_values"])
            refs += batch["references"]
            names += batch["names"]
            if len(pixels) < self.config.samples:
                pixels += list(batch["pixel_values"][: self.config.samples - len(pixels)])
        metrics = caption_metrics(preds, refs)
        if pixels:
            if self.before is None:
                self.before = self._base_captions(model, torch.stack(pixels))
            self._record_samples(names, refs, preds)
        return metrics

    def _record_samples(self, names, refs, preds) -> None:
        if self.setup is None:
            return
        rows = [
            {"image": n, "reference": r, "before": b, "after": a}
            for n, r, b, a in zip(names, refs, self.before, preds, strict=False)
        ]
        lead = f' (continuing the prompt "{self.prompt}")' if self.prompt else ""
        table = [
            f"**Sample held-out captions**{lead}:",
            "",
            "| image | reference | base | fine-tuned |\n|---|---|---|---|",
        ]
        for r in rows:
            table.append(
                f"| {_cell(r['image'])} | {_cell(r['reference'])} | {_cell(r['before'])} | {_cell(r['after'])} |"
            )
        self.setup.card_notes = self.notes + "\n\n" + "\n".join(table)
        self.setup.extra_files["caption_samples.json"] = json.dumps(rows, indent=2, ensure_ascii=False) + "\n"


# -- setup ----------------------------------------------------------------------------------------------------
def _processor_files(processor) -> dict[str, bytes]:
    """The processor's files, saved beside a fully fine-tuned model so the folder loads on its own."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        processor.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def card_notes(config: BlipCaptionConfig, prefix: str | None, *, trained: int, held_out: int) -> str:
    if config.full:
        how = "in full"
    else:
        how = "with LoRA on " + (", ".join(config.lora_targets) if config.lora_targets else "the image-to-text preset")
    notes = (
        f"Fine-tuned {how} on {trained} captioned images; evaluated on {held_out} held-out ones with corpus BLEU-4 "
        f"and ROUGE-L (F) of beam-search captions ({config.num_beams} beams, at most {config.max_new_tokens} new "
        "tokens), on lower-cased words."
    )
    if prefix:
        notes += (
            f' Every target caption starts with the domain prompt "{prefix}"; caption with it as the prompt: '
            f'`predict(images, prompt="{prefix}")` (the Segma pipeline does for this domain).'
        )
    return notes


def blip_caption_setup(config: BlipCaptionConfig) -> TrainingSetup:
    """Everything the loop needs to fine-tune BLIP on captioned images."""
    from ..data.segma import split_samples

    if not config.data:
        raise ConfigError("data is required: a Segma export / COCO folder with captions, a CSV or a JSONL file")
    task = get_task(TASK)
    folder = hub.resolve(config.base)
    _, processor = task.load(folder, LoadOptions())
    data = read_caption_data(config.data)
    train_pairs, val_pairs = split_samples(data.pairs, val_fraction=config.val_fraction, seed=config.seed)
    logger.info("%d captioned images: %d train / %d held out", len(data.pairs), len(train_pairs), len(val_pairs))
    prefix = caption_prefix(config.domain)
    text_config = task.model_class().config_class.from_pretrained(folder).text_config
    max_length = min(config.max_length, text_config.max_position_embeddings)
    collate = make_collate(processor.tokenizer, bos_token_id=text_config.bos_token_id, max_length=max_length)

    def load_base():
        model, _ = task.load(folder, LoadOptions())
        return model

    notes = card_notes(config, prefix, trained=len(train_pairs), held_out=len(val_pairs))
    evaluator = CaptionEvaluator(processor.tokenizer, config, load_base, notes)
    setup = TrainingSetup(
        task=TASK,
        load_base=load_base,
        train_dataset=CaptionDataset(train_pairs, processor.image_processor, prefix),
        eval_dataset=CaptionDataset(val_pairs, processor.image_processor, prefix),
        loss_fn=caption_loss,
        evaluate_fn=evaluator,
        collate_fn=collate,
        dataset_name=data.name,
        dataset_type="image-captions",
        dataset_revision=data.fingerprint,
        card_notes=notes,
        extra_files=_processor_files(processor) if config.full else {},
        trainable=Trainable(lora=not config.full),
    )
    evaluator.setup = setup
    return setup
