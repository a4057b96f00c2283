"""PlantVLM: the Plantset seed's vision-language classifier (leaf photo + optional symptom text -> one of N disease
classes, plus a generated description), written on transformers encoders.

    image -> vision encoder (ResNet / EfficientNet / ViT) -> tokens -> Linear + LayerNorm (vision_dim)
    text  -> text encoder (BERT / RoBERTa / MiniLM, or a causal LM's body such as DialoGPT) -> Linear + LayerNorm
    fusion: image tokens cross-attend the text tokens (pre-norm, + FFN) for num_attention_layers blocks; a learned
            "no text" token is always among the keys, so a sample without text attends to it alone
    pooled image tokens + pooled text (attention or mean) -> fused embedding -> classifier (num_classes)
    description head: a small Transformer decoder over the tokenizer's vocabulary, cross-attending the fused tokens,
            trained by teacher forcing on the reference description; greedy `generate_description`.

During training the text of each sample is dropped with probability `text_dropout` (0.3), so image-only
predictions are trained for and stay sane. Saved as config.json + model.safetensors + the tokenizer and image
processor files + classes.json; `PlantVLM.from_pretrained(folder_or_repo_id)` loads it back through the hub store.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, MissingModelFileError
from . import _encoders

logger = logging.getLogger(__name__)
MODEL_TYPE = "plant-vlm"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CLASSES_FILE = "classes.json"
POOLINGS = ("attention", "mean")
# The modules PlantVLM adds on top of the encoders: trained in full (modules_to_save) when the encoders get LoRA.
NEW_MODULES = ("vision_proj", "text_proj", "fusion", "classifier", "description_head")
NEW_MODULES_PATTERN = r"(^|\.)(" + "|".join(NEW_MODULES) + r")(\.|$)"


@dataclass
class PlantVLMConfig:
    """The architecture (the seed's `create_multimodal_model` arguments) and the class list; saved as config.json."""

    num_classes: int = 133
    class_names: list[str] | None = None  # default: class_0 ... class_{N-1}
    vision_backbone: str = "resnet50"  # a seed name (resnet18/50/101, efficientnet_b0..b7, vit_base), Hub id or folder
    text_model: str = "microsoft/DialoGPT-medium"
    vision_dim: int = 768
    text_dim: int = 768
    fusion_dim: int = 512
    num_attention_heads: int = 8
    num_attention_layers: int = 2
    text_pooling: str = "attention"
    dropout: float = 0.1
    text_dropout: float = 0.3  # training only: drop each sample's text with this probability
    text_max_length: int = 128
    description_layers: int = 2
    description_max_length: int = 64
    # Filled when the model is built: the encoders' own configs and the tokenizer's facts.
    vision_config: dict | None = None
    text_config: dict | None = None
    vocab_size: int = 0
    bos_token_id: int = 0
    eos_token_id: int = 0
    pad_token_id: int = 0
    model_type: str = MODEL_TYPE
    architectures: list[str] = field(default_factory=lambda: ["PlantVLM"])

    def __post_init__(self) -> None:
        if self.class_names is None:
            self.class_names = [f"class_{i}" for i in range(self.num_classes)]
        self.class_names = [str(c) for c in self.class_names]
        checks = [
            (self.num_classes >= 1, "num_classes", "a positive integer"),
            (len(self.class_names) == self.num_classes, "class_names", f"a list of num_classes={self.num_classes}"),
            (len(set(self.class_names)) == len(self.class_names), "class_names", "free of duplicates"),
            (self.text_pooling in POOLINGS, "text_pooling", f"one of {POOLINGS}"),
            (min(self.vision_dim, self.text_dim, self.fusion_dim) > 0, "vision_dim / text_dim / fusion_dim", "> 0"),
            (self.fusion_dim % max(self.num_attention_heads, 1) == 0, "fusion_dim", "a multiple of the heads"),
            (self.num_attention_heads >= 1, "num_attention_heads", "a positive integer"),
            (self.num_attention_layers >= 0, "num_attention_layers", "zero or more"),
            (0 <= self.dropout < 1 and 0 <= self.text_dropout <= 1, "dropout / text_dropout", "in [0, 1)"),
            (self.text_max_length >= 2 and self.description_max_length >= 2, "text / description length", ">= 2"),
            (self.description_layers >= 1, "description_layers", "a positive integer"),
            (self.model_type == MODEL_TYPE, "model_type", repr(MODEL_TYPE)),
        ]
        for ok, name, what in checks:
            if not ok:
                value = getattr(self, name.split(" ")[0], None)
                raise ConfigError(f"PlantVLMConfig.{name} must be {what}, got {value!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PlantVLMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - {"transformers_version"})
        if unknown:
            logger.warning("PlantVLMConfig: ignoring unknown keys %s", unknown)
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class PlantVLMOutput:
    logits: torch.Tensor  # (B, num_classes)
    fused: torch.Tensor  # (B, fusion_dim): the fused embedding
    description_loss: torch.Tensor | None = None  # mean token cross-entropy (when description_ids are given)
    description_tokens: torch.Tensor | None = None  # how many tokens that mean is over (for exact perplexity)


# -- layers ----------------------------------------------------------------------------------------------------
def projection(width: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, dim), nn.LayerNorm(dim))


class FusionBlock(nn.Module):
    """Pre-norm cross-attention (image tokens query the text tokens) + FFN, both residual."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_query, self.norm_text, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim), nn.Dropout(dropout)
        )

    def forward(self, image: torch.Tensor, text: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
        query, keys = self.norm_query(image), self.norm_text(text)
        image = image + self.attention(query, keys, keys, key_padding_mask=ignore, need_weights=False)[0]
        return image + self.ffn(self.norm_ffn(image))


class CrossAttentionFusion(nn.Module):
    """Image tokens attend the text tokens (plus the learned no-text token); returns the fused tokens and the fused
    embedding (mean of the image tokens with the pooled text, Linear + LayerNorm)."""

    def __init__(self, config: PlantVLMConfig):
        super().__init__()
        dim = config.fusion_dim
        self.image_in = nn.Linear(config.vision_dim, dim)
        self.text_in = nn.Linear(config.text_dim, dim)
        self.no_text = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.blocks = nn.ModuleList(
            FusionBlock(dim, config.num_attention_heads, config.dropout) for _ in range(config.num_attention_layers)
        )
        self.text_score = nn.Linear(dim, 1) if config.text_pooling == "attention" else None
        self.out = projection(2 * dim, dim)

    def forward(self, image: torch.Tensor, text: torch.Tensor | None, text_mask: torch.Tensor | None):
        batch = image.shape[0]
        image = self.image_in(image)
        keys = self.no_text.expand(batch, 1, -1)
        valid = torch.ones(batch, 1, dtype=torch.bool, device=image.device)
        if text is not None:
            keys = torch.cat([keys, self.text_in(text).to(keys.dtype)], dim=1)
            valid = torch.cat([valid, text_mask.bool()], dim=1)
        for block in self.blocks:
            image = block(image, keys, ~valid)
        if self.text_score is not None:  # attention pooling over the valid text tokens
            scores = self.text_score(keys).squeeze(-1).float().masked_fill(~valid, torch.finfo(torch.float32).min)
            weights = scores.softmax(dim=-1).to(keys.dtype)
        else:
            weights = valid.to(keys.dtype) / valid.sum(dim=1, keepdim=True).to(keys.dtype)
        pooled_text = (weights.unsqueeze(-1) * keys).sum(dim=1)
        fused = self.out(torch.cat([image.mean(dim=1), pooled_text.to(image.dtype)], dim=-1))
        return image, fused


class DescriptionHead(nn.Module):
    """A small autoregressive decoder over the text tokenizer's vocabulary (output tied to its input embedding),
    cross-attending the fused image tokens and the fused embedding."""

    def __init__(self, config: PlantVLMConfig):
        super().__init__()
        dim = config.fusion_dim
        self.embed = nn.Embedding(config.vocab_size, dim)
        self.position = nn.Embedding(config.description_max_length + 1, dim)
        layer = nn.TransformerDecoderLayer(
            dim, config.num_attention_heads, 4 * dim, config.dropout, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.decoder = nn.TransformerDecoder(layer, config.description_layers)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        positions = torch.arange(length, device=ids.device)
        hidden = self.embed(ids) + self.position(positions)[None]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=ids.device), diagonal=1)
        hidden = self.decoder(hidden, memory.to(hidden.dtype), tgt_mask=causal)
        return self.norm(hidden) @ self.embed.weight.t()  # (B, L, vocab)


# -- the model -------------------------------------------------------------------------------------------------
class PlantVLM(nn.Module):
    """Image (+ optional text) -> class logits, fused embedding, description loss; see the module docstring."""

    def __init__(
        self,
        config: PlantVLMConfig,
        *,
        vision_encoder: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer=None,
        image_processor=None,
    ):
        super().__init__()
        if config.vision_config is None or config.text_config is None or config.vocab_size <= 0:
            raise ConfigError(
                "PlantVLMConfig has no encoder configs or vocabulary: build a new model with "
                "PlantVLM.from_encoders(config), or load a saved one with PlantVLM.from_pretrained(folder)"
            )
        self.config = config
        self.vision_encoder = vision_encoder or _encoders.encoder_from_config(config.vision_config)
        self.text_encoder = text_encoder or _encoders.encoder_from_config(config.text_config)
        self.tokenizer, self.image_processor = tokenizer, image_processor
        for module in self.vision_encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.register_forward_hook(_xla_eval_batchnorm)
        self.vision_proj = projection(_encoders.token_width(self.vision_encoder.config), config.vision_dim)
        self.text_proj = projection(_encoders.token_width(self.text_encoder.config), config.text_dim)
        self.fusion = CrossAttentionFusion(config)
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.fusion_dim, config.num_classes))
        self.description_head = DescriptionHead(config)

    # -- building --------------------------------------------------------------------------------------------
    @classmethod
    def from_encoders(cls, config: PlantVLMConfig | None = None, **overrides) -> PlantVLM:
        """A new model on pretrained encoders (`config.vision_backbone`, `config.text_model`: seed names, Hub ids
        or folders, read through the hub store); the fusion and heads start random."""
        config = dataclasses.replace(config or PlantVLMConfig(), **overrides)
        vision_folder = _encoders.encoder_folder(config.vision_backbone)
        text_folder = _encoders.encoder_folder(config.text_model)
        vision, text = _encoders.load_encoder(vision_folder), _encoders.load_encoder(text_folder)
        tokenizer = _encoders.load_tokenizer(text_folder)
        from transformers import AutoImageProcessor

        image_processor = AutoImageProcessor.from_pretrained(vision_folder)
        bos, eos, pad = _encoders.special_ids(tokenizer)
        config = dataclasses.replace(
            config,
            vision_config=vision.config.to_dict(),
            text_config=text.config.to_dict(),
            vocab_size=len(tokenizer),
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        return cls(
            config, vision_encoder=vision, text_encoder=text, tokenizer=tokenizer, image_processor=image_processor
        )

    @classmethod
    def from_config(cls, config: PlantVLMConfig | dict) -> PlantVLM:
        """Random weights of a saved architecture (no tokenizer / processor): what `hubkit lora plan` builds."""
        return cls(config if isinstance(config, PlantVLMConfig) else PlantVLMConfig.from_dict(config))

    def with_classes(self, class_names: list[str]) -> PlantVLM:
        """Point the classifier at another class list (a new head, random, unless the names are the same)."""
        if list(class_names) == list(self.config.class_names):
            return self
        self.config = dataclasses.replace(self.config, num_classes=len(class_names), class_names=list(class_names))
        old = self.classifier[1]
        self.classifier[1] = nn.Linear(self.config.fusion_dim, len(class_names)).to(old.weight.device, old.weight.dtype)
        return self

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    # -- training helpers -------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> PlantVLM:
        """As nn.Module.train, but frozen BatchNorm layers (a CNN encoder under LoRA) stay in eval mode: their
        running statistics are not trainable weights and would otherwise drift away from the saved base."""
        super().train(mode)
        if mode:
            for module in self.modules():
                frozen = getattr(module, "weight", None) is not None and not module.weight.requires_grad
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and frozen:
                    module.eval()
        return self

    @property
    def supports_gradient_checkpointing(self) -> bool:
        encoders = (self.vision_encoder, self.text_encoder)
        return any(getattr(e, "supports_gradient_checkpointing", False) for e in encoders)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        for encoder in (self.vision_encoder, self.text_encoder):
            if getattr(encoder, "supports_gradient_checkpointing", False):
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)
            else:
                logger.info("%s has no gradient checkpointing; it runs as is", type(encoder).__name__)

    def lora_targets(self) -> tuple[str, ...]:
        """The encoders' layers LoRA adapts (module-name suffixes, per encoder family)."""
        kinds = (self.config.vision_config["model_type"], self.config.text_config["model_type"])
        return tuple(dict.fromkeys(t for kind in kinds for t in _encoders.lora_targets(kind)))

    # -- forward ---------------------------------------------------------------------------------------------
    def encode(self, pixel_values, input_ids=None, attention_mask=None, has_text=None):
        """(fused tokens (B, N, fusion_dim), fused embedding (B, fusion_dim))."""
        image = self.vision_proj(_encoders.tokens(self.vision_encoder, pixel_values=pixel_values))
        text, text_mask = None, None
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = input_ids.ne(self.config.pad_token_id)
            text = self.text_proj(
                _encoders.tokens(self.text_encoder, input_ids=input_ids, attention_mask=attention_mask)
            )
            keep = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if has_text is not None:
                keep = keep & has_text.to(keep.device).bool()
            if self.training and self.config.text_dropout > 0:
                keep = keep & (torch.rand(keep.shape, device=keep.device) >= self.config.text_dropout)
            text_mask = attention_mask.bool() & keep[:, None]
        return self.fusion(image, text, text_mask)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        has_text: torch.Tensor | None = None,
        description_ids: torch.Tensor | None = None,
        description_mask: torch.Tensor | None = None,
    ) -> PlantVLMOutput:
        tokens, fused = self.encode(pixel_values, input_ids, attention_mask, has_text)
        out = PlantVLMOutput(logits=self.classifier(fused), fused=fused)
        if description_ids is not None:
            if description_mask is None:
                description_mask = torch.ones_like(description_ids, dtype=torch.bool)
            start = torch.full_like(description_ids[:, :1], self.config.bos_token_id)
            logits = self.description_head(torch.cat([start, description_ids[:, :-1]], dim=1), _memory(tokens, fused))
            target = description_ids.masked_fill(~description_mask.bool(), -100)
            count = description_mask.sum()
            total = nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
            )
            out.description_loss = total / count.clamp_min(1)
            out.description_tokens = count
        return out

    # -- inputs and predictions -----------------------------------------------------------------------------
    def _param(self) -> torch.Tensor:
        return next(p for p in self.parameters() if p.is_floating_point())

    def preprocess(self, images, texts=None, *, padding: str | bool = "longest") -> dict[str, torch.Tensor]:
        """Model inputs for images (paths, PIL, arrays) and optional texts (None / "" = no text for that image)."""
        from ..tasks import to_pil

        if self.image_processor is None or self.tokenizer is None:
            raise ConfigError("this PlantVLM has no image processor / tokenizer: load it with from_pretrained")
        pil = [to_pil(image, name=f"image {i}") for i, image in enumerate(images)]
        batch = {"pixel_values": self.image_processor(images=pil, return_tensors="pt")["pixel_values"]}
        if texts is not None:
            if isinstance(texts, str):
                texts = [texts] * len(pil)
            texts = list(texts)
            if len(texts) != len(pil):
                raise ConfigError(f"got {len(pil)} images but {len(texts)} texts; give one text (or None) per image")
            present = [bool(t and str(t).strip()) for t in texts]
            if any(present):
                encoded = self.tokenizer(
                    [str(t) if p else "" for t, p in zip(texts, present, strict=True)],
                    padding=padding,
                    truncation=True,
                    max_length=self.config.text_max_length,
                    return_tensors="pt",
                )
                batch.update(
                    input_ids=encoded["input_ids"],
                    attention_mask=encoded["attention_mask"],
                    has_text=torch.tensor(present),
                )
        return batch

    def _inputs(self, images, texts) -> dict[str, torch.Tensor]:
        param = self._param()
        batch = self.preprocess(images, texts)
        return {k: v.to(param.device, param.dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()}

    @torch.no_grad()
    def predict(self, images, texts=None, *, top_k: int = 5, batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """Top-k (class, probability) per image, best first; `texts` optional (one per image, or one for all)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
        images, texts = _as_list(images), texts if texts is None or isinstance(texts, str) else list(texts)
        was_training = self.training
        self.eval()
        results = []
        try:
            for start in range(0, len(images), batch_size):
                chunk_texts = texts if texts is None or isinstance(texts, str) else texts[start : start + batch_size]
                inputs = self._inputs(images[start : start + batch_size], chunk_texts)
                probs = self(**inputs).logits.float().softmax(dim=-1)
                scores, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
                names = self.config.class_names
                results.extend(
                    [(names[int(i)], float(s)) for s, i in zip(row_s, row_i, strict=True)]
                    for row_s, row_i in zip(scores.cpu(), indices.cpu(), strict=True)
                )
        finally:
            self.train(was_training)
        return results

    @torch.no_grad()
    def generate_description(self, images, texts=None, *, max_new_tokens: int | None = None) -> list[str]:
        """A greedy description per image from the description head (stops at the eos token)."""
        limit = min(max_new_tokens or self.config.description_max_length, self.config.description_max_length)
        images = _as_list(images)
        if not images:
            return []
        was_training = self.training
        self.eval()
        try:
            tokens, fused = self.encode(**self._inputs(images, texts))
            memory = _memory(tokens, fused)
            ids = torch.full((len(images), 1), self.config.bos_token_id, dtype=torch.long, device=memory.device)
            done = torch.zeros(len(images), dtype=torch.bool, device=memory.device)
            for _ in range(limit):
                step = self.description_head(ids, memory)[:, -1].argmax(dim=-1)
                step = step.masked_fill(done, self.config.pad_token_id)
                ids = torch.cat([ids, step[:, None]], dim=1)
                done |= step.eq(self.config.eos_token_id)
                if bool(done.all()):
                    break
        finally:
            self.train(was_training)
        out = []
        for row in ids[:, 1:].tolist():
            row = row[: row.index(self.config.eos_token_id)] if self.config.eos_token_id in row else row
            # byte-level pieces that do not form whole characters decode to U+FFFD: leave them out
            out.append(self.tokenizer.decode(row, skip_special_tokens=True).replace("\ufffd", "").strip())
        return out

    # -- saving and loading ---------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, *, state_dict: dict | None = None, **_: Any) -> Path:
        """config.json + model.safetensors + tokenizer + image processor + classes.json: a folder that
        `PlantVLM.from_pretrained` (or `hubkit.load("plant-disease", folder)`) loads alone."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = state_dict if state_dict is not None else self.state_dict()
        tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
        save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt"})
        (folder / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        (folder / CLASSES_FILE).write_text(json.dumps(self.config.class_names, ensure_ascii=False, indent=2) + "\n")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(folder)
        return folder

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, revision: str | None = None, hub: str | None = None):
        """Load a saved PlantVLM from a folder or a repo id (the local store first, then the Hugging Face Hub)."""
        from .. import hub as hubs

        path = Path(name_or_path).expanduser()
        folder = path if path.is_dir() else hubs.pull(str(name_or_path), revision=revision, hub=hub)
        config = read_config(folder)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise MissingModelFileError(
                folder, (WEIGHTS_FILE,), task="plant-disease", needed_for="weights",
                hint="PlantVLM loads safetensors only; save the model with PlantVLM.save_pretrained(folder).",
            )  # fmt: skip
        model = cls(config, tokenizer=_encoders.load_tokenizer(folder), image_processor=load_image_processor(folder))
        from safetensors.torch import load_file

        missing, unexpected = model.load_state_dict(load_file(weights), strict=False)
        if missing or unexpected:
            raise ConfigError(
                f"{weights} does not fit the architecture in {folder / CONFIG_FILE}: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        return model.eval()


def read_config(folder: Path) -> PlantVLMConfig:
    file = Path(folder) / CONFIG_FILE
    if not file.is_file():
        raise MissingModelFileError(folder, (CONFIG_FILE,), task="plant-disease", needed_for="architecture")
    values = json.loads(file.read_text())
    if values.get("model_type") != MODEL_TYPE:
        raise ConfigError(
            f"{file} describes a {values.get('model_type')!r} model, not a PlantVLM ({MODEL_TYPE!r}); build one "
            "from encoders with PlantVLM.from_encoders(PlantVLMConfig(vision_backbone=..., text_model=...))"
        )
    return PlantVLMConfig.from_dict(values)


def load_image_processor(folder: Path):
    """The saved image processor, by the class its preprocessor_config.json names (AutoImageProcessor would read
    config.json too and warn that a plant-vlm is not an image model)."""
    import transformers

    file = Path(folder) / "preprocessor_config.json"
    if not file.is_file():
        raise MissingModelFileError(folder, (file.name,), task="plant-disease", needed_for="image processor")
    name = json.loads(file.read_text()).get("image_processor_type", "")
    cls = getattr(transformers, name, None) if name.endswith(("ImageProcessor", "ImageProcessorPil")) else None
    return (cls or transformers.AutoImageProcessor).from_pretrained(folder)


def is_plant_folder(folder: Path) -> bool:
    file = Path(folder) / CONFIG_FILE
    return file.is_file() and json.loads(file.read_text()).get("model_type") == MODEL_TYPE


def _xla_eval_batchnorm(module, inputs, output):
    """A BatchNorm in eval mode on XLA as its affine map: torch_xla's batch-norm backward fails on a frozen, eval-mode
    BatchNorm (LoRA on a CNN). Elsewhere the output stays as it is."""
    x = inputs[0]
    if module.training or x.device.type != "xla" or module.running_mean is None:
        return None
    scale = (module.running_var + module.eps).rsqrt()
    shift = -module.running_mean * scale
    if module.weight is not None:
        scale, shift = scale * module.weight, shift * module.weight + module.bias
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return x * scale.view(shape).to(x.dtype) + shift.view(shape).to(x.dtype)


def _memory(tokens: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    return torch.cat([fused[:, None], tokens], dim=1)


def _as_list(images) -> list:
    return list(images) if isinstance(images, (list, tuple)) else [images]


def perplexity(loss_sum: float, tokens: int) -> float:
    """exp(mean token cross-entropy), from summed losses and token counts over a data set."""
    return math.exp(loss_sum / max(tokens, 1)) if tokens else float("nan")
