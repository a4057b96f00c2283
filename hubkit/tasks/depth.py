"""Depth estimation: Depth Anything V2 and DPT through transformers' AutoModelForDepthEstimation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..tiny import depth_anything as tiny_depth_anything
from ..tiny import dpt as tiny_dpt
from ._base import LoraPreset, Task, TinyModel, register_task


@dataclass
class DepthPrediction:
    depth: np.ndarray  # (H, W) float32 at the input image's size
    relative: bool  # True: relative inverse depth (bigger = nearer); False: metric depth in metres

    @property
    def unit(self) -> str:
        return "relative" if self.relative else "m"


@register_task
class DepthEstimation(Task):
    name = "depth-estimation"
    pipeline_tag = "depth-estimation"
    architectures = ("DepthAnythingForDepthEstimation", "DPTForDepthEstimation")
    auto_model = "AutoModelForDepthEstimation"
    auto_processor = "AutoImageProcessor"
    default_base = "depth-anything/Depth-Anything-V2-Small-hf"
    tiny_models = (
        TinyModel("depth-anything", tiny_depth_anything.build, mimics="depth-anything/Depth-Anything-V2-Small-hf"),
        TinyModel("dpt", tiny_dpt.build, mimics="Intel/dpt-large"),
    )
    output_type = "DepthPrediction (H x W float32 depth map)"
    # The seed's recipe: query / key / value of the backbone attention, not the output projection.
    preset = LoraPreset(targets=("query", "key", "value"), r=16, alpha=32, dropout=0.05)

    def forward(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """Predicted depth (B, h, w) at the network's resolution; the training loop uses this too."""
        return model(pixel_values=pixel_values).predicted_depth

    def predict(self, model, processor, images: list[Image.Image]) -> list[DepthPrediction]:
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        relative = getattr(_config(model), "depth_estimation_type", "relative") != "metric"
        out = []
        for image in images:
            inputs = processor(images=image, return_tensors="pt")
            pred = self.forward(model, inputs["pixel_values"].to(device, dtype))
            depth = torch.nn.functional.interpolate(
                pred[:, None].float(), size=(image.height, image.width), mode="bicubic", align_corners=False
            )[0, 0]
            out.append(DepthPrediction(depth.cpu().numpy().astype(np.float32), relative))
        return out

    def save_output(self, output: DepthPrediction, out_dir: Path, stem: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        npy, png = out_dir / f"{stem}.depth.npy", out_dir / f"{stem}.depth.png"
        np.save(npy, output.depth)
        Image.fromarray(depth_to_uint16(output)).save(png)
        return [npy, png]


def depth_to_uint16(output: DepthPrediction) -> np.ndarray:
    """16-bit PNG data: metric depth in millimetres, relative depth scaled to the full range."""
    depth = np.nan_to_num(output.depth.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if output.relative:
        lo, hi = depth.min(), depth.max()
        depth = (depth - lo) / max(hi - lo, 1e-12) * 65535.0
    else:
        depth = depth * 1000.0
    return np.clip(np.round(depth), 0, 65535).astype(np.uint16)


def _config(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config
