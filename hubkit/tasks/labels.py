"""Label extraction: an instruction-tuned LLM reads image captions and lists the object class names in them.

In the segmentation pipeline BLIP captions an image, this task turns the captions into class names, and Grounding
DINO + SAM find and segment those classes. The model is a causal LM (Mistral-7B-Instruct by default, optionally
4-bit NF4 through bitsandbytes: ``hubkit.load("label-extraction", quantize="nf4")``); the processor is its tokenizer.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image

from ..errors import ConfigError
from ..tiny import mistral as tiny_mistral
from ._base import LoadOptions, LoraPreset, Task, TinyModel, pretrained_kwargs, refusing_pickles, register_task

logger = logging.getLogger(__name__)

PROMPT = (
    "Here are captions of one image:\n{captions}\n\n"
    "List the physical objects mentioned in the captions as short lowercase nouns, separated by commas. "
    "Answer with the list only, for example: cat, mat, window"
)
MAX_WORDS = 3  # a class name is a noun or a short noun phrase ("traffic light"); longer items are sentences
MAX_CHARS = 32
# Chatter an LLM wraps around the list; never an object class.
_NOT_LABELS = {"sure", "okay", "ok", "yes", "no", "none", "nothing", "n/a", "here", "objects", "object", "answer"}
_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)]|[a-z][.)](?=\s))\s*")
_ARTICLE = re.compile(r"^(?:(?:and|or|a|an|the|some|two|three|several)\s+)+")
_PAREN = re.compile(r"\([^)]*\)")
_LABEL = re.compile(r"[^\W_][\w\s\-'/&.]*")  # letters, digits, inner spaces / hyphens / apostrophes


@dataclass
class Labels:
    names: list[str]  # object class names, lowercase, deduplicated, in the order the model gave them
    raw: str  # the model's answer as generated, for review


def parse_labels(text: str) -> list[str]:
    """Class names from an LLM's answer: comma / semicolon / newline separated, bullets, numbering and a
    leading "Objects:" header tolerated; lowercased, articles dropped, deduplicated, sentences left out."""
    try:  # a JSON list, as some models answer
        parsed = json.loads(text)
        if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
            text = "\n".join(parsed)
    except ValueError:
        pass
    text = text.replace("</s>", "\n").replace("[/INST]", "\n").replace("[INST]", "\n")
    names: list[str] = []
    for line in text.splitlines():
        line = _BULLET.sub("", line.strip().lower())
        if ":" in line:  # "objects: cat, dog" -> "cat, dog"; a header line alone ("here is the list:") -> ""
            line = line.rsplit(":", 1)[1]
        for item in re.split(r"[,;]", _PAREN.sub(" ", line)):
            item = item.strip().strip("\"'`[]{}.!?*_ ").strip()
            item = _ARTICLE.sub("", item)
            item = re.sub(r"\s+", " ", item)
            if not _LABEL.fullmatch(item) or item in _NOT_LABELS or not re.search(r"[^\W\d_]", item):
                continue
            if len(item) > MAX_CHARS or len(item.split()) > MAX_WORDS:
                continue
            if item not in names:
                names.append(item)
    return names


def _captions_per_image(captions, n_images: int) -> list[list[str]]:
    """One list of captions per image: `captions` holds one entry per image (a str or a list of str), or a
    single entry (or a bare str) that applies to every image. Without images: one entry per caption entry."""
    if captions is None:
        raise ConfigError(
            "label-extraction needs the captions to read: predict(images, captions=['a cat on a mat', ...]) "
            "(one caption, or a list of captions, per image; e.g. from the image-to-text task)."
        )
    if isinstance(captions, str):
        captions = [captions]
    if not isinstance(captions, Sequence) or not captions:
        raise ConfigError(f"captions must be a non-empty list of strings, got {captions!r}")
    entries = [[c] if isinstance(c, str) else list(c) for c in captions]
    for entry in entries:
        if not entry or not all(isinstance(c, str) and c.strip() for c in entry):
            raise ConfigError(f"captions must be non-empty strings (or lists of them), got {entry!r}")
    if n_images == 0:
        return entries
    if len(entries) == 1:
        return entries * n_images
    if len(entries) != n_images:
        raise ConfigError(
            f"Got {len(entries)} captions for {n_images} images: pass one caption (or list of captions) per image, "
            "or a single one for all of them."
        )
    return entries


@register_task
class LabelExtraction(Task):
    name = "label-extraction"
    pipeline_tag = "text-generation"
    architectures = ("MistralForCausalLM",)
    auto_model = "AutoModelForCausalLM"
    auto_processor = "AutoTokenizer"
    default_base = "mistralai/Mistral-7B-Instruct-v0.2"
    tiny_models = (TinyModel("mistral", tiny_mistral.build, mimics="mistralai/Mistral-7B-Instruct-v0.3"),)
    output_type = "Labels (object class names parsed from the LLM's answer, and the raw answer)"
    # QLoRA's recipe: every linear layer of the decoder blocks, attention and MLP.
    preset = LoraPreset(
        targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        r=16,
        alpha=32,
        dropout=0.05,
    )
    example_kwargs: ClassVar[dict] = {"captions": ["a cat sitting on a mat next to a window"]}
    # The fast tokenizer's file (or the sentencepiece model it can be converted from).
    processor_files = (("tokenizer.json", "tokenizer.model"),)

    def load(self, folder: Path, options: LoadOptions):
        from transformers import AutoTokenizer

        kwargs = pretrained_kwargs(options)  # quantize="nf4" -> BitsAndBytesConfig (or a clear ImportError)
        self.check_files(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if tokenizer.pad_token is None:  # Mistral ships without one; generate() needs it
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.chat_template is None:
            raise ConfigError(
                f"The tokenizer in {folder} has no chat template; label-extraction needs an instruction-tuned model "
                "(e.g. mistralai/Mistral-7B-Instruct-v0.2)."
            )
        with refusing_pickles(folder):
            model = self.model_class().from_pretrained(folder, **kwargs)
        return model, tokenizer

    def prompt(self, captions: list[str]) -> list[dict[str, str]]:
        """The chat messages for one image's captions (one user turn: Mistral's template has no system role)."""
        lines = "\n".join(f"- {c.strip()}" for c in captions)
        return [{"role": "user", "content": PROMPT.format(captions=lines)}]

    def generate(self, model, tokenizer, captions: list[str], max_new_tokens: int) -> str:
        inputs = tokenizer.apply_chat_template(
            self.prompt(captions), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.no_grad():
            ids = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,  # greedy: the same captions always give the same labels
                pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    def predict(
        self,
        model,
        processor,
        images: list[Image.Image],
        *,
        captions: Sequence[str] | Sequence[Sequence[str]] | str | None = None,
        max_new_tokens: int = 32,
    ) -> list[Labels]:
        """One Labels per image, from that image's captions (the pixels themselves are not read)."""
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        per_image = _captions_per_image(captions, len(images))
        answers: dict[tuple[str, ...], str] = {}  # prompts run one at a time: batching (padding) can flip argmaxes
        out = []
        for entry in per_image:
            key = tuple(entry)
            if key not in answers:
                answers[key] = self.generate(model, processor, entry, max_new_tokens)
                logger.debug("captions %s -> %r", entry, answers[key])
            raw = answers[key]
            out.append(Labels(parse_labels(raw), raw))
        return out

    def save_output(self, output: Labels, out_dir: Path, stem: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stem}.labels.json"
        path.write_text(json.dumps({"names": output.names, "raw": output.raw}, indent=2, ensure_ascii=False) + "\n")
        return [path]
