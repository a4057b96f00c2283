"""A short contrastive fine-tune of an `image-embedding` model on a catalogue: photo of an item <-> camera view.

InfoNCE over a batch of items (each camera view must find its own catalogue photo among the batch's), all weights
trained (no LoRA: the model is small and the whole backbone must learn to ignore the background). Meant for tests
and demos on the generated garment catalogue; it is a few minutes of CPU for a real backbone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError

logger = logging.getLogger(__name__)


def build_search_model(out: str | Path, *, seed: int = 0, image_size: int = 56) -> Path:
    """A small random DINOv2 (transformers' Dinov2Model, 8-px patches) with its processor: a search model to train.
    The registry's tiny DINOv2 sees 28 px (4 patches), too few to tell garments apart."""
    import torch
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    from ..tiny._common import BICUBIC, IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(seed)
    config = Dinov2Config(
        image_size=image_size, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2
    )
    out = Path(out)
    Dinov2Model(config).save_pretrained(out)
    BitImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        resample=BICUBIC,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(out)
    return out


def finetune_embedding(
    model: str | Path,
    catalogue: str | Path,
    out: str | Path,
    *,
    steps: int = 100,
    batch_size: int = 32,
    lr: float = 2e-3,
    temperature: float = 0.1,
    category_weight: float = 0.5,
    seed: int = 0,
) -> Path:
    """Fine-tune `model` (repo id or folder) on `catalogue` (a garments folder) and save it with its processor."""
    import torch

    from ..data.garments import camera_view, read_catalogue
    from ..predictor import load

    if steps < 1 or batch_size < 2:
        raise ConfigError(f"steps must be >= 1 and batch_size >= 2, got {steps!r} and {batch_size!r}")
    rows = read_catalogue(catalogue)
    images = []
    for row in rows:
        with Image.open(Path(catalogue) / row["file"]) as img:
            images.append(img.convert("RGB"))
    predictor = load("image-embedding", str(model))
    net, processor, task = predictor.model, predictor.processor, predictor.task
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    anchors = processor(images=images, return_tensors="pt")["pixel_values"]
    # With categories, a linear head on the embedding learns them too (then dropped): the vectors then carry the
    # silhouette as well as the colour, and the catalogue's category probe has something to read.
    labels = sorted({str(r.get("category", "")) for r in rows})
    use_head = category_weight > 0 and "" not in labels and len(labels) >= 2
    targets = torch.tensor([labels.index(str(r.get("category", ""))) for r in rows]) if use_head else None
    dim = int(task.forward(net, anchors[:1]).shape[-1])
    head = torch.nn.Linear(dim, len(labels))
    params = list(net.parameters()) + (list(head.parameters()) if use_head else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    net.train()
    batch = min(batch_size, len(images))
    for step in range(steps):
        idx = rng.choice(len(images), batch, replace=False)
        views = processor(images=[camera_view(images[i], rng) for i in idx], return_tensors="pt")["pixel_values"]
        a = torch.nn.functional.normalize(task.forward(net, anchors[idx]), dim=-1)
        v = torch.nn.functional.normalize(task.forward(net, views), dim=-1)
        logits = v @ a.T / temperature
        target = torch.arange(batch)
        loss = (
            torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)
        ) / 2
        if use_head:
            both = torch.cat([head(a), head(v)])
            loss = loss + category_weight * torch.nn.functional.cross_entropy(both, targets[idx].repeat(2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 0 or step == steps - 1:
            logger.info("finetune_embedding step %d/%d loss %.3f", step + 1, steps, loss.item())
    net.eval()
    out = Path(out)
    net.save_pretrained(out)
    processor.save_pretrained(out)
    return out
