"""hubkit.optimize and `hubkit optimize`: int8 (ONNX Runtime static QDQ, torchao), structured / unstructured
pruning, distillation, the report, the variants as store repos, and the CLI's one-line errors.

The end-to-end test trains a tiny ResNet classifier on the generated garment catalogue (five silhouettes:
shirt, trousers, dress, shoe, bag; colours and fabrics vary within a category) and runs the CLI on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from PIL import Image

from hubkit.errors import ConfigError

MAX_INT8_ACCURACY_LOSS = 0.10  # held-out top-1 points the int8 variant may lose (one image is ~3 points here)
SIZE = 48


def _processor(size: int = SIZE):
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _tiny_resnet(labels: list[str]):
    from transformers import ResNetForImageClassification

    from hubkit.tiny.resnet_classifier import config

    torch.manual_seed(0)
    return ResNetForImageClassification(config(labels))


def _garment_folders(root: Path, per_category: int) -> Path:
    """The garment catalogue as a class-per-folder tree: images/<category>/<id>.png."""
    from hubkit.data.garments import make_catalogue, read_catalogue

    shop = make_catalogue(root / "shop", n_per_category=per_category, seed=0, size=64)
    tree = root / "classes"
    for row in read_catalogue(shop):
        (tree / row["category"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shop / row["file"], tree / row["category"] / Path(row["file"]).name)
    return tree


# --- fast unit tests ---------------------------------------------------------------------------------------------


def test_distillation_loss_is_the_documented_mix():
    from hubkit.optimize import distillation_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    labels = torch.randint(0, 5, (6,))
    ce = F.cross_entropy(student, labels)
    t = 5.0
    p = F.softmax(teacher / t, dim=-1)
    kl = (p * (p.log() - F.log_softmax(student / t, dim=-1))).sum(-1).mean()
    got = distillation_loss(student, teacher, labels)  # defaults: T=5, alpha=0.5
    assert torch.allclose(got, 0.5 * ce + 0.5 * t**2 * kl, rtol=1e-5)
    assert torch.allclose(distillation_loss(student, teacher, labels, alpha=1.0), ce, rtol=1e-6)
    # a student equal to its teacher has no KL term left
    same = distillation_loss(teacher, teacher, labels, alpha=0.0)
    assert abs(float(same)) < 1e-5


def test_structured_pruning_removes_channels_and_reloads_exactly(tmp_path):
    from hubkit.optimize import load_variant, prune_structured
    from hubkit.optimize.variant import STRUCTURE_FILE, save_pruned, write_variant_info

    model = _tiny_resnet(["a", "b", "c"]).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    pruned = prune_structured(model, x, ratio=0.3)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in pruned.parameters())
    assert after < 0.8 * before
    assert pruned(pixel_values=x).logits.shape == (2, 3)  # the classifier keeps one output per class
    folder = tmp_path / "pruned"
    folder.mkdir()
    structure = save_pruned(pruned, folder)
    write_variant_info(folder, name="pruned", format="pruned", kind="pruned", source="test")
    assert structure and json.loads((folder / STRUCTURE_FILE).read_text()) == structure
    loaded = load_variant(folder)
    assert loaded.parameters() == after
    with torch.no_grad():
        np.testing.assert_allclose(loaded.logits(x), pruned(pixel_values=x).logits.numpy(), rtol=1e-5, atol=1e-6)


def test_vit_mlp_pruning_and_torchao_int8_round_trip(tmp_path):
    """A Linear-heavy model: MLP neurons pruned (config stays true), torchao int8 saved through safetensors."""
    from hubkit.optimize import choose_int8_method, load_variant, prune_structured, torchao_int8
    from hubkit.optimize.variant import save_torchao, write_variant_info
    from hubkit.tiny import image_classification

    image_classification.build(tmp_path / "vit")
    from transformers import AutoModelForImageClassification

    vit = AutoModelForImageClassification.from_pretrained(tmp_path / "vit").eval()
    assert choose_int8_method(vit) == "torchao-dynamic"
    x = torch.randn(3, 3, 32, 32)
    pruned = prune_structured(vit, x, ratio=0.5)
    assert pruned.config.intermediate_size == vit.config.intermediate_size // 2
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in vit.parameters())

    try:
        import torchao  # noqa: F401
    except ImportError:  # optional: without it, a clear refusal saying how to get it
        with pytest.raises(ConfigError, match="pip install torchao"):
            torchao_int8(vit)
        pytest.skip("torchao is optional (pip install torchao==0.18.0): the int8 round trip needs it")
    quantized = torchao_int8(vit)
    assert type(quantized.vit.layers[0].mlp.fc1.weight).__name__ == "Int8Tensor"
    folder = tmp_path / "int8"
    folder.mkdir()
    vit.config.save_pretrained(folder)
    save_torchao(quantized, folder)
    write_variant_info(folder, name="int8", format="torchao", kind="int8", source="test")
    loaded = load_variant(folder)
    assert type(loaded.runtime.vit.layers[0].mlp.fc1.weight).__name__ == "Int8Tensor"
    with torch.no_grad():
        expected = quantized(pixel_values=x).logits.numpy()
        fp32 = vit(pixel_values=x).logits.numpy()
    np.testing.assert_allclose(loaded.logits(x), expected, rtol=1e-5, atol=1e-6)  # the same int8 weights
    assert np.abs(expected - fp32).max() < 0.05 * max(np.abs(fp32).max(), 1e-3) + 0.05  # close to fp32


def test_cli_refuses_unknown_repo_and_non_classifier(tmp_path):
    from hubkit.tiny import image_embedding

    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(data / "x.png")
    proc = run_cli("optimize", "nobody/missing-model", "--data", str(data.parent), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubkit optimize:") and "nobody/missing-model" in lines[0]

    image_embedding.build(tmp_path / "dino")
    proc = run_cli("optimize", str(tmp_path / "dino"), "--data", str(data.parent), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not an image classifier" in lines[0] and "Dinov2Model" in lines[0]


# --- end to end --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_optimize_end_to_end(tmp_path):
    """Train a classifier briefly, push it, run `hubkit optimize` on the store repo; check every variant."""
    from hubkit import cards, hub
    from hubkit.data.garments import CATEGORIES
    from hubkit.optimize import FinetuneSettings, finetune, load_classification_data, load_variant

    tree = _garment_folders(tmp_path, per_category=24)
    labels = sorted(CATEGORIES)
    processor = _processor()
    model = _tiny_resnet(labels)
    data = load_classification_data(tree, processor, model.config.label2id, seed=0)
    model, metrics = finetune(
        model, data.train, data.heldout, tmp_path / "teacher-run", base_name="shop/teacher",
        settings=FinetuneSettings(steps=80, batch_size=16, learning_rate=3e-3),
    )  # fmt: skip
    chance = 1 / len(labels)
    assert metrics["accuracy"] > 0.6  # learnable: well above chance (0.2) after a few seconds
    model.config.architectures = ["ResNetForImageClassification"]
    model.save_pretrained(tmp_path / "teacher")
    processor.save_pretrained(tmp_path / "teacher")
    hub.push(tmp_path / "teacher", "shop/teacher")

    out = tmp_path / "variants"
    proc = run_cli(
        "optimize", "shop/teacher", "--int8", "--prune", "--distill", "--data", str(tree), "--out", str(out),
        "--push-prefix", "shop/teacher", "--student", "resnet", "--student-width", "0.125", "--distill-steps", "120",
        "--recovery-steps", "20", "--latency-runs", "5",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| int8 | onnx |" in proc.stdout

    report = json.loads((out / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    assert set(by_name) == {"fp32", "fp32-onnx", "int8", "pruned", "sparse", "distilled"}
    fp32, int8 = by_name["fp32"], by_name["int8"]
    assert fp32["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)  # the same held-out split
    # int8: smaller on disk than fp32 (and than fp32 ONNX), accuracy within the stated loss, BatchNorm folded
    assert int8["size_bytes"] < 0.6 * fp32["size_bytes"]
    assert int8["size_bytes"] < by_name["fp32-onnx"]["size_bytes"]
    assert int8["accuracy"] >= fp32["accuracy"] - MAX_INT8_ACCURACY_LOSS
    assert int8["notes"]["batchnorm_nodes_after_folding"] == 0
    assert int8["notes"]["onnx_ops"].get("QuantizeLinear", 0) > 0
    # pruning: fewer parameters; unstructured: the same count, half of them zero, same size
    assert by_name["pruned"]["parameters"] < 0.85 * fp32["parameters"]
    assert by_name["sparse"]["parameters"] == fp32["parameters"]
    assert by_name["sparse"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    # the distilled student is smaller and beats chance
    assert by_name["distilled"]["parameters"] < fp32["parameters"]
    assert by_name["distilled"]["accuracy"] > chance + 0.15
    for v in report["variants"]:
        assert set(v["latency_ms"]) == {"batch_1", "batch_8"}
        assert 0 < v["latency_ms"]["batch_1"]["p50"] <= v["latency_ms"]["batch_1"]["p95"]
        assert v["throughput_ips"] > 0 and v["size_bytes"] > 0
    assert by_name["int8"]["ratios"]["size"] == pytest.approx(int8["size_bytes"] / fp32["size_bytes"])

    md = (out / "report.md").read_text()
    assert md.count("\n") == 2 + len(by_name) and "| distilled |" in md
    with Image.open(out / "report.png") as png:
        assert png.format == "PNG" and png.size[0] > 100

    # every variant but the source is a loadable store repo carrying its card and the report
    heldout_x, heldout_y = data.heldout.pixels.numpy(), data.heldout.labels.numpy()
    for name in ("fp32-onnx", "int8", "pruned", "sparse", "distilled"):
        repo = f"shop/teacher-{name}"
        assert f"{name}  {repo}@" in proc.stdout
        folder = hub.pull(repo)
        assert {"report.json", "report.md", "report.png", "README.md", "preprocessor_config.json"} <= {
            p.name for p in folder.iterdir()
        }
        card = cards.read_card(folder)
        assert "| int8 | onnx |" in card.text
        assert card.data.eval_results[0].metric_value == pytest.approx(by_name[name]["accuracy"])
        variant = load_variant(repo)
        accuracy = float((variant.logits(heldout_x).argmax(-1) == heldout_y).mean())
        assert accuracy == pytest.approx(by_name[name]["accuracy"], abs=1e-9)  # the report's number is real
    assert load_variant("shop/teacher-int8").format == "onnx"
    assert load_variant("shop/teacher-pruned").format == "pruned"
