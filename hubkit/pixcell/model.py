"""The PixCell model object: a diffusion denoiser + VAE + pathology encoder + condition MLP + noise scheduler.

The real PixCell (StonyBrook-CVLab/PixCell-256) is a PixArt-Sigma transformer; it loads into diffusers'
``PixArtTransformer2DModel`` without remote code (``caption_projection`` is diffusers' ``PixArtAlphaTextProjection``).
The one tensor the stock class lacks is the ``caption_projection.uncond_embedding`` buffer (T, D): the "null"
embedding PixCell uses for classifier-free guidance. `load_pixcell` reads it from the checkpoint and registers it
back on ``transformer.caption_projection`` under its own name, so the transformer's state dict keeps PixCell's format.
A diffusers ``UNet2DConditionModel`` (the seed's U-Net variant; ``encoder_hid_dim_type="text_proj"`` plays the part
of ``caption_projection``) works the same way; its unconditional embedding is a buffer of this object (zeros unless
``unet/uncond_embedding.safetensors`` holds one).

Conditioning path::

    patch -> encoder (frozen, UNI2-h) -> embedding (B, T, D)
          -> condition_mlp (zero-initialised residual MLP in D: the identity until trained)
          -> denoiser's own projection (caption_projection / encoder_hid_proj) -> cross-attention

The unconditional embedding bypasses the condition MLP (it is the base model's "no condition" token), both when
guidance mixes the two predictions and when training drops the condition (`training_loss`).

Folder layout (``load_pixcell``): ``transformer/`` or ``unet/``, ``vae/``, ``scheduler/``, and ``encoder/`` (a
transformers ViT or a timm UNI2-h folder); without ``encoder/`` the encoder is pulled from the hub store
(``encoder=`` or the default ``MahmoodLab/UNI2-h``).

For the training recipe::

    model = load_pixcell(folder)                      # frozen parts, a condition MLP that is the identity
    emb = model.encode_images(pixels)                 # (B, T, D), pixels (B, 3, H, W) in [-1, 1]: cache these
    lat = model.encode_latents(pixels)                # (B, 16, H/8, W/8) = (z - shift) * scale: and these
    loss = training_loss(peft_model, emb, lat, cond_dropout=0.1)   # epsilon MSE on the first latent channels
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)
DEFAULT_BASE = "StonyBrook-CVLab/PixCell-256"
UNCOND_KEY = "caption_projection.uncond_embedding"
UNET_UNCOND_FILE = "uncond_embedding.safetensors"


class ConditionMLP(torch.nn.Module):
    """The adapter MLP: ``x + Linear(GELU(Linear(x)))`` in the encoder's embedding space (D -> hidden -> D).

    The last layer starts at zero, so an untrained MLP is exactly the identity: the base model's behaviour. It sits
    in front of the denoiser's own projection, so a trained MLP learns to move embeddings of the source stain
    domain towards what the base model was trained on.
    """

    def __init__(self, dim: int, hidden_dim: int | None = None):
        super().__init__()
        self.dim, self.hidden_dim = int(dim), int(hidden_dim or dim)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(self.dim, self.hidden_dim),
            torch.nn.GELU(approximate="tanh"),
            torch.nn.Linear(self.hidden_dim, self.dim),
        )
        torch.nn.init.zeros_(self.net[2].weight)
        torch.nn.init.zeros_(self.net[2].bias)

    @property
    def config(self) -> dict[str, Any]:
        return {"type": "residual_mlp", "dim": self.dim, "hidden_dim": self.hidden_dim, "activation": "gelu_tanh"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.net[0].weight.dtype)  # a trained fp32 copy beside a half-precision base: its own dtype
        return x + self.net(x)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself, or the original inside peft's ModulesToSaveWrapper."""
    return getattr(module, "original_module", None) or module


