"""The TPU path: the depth trainer under torch_xla on the CPU (PJRT_DEVICE=CPU).

torch_xla pins its own torch, so this runs in a separate environment that `make test-xla` creates
outside the clone (scripts/xla_env.sh) and names in HUBKIT_XLA_ENV.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.xla


@pytest.fixture
def xla_python():
    env_dir = os.environ.get("HUBKIT_XLA_ENV")
    if not env_dir or not (Path(env_dir) / "bin" / "python").is_file():
        pytest.skip("HUBKIT_XLA_ENV is not set: run `make test-xla`, which creates the torch_xla environment")
    return Path(env_dir) / "bin"


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run a trainer in its own process group: on a timeout the trainer goes too, not only `accelerate launch`."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=1500)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after 1500 s: {err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_depth_trainer_runs_on_xla(xla_python, tmp_path):
    from hubkit import hub, tiny
    from hubkit.data.synthetic import make_motorcycle_zivid

    data = make_motorcycle_zivid(tmp_path / "data", crops=8, seed=0)
    base = tiny.build("depth-anything", tmp_path / "base")
    env = {**os.environ, "PJRT_DEVICE": "CPU", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    cmd = [str(xla_python / "accelerate"), "launch", "--num_processes", "1", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "trainers" / "depth_lora.py")]
    cmd += ["--config", str(ROOT / "trainers" / "configs" / "depth_zivid.yaml"), "--data", str(data)]
    cmd += ["--base", str(base), "--input_size", "56", "--max_steps", "4", "--batch_size", "2"]
    cmd += ["--checkpoint_every", "2", "--report_to", "none", "--output_dir", str(tmp_path / "out")]
    cmd += ["--push-to-hub", "me/xla-depth"]
    proc = _run(cmd, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "DistributedType.XLA" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and 0 < summary["metrics"]["abs_rel"] < 10
    pulled = hub.pull("me/xla-depth")
    assert (pulled / "adapter_model.safetensors").is_file() and (pulled / "README.md").is_file()
    assert (tmp_path / "out" / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()


def test_plant_trainer_runs_on_xla(xla_python, tmp_path):
    """The Plantset trainer (tiny PlantVLM, LoRA) under torch_xla: fixed batch shapes (padded texts, drop_last)."""
    from hubkit import hub, tiny
    from hubkit.data.leaves import make_leaf_dataset

    leaves = make_leaf_dataset(tmp_path / "leaves", per_class=4, size=32, seed=0, num_classes=4)
    rows = [{"path": path.relative_to(leaves.image_dir).as_posix(), "label": label,
             "label_id": leaves.classes.index(label), "text": f"symptoms of {label}", "description": label}
            for path, label in leaves.images()]  # fmt: skip
    jsonl = tmp_path / "multimodal_dataset.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = tiny.build("plant-vlm", tmp_path / "base")
    env = {**os.environ, "PJRT_DEVICE": "CPU", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    cmd = [str(xla_python / "accelerate"), "launch", "--num_processes", "1", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "trainers" / "plant_vlm.py")]
    cmd += ["--config", str(ROOT / "trainers" / "configs" / "plant_vlm.yaml"), "--jsonl-file", str(jsonl)]
    cmd += ["--root-dir", str(leaves.image_dir), "--base", str(base), "--num-classes", "4", "--batch_size", "4"]
    cmd += ["--max_steps", "4", "--warmup_steps", "0", "--checkpoint_every", "2", "--report_to", "none"]
    cmd += ["--text_max_length", "16", "--description_max_length", "8", "--val_fraction", "0.25"]
    cmd += ["--output_dir", str(tmp_path / "out"), "--push-to-hub", "me/xla-plant"]
    proc = _run(cmd, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "DistributedType.XLA" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and 0 <= summary["metrics"]["accuracy"] <= 1
    pulled = hub.pull("me/xla-plant")
    assert (pulled / "model.safetensors").is_file() and (pulled / "adapter_model.safetensors").is_file()
    report = json.loads((pulled / "evaluation" / "metrics.json").read_text())  # written on the host after XLA
    assert 0 <= report["accuracy"] <= 1 and (pulled / "evaluation" / "confusion_matrix.png").is_file()
