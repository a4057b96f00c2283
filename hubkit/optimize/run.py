"""`optimize(repo, data=...)`: the fp32 source and its int8 / pruned / sparse / distilled variants, each a loadable
folder with its card and the shared report, pushed to the store when asked."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import cards, hub
from ..errors import ConfigError, HubkitError
from . import prune as pruning
from . import quantize
from .data import ClassificationData, load_classification_data
from .report import VariantReport, add_ratios, markdown_table, measure, write_report
from .train import FinetuneSettings, build_student, finetune
from .variant import load_variant, save_pruned, write_variant_info

logger = logging.getLogger(__name__)
TASK = "image-classification"


@dataclass(frozen=True)
class OptimizeOptions:
    int8: bool = True
    int8_method: str = "auto"  # auto (CNN -> onnx-static, else torchao-dynamic), onnx-static, torchao-*
    calibration_images: int = 32
    prune: bool = True
    prune_ratio: float = 0.3  # structured: share of channels / MLP neurons removed
    sparse_amount: float = 0.5  # unstructured L1: share of weights zeroed
    distill: bool = True
    student: str = "mobilenet_v2"
    student_width: float = 0.35
    temperature: float = 5.0  # the transformers distillation guide's defaults
    alpha: float = 0.5  # weight of the hard-label CE; 1 - alpha goes to T^2 * KL
    recovery: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(steps=30, learning_rate=5e-4))
    distillation: FinetuneSettings = field(default_factory=lambda: FinetuneSettings(steps=150, learning_rate=2e-3))
    heldout: float = 0.25
    latency_runs: int = 20
    seed: int = 0

    def __post_init__(self):
        if not (self.int8 or self.prune or self.distill):
            raise ConfigError("Nothing to do: ask for at least one of int8, prune, distill")
        if self.int8_method not in quantize.INT8_METHODS:
            raise ConfigError(f"int8 method must be one of {quantize.INT8_METHODS}, got {self.int8_method!r}")
        if self.calibration_images < 1 or self.latency_runs < 1:
            raise ConfigError("calibration_images and latency_runs must be at least 1")


@dataclass
class OptimizeResult:
    out: Path
    reports: list[VariantReport]
    folders: dict[str, Path]
    report_files: dict[str, Path]
    pushed: dict[str, str] = field(default_factory=dict)  # variant -> "repo@revision"


def check_classifier(folder: Path, repo: str) -> dict:
    """The folder's config.json, or ConfigError when it is not a transformers image classifier."""
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{repo!r} has no config.json: hubkit optimize needs a transformers image classifier")
    config = json.loads(path.read_text())
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForImageClassification") for a in architectures):
        raise ConfigError(
            f"{repo!r} is not an image classifier (architectures: {architectures or 'none'}); hubkit optimize "
            "needs a *ForImageClassification model"
        )
    return config


