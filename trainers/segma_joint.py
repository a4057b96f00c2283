"""Joint fine-tuning of the Segma pipeline: Grounding DINO (LoRA) detects, SAM (LoRA on the mask decoder) segments the
boxes, a region head classifies the masks; loss 1.0 x segmentation + 1.0 x detection + 0.5 x classification (the
seed's "Pipeline End-to-End Fine-tuning").

    accelerate launch trainers/segma_joint.py --config trainers/configs/segma_joint.yaml --data DIR
    accelerate launch trainers/segma_joint.py --config trainers/configs/segma_joint.yaml --data me/photo-labels \
        --push-to-hub me/segma-joint
    accelerate launch trainers/segma_joint.py --config ... --box_prompts gt      # SAM always on ground-truth boxes
    accelerate launch trainers/segma_joint.py --config ... --resume latest       # after a crash
    # offline, on the tiny models and sample data set `hubkit bootstrap` puts in the local store:
    accelerate launch trainers/segma_joint.py --config trainers/configs/segma_joint.yaml --base hubkit-tiny/sam \
        --detector_base hubkit-tiny/grounding-dino --data hubkit-tiny/segma-shapes --max_steps 20 \
        --output_dir outputs/segma-joint-tiny

The run's adapter (OUTPUT/adapter, one PEFT adapter over both models and the head) is split, before the push, into
parts that load alone:
    OUTPUT/adapter/adapters/sam             hubkit.load("mask-generation", SAM_BASE, adapters=[...])
    OUTPUT/adapter/adapters/grounding_dino  hubkit.load("zero-shot-object-detection", DINO_BASE, adapters=[...])
    OUTPUT/adapter/adapters/region_head     hubkit.recipes.segma_joint.RegionHead.load(...)
With --push-to-hub me/segma-joint the whole folder is pushed there, and each part to a repo of its own
(me/segma-joint-sam, me/segma-joint-grounding-dino, me/segma-joint-region-head), which the Segma Space's adapter
menus list for their bases.

Every field of hubkit.recipes.segma_joint.SegmaJointConfig (--help lists them) can be set in the YAML recipe and
overridden with --field value.
"""

from __future__ import annotations

import json

from hubkit.errors import HubkitError, PushAfterTrainingError
from hubkit.recipes.segma_joint import SegmaJointConfig, part_repo_name, push_parts, segma_joint_setup
from hubkit.training import run_trainer, train


def main(config: SegmaJointConfig) -> None:
    result = train(config, segma_joint_setup(config))  # the loop writes the parts (export_fn), then pushes once
    if not result.is_main_process:
        return
    parts = {name: result.adapter_dir / "adapters" / name for name in ("sam", "grounding_dino", "region_head")}
    summary = {"adapter": str(result.adapter_dir), "steps": result.global_step, "metrics": result.metrics,
               "metrics_before": result.metrics_before, "parts": {k: str(v) for k, v in parts.items()}}  # fmt: skip
    if config.push_to_hub:
        try:
            revisions = push_parts(parts, config.push_to_hub, hub_name=config.hub)
        except HubkitError as err:
            raise PushAfterTrainingError(
                f"The joint adapter was pushed to {config.push_to_hub!r} but pushing its parts to repos of their own "
                f"failed: {err} Push them later with: hubkit push {result.adapter_dir}/adapters/sam "
                f"{part_repo_name(config.push_to_hub, 'sam')} (and likewise grounding_dino, region_head)"
            ) from None
        summary.update(pushed=config.push_to_hub, revision=result.pushed_revision,
                       part_repos={k: part_repo_name(config.push_to_hub, k) for k in revisions})  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    run_trainer(main, SegmaJointConfig, description=__doc__)
