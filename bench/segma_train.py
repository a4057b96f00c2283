"""Training throughput of the SAM recipe (hubkit.recipes.sam_lora) through hubkit's loop vs the Segma seed's plain loop.

The seed's loop is its "Fine-tuning SAM avec LoRA" snippet: `AdamW(lr=1e-4)`, then per batch forward, loss,
`zero_grad`, `backward`, `step`. Both sides train the same model (the facebook/sam-vit-base architecture with random
weights, or the tiny SAM with --tiny) with the same LoRA (r 16, alpha 32, dropout 0.1 on the image encoder's qkv /
proj / mlp.lin1 / mlp.lin2), on the same samples (synthetic shapes, one per object, jittered box prompts), the same
batch and the recipe's Dice + BCE loss. ViT-B runs at a reduced input size (--input-size, default 160 instead of
1024: the same layers, widths and windows on a 10 x 10 token grid) so a run fits in minutes on 2 CPU cores.

With --variant decoder both sides train LoRA on the mask decoder; hubkit's recipe then encodes each image once
(the frozen encoder's embeddings are cached), while the plain loop runs the encoder on every step, as the
transformers tutorial's loop does.

Rounds alternate the two sides; each run's throughput is the batch over its median step time after --warmup steps,
and the JSON reports the median over rounds (runs other processes disturbed, more than --quiet cores, left out when
any run was calm). stdout carries one JSON object; logs go to stderr.

    python bench/segma_train.py [--tiny] [--variant encoder|decoder] [--input-size 160] [--batch-size 2] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_depth import StepClock, own_environment, quiet_median, stdout_to_stderr, train_timed, wait_for_quiet  # noqa: E402

from hubkit import tiny  # noqa: E402
from hubkit.adapters import lora_config  # noqa: E402
from hubkit.data.segma import make_shapes_dataset  # noqa: E402
from hubkit.plan import bundled_config_dir  # noqa: E402
from hubkit.recipes.sam_lora import SamLoraConfig, make_loss, sam_setup, trainable_for  # noqa: E402
from hubkit.tasks import get_task  # noqa: E402
from hubkit.training import build_config  # noqa: E402


def reduced_sam_folder(root: Path, input_size: int) -> Path:
    """facebook/sam-vit-base's architecture (12 layers, 768 wide, 14 px windows, global attention at 2/5/8/11) with
    random weights at a `input_size` px input, and a processor resizing to it (low-res masks input_size / 4)."""
    from transformers import SamConfig, SamModel

    small = tiny.build("sam", root / "tiny")
    config = SamConfig.from_pretrained(bundled_config_dir("facebook/sam-vit-base"))
    grid = input_size // config.vision_config.patch_size
    config.vision_config.image_size = config.prompt_encoder_config.image_size = input_size
    config.prompt_encoder_config.image_embedding_size = grid
    torch.manual_seed(0)
    model = SamModel(config)
    for param in model.parameters():  # the config's init range is 1e-10: all-but-zero weights
        torch.nn.init.normal_(param, std=0.02)
    folder = root / "sam"
    model.save_pretrained(folder)
    for extra in small.glob("*.json"):
        if extra.name != "config.json":
            shutil.copy(extra, folder / extra.name)
    processor = json.loads((folder / "processor_config.json").read_text())
    low = 4 * grid
    processor["image_processor"].update(
        size={"longest_edge": input_size},
        pad_size={"height": input_size, "width": input_size},
        mask_size={"longest_edge": low},
        mask_pad_size={"height": low, "width": low},
    )
    (folder / "processor_config.json").write_text(json.dumps(processor))
    return folder


def run_hubkit(config, clock: StepClock) -> StepClock:
    setup = sam_setup(config)
    setup.eval_dataset = None  # the loop then evaluates nothing; the reload check uses a training batch
    return train_timed(config, setup, clock)


def run_plain(config, clock: StepClock) -> StepClock:
    """The seed's loop over the same LoRA model, data and loss."""
    from peft import get_peft_model

    torch.manual_seed(config.seed)
    setup = sam_setup(config)
    base = setup.load_base()
    preset = get_task("mask-generation").preset
    trainable = trainable_for(config)
    model = get_peft_model(
        base,
        lora_config(
            base,
            trainable.lora_targets or preset.targets,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            exclude=trainable.lora_exclude if trainable.lora_exclude is not None else preset.exclude,
        ),
    )
    loss_fn = make_loss(cache=False)  # the tutorial's model(pixel_values=..., input_boxes=...) on every step
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    loader = torch.utils.data.DataLoader(
        setup.train_dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    model.train()
    step, epoch = 0, 0
    while step < config.max_steps:
        setup.train_dataset.set_epoch(epoch)
        for batch in loader:
            clock.tick()
            loss = loss_fn(model, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step >= config.max_steps:
                break
        epoch += 1
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny SAM (a smoke run) instead of ViT-B")
    parser.add_argument("--variant", choices=("encoder", "decoder"), default="encoder")
    parser.add_argument("--input-size", type=int, default=160, help="ViT-B input side (a multiple of 16)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    parser.add_argument("--rounds", type=int, default=3, help="alternate both sides this many times; median")
    parser.add_argument("--images", type=int, default=12, help="shapes images (1-3 objects each)")
    parser.add_argument("--quiet", type=float, default=0.25, help="cores other processes may use during a run")
    parser.add_argument("--max-wait", type=float, default=20.0, help="seconds to wait for a quiet machine per run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps - args.warmup < 3:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) by at least 3")
    runs: dict[str, list[dict]] = {"hubkit": [], "plain": []}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, stdout_to_stderr():
        tmp = Path(tmp)
        base = tiny.build("sam", tmp / "sam") if args.tiny else reduced_sam_folder(tmp, args.input_size)
        size = 96 if args.tiny else args.input_size
        data = make_shapes_dataset(tmp / "shapes", images=args.images, size=size, seed=0)
        config = build_config(
            SamLoraConfig,
            dict(
                base=str(base),
                data=str(data),
                output_dir=str(tmp / "ours"),
                variant=args.variant,
                batch_size=args.batch_size,
                max_steps=args.steps,
                box_jitter=max(1, size // 24),  # the tutorial's 20 px on a 480 px-ish image, scaled
                val_fraction=0.0,
                eval_before=False,
                report_to="none",
                mixed_precision="no",
            ),
        )
        sides = {
            "hubkit": lambda: run_hubkit(config, StepClock(args.warmup, args.steps)),
            "plain": lambda: run_plain(dataclasses.replace(config), StepClock(args.warmup, args.steps)),
        }
        for round_ in range(args.rounds):  # alternate so neither side always runs on a warmer or quieter machine
            for side in sides if round_ % 2 == 0 else reversed(sides):
                wait_for_quiet(args.quiet, max_wait_s=args.max_wait)
                with own_environment():
                    clock = sides[side]()
                run = {
                    "samples_per_s": round(clock.samples_per_s(args.batch_size), 3),
                    "warmup_s": round(clock.warmup_s(), 1),
                    "others_cores": round(clock.others_cores(), 2),
                }
                runs[side].append(run)
                print(f"round {round_} {side}: {run}", file=sys.stderr)
        train_objects = len(sam_setup(config).train_dataset)
    median = {side: quiet_median(rs, args.quiet) for side, rs in runs.items()}
    result = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "architecture": (
            "tiny SAM (hubkit.tiny)"
            if args.tiny
            else f"facebook/sam-vit-base (random weights) at {args.input_size} px input"
        ),
        "variant": args.variant,
        "lora": "r 16, alpha 32, dropout 0.1 on "
        + ("the image encoder's qkv/proj/mlp.lin1/mlp.lin2" if args.variant == "encoder" else "the mask decoder"),
        "train_objects": train_objects,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "timed_steps": args.steps - args.warmup,
        "rounds": args.rounds,
        "samples_per_s_median": median,
        "hubkit_over_plain": round(median["hubkit"] / median["plain"], 3),
        "runs": runs,
        "bench_wall_s": round(time.perf_counter() - start),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