class PixCellModel(torch.nn.Module):
    """A conditional latent diffusion model; the denoiser is an attribute named ``transformer`` or ``unet`` (so
    LoRA keys read ``transformer.transformer_blocks.0.attn1.to_q...`` as in diffusers' LoRA files).

    ``forward(noisy_latents, timesteps, embeddings, drop_mask=None)`` returns the denoiser's raw output (32 channels
    for PixCell: epsilon then the learned variance); the scheduler is a plain attribute, not a module.
    """

    def __init__(
        self,
        denoiser: torch.nn.Module,
        vae: torch.nn.Module,
        encoder: torch.nn.Module | None,
        scheduler,
        *,
        uncond_embedding: torch.Tensor | None = None,
        mlp_hidden_dim: int | None = None,
    ):
        super().__init__()
        from diffusers import PixArtTransformer2DModel

        self.kind = "transformer" if isinstance(denoiser, PixArtTransformer2DModel) else "unet"
        setattr(self, self.kind, denoiser)
        self.vae, self.encoder, self.scheduler = vae, encoder, scheduler
        self.condition_mlp = ConditionMLP(self.embedding_dim, mlp_hidden_dim)
        if encoder is not None and getattr(encoder, "dim", self.embedding_dim) != self.embedding_dim:
            raise ConfigError(
                f"The encoder gives {encoder.dim}-d embeddings but the {self.kind} is conditioned on "
                f"{self.embedding_dim}-d ones: pair it with the encoder it was trained on."
            )
        if uncond_embedding is None:
            uncond_embedding = torch.zeros(1, self.embedding_dim)
            logger.warning("no unconditional embedding in the checkpoint: guidance uses a zero embedding")
        uncond_embedding = uncond_embedding.reshape(-1, self.embedding_dim).float()
        owner = self._uncond_owner()
        owner.register_buffer("uncond_embedding", uncond_embedding.to(next(denoiser.parameters()).dtype))

    # -- facts ---------------------------------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self, self.kind)

    def _uncond_owner(self) -> torch.nn.Module:
        if self.kind == "transformer":
            return _unwrap(self.transformer.caption_projection)
        return self

    @property
    def embedding_dim(self) -> int:
        config = self.denoiser.config
        if self.kind == "transformer":
            return int(config.caption_channels)
        return int(config.encoder_hid_dim or config.cross_attention_dim)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def learned_sigma(self) -> bool:
        """The denoiser predicts epsilon and a variance (out_channels = 2 x latent channels), as PixCell does."""
        return int(self.denoiser.config.out_channels or self.latent_channels) == 2 * self.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The native image side: the denoiser's latent sample_size x the VAE factor (PixCell-256: 32 x 8)."""
        return int(self.denoiser.config.sample_size) * self.vae_scale_factor

    @property
    def tokens_per_image(self) -> int:
        """Embedding tokens per conditioning image (PixCell-256: 1; PixCell-1024: 16, a 4x4 grid of crops)."""
        return int(self.unconditional_embedding().shape[0])

    def unconditional_embedding(self) -> torch.Tensor:
        """The (T, D) embedding that stands for "no condition" (PixCell's ``caption_projection.uncond_embedding``)."""
        return self._uncond_owner().uncond_embedding

    def describe(self) -> dict[str, Any]:
        """The shape facts an adapter must agree with (written into the adapter and checked on load)."""
        config = self.denoiser.config
        facts = {
            "denoiser": type(self.denoiser).__name__,
            "embedding_dim": self.embedding_dim,
            "tokens_per_image": self.tokens_per_image,
            "latent_channels": self.latent_channels,
        }
        if self.kind == "transformer":
            facts |= {
                "inner_dim": int(config.num_attention_heads * config.attention_head_dim),
                "num_layers": int(config.num_layers),
            }
        else:
            facts |= {"block_out_channels": list(config.block_out_channels)}
        return facts

    # -- encoding ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encoder embeddings (B, T, D) of images (B, 3, H, W) in [-1, 1]: what the training cache stores."""
        if self.encoder is None:
            raise ConfigError("This PixCell model was loaded without an encoder; pass embeddings instead of images")
        out = self.encoder(pixels, tokens_per_image=self.tokens_per_image)
        return out.reshape(pixels.shape[0], self.tokens_per_image, -1).float()

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor, *, sample: bool = False, generator=None) -> torch.Tensor:
        """Scaled VAE latents ``(z - shift_factor) * scaling_factor`` of images in [-1, 1] (the posterior mean unless
        ``sample``): what the denoiser is trained on."""
        vae = self.vae
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        return self.latents_from_vae(z.float())

    def latents_from_vae(self, z: torch.Tensor) -> torch.Tensor:
        shift = self.vae.config.shift_factor or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    def latents_to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        shift = self.vae.config.shift_factor or 0.0
        return latents / self.vae.config.scaling_factor + shift

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from scaled latents (the inverse of `encode_latents`)."""
        z = self.latents_to_vae(latents.float()).to(self.vae.device, self.vae.dtype)
        return self.vae.decode(z).sample.float()

    # -- conditioning and the denoiser ---------------------------------------------------------------------------
    def condition(self, embeddings: torch.Tensor, drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder-space tokens for the denoiser: the condition MLP on `embeddings` (B, T, D) (or (B, D)), with the
        rows where `drop_mask` is True replaced by the unconditional embedding (classifier-free guidance dropout)."""
        if embeddings.ndim == 2:
            embeddings = embeddings[:, None]
        tokens = self.condition_mlp(embeddings)
        if drop_mask is not None:
            uncond = self.unconditional_embedding().to(tokens.dtype).expand_as(tokens)
            tokens = torch.where(drop_mask.reshape(-1, 1, 1).to(tokens.device), uncond, tokens)
        return tokens

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The denoiser's raw output for noisy latents, timesteps (B,) and encoder-space tokens (B, T, D)."""
        denoiser = self.denoiser
        dtype = next(denoiser.parameters()).dtype
        latents, tokens = latents.to(dtype), tokens.to(dtype)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(latents.shape[0])
        if self.kind == "transformer":
            return denoiser(
                latents,
                encoder_hidden_states=tokens,
                timestep=timesteps,
                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            ).sample
        return denoiser(latents, timesteps, encoder_hidden_states=tokens).sample

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        embeddings: torch.Tensor,
        drop_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.denoise(noisy_latents, timesteps, self.condition(embeddings, drop_mask))


