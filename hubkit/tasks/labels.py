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

# The seed's create_optimized_class_prompt (Segma Vision): base rules, an optional domain block, the descriptions.
BASE_INSTRUCTION = """Analyze these image descriptions and extract the main object classes for object detection.

Rules:
1. Extract only concrete, visible objects
2. Use simple nouns or short phrases (1-2 words max)
3. Avoid adjectives, colors, and descriptive words
4. Focus on objects that can be detected visually
5. Maximum 8 classes per description set
"""
DOMAIN_INSTRUCTIONS = {
    "medical": """Extract medical terminology and anatomical structures.
Focus on: organs, anatomical parts, medical devices, pathological findings.
Avoid: adjectives, colors, orientations.""",
    "industrial": """Extract industrial components and equipment.
Focus on: machinery, tools, parts, systems, materials.
Avoid: conditions, measurements, locations.""",
    "natural": """Extract natural objects and environmental features.
Focus on: animals, plants, geological features, weather elements.
Avoid: colors, sizes, quantities.""",
}
QUESTION = "Extract the main detectable objects as a comma-separated list:"
MAX_LABELS = 8  # the seed's rule 5
# Mistral's own [INST] format, for a base (the seed's Mistral-7B-v0.1) whose tokenizer ships no chat template
MISTRAL_INST_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Mistral [INST] format: user and assistant turns only') }}{% endif %}"
    "{% endfor %}"
)


def class_prompt(descriptions: Sequence[str], domain: str | None = None) -> str:
    """The seed's prompt for `descriptions` (captions of one image); `domain` one of DOMAIN_INSTRUCTIONS or None."""
    if domain is not None and domain not in DOMAIN_INSTRUCTIONS:
        raise ConfigError(f"Unknown label-extraction domain {domain!r}; known: {sorted(DOMAIN_INSTRUCTIONS)} or None")
    instruction = BASE_INSTRUCTION + ("\n\n" + DOMAIN_INSTRUCTIONS[domain] if domain else "")
    return f"{instruction}\n\nDescriptions:\n{chr(10).join(descriptions)}\n\n{QUESTION}"


MAX_WORDS = 3  # the prompt asks for 1-2 words; 3 tolerates "traffic light pole", longer items are sentences
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


_IRREGULAR = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "teeth": "tooth", "feet": "foot",
    "mice": "mouse", "geese": "goose", "leaves": "leaf", "knives": "knife", "wolves": "wolf", "shelves": "shelf",
    "calves": "calf", "halves": "half", "loaves": "loaf", "lives": "life", "wives": "wife", "cacti": "cactus",
    "fungi": "fungus", "nuclei": "nucleus", "bacteria": "bacterium", "shoes": "shoe", "toes": "toe",
    "hooves": "hoof", "scarves": "scarf", "vertebrae": "vertebra", "phalanges": "phalanx", "axes": "axis",
}  # fmt: skip
_UNCOUNTED = {
    "sheep", "fish", "deer", "series", "species", "glasses", "scissors", "pants", "jeans", "shorts", "trousers",
    "clothes", "news", "grass", "glass", "gas", "bus", "lens", "chassis", "debris", "aircraft", "moss", "cross",
    "dress", "press", "mattress", "compass", "canvas", "iris", "pelvis", "thorax", "abdomen", "foliage", "rice",
}  # fmt: skip


def singular(phrase: str) -> str:
    """The singular of an English noun phrase's last word ("traffic lights" -> "traffic light", "boxes" -> "box");
    rules plus a list of irregular and uncountable nouns, enough for class names."""
    *head, word = phrase.split(" ")
    if word in _IRREGULAR:
        word = _IRREGULAR[word]
    elif word in _UNCOUNTED or len(word) <= 3 or word.endswith(("ss", "us", "is", "ous")):
        pass
    elif word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith(("ches", "shes", "xes", "zzes", "sses", "oes")):
        word = word[:-2]
    elif word.endswith("s"):
        word = word[:-1]
    return " ".join([*head, word])


def parse_labels(text: str, max_labels: int | None = None) -> list[str]:
    """Class names from an LLM's answer: comma / semicolon / newline separated, bullets, numbering and a
    leading "Objects:" header tolerated; lowercased, singular, articles dropped, deduplicated, sentences left out;
    at most `max_labels` (None: all)."""
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
            item = singular(item)
            if item not in names:
                names.append(item)
    return names[:max_labels] if max_labels is not None else names


