"""`hubkit plant evaluate | predict`: the seed's evaluate.py and infer.py on a trained PlantVLM (repo id or folder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ._registry import arg, command, group

group("plant", help="plant disease models (PlantVLM): evaluate on a multimodal JSONL, predict on photos")


def _load(checkpoint: str, num_classes: int | None):
    from ..plant.model import PlantVLM

    model = PlantVLM.from_pretrained(checkpoint)
    if num_classes is not None and num_classes != model.config.num_classes:
        raise ConfigError(
            f"--num-classes is {num_classes} but {checkpoint} has {model.config.num_classes} classes; "
            f"pass --num-classes {model.config.num_classes} or leave it out"
        )
    return model


@command(
    "plant evaluate",
    arg("--checkpoint", required=True, help="the trained model: repo id or folder (what plant_vlm pushes)"),
    arg("--jsonl-file", required=True, metavar="FILE", help="multimodal_dataset.jsonl (hubkit data map-text)"),
    arg("--root-dir", required=True, metavar="DIR", help="the folder its image paths are relative to"),
    arg("--num-classes", type=int, default=None, help="checked against the model's (the seed's flag)"),
    arg("--output-dir", default="evaluation_results", metavar="DIR"),
    arg("--batch-size", type=int, default=32),
    arg("--no-descriptions", action="store_true", help="skip generating descriptions (BLEU / ROUGE-L)"),
    help="accuracy, F1, AUC, confusion matrix, per class report, image only scores; BLEU, ROUGE, perplexity",
    options=("offline",),
)
def _plant_evaluate(args) -> None:
    from ..plant.evaluate import evaluate_plant_model
    from ..plant.texts import read_multimodal

    model = _load(args.checkpoint, args.num_classes)
    samples, _ = read_multimodal(args.jsonl_file, args.root_dir)
    report = evaluate_plant_model(
        model, samples, args.output_dir, batch_size=args.batch_size, describe=not args.no_descriptions
    )
    m, image_only = report["metrics"], report["image_only"]
    lines = [
        f"samples {m['num_samples']}, classes {m['num_classes']}",
        f"accuracy {m['accuracy']:.4f}  F1 macro {m['f1_macro']:.4f}  F1 weighted {m['f1_weighted']:.4f}  "
        f"AUC (OvR macro) {m['auc_ovr_macro']:.4f}",
        f"image only: accuracy {image_only['accuracy']:.4f}  F1 macro {image_only['f1_macro']:.4f}",
    ]
    if report.get("text_metrics"):
        t = report["text_metrics"]
        lines.append(
            f"descriptions: BLEU-4 {t['bleu']:.4f}  ROUGE-L {t['rougeL_f']:.4f}  perplexity {t['perplexity']:.2f}"
        )
    for line in lines:
        print(line, file=sys.stderr)
    print(Path(args.output_dir).resolve())


@command(
    "plant predict",
    arg("--checkpoint", required=True, help="the trained model: repo id or folder"),
    arg("--image", required=True, action="append", help="a leaf photo (repeatable)"),
    arg("--text", default=None, help="optional symptom description (for every image)"),
    arg("--num-classes", type=int, default=None, help="checked against the model's (the seed's flag)"),
    arg("--top-k", type=int, default=5),
    arg("--generate-description", action="store_true", help="add the description head's text"),
    help="the top k disease classes with probabilities (JSON per image), optionally a generated description",
    options=("offline",),
)
def _plant_predict(args) -> None:
    from ..plant.evaluate import DESCRIPTIONS_FILE
    from ..tasks import to_pil

    model = _load(args.checkpoint, args.num_classes)
    images = [to_pil(path, name=path) for path in args.image]  # a bad file fails here, named, before any output
    ranked = model.predict(images, [args.text] * len(images), top_k=args.top_k)
    descriptions = model.generate_description(images, [args.text] * len(images)) if args.generate_description else None
    references = {}
    if args.generate_description:
        from .. import hub

        path = Path(args.checkpoint)
        folder = path if path.is_dir() else hub.pull(args.checkpoint)
        if (folder / DESCRIPTIONS_FILE).is_file():
            references = json.loads((folder / DESCRIPTIONS_FILE).read_text())
    for i, (path, row) in enumerate(zip(args.image, ranked, strict=True)):
        out = {"image": path, "top_k": [{"class": c, "probability": round(p, 6)} for c, p in row]}
        if descriptions is not None:
            out["description"] = descriptions[i]
            out["reference"] = references.get(row[0][0])
        print(json.dumps(out, ensure_ascii=False))
