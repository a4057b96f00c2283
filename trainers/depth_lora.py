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

Any field below can be set in the YAML recipe and overridden with --field value.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from hubkit.training import TrainConfig, option, parse_config, train
from hubkit.training.depth import depth_setup


@dataclass(frozen=True)
class DepthLoraConfig(TrainConfig):
    base: str = option("base depth model", "depth-anything/Depth-Anything-V2-Small-hf")
    input_size: int = option("square input side in pixels (a multiple of 14)", 518)
    loss: str = option("masked_mse (the seed's), silog (DA-V2 metric fine-tuning) or ssi", "masked_mse")
    silog_lambda: float = option("variance weight of the SiLog loss", 0.5)
    val_fraction: float = option("fraction of pairs held out for evaluation", 0.2)
    augment: bool = option("flip / scale-crop / colour jitter, image and depth kept aligned", True)


def main(config: DepthLoraConfig) -> None:
    result = train(config, depth_setup(config))
    if not result.is_main_process:
        return
    summary = {"adapter": str(result.adapter_dir), "steps": result.global_step, "metrics": result.metrics}
    if result.pushed_revision:
        summary.update(pushed=config.push_to_hub, revision=result.pushed_revision)
    print(json.dumps(summary))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(parse_config(DepthLoraConfig, description=__doc__))
