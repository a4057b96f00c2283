"""The Plantset multimodal classifier (leaf photo + optional symptom text -> disease class + description): the seed's
train.py and scaler_tpu.py, one trainer for GPU, DDP and TPU.

    # single GPU (the seed's `python train.py --jsonl-file ... --root-dir ... --num-classes 133
    #   --vision-backbone resnet50 --text-model microsoft/DialoGPT-medium --epochs 100 --batch-size 32
    #   --mixed-precision --checkpoint-dir checkpoints`):
    accelerate launch trainers/plant_vlm.py --config trainers/configs/plant_vlm.yaml \
        --jsonl-file multimodal_dataset.jsonl --root-dir /path/to/images --num-classes 133 \
        --vision-backbone resnet50 --text-model microsoft/DialoGPT-medium --output-dir checkpoints
    # several GPUs (DDP; each process reads its shard of every epoch):
    accelerate launch --multi_gpu --num_processes 4 trainers/plant_vlm.py --config ... --jsonl-file ...
    # TPU (the seed's `python scaler_tpu.py ... --tpu-cores 8`): accelerate + torch_xla, 8 processes
    accelerate launch --tpu --num_processes 8 trainers/plant_vlm.py --config trainers/configs/plant_vlm.yaml \
        --jsonl-file multimodal_dataset.jsonl --root-dir /path/to/images --num-classes 133
    # push the trained model (the LoRA adapter + the merged model + card with the classes) to a repo:
    accelerate launch trainers/plant_vlm.py --config ... --jsonl-file ... --push-to-hub me/plant-vlm
    accelerate launch trainers/plant_vlm.py --config ... --jsonl-file ... --resume latest      # after a crash
    # small backbones train in full; balanced class weights for a skewed data set:
    accelerate launch trainers/plant_vlm.py --config ... --vision-backbone resnet18 --finetune full \
        --class-weights balanced
    # offline, on the tiny PlantVLM `hubkit bootstrap` stores and a generated leaf set:
    accelerate launch trainers/plant_vlm.py --config trainers/configs/plant_vlm.yaml --base hubkit-tiny/plant-vlm \
        --jsonl-file leaves/multimodal_dataset.jsonl --num-classes 8 --batch-size 8 --epochs 10 --warmup-steps 0

Every field of hubkit.recipes.plant_vlm.PlantVLMTrainConfig (--help lists them) can be set in the YAML recipe and
overridden with --field value (dashes or underscores). The result loads with
hubkit.plant.PlantVLM.from_pretrained(FOLDER_OR_REPO) or hubkit.load("plant-disease", FOLDER_OR_REPO).
"""

from __future__ import annotations

import json

from hubkit.recipes.plant_vlm import PlantVLMTrainConfig, plant_setup
from hubkit.training import run_trainer, train


def main(config: PlantVLMTrainConfig) -> None:
    result = train(config, plant_setup(config))
    if not result.is_main_process:
        return
    summary = {
        "model": str(result.adapter_dir),
        "steps": result.global_step,
        "metrics": result.metrics,
        "metrics_before": result.metrics_before,
    }
    if result.pushed_revision:
        summary.update(pushed=config.push_to_hub, revision=result.pushed_revision)
    print(json.dumps(summary))


if __name__ == "__main__":
    run_trainer(main, PlantVLMTrainConfig, description=__doc__)
