"""Histology generation (PixCell): synthetic H&E patches conditioned on a real patch's pathology-encoder embedding.

The model is `hubkit.pixcell.PixCellModel` (PixArt transformer or the seed's UNet, SD3-style VAE, UNI2-h encoder,
condition MLP, scheduler); see hubkit.pixcell for the folder layout, the adapter folder and the samplers. The
plain ``conditional-image-generation`` task (hubkit.tasks.generation) stays the Stable-Diffusion-layout UNet with its
built-in VAE-latent encoder; a UNet with an encoder projection (``unet/`` + ``encoder/``) loads here too.

    predictor = hubkit.load("histology-generation", "StonyBrook-CVLab/PixCell-256", adapters=["lab/nct-stain"])
    out = predictor.predict(patch, num_inference_steps=20, guidance_scale=1.5, sampler="dpm++", num_images=4, seed=0)
    out.images          # 4 PIL images; out.array (4, H, W, 3) uint8; out.image: the 4 side by side
    predictor.compare(patch, num_images=4)   # {"base": ..., "<adapter>": ...} on the same noise
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..pixcell import sampling
from ..tiny import pixcell as tiny_pixcell
from ._base import LoadOptions, LoraPreset, Task, TinyModel, register_task


@dataclass
class HistologySamples:
    """The N samples of one conditioning patch."""

    images: list[Image.Image]  # N RGB images at the model's resolution
    seeds: list[int]  # the noise seed of each (seed + i)
    array: np.ndarray  # (N, H, W, 3) uint8, the same pixels
    image: Image.Image  # the N samples side by side (one row)


def _to_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """RGB in [-1, 1], (3, size, size): the patch resized to the model's resolution (PixCell-256: 256 px)."""
    arr = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1)


def _row(images: list[Image.Image]) -> Image.Image:
    width, height = sum(im.width for im in images), max(im.height for im in images)
    row = Image.new("RGB", (width, height))
    x = 0
    for im in images:
        row.paste(im, (x, 0))
        x += im.width
    return row


@register_task
class HistologyGeneration(Task):
    name = "histology-generation"
    pipeline_tag = "image-to-image"
    library_name = "diffusers"
    architectures = ("PixArtTransformer2DModel",)
    auto_model = "PixArtTransformer2DModel"  # in the repo's transformer/ folder
    auto_processor = None
    processor_files = ()  # the encoder folder carries its own normalisation
    default_base = "StonyBrook-CVLab/PixCell-256"
    # hubkit.tiny.pixcell.build_unet(folder) writes the seed's U-Net variant (not a family of its own)
    tiny_models = (TinyModel("pixcell", tiny_pixcell.build, mimics="StonyBrook-CVLab/PixCell-256"),)
    output_type = "HistologySamples (N RGB patches sampled from the conditioning patch's embedding)"
    # The seed's LoRA: all attention projections of the denoiser (self + cross); PixCell's authors adapt attn2 only
    # (hubkit.pixcell.AdapterSpec(lora_scope="cross")). Never the VAE, the encoder or the condition MLP.
    preset = LoraPreset(
        targets=("to_q", "to_k", "to_v", "to_out.0"),
        r=8,
        alpha=8,
        dropout=0.0,
        exclude=r"^(vae|encoder|condition_mlp)\.",
    )
    example_kwargs = {"num_inference_steps": 2}

    def load(self, folder: Path, options: LoadOptions):
        from ..pixcell.model import load_pixcell

        if options.quantize:
            raise ConfigError(
                f"quantize={options.quantize!r} is not supported for {self.name}; "
                "load it in half precision instead (dtype='float16' or 'bfloat16')."
            )
        encoder = options.extra.get("encoder")
        model = load_pixcell(folder, encoder=encoder, dtype=options.dtype, allow_pickle=options.allow_pickle)
        return model, None

    def _embeddings(self, net, images: list[Image.Image], embedding: Any) -> torch.Tensor:
        device = next(net.denoiser.parameters()).device
        if embedding is None:
            if not images:
                raise ConfigError("Nothing to condition on: pass conditioning patches, or embedding= (D,) / (N, T, D)")
            pixels = torch.stack([_to_pixels(img, net.resolution) for img in images]).to(device)
            return net.encode_images(pixels)
        emb = embedding if torch.is_tensor(embedding) else torch.as_tensor(np.asarray(embedding, dtype=np.float32))
        emb = emb.reshape(1, 1, -1) if emb.ndim == 1 else emb[:, None] if emb.ndim == 2 else emb
        n, dim, tokens = max(len(images), 1), net.embedding_dim, net.tokens_per_image
        if emb.ndim != 3 or emb.shape[-1] != dim or emb.shape[1] != tokens or emb.shape[0] not in (1, n):
            raise ConfigError(
                f"embedding must be ({dim},), ({n}, {dim}) or ({n}, {tokens}, {dim}) for {n} image(s), "
                f"got {tuple(emb.shape)}"
            )
        if not torch.isfinite(emb).all():
            raise ConfigError("embedding holds NaN or infinite values")
        return emb.float().to(device).expand(n, -1, -1)

    @torch.no_grad()
    def predict(
        self,
        model,
        processor,
        images: list[Image.Image],
        *,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.5,
        sampler: str = sampling.DEFAULT_SAMPLER,
        num_images: int = 1,
        seed: int = 0,
        embedding: Any = None,
        callback: Callable[[int, int], None] | None = None,
    ) -> list[HistologySamples]:
        """`num_images` samples per conditioning patch (or per embedding row); see hubkit.pixcell.sampling for
        the samplers, guidance and seeds. `callback(step, total)` reports progress."""
        from ..pixcell.model import _base

        net = _base(model)
        sampling.sampler_name(sampler)  # refuse an unknown name before encoding anything
        embeddings = self._embeddings(net, images, embedding)
        arrays = sampling.sample(
            model,
            embeddings,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            sampler=sampler,
            num_images=num_images,
            seed=seed,
            callback=callback,
        )
        out = []
        for array in arrays:
            pils = [Image.fromarray(a) for a in array]
            out.append(HistologySamples(pils, [seed + i for i in range(num_images)], array, _row(pils)))
        return out

    def save_output(self, output: HistologySamples, out_dir: Path, stem: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for image, seed in zip(output.images, output.seeds, strict=True):
            path = out_dir / f"{stem}.sample-{seed}.png"
            image.save(path)
            paths.append(path)
        return paths
