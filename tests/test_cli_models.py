"""`hubkit bootstrap` and `hubkit predict` as a user runs them."""

from __future__ import annotations

import json

import numpy as np
from conftest import run_cli
from PIL import Image
from skimage import data

from hubkit import hub, tiny
from hubkit.bootstrap import NOTICE, SAMPLE_DEPTH_DATA, demo_adapter_repo
from hubkit.tasks import list_tasks


def test_bootstrap_fills_the_store_offline_and_is_idempotent():
    proc = run_cli("bootstrap", "--offline", check=True)
    repos = {ref.repo_id for ref in hub.list_repos()}
    assert {spec.repo_name for spec in tiny.FAMILIES.values()} <= repos
    assert any(r.endswith("-demo-lora-0") for r in repos)
    assert len(proc.stdout.strip().splitlines()) == len(repos)
    # every task gets its demo adapters, and the sample depth data set is there
    assert {demo_adapter_repo(task, i) for task in list_tasks() for i in range(2)} <= repos
    assert hub.get_store().exists(SAMPLE_DEPTH_DATA, repo_type="dataset")
    # the tiny model's card passes `hubkit card` (check=True: no problems) and says it is random and what it mimics
    spec = tiny.FAMILIES["depth-anything"]
    card = json.loads(run_cli("card", spec.repo_name, "--json", check=True).stdout)
    assert card["pipeline_tag"] == spec.pipeline_tag and "random-weights" in card["tags"]
    readme = (hub.pull(spec.repo_name) / "README.md").read_text()
    assert NOTICE.format(what="model", real=spec.real_repo_id) in readme
    again = run_cli("bootstrap", "--offline", check=True)
    assert again.stdout.strip() == ""  # nothing new


def test_predict_writes_outputs_and_reports_bad_inputs(tmp_path):
    run_cli("bootstrap", "--offline", check=True)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(data.astronaut()).save(images / "astronaut.png")
    Image.fromarray(data.camera()).save(images / "camera.png")  # greyscale
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    proc = run_cli(
        "predict",
        "depth-estimation",
        str(images),
        "--base",
        "hubkit-tiny/depth-anything",
        "--adapter",
        "hubkit-tiny/depth-anything-demo-lora-0",
        "--out",
        str(out),
        "--offline",
    )
    assert proc.returncode == 1 and "broken.png" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    depth = np.load(out / "astronaut.depth.npy")
    assert depth.shape == (512, 512) and np.isfinite(depth).all()
    png = np.asarray(Image.open(out / "camera.depth.png"))
    assert png.dtype == np.uint16 and png.shape == data.camera().shape
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sum("error" in r for r in records) == 1 and sum("outputs" in r for r in records) == 2


def test_predict_keeps_same_named_images_apart(tmp_path):
    run_cli("bootstrap", "--offline", check=True)
    for sub, source in (("a", data.astronaut()), ("b", data.coffee())):
        (tmp_path / "in" / sub).mkdir(parents=True)
        Image.fromarray(source).save(tmp_path / "in" / sub / "x.png")
    Image.fromarray(data.chelsea()).save(tmp_path / "x.png")
    out = tmp_path / "out"
    args = ["predict", "depth-estimation", str(tmp_path / "in"), str(tmp_path / "x.png"), "--out", str(out)]
    run_cli(*args, "--base", "hubkit-tiny/depth-anything", "--offline", check=True)
    shapes = {p.name: np.load(p).shape for p in out.glob("*.depth.npy")}
    assert shapes == {"a__x.depth.npy": (512, 512), "b__x.depth.npy": (400, 600), "x.depth.npy": (300, 451)}


def test_cli_errors_below_hubkit_are_one_line(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("a")
    run_cli("push", str(tmp_path / "folder"), "me/demo", check=True)
    (tmp_path / "afile").write_text("x")
    for args, expected in [
        (["pull", "me/demo", "--to", str(tmp_path / "afile")], "afile"),
        (["lora", "plan", "depth-anything/Depth-Anything-V2-Small-hf", "--r", "-1"], "positive"),
        (["tag", "me/demo", "v1"], None),
    ]:
        proc = run_cli(*args)
        if expected is None:
            assert proc.returncode == 0
            continue
        assert proc.returncode == 1 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    (tmp_path / "folder" / "b.txt").write_text("b")
    run_cli("push", str(tmp_path / "folder"), "me/demo", check=True)
    moved = run_cli("tag", "me/demo", "v1")
    assert moved.returncode == 1 and "--force" in moved.stderr
    assert run_cli("tag", "me/demo", "v1", "--force").returncode == 0
