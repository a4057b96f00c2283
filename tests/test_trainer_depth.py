"""The depth LoRA recipe end to end on real stereo data from scikit-image (motorcycle, Middlebury)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, same
from safetensors.torch import load_file

import hubkit
from hubkit import tiny
from hubkit.data.synthetic import make_motorcycle_zivid
from hubkit.recipes.depth import DepthLoraConfig, depth_setup, evaluate
from hubkit.tasks import LoadOptions
from hubkit.training import build_config, train

TRAINER = ROOT / "trainers" / "depth_lora.py"
RECIPE = ROOT / "trainers" / "configs" / "depth_zivid.yaml"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_motorcycle_zivid(tmp_path_factory.mktemp("zivid") / "motorcycle", crops=16, seed=0)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny.build("depth-anything", tmp_path_factory.mktemp("base") / "depth-anything")


def quick(base_dir, data_dir, out, **overrides):
    values = dict(
        base=str(base_dir),
        data=str(data_dir),
        output_dir=str(out),
        input_size=56,
        batch_size=4,
        epochs=1,
        max_steps=12,
        learning_rate=3e-3,
        lora_r=8,
        lora_alpha=16,
        loss="ssi",
        report_to="none",
        warmup_steps=0,
        lr_schedule="constant",
        val_fraction=0.25,
        log_every=1,
        augment=False,
    )
    values.update(overrides)
    return {k: str(v) for k, v in values.items()}


def launch(args: dict, *, processes: int = 1, env: dict | None = None, background: bool = False):
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if processes > 1:
        cmd += ["--multi_gpu", "--num_processes", str(processes)]
    else:
        cmd += ["--num_processes", "1"]
    cmd += ["--num_machines", "1", "--mixed_precision", args.get("mixed_precision", "no"), "--dynamo_backend", "no"]
    cmd += [str(TRAINER), "--config", str(RECIPE)]
    for key, value in args.items():
        cmd += [f"--{key}", value]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if background:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def losses(out: Path) -> list[float]:
    state = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))[-1]
    return [loss for _, loss in json.loads((state / "trainer_state.json").read_text())["losses"]]


def test_training_lowers_loss_and_improves_abs_rel(base_dir, data_dir, tmp_path):
    # ssi matches the evaluation's least-squares alignment, so what the loss learns shows in abs_rel
    run = quick(base_dir, data_dir, tmp_path / "run", max_steps=60, loss="ssi", learning_rate=5e-3, lora_r=16)
    run.update(lora_alpha="32", report_to="tensorboard")
    config = build_config(DepthLoraConfig, run)
    setup = depth_setup(config)
    loader = torch.utils.data.DataLoader(setup.eval_dataset, batch_size=4)
    before = evaluate(setup.load_base(), loader)
    result = train(config, setup)
    curve = [loss for _, loss in result.losses]
    assert len(curve) == 60
    assert np.mean(curve[-8:]) < 0.85 * np.mean(curve[:8]), curve
    assert result.metrics["abs_rel"] < before["abs_rel"], (before, result.metrics)
    assert set(result.metrics) >= {"d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"}
    from hubkit.adapters import attach_adapter

    final = attach_adapter(setup.load_base(), result.adapter_dir, name="final", check_base_model=False)
    assert evaluate(final, loader)["abs_rel"] == pytest.approx(result.metrics["abs_rel"], rel=1e-5)  # not stale
    card = hubkit.cards.read_card(result.adapter_dir)
    assert {r.metric_type for r in card.data.eval_results} >= {"abs_rel", "d1"}
    assert card.data.base_model == str(base_dir) and card.data.library_name == "peft"
    assert "training_config.yaml" in {p.name for p in result.adapter_dir.iterdir()}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = EventAccumulator(str(next((tmp_path / "run" / "logs").rglob("events.out.tfevents.*")).parent))
    logs.Reload()
    assert {"train/loss", "eval/abs_rel"} <= set(logs.Tags()["scalars"])
    assert "eval/depth_pred_vs_truth" in " ".join(logs.Tags()["images"])


def test_ddp_two_processes_matches_single_process(base_dir, data_dir, tmp_path):
    single = quick(base_dir, data_dir, tmp_path / "one", batch_size=4, max_steps=6, lora_dropout=0.0)
    double = quick(base_dir, data_dir, tmp_path / "two", batch_size=2, max_steps=6, lora_dropout=0.0)
    launch(single)
    launch(double, processes=2)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    np.testing.assert_allclose(two, one, rtol=2e-2)  # same global batch: the same curve, up to float order
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    diff = torch.cat([(b[k] - a[k]).flatten() for k in a]).norm() / torch.cat([a[k].flatten() for k in a]).norm()
    assert diff < 0.05, f"adapters differ by {diff:.3%}"


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_kill_9_then_resume_reaches_the_same_adapter(base_dir, data_dir, tmp_path, precision):
    common = dict(max_steps=12, mixed_precision=precision, input_size=112, augment=True)
    args = quick(base_dir, data_dir, tmp_path / "x", checkpoint_every=3, **common)
    reference = quick(base_dir, data_dir, tmp_path / "ref", **common)
    launch(reference)
    proc = launch(args, background=True)
    ckpt = tmp_path / "x" / "checkpoints" / "checkpoint-3"
    deadline = time.monotonic() + 300
    while not (ckpt / "trainer_state.json").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "x" / "adapter").exists()
    launch({**args, "resume": "latest"})
    assert losses(tmp_path / "x") == pytest.approx(losses(tmp_path / "ref"), rel=1e-4)
    a = load_file(tmp_path / "ref" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "x" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-7) for k in a)


def test_push_then_pull_gives_the_same_predictions(base_dir, data_dir, tmp_path):
    hubkit.push(base_dir, "hubkit-tiny/depth-anything")
    hubkit.push(data_dir, "me/zivid", repo_type="dataset")  # --data may name a dataset repo in the store
    summary = launch(
        quick("hubkit-tiny/depth-anything", "me/zivid", tmp_path / "run", max_steps=4, push_to_hub="me/depth-lora")
    )
    assert summary["pushed"] == "me/depth-lora" and len(summary["revision"]) == 40
    card = hubkit.cards.card_summary(hubkit.cards.read_card(hubkit.pull("me/depth-lora")))
    assert card["eval_results"] and card["base_model"] == "hubkit-tiny/depth-anything"
    assert card["datasets"] == ["me/zivid"]
    image = np.asarray(__import__("skimage").data.stereo_motorcycle()[0])[::8, ::8]
    local = hubkit.load("depth-estimation", "hubkit-tiny/depth-anything", adapters=[tmp_path / "run" / "adapter"])
    pulled = hubkit.load("depth-estimation", "hubkit-tiny/depth-anything", adapters=["me/depth-lora"])
    assert same(pulled.predict(image).depth, local.predict(image).depth, rtol=1e-6)
    assert not same(pulled.predict(image, adapter="base").depth, local.predict(image).depth)


def test_bad_config_values_are_clear(base_dir, data_dir, tmp_path):
    from hubkit.errors import ConfigError

    with pytest.raises(ConfigError, match="lora_r"):
        build_config(DepthLoraConfig, quick(base_dir, data_dir, tmp_path, lora_r=0))
    with pytest.raises(ConfigError, match="Unknown config key"):
        build_config(DepthLoraConfig, {"learning_rat": "1"})
    with pytest.raises(ConfigError, match="learning_rate"):
        build_config(DepthLoraConfig, {"learning_rate": "fast"})
    with pytest.raises(ConfigError, match="loss"):
        depth_setup(build_config(DepthLoraConfig, quick(base_dir, data_dir, tmp_path, loss="l7")))


def test_gradient_checkpointing_trains_the_same(base_dir, data_dir, tmp_path):
    curves = []
    for flag in ("false", "true"):
        args = quick(base_dir, data_dir, tmp_path / flag, max_steps=3, lora_dropout=0.0, gradient_checkpointing=flag)
        config = build_config(DepthLoraConfig, args)
        curves.append([loss for _, loss in train(config, depth_setup(config)).losses])
    assert curves[1] == pytest.approx(curves[0], rel=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reload_check_passes_under_mixed_precision(base_dir, data_dir, tmp_path, precision):
    # The check once compared the bf16 autocast forward with an fp32 reload and failed on AVX2 CPUs. A loss
    # that turns 16-bit rounding into a large difference makes that visible on any CPU.
    config = build_config(DepthLoraConfig, quick(base_dir, data_dir, tmp_path, max_steps=3, mixed_precision=precision))
    setup = depth_setup(config)
    plain = setup.loss_fn
    setup.loss_fn = lambda model, batch: torch.sin(1e4 * plain(model, batch)) + 2
    result = train(config, setup)
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert saved and all(t.dtype == torch.float32 for t in saved.values())  # trainable weights stay fp32


def test_reload_check_draws_the_same_noise_for_a_stochastic_loss(base_dir, data_dir, tmp_path):
    config = build_config(DepthLoraConfig, quick(base_dir, data_dir, tmp_path, max_steps=2))
    setup = depth_setup(config)
    plain = setup.loss_fn
    setup.loss_fn = lambda model, batch: plain(model, batch) * (1 + torch.rand(()))  # as a diffusion loss samples
    train(config, setup)  # raised "does not reproduce the trained model" before the check was seeded


def test_reload_check_refuses_an_adapter_that_does_not_reproduce(base_dir, data_dir, tmp_path):
    from hubkit.errors import HubkitError

    config = build_config(DepthLoraConfig, quick(base_dir, data_dir, tmp_path, max_steps=2))
    setup = depth_setup(config)
    other = tiny.build("depth-anything", tmp_path / "other", seed=1)
    calls = []

    def load_base():  # the check's fresh base differs from the trained one: the check must see it
        calls.append(1)
        folder = other if len(calls) > 1 else base_dir
        return hubkit.tasks.get_task("depth-estimation").load(folder, LoadOptions())[0]

    setup.load_base = load_base
    with pytest.raises(HubkitError, match="does not reproduce"):
        train(config, setup)
    assert len(calls) == 2  # once to train, once for the check


def test_push_failure_after_training_keeps_the_adapter_and_says_how_to_push(base_dir, data_dir, tmp_path):
    args = quick(base_dir, data_dir, tmp_path / "run", max_steps=2, push_to_hub="me/depth-lora", hub="hf")
    cmd = [sys.executable, str(TRAINER), "--config", str(RECIPE)] + [x for k, v in args.items() for x in (f"--{k}", v)]
    env = {
        **os.environ,
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_TOKEN": "hf_secretsecretsecret",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and "hf_secretsecretsecret" not in proc.stderr
    assert last.startswith("depth_lora.py: Training finished") and "hubkit push" in last, last
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_training_normalises_as_the_base_processor_does(data_dir, tmp_path):
    # a DPT base uses mean / std 0.5, Depth Anything ImageNet's: training must use each model's own numbers
    dpt = tiny.build("dpt", tmp_path / "dpt")
    from transformers import AutoImageProcessor

    expected = AutoImageProcessor.from_pretrained(dpt)
    config = build_config(DepthLoraConfig, quick(dpt, data_dir, tmp_path / "run", input_size=28))
    dataset = depth_setup(config).train_dataset
    np.testing.assert_allclose(dataset.mean, expected.image_mean, rtol=1e-6)
    np.testing.assert_allclose(dataset.std, expected.image_std, rtol=1e-6)
    from hubkit.data.zivid import load_pair

    rgb, _, _ = load_pair(dataset.samples[0])
    pixels = dataset[0]["pixel_values"]
    assert pixels.min() >= (0 - expected.image_mean[0]) / expected.image_std[0] - 1e-5
    assert pixels.max() <= (1 - min(expected.image_mean)) / min(expected.image_std) + 1e-5
