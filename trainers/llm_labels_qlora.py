"""QLoRA of a causal LM (Mistral) for class extraction: image description -> the object classes to detect.

    accelerate launch trainers/llm_labels_qlora.py --config trainers/configs/llm_labels_qlora.yaml \
        --data me/photo-labels                    # the seed's pairs + caption -> classes pairs of a Segma export
    accelerate launch trainers/llm_labels_qlora.py --config ... --pairs my_pairs.jsonl --domain medical \
        --push-to-hub me/mistral-classes
    accelerate launch trainers/llm_labels_qlora.py --config ... --resume latest                # after a crash
    # offline on CPU (NF4 needs a CUDA GPU: --quantize int8 or none), on the tiny model and sample data set
    # `hubkit bootstrap` puts in the local store:
    accelerate launch trainers/llm_labels_qlora.py --config trainers/configs/llm_labels_qlora.yaml \
        --base hubkit-tiny/mistral --data hubkit-tiny/segma-shapes --quantize none --learning_rate 1e-2 \
        --max_steps 30 --batch_size 4 --grad_accum 1 --gradient_checkpointing false --output_dir outputs/llm-tiny

Run from the repository root: the recipe's `pairs` path (the seed's three examples) is relative to it. The seed's
base, mistralai/Mistral-7B-v0.1, has no chat template: the recipe then uses Mistral's [INST] ... [/INST] format;
the Segma pipeline's labeler is the Instruct model, whose template is the same format. Every field of
hubkit.recipes.llm_labels.LlmLabelsConfig (--help lists them) can be set in the YAML and overridden with --field value.
"""

from __future__ import annotations

import json

from hubkit.recipes.llm_labels import LlmLabelsConfig, llm_labels_setup
from hubkit.training import run_trainer, train


def main(config: LlmLabelsConfig) -> None:
    result = train(config, llm_labels_setup(config))
    if not result.is_main_process:
        return
    summary = {"adapter": str(result.adapter_dir), "steps": result.global_step, "metrics": result.metrics}
    summary["metrics_before"] = result.metrics_before
    if result.pushed_revision:
        summary.update(pushed=config.push_to_hub, revision=result.pushed_revision)
    print(json.dumps(summary))


if __name__ == "__main__":
    run_trainer(main, LlmLabelsConfig, description=__doc__)
