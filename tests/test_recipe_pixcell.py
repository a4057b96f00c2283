"""The PixCell recipe (hubkit.recipes.pixcell_lora, trainers/pixcell_lora.py) on the tiny PixCell: source-stain patches
condition, target-stain (IHC) patches are learned. The loss falls and the adapted samples' stain colour distance to
the target is below the base's; the saved adapter reloads through hubkit.load to the very samples the run evaluated;
the frozen encoder / VAE never run after the cache is built; the trainer runs offline and pushes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import ROOT, one_torch_thread
from diffusers import AutoencoderKL
from PIL import Image

import hubkit
from hubkit import hub, tiny
from hubkit.data.histology import make_histology_dataset
from hubkit.errors import ConfigError, DataError
from hubkit.pixcell.encoder import PathologyEncoder
from hubkit.recipes.pixcell_lora import METRICS_FILE, PixCellLoraConfig, pixcell_setup
from hubkit.training import build_config, load_recipe, train

TRAINER = ROOT / "trainers" / "pixcell_lora.py"
RECIPE = ROOT / "trainers" / "configs" / "pixcell.yaml"
TASK = "histology-generation"
one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """40 pixel-aligned patch pairs of the IHC slide: target stain (IHC) and source stain (re-mixed, H&E-like)."""
    root = tmp_path_factory.mktemp("histology")
    kw = dict(patch=16, crop=64, count=40, split="train")
    return make_histology_dataset(root / "target", **kw).root, make_histology_dataset(root / "source", domain="source",
                                                                                      **kw).root  # fmt: skip


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny.build("pixcell", tmp_path_factory.mktemp("base") / "pixcell")


def quick(base, domains, out, **overrides) -> dict:
    target, source = domains
    args = {"base": base, "data": target, "condition_data": source, "output_dir": out, "batch_size": 8,
            "grad_accum": 1, "epochs": 6, "warmup_steps": 0, "learning_rate": 3e-3, "mlp_learning_rate": 3e-3,
            "eval_steps": 10, "mixed_precision": "no", "report_to": "none", "val_fraction": 0.2,
            "log_every": 1}  # fmt: skip
    return {k: str(v) for k, v in {**args, **overrides}.items()}


@pytest.fixture(scope="module")
def run(base_dir, domains, tmp_path_factory):
    config = build_config(PixCellLoraConfig, quick(base_dir, domains, tmp_path_factory.mktemp("run")))
    setup = pixcell_setup(config)
    return train(config, setup), setup, config


def test_loss_falls_and_adapted_samples_move_toward_the_target_stain(run):
    result, _, _ = run
    curve = [loss for _, loss in result.losses]
    assert len(curve) == 24 and np.mean(curve[-4:]) < 0.7 * np.mean(curve[:4]), curve
    before, after = result.metrics_before, result.metrics
    assert set(before) == set(after) >= {"colour_distance", "fd_pca", "cosine_mean", "hed_mean_distance"}
    # the assertion; on the tiny model it held for every seed tried (0-3: 17.4-18.8 -> 13.9-16.5)
    assert after["colour_distance"] < before["colour_distance"], (before, after)
    folder = result.adapter_dir
    names = {p.name for p in folder.iterdir()}
    assert names >= {"adapter_config.json", "adapter_model.safetensors", "condition_mlp.safetensors",
                     "pixcell_adapter.json", "pytorch_lora_weights.safetensors", METRICS_FILE, "README.md"}  # fmt: skip
    report = json.loads((folder / METRICS_FILE).read_text())
    assert report["base"]["colour_distance"] == pytest.approx(before["colour_distance"])
    assert report["adapted"]["colour_distance"] == pytest.approx(after["colour_distance"])
    card = hubkit.cards.read_card(folder)
    assert {r.metric_type for r in card.data.eval_results} >= {"colour_distance", "fd_pca", "cosine_mean"}
    assert "| colour_distance |" in card.text and "Before and after" in card.text


def test_the_saved_adapter_reloads_to_the_samples_the_run_evaluated(run, base_dir):
    result, setup, config = run
    evaluator = setup.evaluate_fn
    images = [Image.fromarray(a) for a in evaluator.input_images]
    kwargs = dict(num_inference_steps=config.eval_steps, guidance_scale=config.eval_guidance,
                  sampler=config.eval_sampler, num_images=config.eval_images_per_input, seed=config.seed)  # fmt: skip
    adapted = hubkit.load(TASK, base_dir, adapters=[result.adapter_dir]).predict(images, **kwargs)
    got = np.stack([out.array for out in adapted])
    # the final evaluation's samples, up to float noise landing on a rounding boundary (1 level, rarely)
    diff = np.abs(got.astype(int) - evaluator.samples)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999, diff.max()
    again = hubkit.load(TASK, base_dir, adapters=[result.adapter_dir]).predict(images, **kwargs)
    np.testing.assert_array_equal(np.stack([out.array for out in again]), got)
    plain = np.stack([out.array for out in hubkit.load(TASK, base_dir).predict(images, **kwargs)])
    assert np.abs(plain.astype(int) - got).mean() > 1.0  # the adapter changed the samples


class Calls:
    """Counts calls of the frozen encoder and of the VAE encoder."""

    def __init__(self, monkeypatch):
        self.count = 0
        for cls, name in ((PathologyEncoder, "forward"), (AutoencoderKL, "encode")):
            original = getattr(cls, name)

            def counted(*args, _original=original, **kwargs):
                self.count += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(cls, name, counted)


@pytest.mark.parametrize("cache", [True, False])
def test_epoch_two_never_runs_the_frozen_encoder_or_vae_with_the_cache(base_dir, domains, tmp_path, monkeypatch,
                                                                       cache):  # fmt: skip
    calls = Calls(monkeypatch)
    config = build_config(PixCellLoraConfig, quick(base_dir, domains, tmp_path / "out", epochs=2, cache=cache,
                                                   eval_before=False, eval_steps=2))  # fmt: skip
    setup = pixcell_setup(config)
    built = calls.count
    assert (built > 0) == cache  # the cache is filled before training (4 flips x 40 patches x 2 models)
    spans: dict[int, list[int]] = {}
    inner = setup.loss_fn

    def loss_fn(model, batch):
        epoch = setup.train_dataset.epoch
        spans.setdefault(epoch, [calls.count, calls.count])
        loss = inner(model, batch)
        if model.training:
            spans[epoch][1] = calls.count
        return loss

    setup.loss_fn = loss_fn
    train(config, setup)
    assert set(spans) == {0, 1}
    start, end = spans[1]  # from epoch 2's first step to its last: data loading and every loss
    if cache:
        assert end == start, f"{end - start} encoder / VAE calls in epoch 2"
        again = calls.count
        pixcell_setup(config)  # a second run on the same patches encodes nothing
        assert calls.count == again
    else:
        assert end - start >= 2 * 3  # the seed's way: encoder + VAE on every step


def test_recipe_holds_the_seeds_values_and_refuses_bad_ones(base_dir, domains, tmp_path):
    values = load_recipe(RECIPE)
    assert values["grad_accum"] == 4 and values["learning_rate"] == 1e-4 and values["lora_r"] == 8
    assert values["base"] == "StonyBrook-CVLab/PixCell-256" and values["mixed_precision"] == "auto"
    config = build_config(PixCellLoraConfig, values)
    assert config.cond_dropout == 0.1 and config.mlp_learning_rate != config.learning_rate
    spec = config.adapter_spec()
    assert spec.lora_targets == ("to_q", "to_k", "to_v", "to_out.0") and spec.r == 8
    with pytest.raises(ConfigError, match="lora_scope"):
        build_config(PixCellLoraConfig, {**values, "lora_scope": "self"})
    with pytest.raises(ConfigError, match="sampler"):
        build_config(PixCellLoraConfig, {**values, "eval_sampler": "heun"})
    short = make_histology_dataset(tmp_path / "short", patch=16, crop=64, count=5, domain="source").root
    config = build_config(PixCellLoraConfig, quick(base_dir, (domains[0], short), tmp_path / "out"))
    with pytest.raises(DataError, match="pair up in order"):
        pixcell_setup(config)


def launch(args: dict, *, processes: int = 1) -> dict:
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd += ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--num_processes", "1"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(TRAINER), "--config",
            str(RECIPE)]  # fmt: skip
    for key, value in args.items():
        cmd += [f"--{key}", value]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_accelerate_launch_offline_on_the_tiny_model_writes_and_pushes(base_dir, domains, tmp_path, isolated_home):
    hub.push(base_dir, "hubkit-tiny/pixcell")  # as `hubkit bootstrap` stores it
    args = quick("hubkit-tiny/pixcell", domains, tmp_path / "run", epochs=2, eval_steps=4)
    summary = launch({**args, "push_to_hub": "lab/tiny-stain"})
    assert summary["pushed"] == "lab/tiny-stain" and summary["steps"] == 8
    assert set(summary["metrics_before"]) == set(summary["metrics"]) >= {"colour_distance", "fd_pca"}
    pushed = hub.resolve("lab/tiny-stain")
    assert (pushed / "pytorch_lora_weights.safetensors").is_file() and (pushed / "condition_mlp.safetensors").is_file()
    card = (pushed / "README.md").read_text()
    assert "base_model: hubkit-tiny/pixcell" in card and "| colour_distance |" in card
    saved = yaml.safe_load((pushed / "training_config.yaml").read_text())
    assert saved["grad_accum"] == 1 and saved["lora_r"] == 8 and saved["cond_dropout"] == 0.1
    predictor = hubkit.load(TASK, "hubkit-tiny/pixcell", adapters=["lab/tiny-stain"])
    patch = Image.open(next((domains[1]).glob("*.png")))
    assert predictor.predict(patch, num_inference_steps=2, num_images=2).array.shape == (2, 16, 16, 3)
    # the PixCell Space offers the pushed adapter for its base and measures both sample sets against its target stain
    from hubkit.pixcell.demo import TARGET_COLOUR_FILE, PixCellDemo

    assert (pushed / TARGET_COLOUR_FILE).is_file()
    demo = PixCellDemo()
    assert demo.available_adapters("hubkit-tiny/pixcell") == ["lab/tiny-stain"]
    shown = demo.run(next((domains[1]).glob("*.png")), adapter="lab/tiny-stain", num_images=2, num_inference_steps=2)
    assert len(shown.base_images) == len(shown.adapted_images) == 2 and set(shown.distances) == {"base", "adapted"}


@pytest.mark.slow
def test_ddp_two_processes_share_one_cache(base_dir, domains, tmp_path):
    one = launch(quick(base_dir, domains, tmp_path / "one", epochs=2, batch_size=8, eval_steps=2, cond_dropout=0.0))
    two = launch(quick(base_dir, domains, tmp_path / "two", epochs=2, batch_size=4, eval_steps=2, cond_dropout=0.0),
                 processes=2)  # fmt: skip
    assert one["steps"] == two["steps"] == 8
    cached = sorted(p.name for p in (tmp_path / "two" / "cache").rglob("*.safetensors"))
    assert len(cached) == 2 * 4 * 40 and not list((tmp_path / "two" / "cache").rglob("*.tmp*"))
    assert np.isfinite(two["metrics"]["colour_distance"])
