"""Fine-tuning Grounding DINO (LoRA or full) on a COCO-format detection set: the seed's "4. Fine-tuning Grounding DINO".

    accelerate launch trainers/grounding_dino.py --config trainers/configs/grounding_dino.yaml --data DIR
    accelerate launch trainers/grounding_dino.py --config trainers/configs/grounding_dino.yaml --data me/photo-labels \
        --push-to-hub me/grounding-dino-photos
    accelerate launch trainers/grounding_dino.py --config ... --lora false        # full fine-tuning, three LR groups
    accelerate launch --multi_gpu --num_processes 2 trainers/grounding_dino.py --config ... --batch_size 2   # DDP
    accelerate launch trainers/grounding_dino.py --config ... --resume latest                  # after a crash
    # offline, on the tiny model and sample data set `hubkit bootstrap` puts in the local store:
    accelerate launch trainers/grounding_dino.py --config trainers/configs/grounding_dino.yaml \
        --base hubkit-tiny/grounding-dino --data hubkit-tiny/segma-shapes --max_steps 20 --output_dir outputs/gd-tiny

The data is a Segma export or a COCO folder (folder or dataset repo id); the prompt is the class names ("disc. square.
triangle."). Use the adapter with
    hubkit.load("zero-shot-object-detection", BASE, adapters=["outputs/grounding-dino/adapter"]).predict(
        image, labels=["disc", "square", "triangle"])

Every field of hubkit.recipes.grounding_dino.GroundingDinoConfig (--help lists them) can be set in the YAML recipe and
overridden with --field value.
"""

from __future__ import annotations

import json

from hubkit.recipes.grounding_dino import GroundingDinoConfig, grounding_dino_setup
from hubkit.training import run_trainer, train


def main(config: GroundingDinoConfig) -> None:
    result = train(config, grounding_dino_setup(config))
    if not result.is_main_process:
        return
    summary = {"adapter": str(result.adapter_dir), "steps": result.global_step, "metrics": result.metrics,
               "metrics_before": result.metrics_before}  # fmt: skip
    if result.pushed_revision:
        summary.update(pushed=config.push_to_hub, revision=result.pushed_revision)
    print(json.dumps(summary))


if __name__ == "__main__":
    run_trainer(main, GroundingDinoConfig, description=__doc__)
