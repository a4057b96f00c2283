"""PixCell bench: training samples/s of the recipe with the embedding / latent cache vs without (the seed's way: the
frozen encoder and VAE on every step), and sampling latency per step with the LoRA merged, unmerged, and the base.

Training. Both sides run hubkit.recipes.pixcell_lora through hubkit's loop on the same patch pairs (the IHC slide:
source-stain conditions, target-stain targets), the same adapter (condition MLP + LoRA r 8 on all attention
projections), batch and loss; ``cache: true`` encodes every patch (4 flips) once before training, ``cache: false``
encodes each batch on every step. Throughput is the batch over the median step time after --warmup steps (the cache
building is reported apart: ``cache_build_s``). Sampling. DPM-Solver++ with guidance (2 denoiser passes per step) on
a batch of --sample-batch embeddings: the base, the PeftModel (LoRA layers unmerged) and the LoRA merged into the
weights (``merge_and_unload``), median over --rounds runs.

The default model is CPU-feasible but not tiny: a PixArt transformer 4 blocks x 4 heads x 32 (width 128) on a 16x16
latent (64 tokens), conditioned on a 192-wide 4-layer Dinov2-with-registers encoder at 224 px (256 patches + 4
registers: the encoder costs what a step costs), the tiny SD3-style VAE (16 channels, /2) on 32 px patches. --tiny
runs hubkit.tiny's PixCell (16 px patches, 8x8 latent). stdout carries one JSON object; logs go to stderr.

    python bench/pixcell.py [--tiny] [--steps 12] [--warmup 3] [--batch-size 8] [--sample-steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_depth import StepClock, stdout_to_stderr  # noqa: E402

from hubkit import tiny  # noqa: E402
from hubkit.data.histology import make_histology_dataset  # noqa: E402
from hubkit.pixcell import AdapterSpec, add_adapter, load_pixcell  # noqa: E402
from hubkit.pixcell.sampling import sample_latents  # noqa: E402
from hubkit.recipes.pixcell_lora import PixCellLoraConfig, pixcell_setup  # noqa: E402
from hubkit.training import build_config, train  # noqa: E402


def small_folder(root: Path) -> Path:
    """The tiny PixCell folder with a bigger transformer and encoder (see the module docstring)."""
    from diffusers import PixArtTransformer2DModel
    from safetensors.torch import load_file, save_file
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    folder = tiny.build("pixcell", root / "small")
    dim = 192
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=dim, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=4, use_swiglu_ffn=True,
        hidden_act="silu", num_register_tokens=4, layerscale_value=1e-5, image_size=224, patch_size=14,
    )).save_pretrained(folder / "encoder")  # fmt: skip
    processor = json.loads((folder / "encoder" / "preprocessor_config.json").read_text()) if (
        folder / "encoder" / "preprocessor_config.json").is_file() else {}  # fmt: skip
    processor.update(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    (folder / "encoder" / "preprocessor_config.json").write_text(json.dumps(processor))
    transformer = PixArtTransformer2DModel(
        num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=32, num_layers=4,
        cross_attention_dim=128, sample_size=16, patch_size=2, caption_channels=dim, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
    )  # fmt: skip
    transformer.save_pretrained(folder / "transformer")
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["caption_projection.uncond_embedding"] = torch.randn(1, dim) * 0.5
    save_file(state, weights, metadata={"format": "pt"})
    return folder


def train_rate(base: Path, data: tuple[Path, Path], out: Path, args, *, cache: bool) -> dict:
    config = build_config(PixCellLoraConfig, {k: str(v) for k, v in {
        "base": base, "data": data[0], "condition_data": data[1], "output_dir": out, "batch_size": args.batch_size,
        "grad_accum": 1, "max_steps": args.steps, "epochs": 1, "warmup_steps": 0, "mixed_precision": "no",
        "report_to": "none", "val_fraction": 0.0, "eval_before": False, "cache": cache, "augment": True,
        "checkpoint_every": 0,
    }.items()})  # fmt: skip
    start = time.perf_counter()
    setup = pixcell_setup(config)
    build_s = time.perf_counter() - start
    setup.eval_dataset = setup.evaluate_fn = setup.eval_images_fn = None
    clock, inner = StepClock(args.warmup, args.steps), setup.loss_fn

    def loss_fn(model, batch):
        if model.training:  # not the final reload check
            clock.tick()
        return inner(model, batch)

    setup.loss_fn = loss_fn
    with stdout_to_stderr():
        train(config, setup)
    return {"samples_per_s": clock.samples_per_s(args.batch_size), "cache_build_s": build_s if cache else 0.0}


@torch.no_grad()
def step_latency(model, embeddings: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    sample_latents(model, embeddings, num_inference_steps=steps, guidance_scale=1.5, sampler="dpm++", seed=0)
    return (time.perf_counter() - start) / steps


def sampling(base: Path, args) -> dict:
    model = load_pixcell(base)
    peft = add_adapter(copy.deepcopy(model), AdapterSpec(r=8, alpha=8))
    with torch.no_grad():  # a trained-looking adapter: B away from zero
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    peft.eval()
    merged = copy.deepcopy(peft).merge_and_unload()
    emb = torch.randn(args.sample_batch, 1, model.embedding_dim, generator=torch.Generator().manual_seed(0))
    runs: dict[str, list[float]] = {"base": [], "unmerged": [], "merged": []}
    for m in (model, peft, merged):
        step_latency(m, emb, 2)  # warm-up
    for _ in range(args.rounds):
        for name, m in (("base", model), ("unmerged", peft), ("merged", merged)):
            runs[name].append(step_latency(m, emb, args.sample_steps))
    ms = {k: 1000 * statistics.median(v) for k, v in runs.items()}
    return {f"{k}_ms_per_step": round(v, 3) for k, v in ms.items()} | {
        "unmerged_over_merged": round(ms["unmerged"] / ms["merged"], 3),
        "merged_over_base": round(ms["merged"] / ms["base"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patches", type=int, default=48)
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--sample-batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with stdout_to_stderr():
            base = tiny.build("pixcell", root / "tiny") if args.tiny else small_folder(root)
        side = 16 if args.tiny else 32
        kw = dict(patch=side, crop=64, count=args.patches, split="train")
        data = (make_histology_dataset(root / "target", **kw).root,
                make_histology_dataset(root / "source", domain="source", **kw).root)  # fmt: skip
        cached = train_rate(base, data, root / "cached", args, cache=True)
        uncached = train_rate(base, data, root / "uncached", args, cache=False)
        result = {
            "model": "tiny" if args.tiny else "small (PixArt 4x128, 16x16 latent; Dinov2-reg 192x4 at 224 px)",
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "threads": torch.get_num_threads(),
            "batch_size": args.batch_size,
            "train_samples_per_s_cached": round(cached["samples_per_s"], 2),
            "train_samples_per_s_uncached": round(uncached["samples_per_s"], 2),
            "cache_speedup": round(cached["samples_per_s"] / uncached["samples_per_s"], 2),
            "cache_build_s": round(cached["cache_build_s"], 2),
            "cache_entries": 2 * 4 * args.patches,
            "sampling": {"sampler": "dpm++", "guidance": 1.5, "batch": args.sample_batch} | sampling(base, args),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
