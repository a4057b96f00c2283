"""Conditional image generation: a frozen latent-diffusion UNet conditioned on an image embedding (PixCell-style).

PixCell conditions a frozen Stable-Diffusion-style UNet on the embedding of a pathology foundation model (UNI) through
a small trainable MLP, the *condition adapter*, whose output replaces the text encoder's tokens in cross-attention.
Here the embedding comes from a simple built-in encoder, a fixed frozen function of the conditioning image: the VAE
encoder's mean latent average-pooled to a ``grid x grid`` map and flattened (``latent_channels * grid**2`` values).
To use a real foundation-model embedding, pass it to predict as ``embedding=`` (numpy array or tensor, (D,) or (N, D))
and ship a ``condition_adapter/`` trained for that D in the model folder.

Folder layout: the diffusers one (``unet/``, ``vae/``, ``scheduler/``; no text encoder needed) plus optionally
``condition_adapter/config.json`` + ``model.safetensors``. LoRA adapts the UNet's attention only, never the VAE.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..tiny import diffusion as tiny_diffusion
from ._base import LoadOptions, LoraPreset, Task, TinyModel, register_task

logger = logging.getLogger(__name__)
ADAPTER_DIR = "condition_adapter"
DEFAULT_GRID = 4  # built-in encoder: 4x4 pooled latent -> 4 * 16 = 64 values for SD's 4 latent channels


@dataclass
class GeneratedImage:
    image: Image.Image  # RGB, height x width of the request (default: the UNet's native size)
    seed: int


class ConditionAdapter(torch.nn.Module):
    """MLP: embedding (B, embedding_dim) -> cross-attention tokens (B, n_tokens, cross_attention_dim)."""

    def __init__(self, embedding_dim: int, cross_attention_dim: int, n_tokens: int = 4, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or max(embedding_dim, cross_attention_dim)
        self.config = {
            "embedding_dim": embedding_dim,
            "cross_attention_dim": cross_attention_dim,
            "n_tokens": n_tokens,
            "hidden_dim": hidden_dim,
        }
        self.net = torch.nn.Sequential(
            torch.nn.LayerNorm(embedding_dim),
            torch.nn.Linear(embedding_dim, hidden_dim),
            torch.nn.GELU(),
            torch.nn.Linear(hidden_dim, cross_attention_dim * n_tokens),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        c = self.config
        return self.net(embedding).view(embedding.shape[0], c["n_tokens"], c["cross_attention_dim"])

    def save_pretrained(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, folder / "model.safetensors"
        )
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ConditionAdapter:
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            config = json.loads((folder / "config.json").read_text())
            adapter = cls(**{k: config[k] for k in ("embedding_dim", "cross_attention_dim", "n_tokens", "hidden_dim")})
            adapter.load_state_dict(load_file(folder / "model.safetensors"))
        except Exception as err:  # missing / malformed files; safetensors raises its own error types
            raise ConfigError(
                f"{folder} is not a usable condition adapter ({err}); it needs config.json (embedding_dim, "
                "cross_attention_dim, n_tokens, hidden_dim) and model.safetensors. Delete it to start from a fresh one."
            ) from None
        return adapter


class ConditionedUNet(torch.nn.Module):
    """A frozen UNet + VAE, a scheduler (an attribute, not a module) and the trainable condition adapter."""

    def __init__(self, unet, vae, scheduler, condition_adapter: ConditionAdapter, *, grid: int = DEFAULT_GRID):
        super().__init__()
        self.unet, self.vae, self.condition_adapter = unet, vae, condition_adapter
        self.scheduler, self.grid = scheduler, grid

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def builtin_embedding_dim(self) -> int:
        return self.vae.config.latent_channels * self.grid**2

    def encode_condition(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The built-in frozen encoder: (B, 3, H, W) in [-1, 1] -> (B, latent_channels * grid**2)."""
        latent = self.vae.encode(pixel_values).latent_dist.mean
        return torch.nn.functional.adaptive_avg_pool2d(latent, self.grid).flatten(1)

    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Noise prediction for the training loss: the UNet cross-attending to the adapted embedding."""
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=self.condition_adapter(embedding)).sample


def _from_pretrained_kwargs(options: LoadOptions) -> dict[str, Any]:
    if options.quantize:
        raise ConfigError(
            f"quantize={options.quantize!r} is not supported for conditional-image-generation; "
            "load it in half precision instead (dtype='float16' or 'bfloat16')."
        )
    kwargs: dict[str, Any] = {} if options.allow_pickle else {"use_safetensors": True}
    if options.dtype is not None:
        kwargs["torch_dtype"] = options.dtype
    return kwargs


def _load_scheduler(folder: Path):
    import diffusers

    config = json.loads((folder / "scheduler_config.json").read_text())
    cls = getattr(diffusers, str(config.get("_class_name")), None) or diffusers.DDPMScheduler
    return cls.from_pretrained(folder)


def _to_pixels(image: Image.Image, width: int, height: int) -> torch.Tensor:  # RGB in [-1, 1], (3, H, W)
    arr = np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1)


@register_task
class ConditionalImageGeneration(Task):
    name = "conditional-image-generation"
    pipeline_tag = "image-to-image"
    library_name = "diffusers"
    architectures = ("UNet2DConditionModel",)
    auto_model = "UNet2DConditionModel"  # in the repo's unet/ folder
    auto_processor = None
    default_base = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    tiny_models = (TinyModel("diffusion", tiny_diffusion.build, mimics="stable-diffusion-v1-5/stable-diffusion-v1-5"),)
    processor_files = ()  # no processor: the UNet is conditioned on the VAE latents of the input image
    output_type = "GeneratedImage (RGB PIL image sampled from the conditioning image's embedding)"
    # The diffusers LoRA recipe's attention projections, in the UNet only (the VAE has to_q ... too).
    preset = LoraPreset(
        targets=("to_q", "to_k", "to_v", "to_out.0"),
        r=16,
        alpha=32,
        dropout=0.05,
        exclude=r"^(vae|condition_adapter)\..*",
    )

    def load(self, folder: Path, options: LoadOptions):
        from diffusers import AutoencoderKL

        missing = [d for d in ("unet", "vae", "scheduler") if not (folder / d).is_dir()]
        if missing:
            raise ConfigError(
                f"{folder} lacks {', '.join(missing)}/: conditional-image-generation needs a diffusers latent "
                "diffusion folder (unet/, vae/, scheduler/), e.g. stable-diffusion-v1-5/stable-diffusion-v1-5."
            )
        kwargs = _from_pretrained_kwargs(options)
        unet = self.model_class().from_pretrained(folder, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kwargs)
        scheduler = _load_scheduler(folder / "scheduler")
        grid = int(options.extra.get("grid", DEFAULT_GRID))
        if (folder / ADAPTER_DIR / "config.json").is_file():
            adapter = ConditionAdapter.from_pretrained(folder / ADAPTER_DIR)
            logger.info("loaded the condition adapter from %s", folder / ADAPTER_DIR)
        else:
            seed = int(options.extra.get("adapter_seed", 0))
            with torch.random.fork_rng(devices=[]):  # a fixed init that leaves the caller's RNG alone
                torch.manual_seed(seed)
                adapter = ConditionAdapter(vae.config.latent_channels * grid**2, unet.config.cross_attention_dim)
            logger.info("no %s/ in %s: condition adapter freshly initialised with seed %d", ADAPTER_DIR, folder, seed)
        if options.dtype is not None:
            adapter.to(options.dtype)
        for module in (unet, vae, adapter):
            module.requires_grad_(False)  # frozen; training unfreezes the adapter and LoRA adds its own weights
        return ConditionedUNet(unet, vae, scheduler, adapter, grid=grid), None

    def _embeddings(self, net: ConditionedUNet, images, embedding, width: int, height: int) -> torch.Tensor:
        param = next(net.unet.parameters())
        expected = net.condition_adapter.config["embedding_dim"]
        if embedding is None:
            if not images:
                raise ConfigError("Nothing to condition on: pass conditioning images, or embedding= (D,) / (N, D)")
            if expected != net.builtin_embedding_dim:
                raise ConfigError(
                    f"The condition adapter expects {expected}-d embeddings but the built-in encoder gives "
                    f"{net.builtin_embedding_dim}: pass embedding= (e.g. your foundation model's features)."
                )
            pixels = torch.stack([_to_pixels(img, width, height) for img in images]).to(param.device, param.dtype)
            return net.encode_condition(pixels)
        emb = torch.as_tensor(np.asarray(embedding) if not torch.is_tensor(embedding) else embedding)
        emb = emb.reshape(1, -1) if emb.ndim == 1 else emb
        n = max(len(images), 1)
        if emb.ndim != 2 or emb.shape[1] != expected or emb.shape[0] not in (1, n):
            raise ConfigError(
                f"embedding must be ({expected},) or ({n}, {expected}) for {n} image(s), got {tuple(emb.shape)}"
            )
        if not torch.isfinite(emb).all():
            raise ConfigError("embedding holds NaN or infinite values")
        return emb.to(param.device, param.dtype).expand(n, -1)

    @torch.no_grad()
    def predict(
        self,
        model,
        processor,
        images: list[Image.Image],
        *,
        embedding: Any = None,
        num_inference_steps: int = 10,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
    ) -> list[GeneratedImage]:
        """One image per conditioning image (or per embedding row), each from the same `seed`'s noise.

        Sampled with DDIM (eta 0, built from the repo's scheduler config) without classifier-free guidance.
        """
        from diffusers import DDIMScheduler

        net: ConditionedUNet = model.get_base_model() if hasattr(model, "get_base_model") else model
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ConfigError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        factor = net.vae_scale_factor
        native = net.unet.config.sample_size * factor
        height, width = height or native, width or native
        if height % factor or width % factor or height <= 0 or width <= 0:
            raise ConfigError(f"height and width must be positive multiples of {factor}, got {height}x{width}")
        cond = net.condition_adapter(self._embeddings(net, images, embedding, width, height))
        param = next(net.unet.parameters())
        out = []
        for tokens in cond:
            scheduler = DDIMScheduler.from_config(net.scheduler.config)
            scheduler.set_timesteps(num_inference_steps, device=param.device)
            generator = torch.Generator("cpu").manual_seed(seed)
            shape = (1, net.unet.config.in_channels, height // factor, width // factor)
            latents = torch.randn(shape, generator=generator).to(param.device, param.dtype)
            latents = latents * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                sample = scheduler.scale_model_input(latents, t)
                noise = net.unet(sample, t, encoder_hidden_states=tokens[None]).sample
                latents = scheduler.step(noise, t, latents).prev_sample
            decoded = net.vae.decode(latents / net.vae.config.scaling_factor).sample[0]
            pixels = ((decoded.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            out.append(GeneratedImage(Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()), seed))
        return out

    def save_output(self, output: GeneratedImage, out_dir: Path, stem: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{stem}.generated.png"
        output.image.save(path)
        return [path]
