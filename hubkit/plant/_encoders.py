"""The encoders a PlantVLM is built from: the seed's backbone names, loading through transformers (no timm, no remote
code, safetensors only), the width of their token outputs, and which of their layers LoRA adapts."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .. import hub
from ..errors import ConfigError

logger = logging.getLogger(__name__)

# The seed's `--vision-backbone` names -> the transformers checkpoints of the same networks.
BACKBONES = {
    "resnet18": "microsoft/resnet-18",
    "resnet50": "microsoft/resnet-50",
    "resnet101": "microsoft/resnet-101",
    **{f"efficientnet_b{i}": f"google/efficientnet-b{i}" for i in range(8)},
    "vit_base": "google/vit-base-patch16-224",
}

# LoRA targets per encoder family (transformers module names): every convolution of a CNN, the attention and MLP
# projections of a transformer. Matched as name suffixes inside the encoders only (the new modules are excluded).
LORA_TARGETS = {
    "resnet": ("convolution",),
    "efficientnet": ("expand_conv", "depthwise_conv", "project_conv", "convolution", "top_conv"),
    "vit": ("query", "key", "value", "dense"),
    "bert": ("query", "key", "value", "dense"),
    "roberta": ("query", "key", "value", "dense"),
    "xlm-roberta": ("query", "key", "value", "dense"),
    "camembert": ("query", "key", "value", "dense"),
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}


def backbone_id(name: str) -> str:
    """A seed backbone name (``resnet50``) -> its Hub id; any other name (a Hub id, a folder) as it is."""
    return BACKBONES.get(name.lower().replace("-", "_"), name) if name else name


def encoder_folder(name: str) -> Path:
    """A local folder for an encoder id / seed name / folder, through the hub store (local first, then the Hub)."""
    if not name:
        raise ConfigError("an encoder name is empty: give a Hub id, a folder, or one of " + ", ".join(BACKBONES))
    return hub.resolve(backbone_id(name))


def lora_targets(model_type: str) -> tuple[str, ...]:
    try:
        return LORA_TARGETS[model_type]
    except KeyError:
        raise ConfigError(
            f"No LoRA targets known for encoder type {model_type!r}; pass lora_targets (module names) or use "
            f"finetune: full. Known types: {', '.join(sorted(LORA_TARGETS))}"
        ) from None


def token_width(config) -> int:
    """The channel / hidden width of an encoder's ``last_hidden_state``."""
    if getattr(config, "model_type", "") == "efficientnet":
        return int(config.hidden_dim)
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    width = getattr(config, "hidden_size", None)
    if width is None:
        raise ConfigError(f"cannot tell the output width of a {type(config).__name__}; use another encoder")
    return int(width)


def drop_pooler(model: torch.nn.Module) -> torch.nn.Module:
    """The fusion reads tokens, never the pooled output: a pooler with weights would only hold unused parameters
    (which DDP refuses), so it goes."""
    pooler = getattr(model, "pooler", None)
    if isinstance(pooler, torch.nn.Module) and any(True for _ in pooler.parameters()):
        model.pooler = None
    return model


def encoder_from_config(config_dict: dict) -> torch.nn.Module:
    """An encoder with random weights from its saved transformers config (weights are loaded afterwards)."""
    from transformers import AutoConfig, AutoModel

    values = dict(config_dict)
    model_type = values.pop("model_type", None)
    if not model_type:
        raise ConfigError("a PlantVLM encoder config has no model_type; the config.json is not a PlantVLM's")
    return drop_pooler(AutoModel.from_config(AutoConfig.for_model(model_type, **values)))


def load_encoder(folder: Path) -> torch.nn.Module:
    """Pretrained encoder weights as the family's base model (a causal LM loads its body without the LM head)."""
    from transformers import AutoModel

    from ..tasks._base import refusing_pickles

    with refusing_pickles(folder):
        model = AutoModel.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
    return drop_pooler(model)


def tokens(encoder: torch.nn.Module, **inputs) -> torch.Tensor:
    """(B, N, C) tokens: a CNN's last feature map flattened over space, or a transformer's last hidden states."""
    hidden = encoder(**inputs).last_hidden_state
    if hidden.ndim == 4:  # (B, C, h, w)
        return hidden.flatten(2).transpose(1, 2)
    return hidden


def load_tokenizer(folder: Path):
    """The text model's tokenizer, right-padded, with a pad token (the eos when the family has none, as GPT-2)."""
    import json

    import transformers

    # By the class tokenizer_config.json names: AutoTokenizer would also parse a PlantVLM's config.json and warn.
    settings = Path(folder) / "tokenizer_config.json"
    name = json.loads(settings.read_text()).get("tokenizer_class", "") if settings.is_file() else ""
    cls = getattr(transformers, name, None) if name.endswith(("Tokenizer", "TokenizerFast", "Backend")) else None
    tokenizer = (cls or transformers.AutoTokenizer).from_pretrained(folder, trust_remote_code=False)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"{folder}: the tokenizer has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(bos, eos, pad) for the description head: BERT-style tokenizers start with [CLS] and end with [SEP]."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if bos is None or eos is None:
        raise ConfigError("the tokenizer has no bos / cls or eos / sep token to start and end descriptions with")
    return int(bos), int(eos), int(tokenizer.pad_token_id)