def optimize(
    repo: str,
    *,
    data: str | Path,
    out: str | Path,
    options: OptimizeOptions | None = None,
    push_prefix: str | None = None,
    hub_name: str | None = None,
) -> OptimizeResult:
    """Make the variants of `repo` (store repo, Hub id or folder) asked in `options`, measure them on `data`'s
    held-out split, write `out/<variant>/` folders and `out/report.{json,md,png}`, and push each variant as
    `<push_prefix>-<variant>` when `push_prefix` is given."""
    from ..tasks import LoadOptions, get_task

    options = options or OptimizeOptions()
    if push_prefix is not None:
        hub.parse_repo_id(f"{push_prefix}-int8", "model")
    source = hub.resolve(repo, **({"hub": hub_name} if hub_name else {}))
    check_classifier(source, repo)
    torch.manual_seed(options.seed)
    model, processor = get_task(TASK).load(source, LoadOptions())
    model.eval()
    data_set = load_classification_data(
        data, processor, model.config.label2id, heldout=options.heldout, seed=options.seed
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    heldout = (data_set.heldout.pixels.numpy(), data_set.heldout.labels.numpy())
    shape = tuple(data_set.heldout.pixels.shape[1:])
    example = data_set.heldout.pixels[:1]

    folders: dict[str, Path] = {}
    kinds: dict[str, tuple[str, dict, float | None]] = {}

    def new_folder(name: str) -> Path:
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        processor.save_pretrained(folder)
        folders[name] = folder
        return folder

    def save_transformers(name: str, net: torch.nn.Module, kind: str, notes: dict, sparsity=None) -> None:
        folder = new_folder(name)
        net.save_pretrained(folder, safe_serialization=True)
        write_variant_info(folder, name=name, format="transformers", kind=kind, source=repo, **notes)
        kinds[name] = (kind, notes, sparsity)

    save_transformers("fp32", model, "fp32", {})
    if options.int8:
        method = quantize.choose_int8_method(model, options.int8_method)
        folder = new_folder("int8")
        if method == "onnx-static":
            model.config.save_pretrained(folder)
            reference = new_folder("fp32-onnx")
            model.config.save_pretrained(reference)
            calibration = data_set.calibration(options.calibration_images)
            facts = quantize.onnx_static_int8(model, calibration, folder, fp32_folder=reference)
            facts["parameters"] = sum(p.numel() for p in model.parameters())
            notes = {"method": method, **facts}
            ref_notes = {"method": "fp32 ONNX export (BatchNorm folded), the int8 variant's runtime reference"}
            ref_notes["parameters"] = facts["parameters"]
            write_variant_info(reference, name="fp32-onnx", format="onnx", kind="fp32", source=repo, **ref_notes)
            kinds["fp32-onnx"] = ("fp32", ref_notes, None)
            write_variant_info(folder, name="int8", format="onnx", kind="int8", source=repo, **notes)
        else:
            quantized = quantize.torchao_int8(model, weight_only=method == "torchao-weight-only")
            model.config.save_pretrained(folder)
            quantize.save_torchao_int8(quantized, folder)
            notes = {"method": method, "quantized": "nn.Linear weights (int8); other layers fp32"}
            write_variant_info(folder, name="int8", format="torchao", kind="int8", source=repo, **notes)
        kinds["int8"] = ("int8", notes, None)
    if options.prune:
        pruned = pruning.prune_structured(model, example, ratio=options.prune_ratio)
        before = _accuracy(pruned, data_set)
        pruned, metrics = finetune(
            pruned, data_set.train, data_set.heldout, out / "_train" / "pruned", base_name=repo,
            settings=options.recovery,
        )  # fmt: skip
        folder = new_folder("pruned")
        structure = save_pruned(pruned, folder)
        notes = {
            "method": f"structured L1 ({'MLP neurons' if pruning._mlp_pairs(model) else 'channels, torch-pruning'})",
            "ratio": options.prune_ratio,
            "accuracy_before_recovery": before,
            "recovery_steps": options.recovery.steps,
            "layers_reshaped": len(structure),
        }  # fmt: skip
        write_variant_info(folder, name="pruned", format="pruned", kind="pruned", source=repo, **notes)
        kinds["pruned"] = ("pruned", notes, None)
        sparse = pruning.prune_unstructured(model, amount=options.sparse_amount)
        save_transformers(
            "sparse", sparse, "sparse", {"method": "unstructured L1 (global)", "amount": options.sparse_amount},
            sparsity=pruning.sparsity(sparse),
        )  # fmt: skip
    if options.distill:
        student = build_student(model.config, shape[-1], kind=options.student, width=options.student_width)
        student, metrics = finetune(
            student, data_set.train, data_set.heldout, out / "_train" / "distilled", base_name=repo,
            settings=options.distillation, teacher=model, temperature=options.temperature, alpha=options.alpha,
        )  # fmt: skip
        notes = {
            "student": f"{type(student).__name__} ({options.student}, width {options.student_width}), random init",
            "teacher": repo,
            "temperature": options.temperature,
            "alpha": options.alpha,
            "steps": options.distillation.steps,
        }
        save_transformers("distilled", student, "distilled", notes)

    reports = []
    for name, folder in folders.items():
        kind, notes, sparsity = kinds[name]
        variant = load_variant(folder)
        reports.append(
            measure(variant, kind=kind, image_shape=shape, heldout=heldout, runs=options.latency_runs,
                    sparsity=sparsity, notes=notes)
        )  # fmt: skip
    add_ratios(reports)
    meta = {
        "source": repo,
        "data": str(data),
        "heldout_images": int(len(heldout[1])),
        "image_shape": list(shape),
        "torch_threads": torch.get_num_threads(),
        "note": "CPU latency on this machine; accuracy on the held-out split of the data folder",
    }
    for r in reports:
        if push_prefix and r.name != "fp32":
            r.repo = f"{push_prefix}-{r.name}"
    report_files = write_report(reports, out, meta=meta)
    result = OptimizeResult(out, reports, folders, report_files)
    for r in reports:
        folder = folders[r.name]
        for path in report_files.values():
            shutil.copy2(path, folder / path.name)
        _card(r, reports, repo, data_set).save(folder / "README.md")
        if r.repo:
            try:
                info = hub.push(folder, r.repo, hub=hub_name, message=f"hubkit optimize: {r.name} of {repo}")
            except HubkitError as err:
                raise HubkitError(f"Variants written to {out}, but pushing {r.repo!r} failed: {err}") from None
            result.pushed[r.name] = f"{r.repo}@{info.id}"
    shutil.rmtree(out / "_train", ignore_errors=True)
    return result


@torch.no_grad()
def _accuracy(model: torch.nn.Module, data_set: ClassificationData) -> float:
    logits = model(pixel_values=data_set.heldout.pixels).logits
    return float((logits.argmax(-1) == data_set.heldout.labels).float().mean())


_LOAD_NOTE = """```python
from hubkit.optimize import load_variant

model = load_variant("{repo}")  # {format} ({runtime})
logits = model.logits(pixel_values)  # float32 (N, 3, H, W) from the saved preprocessor_config.json
```"""
_RUNTIMES = {
    "onnx": "ONNX Runtime, CPU",
    "torchao": "torchao int8 tensors, loaded from safetensors",
    "pruned": "layers rebuilt from pruned_structure.json",
    "transformers": "also AutoModelForImageClassification.from_pretrained",
}


def _card(report: VariantReport, reports: list[VariantReport], source: str, data_set: ClassificationData):
    from huggingface_hub import EvalResult

    describe = {
        "fp32": "The fp32 model in ONNX Runtime: the reference that tells the int8 gain from the runtime's."
        if report.format == "onnx"
        else "The fp32 source model, measured as the reference.",
        "int8": f"int8 post-training quantization ({report.notes.get('method')}).",
        "pruned": f"Structured pruning ({report.notes.get('method')}, ratio {report.notes.get('ratio')}) with a "
        f"{report.notes.get('recovery_steps')}-step recovery fine-tune.",
        "sparse": f"Unstructured L1 magnitude pruning ({report.sparsity or 0:.0%} of the conv / linear weights are "
        "zero). Dense kernels do not skip zeros: this variant is for comparison, its speed is the fp32 model's.",
        "distilled": f"A student distilled from `{source}` (loss alpha*CE + (1-alpha)*T^2*KL, "
        f"T={report.notes.get('temperature')}, alpha={report.notes.get('alpha')}): {report.notes.get('student')}.",
    }[report.kind]
    body = "\n\n".join(
        [
            describe,
            _LOAD_NOTE.format(
                repo=report.repo or f"<folder of {report.name}>", format=report.format, runtime=_RUNTIMES[report.format]
            ),  # fmt: skip
            "## Report (all variants of this run)",
            f"Held-out accuracy on {len(data_set.heldout)} images of `{data_set.root.name}`; latency measured on "
            "this machine's CPU (p50 / p95 over repeated calls on random inputs). Files: report.json, report.md, "
            "report.png.",
            markdown_table(reports),
            "![size / latency / accuracy](report.png)",
        ]
    )
    base = source if "/" in source and not Path(source).exists() else None
    card = cards.model_card(
        model_name=report.repo or report.name,
        pipeline_tag=TASK,
        library_name="onnx" if report.format == "onnx" else "transformers",
        tags=["hubkit", "hubkit-optimize", report.kind, *(["int8"] if report.kind == "int8" else [])],
        description=body,
        base_model=base if report.kind != "distilled" else None,
    )
    if base and report.kind in ("int8", "pruned", "sparse"):
        card.data.base_model_relation = "quantized" if report.kind == "int8" else "finetune"
    if report.accuracy is not None:
        card.data.model_name = report.repo or report.name
        card.data.eval_results = [
            EvalResult(
                task_type=TASK,
                dataset_type="imagefolder",
                dataset_name=data_set.root.name,
                dataset_split="heldout",
                metric_type="accuracy",
                metric_value=float(report.accuracy),
            )
        ]
    return card


def heldout_arrays(data_set: ClassificationData) -> tuple[np.ndarray, np.ndarray]:
    return data_set.heldout.pixels.numpy(), data_set.heldout.labels.numpy()
