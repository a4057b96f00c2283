"""Training throughput of trainers/depth_lora.py's loop vs the seed's approach (transformers Trainer).

Same model (Depth-Anything-V2-Small architecture, random weights), same LoRA (r=16, alpha=32 on
q/k/v), same Zivid-format data (motorcycle crops from scikit-image), same batch and loss, one run,
on this machine's CPU at a reduced input size. Throughput is taken between the first and last
optimizer step of each run (median step time), so start-up and saving are excluded on both sides.
The two runs alternate for --rounds rounds; the best round of each is compared. Prints JSON.

    python bench/train_depth.py [--steps 12] [--input-size 98] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "trainers"))

from adapters import real_size_folder  # noqa: E402  (bench/adapters.py)
from depth_lora import DepthLoraConfig  # noqa: E402

from hubkit.adapters import lora_config  # noqa: E402
from hubkit.data.synthetic import make_motorcycle_zivid  # noqa: E402
from hubkit.tasks import get_task  # noqa: E402
from hubkit.training import build_config, train  # noqa: E402
from hubkit.training.depth import depth_setup  # noqa: E402


class StepClock:
    def __init__(self):
        self.times: list[float] = []

    def tick(self):
        self.times.append(time.perf_counter())

    def samples_per_s(self, batch: int) -> float:
        """Batch over the median step time: robust to a stray pause from other work on the machine."""
        steps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return batch / statistics.median(steps)


def run_hubkit(config, clock: StepClock) -> float:
    setup = depth_setup(config)
    setup.eval_dataset = None
    inner = setup.loss_fn

    def loss_fn(model, batch):
        if model.training:
            clock.tick()
        return inner(model, batch)

    setup.loss_fn = loss_fn
    train(config, setup)
    return clock.samples_per_s(config.batch_size)


def run_trainer(config, clock: StepClock, out: Path) -> float:
    from peft import get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    setup = depth_setup(config)
    loss_fn = setup.loss_fn
    base = setup.load_base()
    spec = get_task("depth-estimation")
    model = get_peft_model(base, lora_config(base, spec.preset.targets, r=config.lora_r, alpha=config.lora_alpha))

    class DepthTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return loss_fn(model, inputs)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.tick()

    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=config.batch_size,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_schedule,
        max_grad_norm=config.max_grad_norm,
        report_to=[],
        save_strategy="no",
        logging_steps=10**6,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        dataloader_drop_last=True,
        seed=config.seed,
        disable_tqdm=True,
    )
    DepthTrainer(
        model=model,
        args=args,
        train_dataset=setup.train_dataset,
        data_collator=default_data_collator,
        callbacks=[Clock()],
    ).train()
    return clock.samples_per_s(config.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--input-size", type=int, default=98)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the two runs this many times; best of each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_motorcycle_zivid(tmp / "data", crops=24, seed=0)
        base = real_size_folder("depth-anything", tmp / "base")
        config = build_config(
            DepthLoraConfig,
            dict(
                base=str(base),
                data=str(data),
                output_dir=str(tmp / "ours"),
                input_size=args.input_size,
                batch_size=args.batch_size,
                max_steps=args.steps,
                report_to="none",
                augment=False,
                lr_schedule="constant",
                val_fraction=0.1,
            ),
        )
        ours_runs, trainer_runs = [], []
        for round_ in range(args.rounds):  # alternate so neither side always runs on a warmer machine
            ours_runs.append(run_hubkit(config, StepClock()))
            trainer_runs.append(run_trainer(config, StepClock(), tmp / f"trainer{round_}"))
        ours_sps, trainer_sps = max(ours_runs), max(trainer_runs)
    print(
        json.dumps(
            {
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "threads": torch.get_num_threads(),
                "architecture": "depth-anything/Depth-Anything-V2-Small-hf (random weights)",
                "input_size": args.input_size,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "hubkit_samples_per_s": ours_sps,
                "transformers_trainer_samples_per_s": trainer_sps,
                "hubkit_over_trainer": ours_sps / trainer_sps,
                "hubkit_runs": ours_runs,
                "trainer_runs": trainer_runs,
                "seed_notebook_samples_per_s_on_its_gpu": 0.202,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
