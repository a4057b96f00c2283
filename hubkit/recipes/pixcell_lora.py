"""The PixCell recipe: a condition MLP + LoRA on a PixCell base, trained on a folder of target-stain patches.

What trains (hubkit.pixcell.AdapterSpec): the zero-initialised residual MLP in front of ``caption_projection``
(``mlp: residual``) or ``caption_projection`` itself (``mlp: caption_projection``), as PEFT ``modules_to_save`` with
its own learning rate (``mlp_learning_rate``), and LoRA on ``to_q`` / ``to_k`` / ``to_v`` / ``to_out.0`` of every
attention (``lora_scope: all``, the seed's) or of the cross-attention only (``cross``, PixCell's authors').

Data: ``data`` is the target domain, a folder of patches (any image folder, an ImageFolder with ``metadata.jsonl``, or
a dataset repo in the hub store); the denoiser learns their VAE latents. ``condition_data`` (optional) holds the
conditioning patches paired with them in order (e.g. the same tissue in the source stain: virtual staining); without
it each patch conditions itself (PixCell's own training). ``val_fraction`` of the pairs is held out for evaluation.

The frozen models run once per patch, not once per step: before training, the main process encodes every patch
(UNI2-h embedding of the conditioning patch, scaled VAE latent of the target patch) into a disk cache
(``output_dir/cache`` or ``cache_dir``) keyed by the SHA-256 of the image bytes + the encoder's / VAE's identity
(class, config, dtype and a fingerprint of every weight) + the image size + the flip; the other processes wait, then
read it. A second run (or a resumed one) on the same patches encodes nothing. Augmentation is random horizontal /
vertical flips: histology has no orientation, and each of the 4 flips of a patch is encoded once and cached (a flip
changes the embedding; flipping a latent is not exactly the latent of the flipped image), so ``augment`` costs 4x the
cache, not one encoder call per step. ``cache: false`` encodes every batch on every step instead (the seed's way; the
bench compares the two).

Loss (hubkit.pixcell.training_loss): DDPM noising, t uniform, epsilon MSE on the first latent channels (PixCell
predicts a learned variance too), ``cond_dropout`` of the conditions replaced by the unconditional embedding.

Evaluation (before = the base: the LoRA and the MLP start as the identity; after = adapted): ``eval_images_per_input``
samples from each of up to ``eval_inputs`` held-out conditioning patches (``eval_sampler``, ``eval_steps``,
``eval_guidance``, the same seeds before and after), compared with the held-out target patches by
hubkit.metrics.generation: stain colour distance (CIELAB histograms, HED), Frechet distance on the top principal axes
of the encoder's features (``fd_pca``) and the cosine similarity of each sample's embedding to its conditioning
patch's. The card shows each before and after; ``generation_metrics.json`` holds both evaluations in full.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import hub
from ..data.histology import read_patch_folder
from ..errors import ConfigError, DataError
from ..pixcell.adapter import LORA_EXCLUDE, MLP_CHOICES, MLP_PARAMETERS, SCOPES, AdapterSpec, write_adapter_extras
from ..pixcell.model import DEFAULT_BASE, PixCellModel, load_pixcell, training_loss
from ..pixcell.sampling import SAMPLERS, sample, sampler_name
from ..training import TrainConfig, TrainingSetup, option
from ..training.trainable import ParamGroup, Trainable

logger = logging.getLogger(__name__)
TASK = "histology-generation"
FLIPS = ((), (-1,), (-2,), (-1, -2))  # none, horizontal, vertical, both: dims of a (3, H, W) tensor
METRICS_FILE = "generation_metrics.json"
CARD_METRICS = ("colour_distance", "lab_mean_distance", "hed_mean_distance", "hed_w1", "fd_pca", "cosine_mean")


@dataclass(frozen=True)
class PixCellLoraConfig(TrainConfig):
    """The seed's adapter + LoRA recipe (trainers/configs/pixcell.yaml holds its values)."""

    base: str = option("PixCell base: Hub id, store repo or folder (transformer/ or unet/, vae/, scheduler/)",
                       DEFAULT_BASE)  # fmt: skip
    encoder: str = option("pathology encoder folder / repo; default: the base's encoder/ or MahmoodLab/UNI2-h", "")
    condition_data: str = option("conditioning patches paired with data in order; default: data itself", "")
    image_size: int = option("patch side fed to the VAE (0: the model's native resolution, 256 for PixCell-256)", 0)
    lora_r: int = option("LoRA rank (the seed: 4 or 8)", 8)
    lora_alpha: int = option("LoRA alpha (scale = alpha / r; higher = stronger adaptation)", 8)
    lora_dropout: float = option("dropout on the LoRA input", 0.0)
    lora_scope: str = option(
        "all (self + cross attention, the seed's) or cross (attn2 only, PixCell's authors')", "all"
    )
    mlp: str = option("residual (zero-init MLP before caption_projection), caption_projection or none", "residual")
    learning_rate: float = option("AdamW learning rate of the LoRA weights", 1e-4)
    mlp_learning_rate: float = option("AdamW learning rate of the condition MLP", 5e-4)
    cond_dropout: float = option("probability of replacing a condition by the unconditional embedding (CFG)", 0.1)
    grad_accum: int = option("micro-batches per optimizer step (the seed's 4)", 4)
    lr_schedule: str = option("constant (PixCell's authors), linear or cosine after warmup", "constant")
    warmup_steps: int = option("linear warmup steps (PixCell's authors: 500)", 500)
    lora_targets: list[str] | None = option("leave unset: lora_scope picks the attention projections", None)
    cache: bool = option("encode each patch once into a disk cache (false: encode every step, the seed's way)", True)
    cache_dir: str = option("where the embedding / latent cache lives (default: <output_dir>/cache)", "")
    augment: bool = option("random flips; each of a patch's 4 flips is encoded once and cached", True)
    val_fraction: float = option("fraction of the patch pairs held out for the before / after evaluation", 0.1)
    eval_inputs: int = option("held-out conditioning patches sampled from at each evaluation", 8)
    eval_images_per_input: int = option("samples per held-out conditioning patch", 2)
    eval_steps: int = option("sampling steps at evaluation", 20)
    eval_sampler: str = option(f"sampler at evaluation: {', '.join(SAMPLERS)}", "dpm++")
    eval_guidance: float = option("classifier-free guidance scale at evaluation (PixCell: 1.5-2)", 1.5)
    fd_pca_dims: int = option("principal axes of the Frechet distance on encoder features", 16)

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            (self.mlp in MLP_CHOICES, "mlp", f"one of {MLP_CHOICES}"),
            (self.lora_scope in SCOPES, "lora_scope", f"one of {SCOPES}"),
            (self.mlp_learning_rate >= 0, "mlp_learning_rate", "zero or more"),
            (0 <= self.cond_dropout <= 1, "cond_dropout", "in [0, 1]"),
            (0 <= self.val_fraction < 1, "val_fraction", "in [0, 1)"),
            (self.image_size >= 0, "image_size", "0 (native) or a positive side"),
            (self.eval_inputs >= 1 and self.eval_images_per_input >= 1, "eval_inputs", "at least 1"),
            (self.eval_steps >= 1, "eval_steps", "at least 1"),
            (self.eval_guidance >= 0, "eval_guidance", "zero or more"),
        ]
        for ok, name, what in checks:
            if not ok:
                raise ConfigError(f"{name} must be {what}, got {getattr(self, name)!r}")
        sampler_name(self.eval_sampler)

    def adapter_spec(self) -> AdapterSpec:
        return AdapterSpec(mlp=self.mlp, lora_scope=self.lora_scope, r=self.lora_r, alpha=float(self.lora_alpha),
                           dropout=self.lora_dropout)  # fmt: skip


