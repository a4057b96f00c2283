"""Fine-tuning SAM on prompted masks (a Segma export or COCO folder): LoRA on the image encoder (the Segma seed),
or the mask decoder with LoRA / in full (transformers' SAM tutorial).

    accelerate launch trainers/sam_lora.py --config trainers/configs/sam_lora.yaml --data me/photo-labels
    accelerate launch trainers/sam_lora.py --config trainers/configs/sam_decoder.yaml --data DIR   # decoder, 1e-5
    accelerate launch trainers/sam_lora.py --config trainers/configs/sam_lora.yaml --data DIR \
        --push-to-hub me/sam-lora
    accelerate launch --multi_gpu --num_processes 2 trainers/sam_lora.py --config ... --data DIR
        # DDP: NCCL on GPUs; on a CPU-only machine the same command runs 2 processes over gloo
    accelerate launch trainers/sam_lora.py --config ... --data DIR --resume latest            # after a crash
    # offline, on the tiny SAM and sample data set `hubkit bootstrap` puts in the local store (held-out IoU
    # ~0.09 -> ~0.3; LoRA on the encoder barely moves a random tiny SAM, whose decoder outputs ~0 logits):
    accelerate launch trainers/sam_lora.py --config trainers/configs/sam_decoder.yaml \
        --base hubkit-tiny/sam --data hubkit-tiny/segma-shapes --box_jitter 4 --learning_rate 3e-3 --max_steps 40

Every field of hubkit.recipes.sam_lora.SamLoraConfig (--help lists them) can be set in the YAML recipe and
overridden with --field value. The adapter loads with hubkit.load("mask-generation", BASE, adapters=[ADAPTER]) and
in the Segma pipeline with SegmaConfig(adapters={"sam": [ADAPTER]}); a full-decoder run (decoder_full) saves
trained_modules.safetensors, which hubkit.adapters.restore_trained_modules(model, FOLDER) loads into a base.
"""

from __future__ import annotations

import json

from hubkit.recipes.sam_lora import SamLoraConfig, sam_setup
from hubkit.training import run_trainer, train


def main(config: SamLoraConfig) -> None:
    result = train(config, sam_setup(config))
    if not result.is_main_process:
        return
    summary = {
        "adapter": str(result.adapter_dir),
        "steps": result.global_step,
        "metrics": result.metrics,
        "metrics_before": result.metrics_before,
    }
    if result.pushed_revision:
        summary.update(pushed=config.push_to_hub, revision=result.pushed_revision)
    print(json.dumps(summary))


if __name__ == "__main__":
    run_trainer(main, SamLoraConfig, description=__doc__)
