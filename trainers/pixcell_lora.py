"""PixCell adapter + LoRA: a condition MLP and LoRA on the attention of a PixCell diffusion transformer, trained on a
folder of patches in the lab's stain (the target domain), evaluated before / after by stain colour, encoder Frechet
distance and cosine similarity, pushed as one adapter folder.

    accelerate launch trainers/pixcell_lora.py --config trainers/configs/pixcell.yaml --data patches/
    # virtual staining: condition on the source-stain patches, learn the target-stain ones (paired in order)
    accelerate launch trainers/pixcell_lora.py --config trainers/configs/pixcell.yaml --data target/ \
        --condition-data source/ --push-to-hub me/pixcell-nct-stain
    # PixCell's authors' LoRA: cross-attention only, rank 4; or caption_projection trained instead of a new MLP
    accelerate launch trainers/pixcell_lora.py --config ... --data patches/ --lora-scope cross --lora-r 4 \
        --lora-alpha 4 --mlp caption_projection
    # DDP (NCCL on GPUs; 2 processes over gloo on a CPU-only machine): the main process fills the cache first
    accelerate launch --multi_gpu --num_processes 2 trainers/pixcell_lora.py --config ... --data patches/
    accelerate launch trainers/pixcell_lora.py --config ... --data patches/ --resume latest      # after a crash
    # offline, on the tiny PixCell `hubkit bootstrap` stores (16 px patches, latent 8x8) and the IHC test slide:
    python -c "from hubkit.data.histology import make_histology_dataset as m; m('target', patch=16, crop=64, \
        count=48, split='train'); m('source', patch=16, crop=64, count=48, split='train', domain='source')"
    accelerate launch trainers/pixcell_lora.py --config trainers/configs/pixcell.yaml --base hubkit-tiny/pixcell \
        --data target --condition-data source --batch-size 8 --grad-accum 1 --epochs 2 --warmup-steps 0 \
        --learning-rate 3e-3 --mlp-learning-rate 3e-3 --eval-steps 4 --mixed-precision no --push-to-hub me/tiny-stain

Every field of hubkit.recipes.pixcell_lora.PixCellLoraConfig (--help lists them) can be set in the YAML recipe and
overridden with --field value (dashes or underscores). The adapter loads with
hubkit.load("histology-generation", BASE, adapters=[FOLDER_OR_REPO]).
"""

from __future__ import annotations

import json

from hubkit.recipes.pixcell_lora import PixCellLoraConfig, pixcell_setup
from hubkit.training import run_trainer, train


def main(config: PixCellLoraConfig) -> None:
    result = train(config, pixcell_setup(config))
    if not result.is_main_process:
        return
    summary = {
        "adapter": str(result.adapter_dir),
        "steps": result.global_step,
        "metrics_before": result.metrics_before,
        "metrics": result.metrics,
    }
    if result.pushed_revision:
        summary.update(pushed=config.push_to_hub, revision=result.pushed_revision)
    print(json.dumps(summary))


if __name__ == "__main__":
    run_trainer(main, PixCellLoraConfig, description=__doc__)
