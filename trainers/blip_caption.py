"""Fine-tune BLIP captioning (LoRA, or every weight with --full true) on images + captions.

    accelerate launch trainers/blip_caption.py --config trainers/configs/blip_caption.yaml --data DIR_OR_FILE
    accelerate launch trainers/blip_caption.py --config ... --data me/photo-labels --domain medical \
        --push-to-hub me/blip-medical
    accelerate launch trainers/blip_caption.py --config ... --data captions.csv --full true   # the seed's Trainer
    accelerate launch --multi_gpu --num_processes 2 trainers/blip_caption.py --config ... --batch_size 4
    accelerate launch trainers/blip_caption.py --config ... --resume latest                    # after a crash
    # offline, on the tiny model and sample data set `hubkit bootstrap` puts in the local store (the tiny model's
    # random word embeddings are too small for LoRA on the preset alone to move its logits: adapt its LM head too):
    accelerate launch trainers/blip_caption.py --config trainers/configs/blip_caption.yaml \
        --base hubkit-tiny/blip --data hubkit-tiny/segma-shapes --lora_targets query,value,qkv,decoder \
        --learning_rate 2e-2 --warmup_steps 0 --max_steps 40 --batch_size 4 --output_dir outputs/blip-tiny

--data is a Segma export / COCO folder with metadata.jsonl captions (a folder or a dataset repo), an ImageFolder
with metadata.jsonl, a CSV file (image,caption) or a JSONL file ({"image": ..., "caption": ...}), image paths
relative to the file. Every field of hubkit.recipes.blip_caption.BlipCaptionConfig (--help lists them) can be set
in the YAML recipe and overridden with --field value.
"""

from __future__ import annotations

import json

from hubkit.recipes.blip_caption import BlipCaptionConfig, blip_caption_setup
from hubkit.training import run_trainer, train


def main(config: BlipCaptionConfig) -> None:
    result = train(config, blip_caption_setup(config))
    if not result.is_main_process:
        return
    summary = {"adapter": str(result.adapter_dir), "steps": result.global_step, "metrics": result.metrics}
    summary["metrics_before"] = result.metrics_before
    if result.pushed_revision:
        summary.update(pushed=config.push_to_hub, revision=result.pushed_revision)
    print(json.dumps(summary))


if __name__ == "__main__":
    run_trainer(main, BlipCaptionConfig, description=__doc__)
