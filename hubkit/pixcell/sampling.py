"""Sampling PixCell: diffusers schedulers, classifier-free guidance with an explicit unconditional embedding, N
variants per conditioning image, seeds.

Samplers (built from the model's scheduler config, so the noise schedule is the one it was trained with):

=================  ================================================  ======================================
name               diffusers class                                   use
=================  ================================================  ======================================
``ddpm``           DDPMScheduler (learned variance when predicted)   training's sampler; slow (~100+ steps)
``ddim``           DDIMScheduler (eta 0: deterministic)              20-50 steps
``euler-a``        EulerAncestralDiscreteScheduler                   20-50 steps, stochastic per seed
``dpm++``          DPMSolverMultistepScheduler (dpmsolver++)         PixCell's own: 20 steps, guidance 1.5-2
=================  ================================================  ======================================

Guidance: ``eps = eps_uncond + g * (eps_cond - eps_uncond)`` where ``eps_uncond`` is the prediction for the model's
unconditional embedding (PixCell's ``uncond_embedding``, never passed through the condition MLP); ``g <= 1`` runs
the conditional branch only. Variant ``i`` of every input starts from the noise of ``seed + i``, so inputs (and a
base and its adapter) are compared on the same noise; the ancestral / DDPM steps draw from a generator seeded with
`seed`, so a call is deterministic given (inputs, seed, num_images).

    images = sample(model, embeddings, num_inference_steps=20, guidance_scale=1.5, sampler="dpm++",
                    num_images=4, seed=0)            # uint8 (B, N, H, W, 3)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import ConfigError

# name -> (diffusers class, config overrides)
SAMPLERS: dict[str, tuple[str, dict]] = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    # DPM-Solver's learned-variance branch keeps 3 channels (an RGB-latent assumption): hand it epsilon only.
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "variance_type": None}),
}
ALIASES = {
    "euler_a": "euler-a",
    "euler-ancestral": "euler-a",
    "euler_ancestral": "euler-a",
    "dpmsolver++": "dpm++",
    "dpm-solver++": "dpm++",
    "dpmpp": "dpm++",
}
DEFAULT_SAMPLER = "dpm++"


def sampler_name(name: str) -> str:
    """The canonical sampler name for `name` (or an alias); ConfigError listing the valid ones."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in SAMPLERS:
        raise ConfigError(f"Unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return key


def make_scheduler(name: str, config):
    """A fresh scheduler of sampler `name` built from a scheduler `config` (the model's)."""
    import diffusers

    cls_name, overrides = SAMPLERS[sampler_name(name)]
    return getattr(diffusers, cls_name).from_config(config, **overrides)


def _check(num_inference_steps, guidance_scale, num_images, seed) -> None:
    def positive_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if not positive_int(num_inference_steps):
        raise ConfigError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if not positive_int(num_images):
        raise ConfigError(f"num_images must be a positive integer, got {num_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or guidance_scale < 0:
        raise ConfigError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}")


@torch.no_grad()
def sample_latents(
    model,
    embeddings: torch.Tensor,
    *,
    num_inference_steps: int = 20,
    guidance_scale: float = 1.5,
    sampler: str = DEFAULT_SAMPLER,
    num_images: int = 1,
    seed: int = 0,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Scaled latents (B * num_images, C, h, w), input-major, for encoder `embeddings` (B, T, D) or (B, D).

    `model` is a PixCellModel or a PeftModel around one (its active adapter, LoRA and condition MLP, is used).
    `callback(step, total)` is called after every step (progress bars).
    """
    from .model import _base

    _check(num_inference_steps, guidance_scale, num_images, seed)
    net = _base(model)
    device = next(net.denoiser.parameters()).device
    if embeddings.ndim == 2:
        embeddings = embeddings[:, None]
    if embeddings.ndim != 3 or embeddings.shape[-1] != net.embedding_dim:
        raise ConfigError(f"embeddings must be (B, T, {net.embedding_dim}), got {tuple(embeddings.shape)}")
    batch = embeddings.shape[0] * num_images
    scheduler = make_scheduler(sampler, net.scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    # peft puts LoRA layers and the adapter's copy of the condition MLP inside the base's own modules: calling the
    # base runs the active adapter (or none, under PeftModel.disable_adapter())
    cond = net.condition(embeddings.to(device))
    cond = cond.repeat_interleave(num_images, dim=0)
    guided = guidance_scale > 1.0
    if guided:
        uncond = net.unconditional_embedding().to(cond.dtype).expand_as(cond)
        cond = torch.cat([cond, uncond])
    side = net.denoiser.config.sample_size
    channels = net.latent_channels
    noise = [torch.randn((1, channels, side, side), generator=torch.Generator().manual_seed(seed + i)) for i in
             range(num_images)]  # fmt: skip
    latents = torch.cat(noise).repeat(embeddings.shape[0], 1, 1, 1).to(device) * scheduler.init_noise_sigma
    generator = torch.Generator().manual_seed(seed)
    learned_variance = (
        sampler_name(sampler) == "ddpm"
        and net.learned_sigma
        and scheduler.config.variance_type in ("learned", "learned_range")
    )
    total = len(scheduler.timesteps)
    for index, t in enumerate(scheduler.timesteps):
        x = torch.cat([latents, latents]) if guided else latents
        x = scheduler.scale_model_input(x, t)
        out = net.denoise(x, t.expand(x.shape[0]), cond).float()
        eps, rest = out[:, :channels], out[:, channels:]
        if guided:
            eps_cond, eps_uncond = eps.chunk(2)
            eps, rest = eps_uncond + guidance_scale * (eps_cond - eps_uncond), rest[:batch]
        model_output = torch.cat([eps, rest], dim=1) if learned_variance else eps
        latents = scheduler.step(model_output, t, latents, generator=generator).prev_sample
        if callback is not None:
            callback(index + 1, total)
    return latents


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    return ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def sample(model, embeddings: torch.Tensor, *, num_images: int = 1, **kwargs) -> np.ndarray:
    """uint8 images (B, num_images, H, W, 3) for `embeddings`; keyword arguments as `sample_latents`."""
    from .model import _base

    latents = sample_latents(model, embeddings, num_images=num_images, **kwargs)
    images = to_uint8(_base(model).decode_latents(latents))
    return images.reshape(-1, num_images, *images.shape[1:])
