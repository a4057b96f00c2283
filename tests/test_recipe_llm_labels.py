"""The class-extraction (Q)LoRA recipe on the tiny Mistral: data, prompt masking, training, int8 / NF4, the trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, one_torch_thread

import hubkit
from hubkit import tiny
from hubkit.data.segma import make_shapes_dataset
from hubkit.errors import ConfigError, DataError
from hubkit.recipes.llm_labels import (
    MISTRAL_INST_TEMPLATE,
    LabelPair,
    LlmLabelsConfig,
    classes_in_caption_order,
    encode_pair,
    llm_labels_setup,
    load_tokenizer,
    pairs_from_detection_data,
    read_pairs,
    set_scores,
)
from hubkit.tasks import get_task
from hubkit.tasks.labels import DOMAIN_INSTRUCTIONS
from hubkit.training import build_config, train

TRAINER = ROOT / "trainers" / "llm_labels_qlora.py"
RECIPE = ROOT / "trainers" / "configs" / "llm_labels_qlora.yaml"
SEED_PAIRS = ROOT / "trainers" / "data" / "class_extraction_seed.jsonl"


one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny.build("mistral", tmp_path_factory.mktemp("base") / "mistral")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", images=16, seed=0)


def quick(base_dir, out, **overrides) -> dict:
    values = dict(
        base=str(base_dir),
        pairs=str(SEED_PAIRS),
        output_dir=str(out),
        quantize="none",
        gradient_checkpointing=False,
        learning_rate=1e-2,
        lr_schedule="constant",
        warmup_steps=0,
        lora_dropout=0.0,
        batch_size=3,
        grad_accum=1,
        epochs=1000,
        max_steps=60,
        eval_every=60,
        eval_on_train=True,
        report_to="none",
        log_every=1,
        samples=3,
    )
    values.update(overrides)
    return {k: str(v) for k, v in values.items()}


def test_seed_pairs_ship_verbatim():
    pairs = read_pairs(SEED_PAIRS)
    assert [p.output for p in pairs] == ["ribcage, heart, lung, chest", "pipe, gauge, valve, joint",
                                         "tree, mountain, rock, cloud, sky"]  # fmt: skip
    assert pairs[0].input.startswith("Medical image showing: a chest X-ray with visible ribcage")
    assert pairs[1].input.endswith("safety valves in operational position")
    assert pairs[2].classes == ("tree", "mountain", "rock", "cloud", "sky")


def test_pairs_from_a_segma_export_follow_the_caption(shapes, tmp_path):
    pairs = pairs_from_detection_data(shapes)
    by_input = {p.input: p for p in pairs}
    assert by_input["a yellow triangle and a blue square on grass"].output == "triangle, square"
    assert by_input["two red discs on brick"].output == "disc"  # plural named, one class
    assert classes_in_caption_order("a dog under a traffic light", ["zebra", "traffic light", "dog", "cat"]) == [
        "dog",
        "traffic light",
        "cat",
        "zebra",
    ]  # fmt: skip  (unnamed classes follow, sorted)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a cat", "output": ""}\n')
    with pytest.raises(DataError, match="line 1"):
        read_pairs(bad)
    bad.write_text('{"description": "a cat"}\n')
    with pytest.raises(DataError, match="expected"):
        read_pairs(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_pairs(tmp_path / "missing.jsonl")
    assert set_scores(["a", "b"], ["b", "c"]) == pytest.approx((0.5, 0.5, 0.5))
    assert set_scores([], []) == (1.0, 1.0, 1.0) and set_scores(["a"], [])[2] == 0.0


def test_prompt_is_the_pipelines_and_only_the_answer_is_learned(base_dir):
    tokenizer, fallback = load_tokenizer(base_dir)
    assert not fallback
    pair = LabelPair("a cat on a sofa", "cat, sofa", ("cat", "sofa"))
    ids, labels = encode_pair(tokenizer, pair, "medical")
    task = get_task("label-extraction")
    fed = tokenizer.apply_chat_template(task.prompt([pair.input], "medical"), add_generation_prompt=True)
    fed = fed["input_ids"] if isinstance(fed, dict) or hasattr(fed, "keys") else fed
    assert ids[: len(fed)] == list(fed)  # the tokens LabelExtraction.generate gives the model
    assert labels[: len(fed)] == [-100] * len(fed) and -100 not in labels[len(fed) :]
    assert tokenizer.decode(ids[len(fed) :]).strip() == "cat, sofa</s>"
    assert DOMAIN_INSTRUCTIONS["medical"].splitlines()[0] in tokenizer.decode(ids)
    with pytest.raises(ConfigError, match="domain"):
        build_config(LlmLabelsConfig, {"domain": "astrology"})
    assert build_config(LlmLabelsConfig, {"domain": "automotive"}).domain == "automotive"  # the pipeline's alias


def test_base_without_chat_template_uses_mistral_inst_format(base_dir, tmp_path):
    import shutil

    plain = shutil.copytree(base_dir, tmp_path / "plain")
    config_file = plain / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer, fallback = load_tokenizer(plain)
    assert fallback and tokenizer.chat_template == MISTRAL_INST_TEMPLATE
    ids, _ = encode_pair(tokenizer, LabelPair("a cat", "cat", ("cat",)), None)
    assert tokenizer.decode(ids).startswith("<s>[INST] Analyze these image descriptions")
    setup = llm_labels_setup(build_config(LlmLabelsConfig, quick(plain, tmp_path / "out")))
    assert "[INST] ... [/INST]" in setup.card_notes


def test_nf4_on_cpu_is_refused_in_one_line(base_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: NF4 is allowed")
    with pytest.raises(ConfigError, match="int8 or --quantize none"):
        llm_labels_setup(build_config(LlmLabelsConfig, quick(base_dir, tmp_path, quantize="nf4")))
    args = quick(base_dir, tmp_path, quantize="nf4")
    cmd = [sys.executable, str(TRAINER), "--config", str(RECIPE), *[x for k, v in args.items() for x in (f"--{k}", v)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("llm_labels_qlora.py: quantize=nf4") and "int8" in last and "none" in last, last


@pytest.mark.slow
def test_lora_learns_the_seed_examples_and_the_pipeline_call_reads_them(base_dir, tmp_path):
    # Three examples cannot be split: train and evaluate on the same three (eval_on_train), as the card says.
    config = build_config(LlmLabelsConfig, quick(base_dir, tmp_path / "run"))
    setup = llm_labels_setup(config)
    result = train(config, setup)
    curve = [loss for _, loss in result.losses]
    assert np.mean(curve[-5:]) < 0.95 * np.mean(curve[:5]), curve  # the tiny model's logits stay flat: small drop
    assert result.metrics_before["set_f1"] == 0.0
    assert result.metrics["set_f1"] >= 0.9, result.metrics
    card = hubkit.cards.read_card(result.adapter_dir)
    assert {r.metric_type for r in card.data.eval_results} >= {"set_f1", "precision", "recall", "exact_match"}
    assert "Sample answers" in card.text and "| set_f1 | 0 |" in card.text
    samples = json.loads((result.adapter_dir / "label_samples.json").read_text())
    assert [s["gold"] for s in samples] == [", ".join(p.classes) for p in read_pairs(SEED_PAIRS)]
    # the pipeline's own call (LabelExtraction.predict on the adapter) gives the learned classes
    labeler = hubkit.load("label-extraction", base_dir, adapters=[result.adapter_dir])
    pairs = read_pairs(SEED_PAIRS)
    found = labeler.predict([], captions=[p.input for p in pairs])
    hits = sum(set(f.names) == set(p.classes) for f, p in zip(found, pairs, strict=True))
    assert hits >= 2, [f.raw for f in found]
    assert labeler.predict([], captions=[pairs[0].input], adapter="base")[0].names != list(pairs[0].classes)


@pytest.mark.slow
def test_int8_base_trains(base_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    args = quick(base_dir, tmp_path / "run", quantize="int8", max_steps=15, eval_every=15, samples=1)
    config = build_config(LlmLabelsConfig, args)
    setup = llm_labels_setup(config)
    assert setup.trainable.prepare is not None  # prepare_model_for_kbit_training
    result = train(config, setup)
    curve = [loss for _, loss in result.losses]
    assert np.mean(curve[-3:]) < np.mean(curve[:3]), curve
    assert "8-bit" in hubkit.cards.read_card(result.adapter_dir).text
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


@pytest.mark.gpu
def test_nf4_qlora_on_gpu(base_dir, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("NF4 needs a CUDA GPU")
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    config = build_config(LlmLabelsConfig, quick(base_dir, tmp_path / "run", quantize="nf4", max_steps=20,
                                                 eval_every=20, gradient_checkpointing=True))  # fmt: skip
    setup = llm_labels_setup(config)
    base = setup.load_base()
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    assert base.config.quantization_config.bnb_4bit_use_double_quant
    result = train(config, setup)
    curve = [loss for _, loss in result.losses]
    assert np.mean(curve[-3:]) < np.mean(curve[:3]), curve
    assert "NF4" in hubkit.cards.read_card(result.adapter_dir).text


@pytest.mark.slow
def test_trainer_on_a_segma_export_writes_and_pushes(base_dir, shapes, tmp_path):
    hubkit.push(base_dir, "hubkit-tiny/mistral")
    hubkit.push(shapes, "me/shapes", repo_type="dataset")
    args = quick("hubkit-tiny/mistral", tmp_path / "run", data="me/shapes", max_steps=6, eval_every=0,
                 eval_on_train=False, batch_size=4, samples=2, push_to_hub="me/mistral-classes")  # fmt: skip
    del args["pairs"]  # the recipe's own: the seed's three, relative to the repository root
    del args["gradient_checkpointing"]  # the recipe's: on, as prepare_model_for_kbit_training has it
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(TRAINER), "--config", str(RECIPE)]  # fmt: skip
    cmd += [x for k, v in args.items() for x in (f"--{k}", v)]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["pushed"] == "me/mistral-classes" and len(summary["revision"]) == 40
    assert set(summary["metrics"]) >= {"set_f1", "exact_match"}
    card = hubkit.cards.read_card(hubkit.pull("me/mistral-classes"))
    assert card.data.datasets == ["me/shapes"] and card.data.base_model == "hubkit-tiny/mistral"
    assert {r.metric_type for r in card.data.eval_results} >= {"set_f1"}
    assert "3 from class_extraction_seed.jsonl" in card.text and "from shapes" in card.text
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
