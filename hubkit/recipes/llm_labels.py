"""The class-extraction recipe (seed 000, "3. Optimisation Mistral LLM"): QLoRA of a causal LM so that, given an
image description, it answers the object classes to detect, as the Segma pipeline's label-extraction stage asks.

The seed's setup: the base in 4-bit NF4 with double quantisation, `prepare_model_for_kbit_training`, LoRA r 64,
alpha 16, dropout 0.05 on q/k/v/o/gate/up/down projections, causal-LM loss. `quantize: int8` (bitsandbytes, runs on
CPU too) and `quantize: none` (plain LoRA) are the alternatives; NF4 needs a CUDA GPU.

Data: JSONL pairs `{"input": description, "output": "a, b, c"}` (the seed's three are in
trainers/data/class_extraction_seed.jsonl) and pairs derived from a Segma export / COCO folder: each captioned
image's caption -> its classes, comma-separated in the order the caption names them (classes it does not name
follow, sorted). The prompt is the pipeline's: `class_prompt([input], domain)` as the user turn of the tokenizer's
chat template, exactly what `LabelExtraction.generate` feeds the model; the loss is on the answer tokens only.
Metric: set-F1 of `parse_labels(greedy answer)` against the gold classes, on held-out pairs.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import hub
from ..errors import ConfigError, DataError
from ..tasks import LoadOptions, get_task
from ..tasks._base import pretrained_kwargs, refusing_pickles
from ..tasks.labels import (
    DOMAIN_INSTRUCTIONS,
    MAX_LABELS,
    MISTRAL_INST_TEMPLATE,  # noqa: F401 (re-exported)
    parse_labels,
    singular,
)
from ..training import TrainConfig, TrainingSetup, option
from ..training.trainable import Trainable, kbit_preparation

logger = logging.getLogger(__name__)
TASK = "label-extraction"
QUANTIZE = ("nf4", "int8", "none")
# Mistral's instruct format, `<s>[INST] user [/INST] answer</s>`, for a base whose tokenizer has no chat template
# (the seed's mistralai/Mistral-7B-v0.1 has none; the pipeline's Mistral-7B-Instruct models have one).


@dataclass(frozen=True)
class LlmLabelsConfig(TrainConfig):
    """The seed's QLoRA setup (trainers/configs/llm_labels_qlora.yaml holds it). Where the seed says nothing
    (lr, batch, schedule, clipping) the QLoRA paper's values: lr 2e-4, 16 pairs a step, constant, norm 0.3."""

    base: str = option("base causal LM: Hub id, store repo or folder", "mistralai/Mistral-7B-v0.1")
    quantize: str = option("nf4 (the seed's 4-bit QLoRA, CUDA only), int8 (bitsandbytes, CPU too) or none", "nf4")
    pairs: list[str] | None = option("JSONL files of {input, output} pairs (besides or instead of data)", None)
    domain: str | None = option("prompt domain: medical, industrial, natural (or the pipeline's aliases)", None)
    lora_r: int = option("LoRA rank (the seed's 64)", 64)
    lora_alpha: int = option("LoRA alpha (the seed's 16)", 16)
    lora_dropout: float = option("dropout on the LoRA input (the seed's 0.05)", 0.05)
    learning_rate: float = option("peak learning rate (AdamW; QLoRA's 2e-4)", 2e-4)
    epochs: int = option("passes over the training pairs", 3)
    batch_size: int = option("pairs per process per micro-batch", 4)
    grad_accum: int = option("micro-batches per optimizer step (4 x 4 = QLoRA's 16 pairs)", 4)
    lr_schedule: str = option("constant (QLoRA's), linear or cosine", "constant")
    max_grad_norm: float = option("gradient clipping (QLoRA's 0.3)", 0.3)
    gradient_checkpointing: bool = option("prepare_model_for_kbit_training's default: on", True)
    max_length: int = option("prompt + answer tokens; longer pairs are left out (logged)", 1024)
    max_new_tokens: int = option("tokens generated per answer at evaluation (the pipeline's 48)", 48)
    val_fraction: float = option("fraction of the pairs held out for set-F1", 0.2)
    eval_on_train: bool = option("evaluate on the training pairs (a set too small to hold any out)", False)
    samples: int = option("evaluation pairs whose answers before / after training go on the card", 4)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quantize not in QUANTIZE:
            raise ConfigError(f"quantize must be one of {QUANTIZE}, got {self.quantize!r}")
        llm_domain(self.domain)
        for name in ("max_length", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.samples < 0:
            raise ConfigError(f"samples must be zero or more, got {self.samples!r}")


def llm_domain(domain: str | None) -> str | None:
    """The label-extraction instruction key for `domain` (the pipeline's aliases: automotive -> industrial ...)."""
    from ..pipelines.segma import DOMAINS

    if domain is None or domain == "":
        return None
    if domain in DOMAIN_INSTRUCTIONS:
        return domain
    if domain in DOMAINS and DOMAINS[domain][1] is not None:
        return DOMAINS[domain][1]
    known = sorted(set(DOMAIN_INSTRUCTIONS) | {d for d, (_, key) in DOMAINS.items() if key})
    raise ConfigError(f"domain={domain!r} has no class-extraction instruction; known: {', '.join(known)} (or none)")


# -- data -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelPair:
    input: str  # one image description
    output: str  # the answer the model learns: "a, b, c"
    classes: tuple[str, ...]  # the gold classes, normalised as parse_labels normalises the model's answer
    domain: str | None = None  # None: the config's


def read_pairs(path: str | Path) -> list[LabelPair]:
    """`{"input": ..., "output": "a, b, c"}` records, one per line; an optional "domain" overrides the config's."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"pairs file {str(path)!r} does not exist (relative paths are read from {Path.cwd()})")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except ValueError as err:
            raise DataError(f"{where} is not JSON ({err})") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("input", "output")):
            raise DataError(f'{where}: expected {{"input": "description", "output": "a, b, c"}}, got {line[:120]}')
        classes = tuple(parse_labels(record["output"]))
        if not record["input"].strip() or not classes:
            raise DataError(f"{where}: the input is empty or the output names no class ({record['output']!r})")
        domain = record.get("domain")
        pairs.append(LabelPair(record["input"].strip(), record["output"].strip(), classes, llm_domain(domain)))
    return pairs


def classes_in_caption_order(caption: str, labels: Sequence[str]) -> list[str]:
    """The distinct `labels` in the order `caption` names them (plurals count: "two discs" names "disc");
    labels the caption does not name follow, sorted."""
    words = " " + " ".join(singular(w) for w in re.findall(r"[\w'-]+", caption.lower())) + " "

    def position(label: str) -> tuple[int, str]:
        found = words.find(" " + singular(" ".join(label.lower().split())) + " ")
        return (found if found >= 0 else len(words), label)

    return sorted(set(labels), key=position)


def pairs_from_detection_data(source: str | Path) -> list[LabelPair]:
    """Caption -> classes pairs from a Segma export / COCO folder (or dataset repo): every captioned image whose
    export kept regions (a Segma export keeps accepted and, unless told otherwise, pending regions; never rejected
    ones)."""
    from ..data.segma import read_detection_data

    data = read_detection_data(source)
    pairs = []
    for sample in data.samples:
        labels = [o.label for o in sample.objects]
        if not sample.caption.strip() or not labels:
            continue
        ordered = classes_in_caption_order(sample.caption, labels)
        output = ", ".join(ordered)
        pairs.append(LabelPair(sample.caption.strip(), output, tuple(parse_labels(output))))
    if not pairs:
        raise DataError(f"{source} has no captioned image with a class: no caption -> classes pair to learn")
    return pairs


def unique_pairs(pairs: Sequence[LabelPair]) -> list[LabelPair]:
    """First of each (input, domain): repeated captions would otherwise sit on both sides of the split."""
    seen, out = set(), []
    for pair in pairs:
        if (pair.input, pair.domain) not in seen:
            seen.add((pair.input, pair.domain))
            out.append(pair)
    return out


# -- tokenisation ---------------------------------------------------------------------------------------------
def load_tokenizer(folder: Path):
    """The base's tokenizer with a pad token; Mistral's [INST] template when it has no chat template.
    Returns (tokenizer, whether the fallback template was set)."""
    from transformers import AutoTokenizer

    get_task(TASK).check_files(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:  # Mistral ships without one; the collate masks padding itself
        tokenizer.pad_token = tokenizer.eos_token
    fallback = tokenizer.chat_template is None
    if fallback:
        logger.warning("%s has no chat template: using Mistral's [INST] ... [/INST] format", folder)
        tokenizer.chat_template = MISTRAL_INST_TEMPLATE
    return tokenizer, fallback


def encode_pair(tokenizer, pair: LabelPair, domain: str | None) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one pair: the pipeline's prompt in the chat template, then the answer; the prompt's
    labels are -100. The prompt ids are exactly those `LabelExtraction.generate` feeds the model."""
    messages = get_task(TASK).prompt([pair.input], pair.domain or domain)
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": pair.output}], tokenize=False
    )
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full[: len(prompt)] != prompt or not full_text.startswith(prompt_text):
        # the template tokenises differently across the turn boundary: keep the generation prompt's own ids
        answer = full_text[len(prompt_text) :] if full_text.startswith(prompt_text) else " " + pair.output
        full = prompt + tokenizer(answer, add_special_tokens=False)["input_ids"]
    if full[-1] != tokenizer.eos_token_id:  # the model must learn to stop
        full.append(tokenizer.eos_token_id)
    return full, [-100] * len(prompt) + full[len(prompt) :]


