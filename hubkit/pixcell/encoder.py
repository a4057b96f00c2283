"""The frozen pathology encoder PixCell is conditioned on: UNI2-h without timm, or any transformers ViT / DINOv2.

UNI2-h (MahmoodLab/UNI2-h) is timm's ``vit_giant_patch14_224`` built with ``mlp_layer=SwiGLUPacked``,
``act_layer=SiLU``, ``reg_tokens=8``, ``no_embed_class=True``, ``init_values=1e-5``. timm cannot be imported here
(it pulls torchvision), so the weights are hosted by transformers' ``Dinov2WithRegistersModel``, which has the same
blocks (pre-norm attention and SwiGLU MLP, each scaled by a LayerScale, register tokens after the class token).
`timm_to_hf_state_dict` maps the keys:

====================================  =====================================================================
timm                                  transformers (Dinov2WithRegistersModel)
====================================  =====================================================================
``cls_token`` / ``reg_token``         ``embeddings.cls_token`` / ``embeddings.register_tokens``
``pos_embed`` (1, N, D)               ``embeddings.position_embeddings`` (1, 1 + N, D): a zero row for the
                                      class token (``no_embed_class``: timm adds no position to it)
``patch_embed.proj``                  ``embeddings.patch_embeddings.projection``
``blocks.i.attn.qkv`` (3D, D)         ``...attention.{q,k,v}_proj``: rows [0:D], [D:2D], [2D:3D]
``blocks.i.attn.proj``                ``...attention.o_proj``
``blocks.i.ls{1,2}.gamma``            ``...layer_scale{1,2}.lambda1``
``blocks.i.mlp.fc1`` (2H, D)          ``...mlp.gate_proj`` = rows [0:H], ``...mlp.up_proj`` = rows [H:2H]
                                      (SwiGLUPacked: ``silu(x1) * x2`` with x1 the first half)
``blocks.i.mlp.fc2``                  ``...mlp.down_proj``
``norm``                              ``layernorm``
====================================  =====================================================================

The embedding is the class token after the final norm (timm's ``global_pool="token"`` with ``num_classes=0``), one
D-vector per 224x224 crop. The same rule serves transformers ViT / DINOv2 checkpoints (``last_hidden_state[:, 0]``).

    encoder = load_encoder("path/to/UNI2-h")            # timm folder: config.json (architecture, model_args) + weights
    encoder = load_encoder("path/to/dinov2-small")      # any transformers ViT / DINOv2 / DINOv2-with-registers folder
    embeddings = encoder(pixels)                        # (B, 3, H, W) in [-1, 1] -> (B, D)
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from ..errors import ConfigError, UnsafeWeightsError

logger = logging.getLogger(__name__)
DEFAULT_ENCODER = "MahmoodLab/UNI2-h"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # UNI2-h's normalisation (timm pretrained_cfg)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What UNI2-h's model card passes to timm.create_model on top of config.json's model_args.
UNI2H_KWARGS = {
    "img_size": 224,
    "patch_size": 14,
    "depth": 24,
    "num_heads": 24,
    "init_values": 1e-5,
    "embed_dim": 1536,
    "mlp_ratio": 2.66667 * 2,
    "num_classes": 0,
    "no_embed_class": True,
    "reg_tokens": 8,
    "dynamic_img_size": True,
}


def _swiglu_hidden(hidden_size: int, mlp_ratio: int) -> int:
    """The SwiGLU width transformers' Dinov2WithRegistersSwiGLUFFN derives from hidden_size and mlp_ratio."""
    return (int(int(hidden_size * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def hf_config_from_timm(model_args: dict):
    """A Dinov2WithRegistersConfig equal to timm's ViT with SwiGLUPacked MLP and these `model_args`.

    Raises ConfigError when the timm model is one the host cannot represent (no register tokens kept apart, class
    token with a position, a SwiGLU width transformers cannot produce).
    """
    from transformers import Dinov2WithRegistersConfig

    args = {**UNI2H_KWARGS, **model_args}
    dim, ratio = int(args["embed_dim"]), float(args["mlp_ratio"])
    packed = int(dim * ratio)  # timm GluMlp: fc1 is dim -> packed, split in two halves
    if packed % 2:
        raise ConfigError(f"timm mlp_ratio {ratio} gives an odd SwiGLUPacked width {packed} for embed_dim {dim}")
    half = packed // 2
    # transformers keeps 2/3 of dim * mlp_ratio (an integer in its config), rounded up to a multiple of 8
    host_ratio = next((r for r in range(1, 65) if _swiglu_hidden(dim, r) == half), None)
    if host_ratio is None:
        raise ConfigError(
            f"timm embed_dim {dim} with mlp_ratio {ratio} has a SwiGLU width {half} that transformers' "
            "Dinov2WithRegisters cannot build (integer mlp_ratio, multiple of 8); this encoder needs timm."
        )
    if not args.get("no_embed_class", False):
        raise ConfigError("only timm ViTs with no_embed_class=True (UNI2-h) map onto Dinov2WithRegistersModel")
    image_size, patch_size = int(args["img_size"]), int(args["patch_size"])
    return Dinov2WithRegistersConfig(
        hidden_size=dim,
        num_hidden_layers=int(args["depth"]),
        num_attention_heads=int(args["num_heads"]),
        mlp_ratio=host_ratio,
        hidden_act="silu",
        use_swiglu_ffn=True,
        layerscale_value=float(args.get("init_values") or 1.0),
        layer_norm_eps=1e-6,  # timm's ViT norm_layer: LayerNorm(eps=1e-6)
        image_size=image_size,
        patch_size=patch_size,
        num_channels=int(args.get("in_chans", 3)),
        qkv_bias=bool(args.get("qkv_bias", True)),
        num_register_tokens=int(args.get("reg_tokens", 0)),
        drop_path_rate=0.0,
    )


_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BLOCK_RENAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.o_proj",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc2": "mlp.down_proj",
}


def timm_to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and split) a timm ViT-with-registers state dict into Dinov2WithRegistersModel keys (see the module
    docstring's table). Raises ConfigError naming the first key it does not know."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "cls_token":
            out["embeddings.cls_token"] = value
        elif key == "reg_token":
            out["embeddings.register_tokens"] = value
        elif key == "pos_embed":  # no_embed_class: patches only; the host adds a (zero) row for the class token
            out["embeddings.position_embeddings"] = torch.cat([value.new_zeros(1, 1, value.shape[-1]), value], dim=1)
        elif key.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("norm."):
            out["layernorm." + key.rsplit(".", 1)[1]] = value
        elif match := _BLOCK.match(key):
            index, rest = match.groups()
            prefix = f"encoder.layer.{index}."
            module, _, leaf = rest.rpartition(".")
            if rest.startswith("attn.qkv."):
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}attention.{name}.{leaf}"] = part
            elif rest.startswith("mlp.fc1."):  # SwiGLUPacked: act(first half) * second half
                gate, up = value.chunk(2, dim=0)
                out[f"{prefix}mlp.gate_proj.{leaf}"], out[f"{prefix}mlp.up_proj.{leaf}"] = gate, up
            elif rest in _BLOCK_RENAMES:  # ls1.gamma has no module part
                out[prefix + _BLOCK_RENAMES[rest]] = value
            elif module in _BLOCK_RENAMES:
                out[f"{prefix}{_BLOCK_RENAMES[module]}.{leaf}"] = value
            else:
                raise ConfigError(f"timm key {key!r} has no counterpart in Dinov2WithRegistersModel")
        elif key.startswith("head.") and value.numel() == 0:
            continue
        else:
            raise ConfigError(f"timm key {key!r} has no counterpart in Dinov2WithRegistersModel (is it UNI2-h?)")
    return out


class PathologyEncoder(torch.nn.Module):
    """A frozen ViT returning one embedding per image: the class token after the final norm.

    ``forward(pixels)`` takes (B, 3, H, W) in [-1, 1] (the VAE's range), resizes to ``image_size`` and normalises
    with the encoder's mean / std. ``tokens_per_image`` > 1 (PixCell-1024: 16) cuts each image into a
    sqrt(T) x sqrt(T) grid and embeds every crop: (B, T, D).
    """

    def __init__(self, model, *, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, source: str = ""):
        super().__init__()
        self.model, self.image_size, self.source = model, int(image_size), source
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def forward(self, pixels: torch.Tensor, tokens_per_image: int = 1) -> torch.Tensor:
        side = round(tokens_per_image**0.5)
        if side * side != tokens_per_image:
            raise ConfigError(f"tokens_per_image must be a square (1, 4, 16 ...), got {tokens_per_image}")
        b, c, h, w = pixels.shape
        if side > 1:  # (B, C, side*h', side*w') -> (B*T, C, h', w'), crops in row-major order
            pixels = pixels.reshape(b, c, side, h // side, side, w // side).permute(0, 2, 4, 1, 3, 5)
            pixels = pixels.reshape(b * tokens_per_image, c, h // side, w // side)
        x = (pixels.float() + 1.0) / 2.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = torch.nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False, antialias=True
            )
        x = ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype)
        cls = self.model(pixel_values=x).last_hidden_state[:, 0]
        return cls.reshape(b, tokens_per_image, -1) if side > 1 else cls


def _read_weights(folder: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    safe = sorted(folder.glob("*.safetensors"))
    if safe:
        state: dict[str, torch.Tensor] = {}
        for path in safe:
            state.update(load_file(path))
        return state
    pickles = sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pth"))
    if not pickles:
        raise ConfigError(f"{folder} has no weights (model.safetensors)")
    if not allow_pickle:
        raise UnsafeWeightsError(
            f"{pickles[0]} is a pickle, which can run code when loaded. Convert it to safetensors, or opt in with "
            "allow_pickle=True (--allow-pickle) to load it with torch.load(weights_only=True)."
        )
    from ..adapters import load_pickle_weights

    return load_pickle_weights(pickles[0])


def load_timm_vit(folder: Path, *, allow_pickle: bool = False, dtype=None) -> PathologyEncoder:
    """UNI2-h (or another timm ViT with registers and SwiGLUPacked MLP) from its timm folder, without timm."""
    from transformers import Dinov2WithRegistersModel

    config = json.loads((folder / "config.json").read_text())
    hf_config = hf_config_from_timm(config.get("model_args") or {})
    model = Dinov2WithRegistersModel(hf_config)
    state = timm_to_hf_state_dict(_read_weights(folder, allow_pickle))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "embeddings.mask_token"]  # DINOv2's masking token: unused at inference
    if missing or unexpected:
        raise ConfigError(
            f"{folder} does not fit a timm ViT of its config.json: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    pretrained = config.get("pretrained_cfg") or {}
    encoder = PathologyEncoder(
        model,
        image_size=hf_config.image_size,
        mean=tuple(pretrained.get("mean", IMAGENET_MEAN)),
        std=tuple(pretrained.get("std", IMAGENET_STD)),
        source=str(folder),
    )
    return encoder.to(dtype) if dtype is not None else encoder


def load_transformers_vit(folder: Path, *, allow_pickle: bool = False, dtype=None) -> PathologyEncoder:
    """Any transformers ViT / DINOv2 / DINOv2-with-registers folder (config.json with model_type)."""
    from transformers import AutoModel

    kwargs = {"trust_remote_code": False, **({} if allow_pickle else {"use_safetensors": True})}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModel.from_pretrained(folder, **kwargs)
    size, mean, std = int(getattr(model.config, "image_size", 224)), IMAGENET_MEAN, IMAGENET_STD
    processor_file = folder / "preprocessor_config.json"
    if processor_file.is_file():
        processor = json.loads(processor_file.read_text())
        mean, std = processor.get("image_mean", mean), processor.get("image_std", std)
        crop = processor.get("crop_size") or processor.get("size") or {}
        size = int(crop.get("height", crop.get("shortest_edge", size))) if isinstance(crop, dict) else int(crop)
    return PathologyEncoder(model, image_size=size, mean=tuple(mean), std=tuple(std), source=str(folder))


def load_encoder(folder: str | Path, *, allow_pickle: bool = False, dtype=None) -> PathologyEncoder:
    """The encoder in `folder`: a timm folder (config.json with ``architecture``, e.g. UNI2-h) or a transformers
    one (config.json with ``model_type``). Frozen and in eval mode."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{folder} is not an encoder folder: config.json is missing (expected UNI2-h or a ViT)")
    config = json.loads(config_file.read_text())
    if "architecture" in config and "model_type" not in config:
        if "vit" not in str(config["architecture"]):
            raise ConfigError(f"{folder}: timm architecture {config['architecture']!r} is not a ViT")
        encoder = load_timm_vit(folder, allow_pickle=allow_pickle, dtype=dtype)
    else:
        encoder = load_transformers_vit(folder, allow_pickle=allow_pickle, dtype=dtype)
    encoder.requires_grad_(False)
    logger.info("loaded the %d-d encoder from %s", encoder.dim, folder)
    return encoder.eval()
