"""`hubkit optimize`'s variants on real-size architectures with random weights: size and CPU latency vs fp32.

Prints one JSON object. Models: ResNet-50 (transformers' ResNetConfig defaults, the microsoft/resnet-50
architecture, 1000 classes) and ViT-B/16 (the bundled google/vit-base-patch16-224 config), random weights, 224 px.
Variants are made with the same functions `hubkit optimize` uses, saved as variant folders, loaded back with
`load_variant` and timed on random inputs:
- int8: ONNX Runtime static QDQ for ResNet-50 (plus the fp32 ONNX graph, to tell the int8 gain from the runtime's);
  torchao dynamic (int8 activations + weights) and weight-only for ViT;
- pruned: structured L1 at `--prune-ratio` (channels for ResNet, MLP neurons for ViT), no recovery fine-tune (it does
  not change size or speed);
- sparse: unstructured L1 at 50% (size and speed are fp32's: dense kernels);
- distilled: the student architecture (MobileNetV2 1.0, google/mobilenet_v2_1.0_224) untrained.
Accuracy is NOT measured: with random weights it means nothing. Calibration uses random-normal images.

    python bench/deploy_optimize.py [--models resnet-50 vit-base] [--runs 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hubkit.optimize import load_variant, measure, onnx_static_int8, prune_structured, prune_unstructured, sparsity
from hubkit.optimize.report import add_ratios
from hubkit.optimize.variant import save_pruned, save_torchao, write_variant_info
from hubkit.plan import bundled_config_dir

IMAGE = (3, 224, 224)


def build(name: str):
    from transformers import AutoConfig, AutoModelForImageClassification, ResNetConfig

    torch.manual_seed(0)
    if name == "resnet-50":
        config = ResNetConfig(num_labels=1000)  # defaults: embedding 64, [256, 512, 1024, 2048], depths [3, 4, 6, 3]
    elif name == "vit-base":
        config = AutoConfig.from_pretrained(bundled_config_dir("google/vit-base-patch16-224"))
    else:
        raise SystemExit(f"unknown model {name!r}; known: resnet-50, vit-base")
    return AutoModelForImageClassification.from_config(config).eval()


def student(num_labels: int):
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    torch.manual_seed(0)
    return MobileNetV2ForImageClassification(MobileNetV2Config(num_labels=num_labels)).eval()


def save(folder: Path, name: str, fmt: str, kind: str, model=None, **notes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if model is not None and fmt == "transformers":
        model.save_pretrained(folder, safe_serialization=True)
    write_variant_info(folder, name=name, format=fmt, kind=kind, source="random weights", **notes)
    return folder


def bench_model(name: str, root: Path, *, runs: int, prune_ratio: float, calibration: int) -> dict:
    model = build(name)
    params = sum(p.numel() for p in model.parameters())
    made: dict[str, tuple[Path, str, dict, float | None]] = {}
    timings: dict[str, float] = {}

    def timed(label, fn):
        start = time.perf_counter()
        out = fn()
        timings[label] = round(time.perf_counter() - start, 2)
        return out

    made["fp32"] = (save(root / "fp32", "fp32", "transformers", "fp32", model), "fp32", {}, None)
    if name == "resnet-50":
        rng = np.random.default_rng(0)
        calib = rng.standard_normal((calibration, *IMAGE)).astype(np.float32)
        int8_dir, ref_dir = root / "int8", root / "fp32-onnx"
        int8_dir.mkdir(parents=True)
        ref_dir.mkdir(parents=True)
        model.config.save_pretrained(int8_dir)
        model.config.save_pretrained(ref_dir)
        facts = timed("int8", lambda: onnx_static_int8(model, calib, int8_dir, fp32_folder=ref_dir))
        facts["parameters"] = params
        made["fp32-onnx"] = (save(ref_dir, "fp32-onnx", "onnx", "fp32", parameters=params), "fp32", {}, None)
        made["int8"] = (save(int8_dir, "int8", "onnx", "int8", method="onnx-static", **facts), "int8", facts, None)
    else:
        from hubkit.optimize import torchao_int8

        for label, weight_only in (("int8", False), ("int8-weight-only", True)):
            quantized = timed(label, lambda weight_only=weight_only: torchao_int8(model, weight_only=weight_only))
            folder = root / label
            folder.mkdir(parents=True)
            model.config.save_pretrained(folder)
            save_torchao(quantized, folder)
            method = "torchao-weight-only" if weight_only else "torchao-dynamic"
            made[label] = (save(folder, label, "torchao", "int8", method=method), "int8", {"method": method}, None)
    pruned = timed("pruned", lambda: prune_structured(model, torch.randn(1, *IMAGE), ratio=prune_ratio))
    (root / "pruned").mkdir(parents=True)
    save_pruned(pruned, root / "pruned")
    made["pruned"] = (save(root / "pruned", "pruned", "pruned", "pruned"), "pruned", {"ratio": prune_ratio}, None)
    sparse = timed("sparse", lambda: prune_unstructured(model, amount=0.5))
    made["sparse"] = (save(root / "sparse", "sparse", "transformers", "sparse", sparse), "sparse", {}, sparsity(sparse))
    del sparse, pruned
    made["distilled"] = (
        save(root / "distilled", "distilled", "transformers", "distilled", student(model.config.num_labels)),
        "distilled",
        {"student": "MobileNetV2 1.0 (untrained: size / latency only)"},
        None,
    )
    reports = []
    for folder, kind, notes, sp in made.values():
        variant = load_variant(folder)
        reports.append(
            measure(variant, kind=kind, image_shape=IMAGE, heldout=None, runs=runs, sparsity=sp, notes=notes)
        )
        del variant
    add_ratios(reports)
    return {
        "parameters": params,
        "make_seconds": timings,
        "variants": {
            r.name: {
                "format": r.format,
                "size_mb": round(r.size_bytes / 1e6, 2),
                "parameters": r.parameters,
                "latency_ms": {b: {k: round(v, 2) for k, v in d.items()} for b, d in r.latency_ms.items()},
                "throughput_ips": round(r.throughput_ips, 2),
                "sparsity": r.sparsity,
                "ratios_vs_fp32": {k: round(v, 3) for k, v in r.ratios.items()},
                "notes": {k: v for k, v in r.notes.items() if k != "onnx_ops"},
            }
            for r in reports
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet-50", "vit-base"])
    parser.add_argument("--runs", type=int, default=10, help="timed calls per batch size (after 2 warm-up calls)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--prune-ratio", type=float, default=0.3)
    parser.add_argument("--calibration", type=int, default=16, help="calibration images for static int8")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {
        "what": "size / CPU latency of hubkit optimize's variants vs fp32, real-size architectures, random weights",
        "accuracy": "not measured: random weights make it meaningless",
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            results["models"][name] = bench_model(
                name, Path(tmp) / name, runs=args.runs, prune_ratio=args.prune_ratio, calibration=args.calibration
            )
            print(json.dumps({name: results["models"][name]}), file=sys.stderr, flush=True)  # partial results
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