class LabelDataset(torch.utils.data.Dataset):
    """Tokenised pairs (prompt masked); pairs longer than `max_length` are left out and counted."""

    def __init__(self, pairs: Sequence[LabelPair], tokenizer, *, domain: str | None, max_length: int):
        self.items, self.dropped = [], 0
        for pair in pairs:
            ids, labels = encode_pair(tokenizer, pair, domain)
            if len(ids) > max_length:
                self.dropped += 1
                continue
            self.items.append({"ids": ids, "labels": labels, "pair": pair})
        if self.dropped:
            logger.warning("%d pair(s) longer than max_length=%d tokens left out", self.dropped, max_length)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def make_collate(pad_token_id: int):
    """Right-padded batches; padding is masked in the attention and the labels."""

    def collate(items: list[dict]) -> dict:
        width = max(len(it["ids"]) for it in items)
        ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, it in enumerate(items):
            n = len(it["ids"])
            ids[row, :n], labels[row, :n], mask[row, :n] = torch.tensor(it["ids"]), torch.tensor(it["labels"]), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pairs": [it["pair"] for it in items]}

    return collate


def answer_loss(model, batch) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        labels=batch["labels"].to(device),
    )
    return out.loss.float()


# -- evaluation -----------------------------------------------------------------------------------------------
def set_scores(predicted: Sequence[str], gold: Sequence[str]) -> tuple[float, float, float]:
    """(precision, recall, F1) of two class sets; two empty sets agree perfectly."""
    p, g = set(predicted), set(gold)
    if not p and not g:
        return 1.0, 1.0, 1.0
    hit = len(p & g)
    precision = hit / len(p) if p else 0.0
    recall = hit / len(g) if g else 0.0
    return precision, recall, (2 * hit / (len(p) + len(g)))


