"""PixCell: histopathology patches generated from a pathology foundation model's embedding, adapted to a stain domain
by a small condition MLP and LoRA.

The parts (one module each):

- `model`: `PixCellModel` (denoiser: diffusers ``PixArtTransformer2DModel`` or ``UNet2DConditionModel``; SD3-style
  16-channel VAE with its scaling / shift factors; frozen encoder; `ConditionMLP`; noise scheduler), `load_pixcell`
  (no remote code: PixCell's ``caption_projection.uncond_embedding`` buffer is restored by hubkit), the cache
  helpers ``model.encode_images(pixels)`` / ``model.encode_latents(pixels)`` and `training_loss`.
- `encoder`: UNI2-h without timm (transformers' ``Dinov2WithRegistersModel`` + the timm key mapping) or any
  transformers ViT / DINOv2: `load_encoder`, `timm_to_hf_state_dict`, `hf_config_from_timm`.
- `adapter`: `AdapterSpec` (MLP kind, LoRA scope / rank / alpha), `add_adapter`, `save_adapter`, `load_adapter`,
  `export_diffusers_lora`, `write_adapter_extras` (for a training loop's ``export_fn``).
- `sampling`: DDPM / DDIM / Euler-Ancestral / DPM-Solver++, guidance with the unconditional embedding, N variants per
  input, seeds: `sample`, `sample_latents`, `SAMPLERS`.

The task ``histology-generation`` (hubkit.tasks.pixcell) wires them into `hubkit.load` / `Predictor.predict`; its
tiny stand-in is ``hubkit-tiny/pixcell`` (PixArt; ``hubkit.tiny.pixcell.build_unet`` writes the U-Net variant).

    from hubkit.pixcell import AdapterSpec, add_adapter, load_pixcell, save_adapter, training_loss
    model = load_pixcell(folder)
    peft_model = add_adapter(model, AdapterSpec(r=8, lora_scope="cross"))
    loss = training_loss(peft_model, model.encode_images(pixels), model.encode_latents(pixels))
"""

from .adapter import (
    AdapterSpec,
    add_adapter,
    check_adapter_fits,
    export_diffusers_lora,
    load_adapter,
    save_adapter,
    write_adapter_extras,
)
from .encoder import PathologyEncoder, hf_config_from_timm, load_encoder, timm_to_hf_state_dict
from .model import ConditionMLP, PixCellModel, load_pixcell, training_loss, training_scheduler
from .sampling import SAMPLERS, sample, sample_latents

__all__ = [
    "SAMPLERS",
    "AdapterSpec",
    "ConditionMLP",
    "PathologyEncoder",
    "PixCellModel",
    "add_adapter",
    "check_adapter_fits",
    "export_diffusers_lora",
    "hf_config_from_timm",
    "load_adapter",
    "load_encoder",
    "load_pixcell",
    "sample",
    "sample_latents",
    "save_adapter",
    "timm_to_hf_state_dict",
    "training_loss",
    "training_scheduler",
    "write_adapter_extras",
]