def _base(model: torch.nn.Module) -> PixCellModel:
    model = getattr(model, "module", model)  # DistributedDataParallel (training under DDP) wraps the PeftModel
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, PixCellModel):
        raise ConfigError(f"expected a PixCellModel (or a PeftModel around one), got {type(base).__name__}")
    return base


def training_scheduler(model: torch.nn.Module):
    """A DDPMScheduler with the model's noise schedule (training always noises with DDPM)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(_base(model).scheduler.config)


def training_loss(
    model: torch.nn.Module,
    embeddings: torch.Tensor,
    latents: torch.Tensor,
    *,
    cond_dropout: float = 0.1,
    scheduler=None,
) -> torch.Tensor:
    """The diffusion loss for cached `embeddings` (B, T, D) and scaled `latents` (B, C, h, w).

    DDPM noising with t uniform in [0, num_train_timesteps); with probability `cond_dropout` a sample's condition is
    replaced by the unconditional embedding; MSE between the prediction's first C channels (epsilon, when the model
    also predicts its variance) and the target (the noise, or the velocity for v-prediction schedules). Noise,
    timesteps and dropout come from torch's global RNG (the loop seeds it for its reload check). `model` may be a
    PeftModel: its forward runs the LoRA layers and the adapter's copy of the condition MLP.
    """
    if not 0.0 <= cond_dropout <= 1.0:
        raise ConfigError(f"cond_dropout must be in [0, 1], got {cond_dropout}")
    net = _base(model)
    scheduler = scheduler or training_scheduler(net)
    device = next(model.parameters()).device
    latents = latents.to(device, torch.float32)
    embeddings = embeddings.to(device)
    noise = torch.randn_like(latents)
    steps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
    noisy = scheduler.add_noise(latents, noise, steps)
    drop = torch.rand(latents.shape[0], device=device) < cond_dropout
    pred = model(noisy, steps, embeddings, drop)[:, : net.latent_channels].float()
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, steps)
    elif scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        raise ConfigError(f"prediction_type {scheduler.config.prediction_type!r} is not supported (epsilon, v)")
    return torch.nn.functional.mse_loss(pred, target)


# -- loading ---------------------------------------------------------------------------------------------------
def _read_uncond(folder: Path) -> torch.Tensor | None:
    """PixCell's ``caption_projection.uncond_embedding`` from the transformer's safetensors, if it has one."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            if UNCOND_KEY in f.keys():  # noqa: SIM118  (safe_open has keys(), not __contains__)
                return f.get_tensor(UNCOND_KEY)
    return None


