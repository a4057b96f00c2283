"""Fine-tune an image classifier (every weight; the head re-labelled to the data's classes) on a class-per-folder
tree, then push the full model: the source `hubkit optimize` makes int8 / pruned / distilled variants of.

    accelerate launch trainers/image_classifier.py --config trainers/configs/image_classifier.yaml \
        --data ./images --push-to-hub me/classifier
    # offline, on the generated garment set and a tiny ResNet-shaped start (see README "Deployment"):
    hubkit data garments ./garments
    accelerate launch trainers/image_classifier.py --config trainers/configs/image_classifier.yaml \
        --data ./garments --base hubkit-tiny/resnet-classifier --push-to-hub me/garment-classifier

Every field of hubkit.recipes.image_classifier.ImageClassifierConfig (--help lists them) can be set in the YAML
recipe and overridden with --field value.
"""

from __future__ import annotations

import json

from hubkit.recipes.image_classifier import ImageClassifierConfig, image_classifier_setup
from hubkit.training import run_trainer, train


def main(config: ImageClassifierConfig) -> None:
    result = train(config, image_classifier_setup(config))
    if not result.is_main_process:
        return
    summary = {"model": str(result.adapter_dir), "steps": result.global_step, "metrics": result.metrics}
    if result.pushed_revision:
        summary.update(pushed=config.push_to_hub, revision=result.pushed_revision)
    print(json.dumps(summary))


if __name__ == "__main__":
    run_trainer(main, ImageClassifierConfig, description=__doc__)
