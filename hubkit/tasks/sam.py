"""Mask generation: SAM (transformers' SamModel), prompted by points / boxes or automatic over a point grid.

Automatic generation is segment-anything's SamAutomaticMaskGenerator (crops, predicted-IoU and stability filters, box
NMS, small-region removal) with one image embedding per crop and points decoded in batches: see `_sam_auto`.
Meta's own checkpoints (`sam_vit_b_01ec64.pth`, ...) load too: see `convert_segment_anything_state_dict`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, HubkitError, UnsafeWeightsError
from ..tiny import sam as tiny_sam
from ._base import LoadOptions, LoraPreset, Task, TinyModel, pretrained_kwargs, refusing_pickles, register_task
from ._sam_auto import AutomaticMaskConfig, nms  # noqa: F401 (nms: public here since the first release)
from ._sam_auto import generate as generate_automatic

logger = logging.getLogger(__name__)


@dataclass
class MaskPrediction:
    masks: np.ndarray  # (N, H, W) bool at the input image's size
    scores: np.ndarray  # (N,) float32 predicted IoU
    boxes: np.ndarray  # (N, 4) float32 xyxy in pixels, tight around each mask
    image: Image.Image | None = field(default=None, repr=False)  # the input, for overlays


@register_task
class MaskGeneration(Task):
    name = "mask-generation"
    pipeline_tag = "mask-generation"
    architectures = ("SamModel",)
    auto_model = "AutoModelForMaskGeneration"
    default_base = "facebook/sam-vit-base"
    tiny_models = (TinyModel("sam", tiny_sam.build, mimics="facebook/sam-vit-base"),)
    processor_files = ()  # optional: without a processor config, load uses Meta's preprocessing
    output_type = "MaskPrediction (N x H x W bool masks, scores, xyxy boxes)"
    # The image encoder's attention and MLP (as SAM-LoRA / Medical-SAM-Adapter tune it); the prompt encoder and
    # mask decoder stay frozen. `mlp.lin1/lin2` also name the mask decoder's MLPs, hence the exclude.
    preset = LoraPreset(
        targets=("qkv", "proj", "mlp.lin1", "mlp.lin2"), r=16, alpha=32, dropout=0.05,
        exclude=r"(.*\.)?(mask_decoder|prompt_encoder)\..*",  # re.search and peft's re.fullmatch
    )  # fmt: skip
    # Random tiny models predict IoU ~0: the generic tests and demos switch the filters off.
    example_kwargs = {"pred_iou_thresh": None, "stability_score_thresh": None, "points_per_side": 8}

    def model_class(self, folder: Path | None = None):
        from transformers import SamModel

        return SamModel

    def load(self, folder: Path, options: LoadOptions):
        from transformers import AutoProcessor, SamConfig, SamProcessor
        from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

        folder = Path(folder)
        meta = _segment_anything_checkpoint(folder)
        if meta is None:
            with refusing_pickles(folder):
                model = self.model_class().from_pretrained(folder, **pretrained_kwargs(options))
        else:
            state = convert_segment_anything_state_dict(_read_state(meta, options))
            config = SamConfig.from_pretrained(folder) if (folder / "config.json").is_file() else _config_from(state)
            model = self.model_class()(config)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise HubkitError(f"{meta} does not fit SamModel({config.vision_config.hidden_size}): {err}") from None
            if options.dtype is not None:
                model.to(options.dtype)
            logger.info("loaded segment-anything checkpoint %s", meta)
        if (folder / "preprocessor_config.json").is_file() or (folder / "processor_config.json").is_file():
            processor = AutoProcessor.from_pretrained(folder)
        else:  # Meta's preprocessing: longest side 1024, padded square, ImageNet mean / std
            processor = SamProcessor(image_processor=SamImageProcessorPil())
        return model, processor

    def predict(
        self,
        model,
        processor,
        images: list[Image.Image],
        *,
        points=None,
        point_labels=None,
        boxes=None,
        multimask_output: bool | None = None,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = 0.88,
        stability_score_thresh: float | None = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        max_side: int | None = None,
        max_masks: int = 100,
    ) -> list[MaskPrediction]:
        """Masks for `points` (N, 2) / (N, P, 2) x,y pixels and / or `boxes` (N, 4) xyxy: one per prompt, best of
        SAM's outputs. With neither: automatic masks, largest first, with SamAutomaticMaskGenerator's knobs and
        defaults (see `AutomaticMaskConfig`); a threshold of None disables that filter."""
        prompts = _check_prompts(points, point_labels, boxes)
        config = AutomaticMaskConfig(
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers,
            crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area,
            max_side=max_side,
            max_masks=max_masks,
        )
        param = next(model.parameters())
        out = []
        for image in images:
            if prompts is None:
                masks, scores = generate_automatic(model, processor, image, config)
            else:
                inputs = processor(images=image, return_tensors="pt")
                with torch.no_grad():
                    embedding = model.get_image_embeddings(inputs["pixel_values"].to(param.device, param.dtype))
                sizes = (inputs["original_sizes"], inputs["reshaped_input_sizes"])
                masks, scores = _prompted(model, processor, embedding, sizes, prompts, multimask_output)
            out.append(MaskPrediction(masks, scores, masks_to_boxes(torch.from_numpy(masks)).numpy(), image))
        return out

    def save_output(self, output: MaskPrediction, out_dir: Path, stem: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        png, npz = out_dir / f"{stem}.masks.png", out_dir / f"{stem}.masks.npz"
        np.savez_compressed(npz, masks=output.masks, scores=output.scores, boxes=output.boxes)
        Image.fromarray(overlay(output)).save(png)
        return [png, npz]


def _check_prompts(points, point_labels, boxes):
    """Validate prompts -> (points (N, P, 2), labels (N, P), boxes (N, 4)) arrays or None, or raise ConfigError."""
    if points is None and boxes is None:
        if point_labels is not None:
            raise ConfigError("point_labels were given without points")
        return None
    pts = labels = bxs = None
    if points is not None:
        pts = np.asarray(points, dtype=np.float64)
        pts = pts[None, None] if pts.ndim == 1 else pts[:, None] if pts.ndim == 2 else pts
        if pts.ndim != 3 or pts.shape[-1] != 2 or pts.size == 0 or not np.isfinite(pts).all():
            raise ConfigError(
                f"points must be finite x,y pixel coordinates shaped (2,), (N, 2) or (N, P, 2); got shape "
                f"{np.shape(points)}. Example: points=[[120, 80]] for one point."
            )
        labels = np.ones(pts.shape[:2], np.int64) if point_labels is None else np.asarray(point_labels, np.int64)
        if labels.size != pts.shape[0] * pts.shape[1] or not np.isin(labels, (0, 1)).all():
            raise ConfigError(f"point_labels must be 1 (object) or 0 (background), one per point; got {point_labels}")
        labels = labels.reshape(pts.shape[:2])
    if boxes is not None:
        bxs = np.asarray(boxes, dtype=np.float64)
        bxs = bxs[None] if bxs.ndim == 1 else bxs
        if bxs.ndim != 2 or bxs.shape[-1] != 4 or bxs.size == 0 or not np.isfinite(bxs).all():
            raise ConfigError(f"boxes must be xyxy pixel boxes shaped (4,) or (N, 4); got shape {np.shape(boxes)}")
        if pts is not None and len(bxs) != len(pts):
            raise ConfigError(f"{len(pts)} point prompts but {len(bxs)} boxes: give one box per prompt")
    return pts, labels, bxs


def _prompted(model, processor, embedding, sizes, prompts, multimask_output):
    pts, labels, bxs = prompts
    if multimask_output is None:  # SAM's advice: 3 candidates for an ambiguous single point, else one mask
        multimask_output = bxs is None and pts.shape[1] == 1
    # prompts in image pixels -> model-input pixels (the processor resized the longest side)
    scale = (sizes[1][0].double() / sizes[0][0].double()).flip(0).numpy()  # (sx, sy)
    feed = {}
    if pts is not None:
        feed["input_points"] = torch.from_numpy(pts * scale)[None].to(embedding.device, embedding.dtype)
        feed["input_labels"] = torch.from_numpy(labels)[None].to(embedding.device)
    if bxs is not None:
        feed["input_boxes"] = torch.from_numpy(bxs * np.tile(scale, 2))[None].to(embedding.device, embedding.dtype)
    result = model(image_embeddings=embedding, multimask_output=multimask_output, **feed)
    iou = result.iou_scores[0].float()  # (N, M)
    best = iou.argmax(-1)
    low = result.pred_masks[0, torch.arange(len(best)), best][:, None].float()  # (N, 1, h, w)
    masks = processor.post_process_masks([low.cpu()], sizes[0], sizes[1])[0][:, 0]
    return masks.numpy(), iou.gather(-1, best[:, None])[:, 0].cpu().numpy().astype(np.float32)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) float32 xyxy boxes (x2, y2 exclusive); empty masks give zeros."""
    if masks.numel() == 0:
        return torch.zeros(masks.shape[0], 4)
    rows, cols = masks.any(2), masks.any(1)
    h, w = masks.shape[-2:]
    ar_h, ar_w = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, h).min(1).values
    y2 = torch.where(rows, ar_h, -1).max(1).values + 1
    x1 = torch.where(cols, ar_w, w).min(1).values
    x2 = torch.where(cols, ar_w, -1).max(1).values + 1
    boxes = torch.stack([x1, y1, x2, y2], 1).float()
    return torch.where(masks.flatten(1).any(1)[:, None], boxes, torch.zeros_like(boxes))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    area = lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)  # noqa: E731
    lt, rb = torch.max(a[:, None, :2], b[None, :, :2]), torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area(a)[:, None] + area(b)[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def overlay(output: MaskPrediction, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8: each mask in its own colour over the image (or black), largest drawn first."""
    height, width = output.masks.shape[1:]
    canvas = np.zeros((height, width, 3), np.float32)
    if output.image is not None:
        canvas[:] = np.asarray(output.image.convert("RGB").resize((width, height)), np.float32)
    for i, mask in enumerate(output.masks):
        hue = (i * 0.618034) % 1.0  # golden-ratio hues: neighbours get distinct colours
        colour = 255 * np.clip(np.abs((hue * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1)
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


# -- Meta's segment-anything checkpoints -------------------------------------------------------
_META_TO_HF: list[tuple[str, str]] = [  # applied in order, as transformers' convert_sam_to_hf.py maps them
    (r"^image_encoder\.", "vision_encoder."),
    (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
    (r"\.blocks\.(\d+)\.", r".layers.\1."),
    (r"\.neck\.0\.", ".neck.conv1."),
    (r"\.neck\.1\.", ".neck.layer_norm1."),
    (r"\.neck\.2\.", ".neck.conv2."),
    (r"\.neck\.3\.", ".neck.layer_norm2."),
    (r"\.norm(\d|_final_attn)\.", r".layer_norm\1."),
    (r"\.pe_layer\.positional_encoding_gaussian_matrix$", ".shared_embedding.positional_embedding"),
    (r"\.point_embeddings\.", ".point_embed."),
    (r"\.mask_downscaling\.0\.", ".mask_embed.conv1."),
    (r"\.mask_downscaling\.1\.", ".mask_embed.layer_norm1."),
    (r"\.mask_downscaling\.3\.", ".mask_embed.conv2."),
    (r"\.mask_downscaling\.4\.", ".mask_embed.layer_norm2."),
    (r"\.mask_downscaling\.6\.", ".mask_embed.conv3."),
    (r"\.output_upscaling\.0\.", ".upscale_conv1."),
    (r"\.output_upscaling\.1\.", ".upscale_layer_norm."),
    (r"\.output_upscaling\.3\.", ".upscale_conv2."),
]
_MLP_LAYERS = re.compile(r"\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.([012])\.")
_MLP_NAMES = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}  # first / hidden / last linear


def convert_segment_anything_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a segment-anything state dict (image_encoder.*, prompt_encoder.*, mask_decoder.*) to SamModel keys."""
    out = {}
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std"):  # the processor normalises instead
            continue
        for pattern, new in _META_TO_HF:
            key = re.sub(pattern, new, key)
        key = _MLP_LAYERS.sub(lambda m: f".{m.group(1)}.{_MLP_NAMES[m.group(2)]}.", key)
        out[key] = value
    shared = out.get("prompt_encoder.shared_embedding.positional_embedding")
    if shared is not None:  # SamModel holds the random-Fourier matrix twice (tied)
        out["shared_image_embedding.positional_embedding"] = shared
    return out


def _segment_anything_checkpoint(folder: Path) -> Path | None:
    """A segment-anything checkpoint in `folder`: a .safetensors with image_encoder.* keys, or a .pth."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            if any(k.startswith("image_encoder.") for k in f.keys()):  # noqa: SIM118 (safe_open is not a dict)
                return path
    pths = sorted(folder.glob("*.pth"))
    return pths[0] if pths and not any(folder.glob("*.safetensors")) else None


def _read_state(path: Path, options: LoadOptions) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    if not options.allow_pickle:
        raise UnsafeWeightsError(
            f"{path} is a pickle, which can run code when loaded. Convert it to safetensors, or opt in with "
            "allow_pickle=True (--allow-pickle), which loads it with torch.load(weights_only=True)."
        )
    with refusing_pickles(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state) if isinstance(state, dict) else state


def _config_from(state: dict[str, torch.Tensor]):
    """A SamConfig read off the tensor shapes (vit_b / l / h and smaller); decoder heads are SAM's 8."""
    from transformers import SamConfig
    from transformers.models.sam.configuration_sam import SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    patch = state["vision_encoder.patch_embed.projection.weight"]
    hidden, size = patch.shape[0], patch.shape[-1]
    grid = state["vision_encoder.pos_embed"].shape[1]
    rel = [v for k, v in sorted(state.items(), key=lambda kv: _natural(kv[0])) if k.endswith("attn.rel_pos_h")]
    local = [r.shape[0] for r in rel if r.shape[0] != 2 * grid - 1]
    out_channels = state["vision_encoder.neck.conv1.weight"].shape[0]
    decoder_layers = {k.split(".")[3] for k in state if k.startswith("mask_decoder.transformer.layers.")}
    vision = SamVisionConfig(
        hidden_size=hidden,
        output_channels=out_channels,
        num_hidden_layers=len(rel),
        num_attention_heads=hidden // rel[0].shape[1],
        image_size=grid * size,
        patch_size=size,
        mlp_dim=state["vision_encoder.layers.0.mlp.lin1.weight"].shape[0],
        window_size=(local[0] + 1) // 2 if local else 14,
        global_attn_indexes=[i for i, r in enumerate(rel) if r.shape[0] == 2 * grid - 1],
        num_pos_feats=state["prompt_encoder.shared_embedding.positional_embedding"].shape[1],
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=out_channels,
        image_size=grid * size,
        patch_size=size,
        mask_input_channels=state["prompt_encoder.mask_embed.conv2.weight"].shape[0],
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=out_channels,
        mlp_dim=state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        num_hidden_layers=len(decoder_layers),
        iou_head_hidden_dim=state["mask_decoder.iou_prediction_head.proj_in.weight"].shape[0],
    )
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]
