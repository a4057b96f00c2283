"""LoRA fine-tuning of Depth Anything V2 on Zivid RGB + XYZ depth data.

    accelerate launch trainers/depth_lora.py --config trainers/configs/depth_zivid.yaml --data DIR
    accelerate launch trainers/depth_lora.py --config trainers/configs/depth_zivid.yaml --data DIR \
        --push-to-hub me/depth-lora
    accelerate launch --multi_gpu --num_processes 2 trainers/depth_lora.py --config ... --batch_size 2
        # DDP: NCCL on GPUs; on a CPU-only machine the same command runs 2 processes over gloo
    accelerate launch trainers/depth_lora.py --config ... --resume latest                  # after a crash
    # offline, on the tiny model and sample data set `hubkit bootstrap` puts in the local store:
    accelerate launch trainers/depth_lora.py --config ... --data hubkit-tiny/motorcycle-zivid \
        --base hubkit-tiny/depth-anything

Every field of hubkit.recipes.depth.DepthLoraConfig (--help lists them) can be set in the YAML recipe and
overridden with --field value.
"""

from __future__ import annotations

import json

from hubkit.recipes.depth import DepthLoraConfig, depth_setup
from hubkit.training import run_trainer, train


def main(config: DepthLoraConfig) -> None:
    result = train(config, depth_setup(config))
    if not result.is_main_process:
        return
    summary = {"adapter": str(result.adapter_dir), "steps": result.global_step, "metrics": result.metrics}
    if result.pushed_revision:
        summary.update(pushed=config.push_to_hub, revision=result.pushed_revision)
    print(json.dumps(summary))


if __name__ == "__main__":
    run_trainer(main, DepthLoraConfig, description=__doc__)
