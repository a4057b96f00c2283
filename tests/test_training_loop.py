"""The shared loop driven directly with three small recipes (see loop_recipes.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from loop_recipes import classifier_setup, config, diffusion_setup, int8_lm_setup
from safetensors.torch import load_file

from hubkit import tiny
from hubkit.adapters import TRAINED_MODULES_FILE, attach_adapter
from hubkit.errors import ConfigError
from hubkit.training import train
from hubkit.training.trainable import ParamGroup, Trainable

HERE = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return tiny.build("image-classification", tmp_path_factory.mktemp("vit") / "vit")


@pytest.fixture(scope="module")
def diffusion(tmp_path_factory):
    return tiny.build("diffusion", tmp_path_factory.mktemp("diffusion") / "diffusion")


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_classifier_with_a_new_head_learns(vit, tmp_path, precision):
    setup = classifier_setup(vit)
    loader = torch.utils.data.DataLoader(setup.eval_dataset, batch_size=16)
    before = setup.evaluate_fn(setup.load_base(), loader)["accuracy"]
    result = train(config(tmp_path, vit, max_steps=60, batch_size=16, mixed_precision=precision), setup)
    assert result.metrics["accuracy"] >= 0.6, (before, result.metrics)  # chance is 0.2
    assert result.metrics["accuracy"] > before + 0.2
    # the loop measured the base before training (same head init, same seed) and the card shows both
    assert result.metrics_before["accuracy"] == pytest.approx(before, abs=0.05 if precision == "bf16" else 1e-9)
    card = (result.adapter_dir / "README.md").read_text()
    assert "| metric | base | trained |" in card
    assert f"| accuracy | {result.metrics_before['accuracy']:.4g} | {result.metrics['accuracy']:.4g} |" in card
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    head = [k for k in saved if "classifier" in k]
    assert head and all("lora_" not in k for k in head)  # the head is saved in full beside the LoRA weights
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["modules_to_save"] == ["classifier"]
    reloaded = attach_adapter(setup.load_base(), result.adapter_dir, name="x", check_base_model=False)
    # the loop evaluates under autocast: bf16 may flip a borderline sample or two
    again = setup.evaluate_fn(reloaded, loader)["accuracy"]
    assert again == pytest.approx(result.metrics["accuracy"], abs=0.05 if precision == "bf16" else 1e-9)


def test_parameter_groups_get_their_own_learning_rate(vit, tmp_path):
    setup = classifier_setup(vit)
    seen = {}
    original = torch.optim.AdamW

    class Recording(original):
        def __init__(self, groups, **kw):
            super().__init__(groups, **kw)
            seen.update({g["name"]: (g["lr"], len(g["params"])) for g in self.param_groups})

    torch.optim.AdamW = Recording
    try:
        train(config(tmp_path, vit, max_steps=1, batch_size=16, learning_rate=1e-4), setup)
    finally:
        torch.optim.AdamW = original
    assert seen["classifier"][0] == 1e-2 and seen["default"][0] == 1e-4
    assert seen["classifier"][1] == 2 and seen["default"][1] > 2  # head weight + bias; the LoRA A/B matrices


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_diffusion_lora_and_conditioning_mlp_in_two_groups(diffusion, tmp_path, precision):
    setup = diffusion_setup(diffusion)
    start = {k: v.clone() for k, v in setup.load_base().condition_adapter.state_dict().items()}
    run = config(tmp_path, diffusion, max_steps=80, batch_size=8, learning_rate=1e-3, mixed_precision=precision)
    result = train(run, setup)
    curve = [loss for _, loss in result.losses]
    assert np.mean(curve[-15:]) < 0.8 * np.mean(curve[:15]), curve
    folder = result.adapter_dir
    assert {"adapter_model.safetensors", TRAINED_MODULES_FILE} <= {p.name for p in folder.iterdir()}
    trained = load_file(folder / TRAINED_MODULES_FILE)
    assert set(trained) == {f"condition_adapter.{k}" for k in start}
    assert any(not torch.equal(trained[f"condition_adapter.{k}"], v) for k, v in start.items())  # it trained

    from hubkit.tasks import get_task

    task = get_task("conditional-image-generation")
    image = __import__("PIL.Image").Image.fromarray(
        (setup.eval_dataset.pixels[0].permute(1, 2, 0).numpy() * 127.5 + 127.5).astype("uint8")
    )
    first = attach_adapter(setup.load_base(), folder, name="a", check_base_model=False)
    again = attach_adapter(setup.load_base(), folder, name="b", check_base_model=False)
    a = task.predict(first, None, [image], num_inference_steps=3, seed=7)[0].image
    b = task.predict(again, None, [image], num_inference_steps=3, seed=7)[0].image
    plain = task.predict(setup.load_base(), None, [image], num_inference_steps=3, seed=7)[0].image
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(plain))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_int8_lora_of_a_causal_lm(tmp_path):
    pytest.importorskip("bitsandbytes")
    base = tiny.build("mistral", tmp_path / "mistral")
    setup = int8_lm_setup(base)
    run = config(tmp_path / "run", base, max_steps=40, batch_size=4, learning_rate=1e-2, lora_r=16, lora_alpha=32)
    result = train(run, setup)
    curve = [loss for _, loss in result.losses]
    # a random 2-layer model with frozen int8 weights learns slowly: ~6.1 -> ~5.7 in 40 steps
    assert np.mean(curve[-5:]) < 0.95 * np.mean(curve[:5]), curve
    model = attach_adapter(setup.load_base(), result.adapter_dir, name="x", check_base_model=False)
    assert "Linear8bitLt" in {type(m).__name__ for m in model.modules()}


def test_full_model_training_saves_and_reloads_the_whole_model(vit, tmp_path):
    setup = classifier_setup(vit)
    setup.trainable = Trainable(lora=False)
    result = train(config(tmp_path, vit, max_steps=4, batch_size=16, learning_rate=1e-3), setup)
    assert result.adapter_dir.name == "model" and (result.adapter_dir / "model.safetensors").is_file()
    assert result.trainable_params == result.total_params


def test_export_hook_writes_beside_the_adapter_before_the_one_push(vit, tmp_path, isolated_home):
    import hubkit

    seen = {}

    def export(model, folder, result):
        seen.update(card=(folder / "README.md").is_file(), step=result.global_step, model=type(model).__name__)
        (folder / "extra").mkdir()
        (folder / "extra" / "note.txt").write_text(f"step {result.global_step}")

    setup = classifier_setup(vit)
    setup.export_fn = export
    result = train(config(tmp_path, vit, max_steps=2, batch_size=16, push_to_hub="me/with-extra"), setup)
    assert seen["card"] and seen["step"] == 2 and "Peft" in seen["model"]  # the trained model, unwrapped
    assert len(hubkit.list_revisions("me/with-extra")) == 1
    assert (hubkit.pull("me/with-extra") / "extra" / "note.txt").read_text() == "step 2"
    assert result.pushed_revision == hubkit.list_revisions("me/with-extra")[0].id


def test_a_declaration_that_trains_nothing_is_refused(vit, tmp_path):
    setup = classifier_setup(vit)
    setup.trainable = Trainable(lora=False, full_modules=("no_such_module",))
    with pytest.raises(ConfigError, match="no_such_module"):
        train(config(tmp_path, vit, max_steps=1, batch_size=16), setup)
    with pytest.raises(ConfigError, match="regex"):
        ParamGroup("(")


def test_custom_lora_targets_keep_the_preset_exclude(diffusion, tmp_path):
    setup = diffusion_setup(diffusion)
    result = train(config(tmp_path, diffusion, max_steps=1, batch_size=8, lora_targets="to_q,to_v"), setup)
    targets = json.loads((result.adapter_dir / "adapter_config.json").read_text())["target_modules"]
    assert targets and not any(t.startswith(("vae", "condition_adapter")) for t in targets)  # the VAE has to_q too


@pytest.mark.slow
def test_classifier_under_two_process_ddp(vit, tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += [os.path.join(HERE, "loop_recipes.py"), "classifier", str(vit), str(tmp_path / "ddp")]
    cmd += ["max_steps=60", "batch_size=8"]  # 2 x 8 = the single-process batch of 16
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": HERE}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["metrics"]["accuracy"] >= 0.6, summary["metrics"]
    assert (tmp_path / "ddp" / "adapter" / "adapter_model.safetensors").is_file()
