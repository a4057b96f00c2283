"""Evaluation of a PlantVLM on a multimodal JSONL (the seed's evaluate.py): accuracy, F1 macro / weighted, AUC
(one-vs-rest, macro), per-class report, confusion matrix PNG (normalised, sorted, top confusions listed), the same
without texts (``*_image_only``), and for the description head BLEU-4, ROUGE-L and perplexity on the reference
descriptions. Writes metrics.json, confusion_matrix.png, per_class_f1.png, classification_report.md and
descriptions.jsonl (generated vs reference) into one folder.

    report = evaluate_plant_model(PlantVLM.from_pretrained("me/plant"), samples, "evaluation_results")
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError

logger = logging.getLogger(__name__)
REPORT_DIR = "evaluation"  # inside a trained model's folder
DESCRIPTIONS_FILE = "descriptions.json"  # {class: reference description}, beside a trained model


def align_samples(samples, class_names: list[str]) -> list:
    """The samples with `label_id` re-indexed into the model's classes by name (a JSONL mapped on its own numbers
    its classes its own way); a label the model does not know is a DataError naming it."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({s.label for s in samples} - set(index))
    if unknown:
        raise DataError(
            f"{len(unknown)} label(s) of the data set are not classes of the model: {unknown[:5]}; evaluate on data "
            f"mapped for this model's {len(class_names)} classes (classes.json beside it)."
        )
    return [replace(s, label_id=index[s.label]) for s in samples]


def reference_descriptions(samples) -> dict[str, str]:
    """{class: its reference description} (the first non-empty one of each class), for the Space and the CLI."""
    out: dict[str, str] = {}
    for sample in samples:
        if sample.description and sample.label not in out:
            out[sample.label] = sample.description
    return out


@torch.no_grad()
def evaluate_plant_model(
    model,
    samples,
    out_dir: str | Path,
    *,
    batch_size: int = 32,
    describe: bool = True,
    max_descriptions: int = 256,
) -> dict[str, Any]:
    """Evaluate `model` (a PlantVLM, or a PEFT model around one) on `samples`; write the report into `out_dir`.
    Returns {"metrics": ..., "image_only": ..., "text_metrics": ..., "files": {name: path}}."""
    from ..metrics.classification import ClassificationAccumulator, text_generation_metrics, write_evaluation_report
    from ..recipes.plant_vlm import PlantDataset, _device_inputs, predict_loader

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = list(base.class_names)
    if not samples:
        raise DataError("No samples to evaluate on.")
    samples = align_samples(samples, names)
    dataset = PlantDataset(samples, base, augment=False, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    results: dict[str, Any] = {}
    accumulators = {}
    for key, with_text in (("metrics", True), ("image_only", False)):
        probs, labels = predict_loader(model, loader, with_text=with_text)
        acc = ClassificationAccumulator(len(names), names, from_logits=False)
        acc.update(torch.from_numpy(probs), torch.from_numpy(labels))
        accumulators[key] = acc
        results[key] = acc.compute()
    text_metrics = None
    if describe:
        total, tokens = 0.0, 0
        for batch in loader:
            out = model(**_device_inputs(model, batch))
            total += float(out.description_loss) * int(out.description_tokens)
            tokens += int(out.description_tokens)
        chosen = samples[:max_descriptions]
        generated: list[str] = []
        for start in range(0, len(chosen), batch_size):
            chunk = chosen[start : start + batch_size]
            generated += base.generate_description([s.path for s in chunk], [s.text or None for s in chunk])
        references = [s.description for s in chosen]
        text_metrics = text_generation_metrics(generated, references, mean_token_nll=total / max(tokens, 1))
        results["text_metrics"] = text_metrics
    out_dir = Path(out_dir)
    files = write_evaluation_report(out_dir, results["metrics"], class_names=names, text_metrics=text_metrics)
    image_only = {k: v for k, v in results["image_only"].items() if not isinstance(v, (list, dict))}
    (out_dir / "image_only.json").write_text(json.dumps(_finite(image_only), indent=2) + "\n")
    files["image_only"] = out_dir / "image_only.json"
    if describe:
        lines = [json.dumps({"path": str(s.path), "label": s.label, "generated": g, "reference": s.description},
                            ensure_ascii=False) for s, g in zip(chosen, generated, strict=True)]  # fmt: skip
        (out_dir / "descriptions.jsonl").write_text("\n".join(lines) + "\n")
        files["descriptions"] = out_dir / "descriptions.jsonl"
    results["files"] = files
    m = results["metrics"]
    logger.info("accuracy %.4f, F1 macro %.4f, image-only accuracy %.4f", m["accuracy"], m["f1_macro"],
                results["image_only"]["accuracy"])  # fmt: skip
    return results


def _finite(values: dict) -> dict:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in values.items()}