# -- the cache --------------------------------------------------------------------------------------------------
def module_identity(module: torch.nn.Module) -> str:
    """A short hash of what a frozen module computes: class, config, dtype and a fingerprint of every tensor (name,
    shape, sum, sum of squares), so other weights, a fine-tuned copy or another precision never share cache entries."""
    digest = hashlib.sha256(type(module).__name__.encode())
    inner = getattr(module, "model", module)  # PathologyEncoder wraps a transformers model
    config = getattr(inner, "config", None)
    if config is not None:
        items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        digest.update(json.dumps(items, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().double()
            digest.update(f"{name}{tuple(t.shape)}{t.dtype}{float(t.sum()):.12e}{float((t * t).sum()):.12e}".encode())
        digest.update(str(next(module.parameters()).dtype).encode())
    return digest.hexdigest()[:16]


def _read_pixels(path: Path, size: int) -> torch.Tensor:
    """A patch as (3, size, size) float in [-1, 1] (resized with bicubic when it differs)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BICUBIC)
            arr = np.asarray(image, dtype=np.float32)
    except OSError as err:
        raise DataError(f"Cannot read {str(path)!r} as an image ({err}); remove it from the patch folder.") from None
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1)


def _flipped(pixels: torch.Tensor, flip: int) -> torch.Tensor:
    return pixels.flip(FLIPS[flip]) if FLIPS[flip] else pixels


class EncodingCache:
    """Embeddings and latents on disk, one safetensors file per (image bytes, model identity, size, flip)."""

    def __init__(self, root: Path, *, encoder_id: str, vae_id: str, size: int):
        self.root, self.encoder_id, self.vae_id, self.size = Path(root), encoder_id, vae_id, size
        self._hashes: dict[Path, str] = {}

    def content_hash(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return self._hashes[path]

    def file(self, kind: str, path: Path, flip: int) -> Path:
        model_id = self.encoder_id if kind == "embedding" else self.vae_id
        key = hashlib.sha256(f"{self.content_hash(path)}|{model_id}|{self.size}|{flip}".encode()).hexdigest()
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def load(self, kind: str, path: Path, flip: int) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(self.file(kind, path, flip))[kind]

    @torch.no_grad()
    def build(self, model: PixCellModel, pairs: list[tuple[Path, Path]], flips: int, *, batch_size: int) -> int:
        """Encode what is missing (conditioning patches -> embeddings, target patches -> latents); return how
        many tensors were encoded. Files are written through a temporary name, so a crash never leaves a half one."""
        import os

        from safetensors.torch import save_file

        todo = []
        for cond, target in pairs:
            for flip in range(flips):
                for kind, path in (("embedding", cond), ("latent", target)):
                    if not self.file(kind, path, flip).is_file():
                        todo.append((kind, path, flip))
        device = next(model.denoiser.parameters()).device
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            for kind in ("embedding", "latent"):
                items = [(p, f) for k, p, f in chunk if k == kind]
                if not items:
                    continue
                pixels = torch.stack([_flipped(_read_pixels(p, self.size), f) for p, f in items]).to(device)
                out = model.encode_images(pixels) if kind == "embedding" else model.encode_latents(pixels)
                for (path, flip), tensor in zip(items, out.float().cpu(), strict=True):
                    target = self.file(kind, path, flip)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_suffix(f".tmp{os.getpid()}")
                    save_file({kind: tensor.contiguous()}, tmp)
                    os.replace(tmp, target)
        if todo:
            logger.info("encoded %d embeddings / latents into %s", len(todo), self.root)
        return len(todo)


class PatchPairs(torch.utils.data.Dataset):
    """(conditioning patch, target patch) pairs. Cached: ``embeddings`` (T, D) and ``latents`` (C, h, w) read from
    the cache; not cached: ``cond_pixels`` and ``pixels`` (3, H, W) in [-1, 1] for the loss to encode. With
    `augment` each item takes one of the 4 flips, drawn from (seed, epoch, index)."""

    def __init__(self, pairs, *, size: int, cache: EncodingCache | None, augment: bool, seed: int):
        self.pairs, self.size, self.cache = list(pairs), size, cache
        self.augment, self.seed, self.epoch = augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def flip(self, i: int) -> int:
        return int(np.random.default_rng((self.seed, self.epoch, i)).integers(len(FLIPS))) if self.augment else 0

    def __getitem__(self, i: int) -> dict:
        cond, target = self.pairs[i]
        flip = self.flip(i)
        if self.cache is not None:
            embeddings = self.cache.load("embedding", cond, flip)
            return {"embeddings": embeddings, "latents": self.cache.load("latent", target, flip)}
        return {"cond_pixels": _flipped(_read_pixels(cond, self.size), flip),
                "pixels": _flipped(_read_pixels(target, self.size), flip)}  # fmt: skip


def make_loss(cond_dropout: float):
    def loss_fn(model, batch) -> torch.Tensor:
        if "embeddings" in batch:
            embeddings, latents = batch["embeddings"], batch["latents"]
        else:  # the seed's way: the frozen encoder and VAE on every step
            net = _net(model)
            device = next(net.denoiser.parameters()).device
            embeddings = net.encode_images(batch["cond_pixels"].to(device))
            latents = net.encode_latents(batch["pixels"].to(device))
        return training_loss(model, embeddings, latents, cond_dropout=cond_dropout)

    return loss_fn


def _net(model) -> PixCellModel:
    from ..pixcell.model import _base

    return _base(model)


# -- evaluation -------------------------------------------------------------------------------------------------
def _uint8(paths: list[Path], size: int) -> np.ndarray:
    return np.stack([((_read_pixels(p, size).permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
                     for p in paths])  # fmt: skip


class GenerationEvaluator:
    """The loop's evaluate_fn / eval_images_fn: samples from held-out conditioning patches, hubkit.metrics.generation
    against the held-out target patches. Keeps the first (before) and latest (after) full evaluations."""

    def __init__(self, config: PixCellLoraConfig, held_out: list[tuple[Path, Path]], reference: list[Path],
                 size: int):  # fmt: skip
        from ..metrics.generation import colour_statistics

        self.config, self.size = config, size
        self.inputs = held_out[: config.eval_inputs]
        self.input_images = _uint8([c for c, _ in self.inputs], size)
        self.reference = _uint8(reference, size)
        self.reference_colour = colour_statistics(self.reference)
        self.first: dict | None = None
        self.last: dict | None = None
        self.samples: np.ndarray | None = None

    @torch.no_grad()
    def __call__(self, model, loader) -> dict[str, float]:
        from ..metrics.generation import EncoderFeatures, evaluate_generation

        net, config = _net(model), self.config
        device = next(net.denoiser.parameters()).device
        pixels = torch.from_numpy(self.input_images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
        embeddings = net.encode_images(pixels)
        self.samples = sample(model, embeddings, num_images=config.eval_images_per_input, num_inference_steps=
                              config.eval_steps, guidance_scale=config.eval_guidance, sampler=config.eval_sampler,
                              seed=config.seed)  # fmt: skip
        # the encoder takes [-1, 1]: EncoderFeatures' [0, 1] images normalised by mean 0.5 / std 0.5
        features = EncoderFeatures(net.encoder, mean=(0.5,) * 3, std=(0.5,) * 3)
        result = evaluate_generation(list(self.samples), list(self.input_images), list(self.reference), features,
                                     target_colour=self.reference_colour, pca_dims=config.fd_pca_dims,
                                     full_fd=False)  # fmt: skip
        self.first = self.first or result
        self.last = result
        return {k: float(result[k]) for k in CARD_METRICS if math.isfinite(float(result.get(k, math.nan)))}

    def images(self, model, loader) -> dict[str, np.ndarray]:
        """The latest samples, one row per held-out input: the input, then its samples (for TensorBoard, NHWC)."""
        if self.samples is None:
            return {}
        rows = [np.concatenate([inp, *group], axis=1) for inp, group in zip(self.input_images, self.samples,
                                                                            strict=True)]  # fmt: skip
        return {"eval/input_then_samples": np.stack(rows)}

    def report(self):
        from ..metrics.generation import GenerationReport

        if self.first is None or self.last is None:
            return None
        return GenerationReport(base=self.first, adapted=self.last, dataset_name=Path(self.config.data).name or
                                self.config.data, split="held-out")  # fmt: skip


# -- setup ------------------------------------------------------------------------------------------------------
def patch_pairs(config: PixCellLoraConfig) -> list[tuple[Path, Path]]:
    """(conditioning, target) paths: `condition_data` paired in order with `data`, or each patch with itself."""
    if not config.data:
        raise ConfigError("data is required: a folder of target-domain patches (or a dataset repo in the store)")
    targets = read_patch_folder(hub.resolve(config.data, repo_type="dataset"))
    if not config.condition_data:
        return [(p, p) for p in targets]
    conditions = read_patch_folder(hub.resolve(config.condition_data, repo_type="dataset"))
    if len(conditions) != len(targets):
        raise DataError(
            f"condition_data has {len(conditions)} patches but data has {len(targets)}; they pair up in order, so "
            "give both folders the same patches (e.g. the same tissue in the two stains), or leave condition_data empty"
        )
    return list(zip(conditions, targets, strict=True))


def split_pairs(pairs, *, val_fraction: float, seed: int) -> tuple[list, list]:
    count = int(round(val_fraction * len(pairs)))
    if val_fraction > 0 and len(pairs) >= 3:
        count = min(max(count, 2), len(pairs) - 1)  # two at least: the Frechet distance needs two per set
    order = np.random.default_rng(seed).permutation(len(pairs))
    held = set(order[:count].tolist())
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def _cpu_only() -> bool:
    from ..training.loop import _cpu_only as loop_cpu_only

    return loop_cpu_only()


def frozen_dtype(config: PixCellLoraConfig) -> torch.dtype | None:
    """The frozen weights' dtype: the mixed-precision one on CUDA (as diffusers' LoRA scripts), else fp32. The
    trained LoRA and MLP stay fp32 (hubkit.training casts them back)."""
    from ..training.loop import _mixed_precision

    precision = _mixed_precision(config.mixed_precision)
    if not torch.cuda.is_available() or precision == "no":
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def pixcell_setup(config: PixCellLoraConfig) -> TrainingSetup:
    """Everything the loop needs; encodes the patches into the cache first (main process first, the others read)."""
    from accelerate import PartialState

    folder = hub.resolve(config.base)
    dtype = frozen_dtype(config)

    def load() -> PixCellModel:
        return load_pixcell(folder, encoder=config.encoder or None, dtype=dtype)

    pairs = patch_pairs(config)
    train_pairs, held_out = split_pairs(pairs, val_fraction=config.val_fraction, seed=config.seed)
    if not train_pairs:
        raise DataError(f"No training patch left after holding out val_fraction={config.val_fraction}")
    state = PartialState(cpu=_cpu_only())
    model = load().to(state.device)
    size = config.image_size or model.resolution
    cache = None
    if config.cache:
        cache = EncodingCache(Path(config.cache_dir or Path(config.output_dir) / "cache"),
                              encoder_id=module_identity(model.encoder), vae_id=module_identity(model.vae),
                              size=size)  # fmt: skip
        with state.main_process_first():  # the main process encodes; the others then find every file there
            cache.build(model, train_pairs + held_out, len(FLIPS) if config.augment else 1,
                        batch_size=max(config.batch_size, 8))  # fmt: skip
    train_ds = PatchPairs(train_pairs, size=size, cache=cache, augment=config.augment, seed=config.seed)
    eval_ds = PatchPairs(held_out, size=size, cache=cache, augment=False, seed=config.seed)
    reference = [t for _, t in held_out] if len(held_out) >= 2 else [t for _, t in train_pairs]
    evaluator = GenerationEvaluator(config, held_out or train_pairs, reference, size)
    spec = config.adapter_spec()
    first = [model.to("cpu")]

    def load_base() -> PixCellModel:
        return first.pop() if first else load()  # the model encoded above trains; the reload check loads afresh

    def export(trained, out: Path, result) -> None:
        write_adapter_extras(trained, out, spec=spec, base_id=config.base, diffusers_export=True)
        # the target stain's colour statistics travel with the adapter: the PixCell Space measures samples against them
        from PIL import Image

        from ..metrics.generation import colour_statistics
        from ..pixcell.demo import TARGET_COLOUR_FILE

        targets = [np.asarray(Image.open(t).convert("RGB")) for _, t in pairs[:256]]
        (out / TARGET_COLOUR_FILE).write_text(json.dumps(colour_statistics(targets).to_dict()) + "\n")
        report = evaluator.report()
        if report is not None:
            report.write_json(out / METRICS_FILE)

    digest = hashlib.sha256()
    for cond, target in pairs:
        digest.update(hashlib.sha256(cond.read_bytes()).digest() + hashlib.sha256(target.read_bytes()).digest())
    paired = "paired with the conditioning patches of `condition_data`" if config.condition_data else "self-conditioned"
    return TrainingSetup(
        task=TASK,
        load_base=load_base,
        train_dataset=train_ds,
        eval_dataset=eval_ds if len(eval_ds) else None,
        loss_fn=make_loss(config.cond_dropout),
        evaluate_fn=evaluator,
        eval_images_fn=evaluator.images,
        dataset_name=config.data if not Path(config.data).is_dir() else Path(config.data).name,
        dataset_type="imagefolder",
        dataset_revision=digest.hexdigest()[:16],
        trainable=Trainable(
            lora_targets=spec.lora_targets,
            lora_exclude=LORA_EXCLUDE,
            modules_to_save=spec.modules_to_save(model),
            groups=(ParamGroup(MLP_PARAMETERS, lr=config.mlp_learning_rate, weight_decay=0.0),),
        ),
        export_fn=export,
        card_notes=(
            f"A PixCell adapter: condition MLP (`{config.mlp}`) + LoRA r={config.lora_r}, alpha={config.lora_alpha} "
            f"on the {'self- and cross-' if config.lora_scope == 'all' else 'cross-'}attention projections, trained "
            f"on {len(train_pairs)} target-domain patches ({paired}). Load it with "
            f"`hubkit.load('{TASK}', '{config.base}', adapters=[repo_id])`; `pytorch_lora_weights.safetensors` holds "
            "the LoRA in diffusers' key format and `condition_mlp.safetensors` the MLP.\n\n"
            f"Evaluation: {config.eval_images_per_input} samples ({config.eval_sampler}, {config.eval_steps} steps, "
            f"guidance {config.eval_guidance}) from each of {len(evaluator.inputs)} held-out conditioning patches, "
            f"against {len(reference)} held-out target patches: stain colour distance (CIELAB histogram W1, lower is "
            "better), Frechet distance on the top principal axes of the encoder's features (`fd_pca`) and cosine "
            f"similarity to the conditioning patch. The base's values are the model before training. Full results: "
            f"`{METRICS_FILE}`."
        ),
    )