_CAPTION_PREFIX = re.compile(r"^.*?:\s*")  # a domain prompt BLIP continued: "medical image showing: ..."
_NOT_NOUN_WORDS = """
a an the this that these those some any each every no of in on at by for from with without into onto over under
above below behind beside between near next to up down out off through across along around about against and or
but nor so yet as than while is are was were be been being has have had do does did can could will would may
might must shall should it its it's they them their there here he she his her we our you your i my me who which
what where when how very too also just only not one two three four five six seven eight nine ten many several
few other another various different same such more most much image picture photo photograph view scene close
closeup shot background foreground front back top bottom left right side middle center centre part parts large
small big little tiny huge long short tall wide narrow old new young white black red green blue yellow brown
gray grey orange pink purple dark light bright clear visible natural medical single full empty round square
showing containing featuring sitting standing lying holding looking wearing made shown seen appears appear
"""
_NOT_NOUNS = frozenset(_NOT_NOUN_WORDS.split())


def nouns_from_caption(caption: str, max_labels: int = MAX_LABELS) -> list[str]:
    """The deterministic fallback when no LLM answers: the caption's words that are not function words, common
    adjectives, colours, -ing / -ly words or numbers, singular, in order, deduplicated, at most `max_labels`."""
    text = _CAPTION_PREFIX.sub("", caption.lower().strip()) if ":" in caption else caption.lower()
    names: list[str] = []
    for word in re.findall(r"[^\W\d_][\w'-]*", text):
        word = word.strip("'-")
        if len(word) < 3 or word in _NOT_NOUNS or word.endswith(("ing", "ly")):
            continue
        word = singular(word)
        if word not in names and word not in _NOT_NOUNS:
            names.append(word)
    return names[:max_labels]


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
        if tokenizer.chat_template is None and _model_type(folder) == "mistral":
            tokenizer.chat_template = MISTRAL_INST_TEMPLATE
        if tokenizer.chat_template is None:
            raise ConfigError(
                f"The tokenizer in {folder} has no chat template; label-extraction needs an instruction-tuned model "
                "(e.g. mistralai/Mistral-7B-Instruct-v0.2)."
            )
        with refusing_pickles(folder):
            model = self.model_class().from_pretrained(folder, **kwargs)
        return model, tokenizer

    def prompt(self, captions: list[str], domain: str | None = None) -> list[dict[str, str]]:
        """The chat messages for one image's captions (one user turn: Mistral's template has no system role)."""
        return [{"role": "user", "content": class_prompt([c.strip() for c in captions], domain)}]

    def generate(self, model, tokenizer, captions: list[str], max_new_tokens: int, domain: str | None = None) -> str:
        inputs = tokenizer.apply_chat_template(
            self.prompt(captions, domain), add_generation_prompt=True, return_tensors="pt", return_dict=True
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
        domain: str | None = None,
        max_labels: int = MAX_LABELS,
        max_new_tokens: int = 48,
    ) -> list[Labels]:
        """One Labels per image, from that image's captions (the pixels themselves are not read), with the seed's
        prompt for `domain` ("medical", "industrial", "natural" or None); at most `max_labels` names."""
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not isinstance(max_labels, int) or max_labels <= 0:
            raise ConfigError(f"max_labels must be a positive integer, got {max_labels!r}")
        class_prompt([], domain)  # an unknown domain fails before any generation
        per_image = _captions_per_image(captions, len(images))
        answers: dict[tuple[str, ...], str] = {}  # prompts run one at a time: batching (padding) can flip argmaxes
        out = []
        for entry in per_image:
            key = tuple(entry)
            if key not in answers:
                answers[key] = self.generate(model, processor, entry, max_new_tokens, domain)
                logger.debug("captions %s -> %r", entry, answers[key])
            raw = answers[key]
            out.append(Labels(parse_labels(raw, max_labels), raw))
        return out

    def save_output(self, output: Labels, out_dir: Path, stem: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stem}.labels.json"
        path.write_text(json.dumps({"names": output.names, "raw": output.raw}, indent=2, ensure_ascii=False) + "\n")
        return [path]


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None