def _load_scheduler(folder: Path):
    import diffusers

    if not (folder / "scheduler_config.json").is_file():
        logger.info("no scheduler/ in %s: PixArt's DDPM schedule (linear betas, 1000 steps)", folder.parent)
        return diffusers.DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    config = json.loads((folder / "scheduler_config.json").read_text())
    cls = getattr(diffusers, str(config.get("_class_name")), None) or diffusers.DDPMScheduler
    return cls.from_pretrained(folder)


def _load_transformer(folder: Path, kwargs: dict):
    from diffusers import PixArtTransformer2DModel
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # it warns that uncond_embedding was "not used": hubkit restores it
    try:
        model, info = PixArtTransformer2DModel.from_pretrained(folder, output_loading_info=True, **kwargs)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    leftover = [k for k in info.get("unexpected_keys", []) if k != UNCOND_KEY]
    if info.get("missing_keys") or leftover:
        raise ConfigError(
            f"{folder} does not fit PixArtTransformer2DModel: missing {sorted(info.get('missing_keys', []))[:5]}, "
            f"unexpected {leftover[:5]}"
        )
    return model, _read_uncond(folder)


def load_pixcell(
    folder: str | Path,
    *,
    encoder: str | Path | torch.nn.Module | None = None,
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
    load_encoder: bool = True,
) -> PixCellModel:
    """A frozen PixCellModel from a folder laid out as the module docstring says.

    `encoder`: a folder or repo id (or a loaded encoder) overriding ``folder/encoder``; without either the default
    UNI2-h is pulled from the hub store. `load_encoder=False` skips it (training from cached embeddings).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .encoder import DEFAULT_ENCODER
    from .encoder import load_encoder as read_encoder

    folder = Path(folder)
    kwargs: dict[str, Any] = {} if allow_pickle else {"use_safetensors": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if (folder / "transformer").is_dir():
        denoiser, uncond = _load_transformer(folder / "transformer", kwargs)
    elif (folder / "unet").is_dir():
        denoiser = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kwargs)
        uncond = _read_unet_uncond(folder / "unet")
    else:
        raise ConfigError(
            f"{folder} has neither transformer/ nor unet/: histology generation needs a PixCell folder "
            f"(transformer/, vae/, scheduler/, e.g. {DEFAULT_BASE}) or a diffusers UNet one (unet/, vae/, scheduler/)."
        )
    if not (folder / "vae").is_dir():
        raise ConfigError(f"{folder} lacks vae/: copy the SD3 VAE (16 channels) PixCell was trained with into it")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kwargs)
    scheduler = _load_scheduler(folder / "scheduler")
    enc = None
    if isinstance(encoder, torch.nn.Module):  # a loaded PathologyEncoder (or any module with its interface)
        enc = encoder
    elif load_encoder:
        from .. import hub

        source = encoder if encoder is not None else (folder / "encoder" if (folder / "encoder").is_dir() else None)
        enc_folder = hub.resolve(source or DEFAULT_ENCODER)
        enc = read_encoder(enc_folder, allow_pickle=allow_pickle, dtype=dtype)
    model = PixCellModel(denoiser, vae, enc, scheduler, uncond_embedding=uncond)
    if dtype is not None:
        model.condition_mlp.to(dtype)
    model.requires_grad_(False)
    return model.eval()


def _read_unet_uncond(folder: Path) -> torch.Tensor | None:
    from safetensors.torch import load_file

    path = folder / UNET_UNCOND_FILE
    return load_file(path)["uncond_embedding"] if path.is_file() else None
