"""The measured report of every variant: size on disk, parameters, CPU latency p50 / p95 at batch 1 and 8,
throughput, held-out accuracy; as JSON, a Markdown table and a size-latency-accuracy plot."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .variant import VariantModel, weights_size

REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"


@dataclass
class VariantReport:
    name: str
    kind: str  # fp32, int8, pruned, sparse, distilled
    format: str
    size_bytes: int
    parameters: int
    latency_ms: dict[str, dict[str, float]]  # {"batch_1": {"p50", "p95"}, "batch_8": {...}}
    throughput_ips: float  # images per second at batch 8 (p50)
    accuracy: float | None  # held-out top-1; None when no labelled data was given
    sparsity: float | None = None  # fraction of zero conv / linear weights (unstructured pruning)
    repo: str | None = None  # where the variant was pushed
    notes: dict = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)  # vs the fp32 source: size, params, latency, accuracy

    def to_dict(self) -> dict:
        return asdict(self)


def latency(model: VariantModel, image_shape: tuple[int, ...], *, batch: int, runs: int, warmup: int = 2) -> dict:
    """p50 / p95 wall time (ms) of `model.logits` on a random float32 batch, after `warmup` calls."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *image_shape)).astype(np.float32)
    for _ in range(warmup):
        model.logits(x)
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        model.logits(x)
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)), "runs": len(times)}


def accuracy(model: VariantModel, pixels: np.ndarray, labels: np.ndarray, *, batch: int = 32) -> float:
    right = 0
    for i in range(0, len(labels), batch):
        right += int((model.logits(pixels[i : i + batch]).argmax(-1) == labels[i : i + batch]).sum())
    return right / max(len(labels), 1)


def measure(
    model: VariantModel,
    *,
    kind: str,
    image_shape: tuple[int, ...],
    heldout: tuple[np.ndarray, np.ndarray] | None,
    runs: int = 20,
    sparsity: float | None = None,
    notes: dict | None = None,
) -> VariantReport:
    lat = {f"batch_{b}": latency(model, image_shape, batch=b, runs=runs) for b in (1, 8)}
    return VariantReport(
        name=model.name,
        kind=kind,
        format=model.format,
        size_bytes=weights_size(model.folder),
        parameters=model.parameters(),
        latency_ms=lat,
        throughput_ips=8000.0 / lat["batch_8"]["p50"],
        accuracy=accuracy(model, *heldout) if heldout is not None else None,
        sparsity=sparsity,
        notes=notes or {},
    )


def add_ratios(reports: list[VariantReport], reference: str = "fp32") -> None:
    """Each report's ratios vs the reference: size, parameters, p50 latency at batch 1 / 8, accuracy delta."""
    ref = next((r for r in reports if r.name == reference), None)
    if ref is None:
        return
    for r in reports:
        r.ratios = {
            "size": r.size_bytes / ref.size_bytes,
            "parameters": r.parameters / max(ref.parameters, 1),
            "latency_b1": r.latency_ms["batch_1"]["p50"] / ref.latency_ms["batch_1"]["p50"],
            "latency_b8": r.latency_ms["batch_8"]["p50"] / ref.latency_ms["batch_8"]["p50"],
        }
        if r.accuracy is not None and ref.accuracy is not None:
            r.ratios["accuracy_delta"] = r.accuracy - ref.accuracy
    onnx_ref = next((r for r in reports if r.name == f"{reference}-onnx"), None)
    for r in reports:  # int8 in ONNX Runtime vs fp32 in ONNX Runtime: the quantization's own gain
        if onnx_ref is not None and r.format == "onnx" and r is not onnx_ref:
            r.ratios["size_vs_fp32_onnx"] = r.size_bytes / onnx_ref.size_bytes
            r.ratios["latency_b1_vs_fp32_onnx"] = r.latency_ms["batch_1"]["p50"] / onnx_ref.latency_ms["batch_1"]["p50"]
            r.ratios["latency_b8_vs_fp32_onnx"] = r.latency_ms["batch_8"]["p50"] / onnx_ref.latency_ms["batch_8"]["p50"]


def markdown_table(reports: list[VariantReport]) -> str:
    head = "| variant | format | size (MB) | params | p50 / p95 b1 (ms) | p50 / p95 b8 (ms) | img/s | accuracy "
    head += "| size x | latency x (b1) |"
    rows = [head, "|" + "---|" * 10]
    for r in reports:
        b1, b8 = r.latency_ms["batch_1"], r.latency_ms["batch_8"]
        acc = "n/a" if r.accuracy is None else f"{r.accuracy:.3f}"
        if r.sparsity is not None:
            acc += f" (sparsity {r.sparsity:.0%})"
        rows.append(
            f"| {r.name} | {r.format} | {r.size_bytes / 1e6:.3f} | {r.parameters:,} "
            f"| {b1['p50']:.2f} / {b1['p95']:.2f} "
            f"| {b8['p50']:.2f} / {b8['p95']:.2f} | {r.throughput_ips:.1f} | {acc} | {r.ratios.get('size', 1):.2f} "
            f"| {r.ratios.get('latency_b1', 1):.2f} |"
        )
    return "\n".join(rows)


def plot(reports: list[VariantReport], path: Path) -> Path:
    """Latency (p50, batch 1) against size; marker colour = accuracy, labels name the variants."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    sizes = [r.size_bytes / 1e6 for r in reports]
    lat = [r.latency_ms["batch_1"]["p50"] for r in reports]
    acc = [r.accuracy if r.accuracy is not None else np.nan for r in reports]
    points = ax.scatter(sizes, lat, c=acc, cmap="viridis", s=80, edgecolors="black", vmin=0, vmax=1)
    right = min(sizes) + 0.6 * (max(sizes) - min(sizes))
    for r, x, y in zip(reports, sizes, lat, strict=True):
        label = r.name if r.accuracy is None else f"{r.name} ({r.accuracy:.2f})"
        left = x > right  # labels of the biggest variants go left of their marker, inside the axes
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(-6 if left else 6, 4), fontsize=8,
                    ha="right" if left else "left")  # fmt: skip
    ax.margins(x=0.08, y=0.1)
    fig.colorbar(points, ax=ax, label="held-out accuracy")
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("CPU latency p50, batch 1 (ms)")
    ax.set_title("size / latency / accuracy of each variant")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(reports: list[VariantReport], folder: Path, *, meta: dict | None = None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data = {**(meta or {}), "variants": [r.to_dict() for r in reports]}
    paths = {"json": folder / REPORT_JSON, "md": folder / REPORT_MD, "png": folder / REPORT_PNG}
    paths["json"].write_text(json.dumps(data, indent=2) + "\n")
    paths["md"].write_text(markdown_table(reports) + "\n")
    plot(reports, paths["png"])
    return paths