def _cell(text: str, limit: int = 80) -> str:
    text = text.replace("|", "\\|").replace("\n", " ").strip()
    return (text[: limit - 1] + "…" if len(text) > limit else text) or "(empty)"


class LabelEvaluator:
    """`evaluate_fn` for the loop: greedy answers through `LabelExtraction.generate` (the pipeline's own call),
    parsed with `parse_labels`, scored as sets against the gold classes; sample answers for the card (the base's
    with the adapter switched off). The loop writes the card from `setup.card_notes` / `setup.extra_files` after
    the final evaluation, so each call refreshes them."""

    def __init__(self, tokenizer, config: LlmLabelsConfig, notes: str):
        self.tokenizer, self.config, self.notes = tokenizer, config, notes
        self.domain = llm_domain(config.domain)
        self.setup: TrainingSetup | None = None
        self.before: list[str] | None = None

    def _answers(self, model, pairs: Sequence[LabelPair]) -> list[str]:
        task = get_task(TASK)
        tokens = self.config.max_new_tokens
        return [task.generate(model, self.tokenizer, [p.input], tokens, p.domain or self.domain) for p in pairs]

    def __call__(self, model, loader) -> dict[str, float]:
        pairs = [p for batch in loader for p in batch["pairs"]]
        answers = self._answers(model, pairs)
        scores = [set_scores(parse_labels(a, MAX_LABELS), p.classes) for a, p in zip(answers, pairs, strict=True)]
        n = max(len(scores), 1)
        metrics = {
            "set_f1": sum(s[2] for s in scores) / n,
            "precision": sum(s[0] for s in scores) / n,
            "recall": sum(s[1] for s in scores) / n,
            "exact_match": sum(s[2] == 1.0 for s in scores) / n,
        }
        shown = pairs[: self.config.samples]
        if shown and self.setup is not None:
            if self.before is None:
                with model.disable_adapter():
                    self.before = self._answers(model, shown)
            self._record_samples(shown, answers)
        return metrics

    def _record_samples(self, pairs: Sequence[LabelPair], answers: list[str]) -> None:
        rows = [
            {"input": p.input, "gold": ", ".join(p.classes), "before": b, "after": a}
            for p, b, a in zip(pairs, self.before, answers, strict=False)
        ]
        header = "| description | gold | base | fine-tuned |\n|---|---|---|---|"
        table = ["**Sample answers** (raw, greedy):", "", header]
        for r in rows:
            table.append(f"| {_cell(r['input'])} | {_cell(r['gold'])} | {_cell(r['before'])} | {_cell(r['after'])} |")
        self.setup.card_notes = self.notes + "\n\n" + "\n".join(table)
        self.setup.extra_files["label_samples.json"] = json.dumps(rows, indent=2, ensure_ascii=False) + "\n"


