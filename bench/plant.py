"""Plantset bench: training samples/s of the PlantVLM recipe through hubkit's loop vs the seed's plain PyTorch loop with
AMP, and inference images/s of `PlantVLM.predict` batched vs one image at a time.

Training. Both sides train the same PlantVLM (same build, same LoRA or full setting, `trainable_for` of the recipe
applied by `build_trainable_model`) on the same generated leaf set (`make_leaf_dataset` + its multimodal JSONL, as
tests/test_recipe_plant.py builds it), with the same batch, data set items (`plant_setup`'s PlantDataset) and loss
(`make_loss`: cross-entropy + 0.5 x the description head's token cross-entropy):

    hubkit   hubkit.training.train(config, plant_setup(config)): the shared accelerate loop (fused AdamW, clipping,
             scheduler; mixed_precision "no" on CPU, "bf16" with --amp, "fp16" on CUDA)
    plain    the seed's train.py style: AdamW, torch.autocast on the device (CUDA: fp16 + GradScaler; CPU: bf16
             only with --amp, off by default), zero_grad / backward / clip / step / scheduler.step, loss.item()

Inference. `PlantVLM.predict` over the same images (leaf PNGs read from disk), once with batch_size 32 and once
called per image, with each image's symptom text and without any text.

The default model is CPU-sized but real-shaped: a ResNet-18 (transformers ResNetModel, microsoft/resnet-18's
shape) and a GPT-2 body of microsoft/DialoGPT-small's width (768, 12 heads; --text-layers of its 12 layers), random
weights, saved offline as encoder folders that `PlantVLM.from_encoders` reads; the recipe's fusion / head widths
(vision_dim 768, text_dim 768, fusion_dim 512, 8 heads, 2 layers). The text side uses hubkit.tiny's byte-level BPE
tokenizer (768 tokens): the description head's output layer is vocabulary-sized, and a 50k vocabulary would make it
dominate every step on CPU. --tiny runs the tiny PlantVLM (hubkit.tiny) instead: a smoke run.

Rounds alternate the sides; each training run's throughput is the batch over its median step time after --warmup
steps (start-up, the final save and reload check excluded); each inference run is images over its wall time. The JSON
reports medians over rounds, leaving out runs that other processes disturbed (more than --quiet cores) when any was
calm. A run starts once the machine is quiet, waiting at most --max-wait seconds and --wait-budget seconds in all.
Both sides run with --threads torch threads, 1 by default: the bench compares loops, not intra-op scaling, and on a
shared 2-core machine a second thread stalls on every parallel op while another process holds a core (several-fold
slower and far noisier); --threads 0 leaves torch's default. stdout carries one JSON object; logs go to stderr.

    python bench/plant.py [--tiny] [--finetune lora|full] [--steps 8] [--warmup 3] [--rounds 3] [--batch-size 8]
                          [--image-size 128] [--threads 1] [--amp]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_depth import (  # noqa: E402
    StepClock,
    cpu_seconds,
    own_environment,
    quiet_median,
    stdout_to_stderr,
    train_timed,
    wait_for_quiet,
)

from hubkit import tiny  # noqa: E402
from hubkit.data.leaves import make_leaf_dataset  # noqa: E402
from hubkit.recipes.plant_vlm import TASK, PlantVLMTrainConfig, build_model, make_loss, plant_setup  # noqa: E402
from hubkit.tasks import get_task  # noqa: E402
from hubkit.training import build_config  # noqa: E402
from hubkit.training.trainable import build_trainable_model  # noqa: E402

INFER_BATCH = 32


# -- the model and the data ------------------------------------------------------------------------------------
def encoder_folders(root: Path, *, image_size: int, text_layers: int) -> tuple[Path, Path]:
    """(vision, text) encoder folders with random weights: a ResNet-18-shaped ResNetModel with microsoft/resnet-18's
    ConvNext-style preprocessing at `image_size` px, and a DialoGPT-small-wide GPT-2 body with `text_layers` layers
    and hubkit.tiny's BPE tokenizer."""
    from transformers import GPT2Config, GPT2Model, ResNetConfig, ResNetModel
    from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil

    from hubkit.tiny._common import BILINEAR, IMAGENET_MEAN, IMAGENET_STD
    from hubkit.tiny.plant_vlm import tokenizer

    torch.manual_seed(0)
    vision_dir, text_dir = root / "resnet-18", root / "dialogpt-small"
    resnet = ResNetConfig(
        embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic", hidden_act="relu"
    )
    ResNetModel(resnet).save_pretrained(vision_dir)
    ConvNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_pct=1.0,
        resample=BILINEAR,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(vision_dir)
    tok = tokenizer()
    gpt2 = GPT2Config(
        vocab_size=len(tok),
        n_embd=768,
        n_head=12,
        n_layer=text_layers,
        n_positions=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2Model(gpt2).save_pretrained(text_dir)
    tok.save_pretrained(text_dir)
    return vision_dir, text_dir


def leaf_jsonl(root: Path, *, per_class: int, size: int):
    """The generated leaf set and its multimodal JSONL (text: the class's English symptoms; description: its
    English description), as tests/test_recipe_plant.py writes it."""
    leaf_set = make_leaf_dataset(root / "data", per_class=per_class, size=size, seed=0)
    diseases = json.loads(leaf_set.diseases_json.read_text())
    rows = []
    for path, label in leaf_set.images():
        info = diseases[label]
        rows.append(
            {
                "path": path.relative_to(leaf_set.image_dir).as_posix(),
                "label": label,
                "label_id": leaf_set.classes.index(label),
                "text": ", ".join(info["symptoms"]["en"]),
                "description": info["description"]["en"],
                "language": "en",
            }
        )
    jsonl = root / "multimodal_dataset.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "classes.json").write_text(json.dumps(leaf_set.classes))
    return leaf_set, jsonl, rows


# -- training --------------------------------------------------------------------------------------------------
def run_hubkit(config, clock: StepClock) -> StepClock:
    setup = plant_setup(config)
    setup.eval_dataset = None  # no evaluation; the reload check uses a training batch
    setup.export_fn = None  # no merged export nor evaluation report: only the loop is measured
    return train_timed(config, setup, clock)


def run_plain(config, clock: StepClock, *, amp_dtype: torch.dtype | None) -> StepClock:
    """The seed's loop over the same model (the recipe's LoRA / full setting), data, batch and loss."""
    from transformers import get_scheduler

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    setup = plant_setup(config)
    model = build_trainable_model(setup.load_base(), setup.trainable, config, get_task(TASK).preset).to(device)
    loss_fn = make_loss(weights=None, description_weight=config.description_weight)
    params = [p for p in model.parameters() if p.requires_grad]
    clock.params = (sum(p.numel() for p in params), sum(p.numel() for p in model.parameters()))
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps
    )
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp_dtype == torch.float16)
    loader = torch.utils.data.DataLoader(
        setup.train_dataset,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    model.train()
    step, epoch = 0, 0
    while step < config.max_steps:
        setup.train_dataset.set_epoch(epoch)
        for batch in loader:
            clock.tick()
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss.item()  # the seed's running loss
            step += 1
            if step >= config.max_steps:
                break
        epoch += 1
    return clock


# -- inference -------------------------------------------------------------------------------------------------
def run_predict(model, images: list, texts: list | None, *, batched: bool) -> dict:
    busy0, own0 = cpu_seconds()
    start = time.perf_counter()
    if batched:
        model.predict(images, texts, top_k=5, batch_size=INFER_BATCH)
    else:
        for i, image in enumerate(images):
            model.predict([image], None if texts is None else [texts[i]], top_k=5, batch_size=1)
    elapsed = time.perf_counter() - start
    busy1, own1 = cpu_seconds()
    return {
        "images_per_s": round(len(images) / elapsed, 3),
        "others_cores": round(max(0.0, (busy1 - busy0) - (own1 - own0)) / elapsed, 2),
    }


def median_images_per_s(runs: list[dict], quiet: float) -> float:
    return quiet_median([{"samples_per_s": r["images_per_s"], "others_cores": r["others_cores"]} for r in runs], quiet)


# -- main ------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny PlantVLM (hubkit.tiny): a smoke run")
    parser.add_argument("--finetune", choices=("lora", "full"), default="lora")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per training run")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    parser.add_argument("--rounds", type=int, default=3, help="alternate both sides this many times; median")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch (the seed's is 32)")
    parser.add_argument("--image-size", type=int, default=0, help="leaf images and model input, px (0: 128, tiny 64)")
    parser.add_argument("--text-layers", type=int, default=2, help="GPT-2 layers of the default model (DialoGPT: 12)")
    parser.add_argument("--text-length", type=int, default=32, help="text tokens per sample (the recipe's 128)")
    parser.add_argument("--per-class", type=int, default=12, help="generated leaf images per class (8 classes)")
    parser.add_argument("--infer-images", type=int, default=0, help="images per inference run (0: 64, tiny 32)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CPU (on CUDA fp16 AMP is always on)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides (0: torch's default)")
    parser.add_argument("--quiet", type=float, default=0.25, help="cores other processes may use during a run")
    parser.add_argument("--max-wait", type=float, default=20.0, help="seconds to wait for a quiet machine per run")
    parser.add_argument(
        "--wait-budget", type=float, default=-1, help="seconds of waiting for a quiet machine in all (-1: 90, tiny 6)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps - args.warmup < 3:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) by at least 3")
    cuda = torch.cuda.is_available()
    image_size = args.image_size or (64 if args.tiny else 128)
    if cuda:
        amp_dtype, hubkit_precision, plain_precision = torch.float16, "fp16", "autocast fp16 + GradScaler"
    elif args.amp:
        amp_dtype, hubkit_precision, plain_precision = torch.bfloat16, "bf16", "autocast bf16"
    else:
        amp_dtype, hubkit_precision, plain_precision = None, "no", "fp32 (no autocast)"

    infer_images = args.infer_images or (32 if args.tiny else 64)
    budget = [args.wait_budget if args.wait_budget >= 0 else (6.0 if args.tiny else 90.0)]

    def wait() -> None:
        """Wait for a quiet machine, within --max-wait and what is left of --wait-budget: on a machine that never
        gets quiet the runs go ahead (and their others_cores tell)."""
        limit = min(args.max_wait, budget[0])
        if limit <= 0:
            return
        began = time.perf_counter()
        wait_for_quiet(args.quiet, sample_s=min(1.0, limit), max_wait_s=limit)
        budget[0] -= time.perf_counter() - began

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, stdout_to_stderr():
        tmp = Path(tmp)
        leaf_set, jsonl, rows = leaf_jsonl(tmp / "leaves", per_class=args.per_class, size=image_size)
        values = dict(
            jsonl_file=str(jsonl),
            root_dir=str(leaf_set.image_dir),
            num_classes=len(leaf_set.classes),
            output_dir=str(tmp / "ours"),
            finetune=args.finetune,
            batch_size=args.batch_size,
            max_steps=args.steps,
            warmup_steps=0,
            val_fraction=0.0,
            eval_before=False,
            checkpoint_every=0,
            report_to="none",
            mixed_precision=hubkit_precision,
        )
        if args.tiny:
            values["base"] = str(tiny.build("plant-vlm", tmp / "tiny"))
            architecture = "tiny PlantVLM (hubkit.tiny: tiny ResNet + tiny GPT-2, fusion 32)"
        else:
            vision_dir, text_dir = encoder_folders(
                tmp / "encoders", image_size=image_size, text_layers=args.text_layers
            )
            values.update(vision_backbone=str(vision_dir), text_model=str(text_dir), text_max_length=args.text_length)
            values["description_max_length"] = 40  # the leaf descriptions are 17-33 tokens
            architecture = (
                f"PlantVLM on a ResNet-18 (microsoft/resnet-18 shape) + a DialoGPT-small-wide GPT-2 body with "
                f"{args.text_layers} layers (768 wide, 12 heads), random weights, hubkit.tiny's 768-token BPE; "
                "vision_dim 768, text_dim 768, fusion_dim 512, 8 heads x 2 fusion layers, 2 description layers; "
                f"texts padded to {args.text_length} tokens, descriptions to 40"
            )
        config = build_config(PlantVLMTrainConfig, values)

        # training: hubkit's loop vs the plain loop, alternating
        runs: dict[str, list[dict]] = {"hubkit": [], "plain": []}
        params: tuple[int, int] = (0, 0)
        sides = {
            "hubkit": lambda: run_hubkit(config, StepClock(args.warmup, args.steps)),
            "plain": lambda: run_plain(config, StepClock(args.warmup, args.steps), amp_dtype=amp_dtype),
        }
        for round_ in range(args.rounds):  # alternate so neither side always runs on a warmer or quieter machine
            for side in sides if round_ % 2 == 0 else reversed(sides):
                wait()
                with own_environment():
                    clock = sides[side]()
                params = getattr(clock, "params", params)
                run = {
                    "samples_per_s": round(clock.samples_per_s(args.batch_size), 3),
                    "warmup_s": round(clock.warmup_s(), 1),
                    "others_cores": round(clock.others_cores(), 2),
                }
                runs[side].append(run)
                print(f"train round {round_} {side}: {run}", file=sys.stderr)
        train_samples = len(rows)  # val_fraction 0: every sample trains

        # inference: predict batched vs one image at a time, same images, with and without the symptom texts
        torch.manual_seed(0)
        model = build_model(config, leaf_set.classes)
        if cuda:
            model = model.cuda()
        model.eval()
        picked = [rows[i % len(rows)] for i in range(infer_images)]
        images = [leaf_set.image_dir / row["path"] for row in picked]
        texts = [row["text"] for row in picked]
        modes = {"with_text": texts, "image_only": None}
        ways = {"batched": True, "one_at_a_time": False}
        infer_runs = {mode: {way: [] for way in ways} for mode in modes}
        for mode_texts in modes.values():  # warm up both paths (allocator, first-call costs)
            model.predict(images[:2], None if mode_texts is None else mode_texts[:2], batch_size=INFER_BATCH)
            model.predict(images[:1], None if mode_texts is None else mode_texts[:1], batch_size=1)
        for round_ in range(args.rounds):
            wait()  # once per round: the runs are short
            for mode, mode_texts in modes.items():
                for way in ways if round_ % 2 == 0 else reversed(ways):
                    run = run_predict(model, images, mode_texts, batched=ways[way])
                    infer_runs[mode][way].append(run)
                    print(f"infer round {round_} {mode} {way}: {run}", file=sys.stderr)

    median = {side: quiet_median(rs, args.quiet) for side, rs in runs.items()}
    infer_median = {
        mode: {way: median_images_per_s(rs, args.quiet) for way, rs in by.items()} for mode, by in infer_runs.items()
    }
    result = {
        "device": "cuda" if cuda else "cpu",
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "architecture": architecture,
        "finetune": args.finetune,
        "trainable_params": params[0],
        "total_params": params[1],
        "image_size": image_size,
        "training": {
            "precision": {"hubkit": hubkit_precision, "plain": plain_precision},
            "train_samples": train_samples,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "timed_steps": args.steps - args.warmup,
            "rounds": args.rounds,
            "samples_per_s_median": median,
            "hubkit_over_plain": round(median["hubkit"] / median["plain"], 3),
            "runs": runs,
        },
        "inference": {
            "images": infer_images,
            "batch_size": INFER_BATCH,
            "rounds": args.rounds,
            "images_per_s_median": infer_median,
            "batched_over_one_at_a_time": {
                mode: round(by["batched"] / by["one_at_a_time"], 3) for mode, by in infer_median.items()
            },
            "runs": infer_runs,
        },
        "bench_wall_s": round(time.perf_counter() - start),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