# -- setup ----------------------------------------------------------------------------------------------------
def load_options(quantize: str) -> LoadOptions:
    """nf4 / int8 through bitsandbytes on this process's device; 16-bit weights on a GPU, fp32 on CPU."""
    if not torch.cuda.is_available():
        if quantize == "nf4":
            raise ConfigError(
                "quantize=nf4 (4-bit QLoRA) needs a CUDA GPU; on CPU use --quantize int8 or --quantize none"
            )
        return LoadOptions(quantize=None if quantize == "none" else quantize)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"  # k-bit weights load straight onto the process's GPU
    return LoadOptions(quantize=None if quantize == "none" else quantize, device=device, dtype=dtype)


def collect_pairs(config: LlmLabelsConfig) -> tuple[list[LabelPair], dict[str, int], int, str]:
    """The pairs from `pairs` files and `data` (a JSONL file, or a Segma export / COCO folder), deduplicated;
    a count per source; how many were derived from a data set; a content hash for the card."""
    import hashlib

    sources = list(config.pairs or [])
    data_pairs: list[LabelPair] = []
    digest = hashlib.sha256()
    if config.data and str(config.data).endswith(".jsonl"):
        sources.append(config.data)
    elif config.data:
        data_pairs = pairs_from_detection_data(config.data)
    counts, pairs = {}, []
    for source in sources:
        found = read_pairs(source)
        counts[Path(source).name] = len(found)
        pairs += found
    if config.data and data_pairs:
        counts[Path(str(config.data)).name] = len(data_pairs)
        pairs += data_pairs
    if not pairs:
        raise ConfigError("no pairs: give --data (a Segma export / COCO folder, or a JSONL file) and/or --pairs FILE")
    pairs = unique_pairs(pairs)
    for pair in pairs:
        digest.update(json.dumps([pair.input, pair.output, pair.domain]).encode())
    return pairs, counts, len(data_pairs), digest.hexdigest()[:16]


QUANTISATION = {
    "nf4": "4-bit NF4 with double quantisation (QLoRA)",
    "int8": "8-bit (bitsandbytes LLM.int8)",
    "none": "unquantised",
}


def card_notes(config, counts: dict, *, derived: int, distinct: int, evaluated: int, fallback: bool) -> str:
    sources = ", ".join(f"{n} from {s}" for s, n in counts.items())
    parts = [
        f"Class extraction: the base ({QUANTISATION[config.quantize]}) learns to answer an image description with "
        f"the object classes to detect. Training pairs: {sources} ({distinct} distinct).",
    ]
    if derived:
        parts.append(
            "Pairs from the data set map an image's caption to its classes in the order the caption names them."
        )
    template = (
        "Mistral's `[INST] ... [/INST]` format (the base's tokenizer has no chat template: at inference use a "
        "tokenizer with that template, e.g. the Instruct model's)"
        if fallback
        else "the tokenizer's chat template"
    )
    parts.append(
        f"Prompt: the Segma pipeline's `class_prompt([description], domain)` as the user turn of {template}; "
        "the loss covers the answer tokens only."
    )
    where = "the training pairs themselves (too few to hold any out)" if config.eval_on_train else "held-out pairs"
    parts.append(
        f"Evaluated on {evaluated} {where}: set-F1 (and precision, recall, exact match) of `parse_labels` of the "
        "greedy answer against the gold classes."
    )
    return " ".join(parts)


def _dataset_name(data: str) -> str:
    if not data:
        return "class-extraction"
    return Path(data).name if Path(data).exists() else data  # a dataset repo id goes on the card as is


def llm_labels_setup(config: LlmLabelsConfig) -> TrainingSetup:
    """Everything the loop needs for (Q)LoRA class extraction."""
    from ..data.segma import split_samples

    options = load_options(config.quantize)  # refuses nf4 on CPU before anything loads
    task = get_task(TASK)
    folder = hub.resolve(config.base)
    tokenizer, fallback = load_tokenizer(folder)
    pairs, counts, derived, fingerprint = collect_pairs(config)
    if config.eval_on_train:
        train_pairs, val_pairs = pairs, pairs
    else:
        train_pairs, val_pairs = split_samples(pairs, val_fraction=config.val_fraction, seed=config.seed)
    domain = llm_domain(config.domain)
    train_ds = LabelDataset(train_pairs, tokenizer, domain=domain, max_length=config.max_length)
    val_ds = LabelDataset(val_pairs, tokenizer, domain=domain, max_length=config.max_length)
    if not len(train_ds):
        raise DataError(f"every training pair is longer than max_length={config.max_length} tokens")
    logger.info("%d pairs (%s): %d train / %d eval", len(pairs), counts, len(train_ds), len(val_ds))

    def load_base():
        with refusing_pickles(folder):
            model = task.model_class().from_pretrained(folder, **pretrained_kwargs(options))
        if options.quantize:
            # prepare_model_for_kbit_training casts the 16-bit weights left unquantised (norms, embeddings, head)
            # to fp32; do it here too so the loop's reload check compares the same arithmetic
            for param in model.parameters():
                if param.dtype in (torch.float16, torch.bfloat16):
                    param.data = param.data.float()
        return model

    notes = card_notes(config, counts, derived=derived, distinct=len(pairs), evaluated=len(val_ds), fallback=fallback)
    evaluator = LabelEvaluator(tokenizer, config, notes)
    quantized = config.quantize != "none"
    setup = TrainingSetup(
        task=TASK,
        load_base=load_base,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        loss_fn=answer_loss,
        evaluate_fn=evaluator,
        collate_fn=make_collate(tokenizer.pad_token_id),
        dataset_name=_dataset_name(config.data),
        dataset_type="caption-class-pairs",
        dataset_revision=fingerprint,
        card_notes=notes,
        trainable=Trainable(prepare=kbit_preparation(gradient_checkpointing=config.gradient_checkpointing))
        if quantized
        else Trainable(),
    )
    evaluator.setup = setup
    return setup
