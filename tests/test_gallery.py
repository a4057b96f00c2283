"""The gallery: hubkit.gallery over a bootstrapped store plus adapters with real metric cards, then the Streamlit
app with AppTest (no server, no browser)."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from safetensors import safe_open
from test_space_depth import store_template

from hubkit import cards, gallery, hub
from hubkit.bootstrap import demo_adapter_repo
from hubkit.errors import ConfigError

APP = Path(__file__).resolve().parents[1] / "spaces" / "gallery" / "app.py"
SPACES = APP.parents[1]
DEPTH, PLANT = "depth-estimation", "plant-disease"
DEPTH_BASE, PLANT_BASE = "hubkit-tiny/depth-anything", "hubkit-tiny/plant-vlm"
ZIVID = "hubkit-tiny/motorcycle-zivid"
# (repo, abs_rel, d1): lower abs_rel and higher d1 are better; b is best on both, c worst.
DEPTH_RESULTS = [("test/depth-a", 0.12, 0.85), ("test/depth-b", 0.08, 0.91), ("test/depth-c", 0.15, 0.80)]
BAD_YAML = "---\nbase_model: [unclosed\ntags: {\n---\n\n# broken card\n"
BAD_INDEX = "---\nlicense: apache-2.0\nmodel-index:\n- results:\n  - task: {type: depth-estimation}\n---\n\n# x\n"


def push_adapter(store, tmp: Path, repo: str, task: str, base: str, metrics, *, training_config=None) -> None:
    """A real demo adapter's files under a new card that carries `metrics` in its model-index."""
    folder = tmp / repo.replace("/", "--")
    shutil.copytree(store.pull(demo_adapter_repo(task, 0)), folder)
    os.chmod(folder, 0o755)
    for path in folder.iterdir():
        os.chmod(path, 0o644)
    spec_fields = {"pipeline_tag": "depth-estimation" if task == DEPTH else "image-classification"}
    card = cards.adapter_card(
        model_name=repo.split("/")[1],
        base_model=base,
        **spec_fields,
        tags=[task],
        datasets=[ZIVID] if task == DEPTH else [],
        metrics=metrics,
        dataset_revision="abc123def456",
        training_config=training_config or {"lr": 1e-4, "epochs": 3},
        repo_id=repo,
        task=task,
    )
    card.save(folder / "README.md")
    hub.push(folder, repo, hub=store, message="test adapter")


def push_raw(store, tmp: Path, repo: str, readme: str) -> None:
    folder = tmp / repo.replace("/", "--")
    shutil.copytree(store.pull(demo_adapter_repo(DEPTH, 1)), folder)
    os.chmod(folder / "README.md", 0o644)
    (folder / "README.md").write_text(readme)
    hub.push(folder, repo, hub=store, message="hand-written card")


def depth_metric(name: str, value: float, dataset: str = "motorcycle-zivid") -> cards.Metric:
    # The Hub groups model-index results by data set *type*: another data set needs its own type.
    dataset_type = ZIVID if dataset == "motorcycle-zivid" else f"test/{dataset}"
    return cards.Metric(name, value, dataset_name=dataset, dataset_type=dataset_type, split="test")


@pytest.fixture
def store(tmp_path_factory, isolated_home, tmp_path) -> hub.LocalStore:
    """The bootstrapped store (hard links) plus depth / plant adapters with metrics and two broken cards."""
    shutil.copytree(
        store_template(tmp_path_factory),
        isolated_home,
        ignore=shutil.ignore_patterns(".complete"),
        copy_function=os.link,
    )
    local = hub.LocalStore(isolated_home)
    for repo, abs_rel, d1 in DEPTH_RESULTS:
        metrics = [depth_metric("abs_rel", abs_rel), depth_metric("d1", d1)]
        if repo == "test/depth-a":
            metrics += [depth_metric("abs_rel", 0.3, "nyu-mini"), depth_metric("sharpness_score", 2.0)]
        if repo == "test/depth-c":
            metrics.append(depth_metric("sharpness_score", 5.0))
        push_adapter(local, tmp_path, repo, DEPTH, DEPTH_BASE, metrics)
    push_adapter(
        local,
        tmp_path,
        "test/plant-a",
        PLANT,
        PLANT_BASE,
        [
            cards.Metric(
                "accuracy", 0.75, dataset_name="plantset", dataset_type="plantset", task_type="image-classification"
            )
        ],
    )
    push_raw(local, tmp_path, "test/bad-yaml", BAD_YAML)
    push_raw(local, tmp_path, "test/bad-index", BAD_INDEX)
    return local


def by_id(entries) -> dict[str, gallery.GalleryEntry]:
    return {e.repo_id: e for e in entries}


# -- library ----------------------------------------------------------------------------------------------------
def test_list_entries_reads_every_repo_from_cards_and_files(store):
    entries = gallery.list_entries(store)
    repos = store.list_repos("model") + store.list_repos("dataset")
    assert sorted(e.repo_id for e in entries) == sorted(r.repo_id for r in repos)
    got = by_id(entries)
    assert got[DEPTH_BASE].kind == "model" and got[DEPTH_BASE].task == DEPTH and got[DEPTH_BASE].domain == "depth"
    assert got[ZIVID].kind == "dataset" and got[ZIVID].domain == "depth" and got[ZIVID].parameters is None
    # A plant base's card says image-classification: the task comes from the adapters trained on it.
    assert got[PLANT_BASE].pipeline_tag == "image-classification" and got[PLANT_BASE].task == PLANT
    assert got["hubkit-tiny/pixcell-demo-lora-0"].domain == "histology"
    a = got["test/depth-a"]
    assert (a.kind, a.task, a.base, a.domain) == ("adapter", DEPTH, DEPTH_BASE, "depth")
    assert ("abs_rel", 0.12, "motorcycle-zivid", "test") in a.metrics
    assert a.dataset_revision == "abc123def456" and a.datasets == [ZIVID]
    assert a.library_versions["peft"] == __import__("peft").__version__
    assert datetime.fromisoformat(a.updated) and a.revision == store.resolve_revision("test/depth-a").id
    lora = json.loads((store.pull("test/depth-a") / "adapter_config.json").read_text())
    assert a.config["r"] == lora["r"] and a.config["lora_alpha"] == lora["lora_alpha"]
    assert a.config["target_modules"] == lora["target_modules"]
    assert "## How to load" in a.card_text and not a.card_text.startswith("---")
    assert a.warning is None


@pytest.mark.parametrize("repo", [DEPTH_BASE, "test/depth-a", "hubkit-tiny/pixcell"])
def test_parameter_counts_match_the_tensors(store, repo):
    """Counts come from the headers alone; here they are checked against the tensors themselves."""
    folder = store.pull(repo)
    total = 0
    for path in folder.rglob("*.safetensors"):
        with safe_open(path, "pt") as f:
            total += sum(f.get_tensor(k).numel() for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)
    assert total > 0
    assert by_id(gallery.list_entries(store))[repo].parameters == total


def test_a_card_that_does_not_parse_hides_nothing(store):
    entries = by_id(gallery.list_entries(store))
    bad = entries["test/bad-yaml"]
    assert bad.kind == "adapter" and "YAML metadata does not parse" in bad.warning
    assert bad.base == DEPTH_BASE  # still known from adapter_config.json
    assert bad.parameters and "broken card" in bad.card_text
    index = entries["test/bad-index"]
    assert "model-index cannot be parsed" in index.warning and index.metrics == []
    assert sum(1 for e in entries.values() if e.warning) == 2


def test_namespace_keeps_one_owner(store):
    assert {e.repo_id.split("/")[0] for e in gallery.list_entries(store, namespace="test")} == {"test"}


def test_hub_store_reads_cards_and_headers_not_weights(store, tmp_path, monkeypatch):
    """A namespace on the Hub (the fake Hub server): the card, the LoRA config and the parameter count arrive
    without the weights being downloaded. The fake answers no model listing, so that one call is stubbed."""
    from fake_hf_hub import FakeHub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    folder = store.pull("test/depth-b")
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    with FakeHub(tokens=("hf_fakeGalleryToken0123456789",), user="someone") as fake:
        fake.seed("someone/depth-b", files)
        remote = hub.HfStore(endpoint=fake.endpoint, token="hf_fakeGalleryToken0123456789", cache_dir=tmp_path / "c")
        listed = {"model": [hub.RepoRef("someone", "depth-b", "model")], "dataset": []}
        monkeypatch.setattr(remote, "list_repos", lambda repo_type=None, author=None: listed[repo_type])
        [entry] = gallery.list_entries(remote, namespace="someone")
    local = by_id(gallery.list_entries(store))["test/depth-b"]
    assert (entry.repo_id, entry.kind, entry.task, entry.base) == ("someone/depth-b", "adapter", DEPTH, DEPTH_BASE)
    assert entry.metrics == local.metrics and entry.config == local.config and entry.warning is None
    assert entry.parameters == local.parameters and entry.revision == fake.repo("someone/depth-b").branches["main"]
    assert gallery.space_link(entry) == f"/spaces/depth/?base={DEPTH_BASE}&adapter=someone/depth-b"
    assert not list((tmp_path / "c").rglob("*.safetensors"))  # only README.md and the JSON configs were fetched


def test_safetensors_header_of_a_non_safetensors_file(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError):
        gallery.safetensors_parameters(tmp_path / "x.safetensors")


@pytest.mark.parametrize(
    "name, direction, known",
    [
        ("accuracy", "higher", True),
        ("top5_accuracy", "higher", True),
        ("f1_macro", "higher", True),
        ("mean_iou", "higher", True),
        ("Dice", "higher", True),
        ("PSNR", "higher", True),
        ("recall@10", "higher", True),
        ("rouge-l", "higher", True),
        ("auc_ovr_macro", "higher", True),
        ("abs_rel", "lower", True),
        ("rmse_log", "lower", True),
        ("loss", "lower", True),
        ("perplexity", "lower", True),
        ("fid", "lower", True),
        ("frechet_distance", "lower", True),
        ("latency_ms", "lower", True),
        ("colour_distance", "lower", True),
        ("sharpness_score", "higher", False),
    ],
)
def test_metric_direction(name, direction, known):
    assert gallery.metric_direction(name) == (direction, known)


def test_leaderboard_sorts_by_the_metrics_direction(store):
    entries = gallery.list_entries(store)
    assert list(gallery.leaderboard_options(entries, DEPTH)) == ["motorcycle-zivid", "nyu-mini"]
    board = gallery.leaderboard(entries, DEPTH, "motorcycle-zivid", "abs_rel")
    assert board.direction == "lower" and board.known_direction
    assert [(r.repo_id, r.value) for r in board.rows] == [
        ("test/depth-b", 0.08),
        ("test/depth-a", 0.12),
        ("test/depth-c", 0.15),
    ]
    assert [r.rank for r in board.rows] == [1, 2, 3] and board.direction_note == "abs_rel: lower is better."
    d1 = gallery.leaderboard(entries, DEPTH, "motorcycle-zivid", "d1")
    assert d1.direction == "higher" and [r.repo_id for r in d1.rows] == ["test/depth-b", "test/depth-a", "test/depth-c"]
    unknown = gallery.leaderboard(entries, DEPTH, "motorcycle-zivid", "sharpness_score")
    assert not unknown.known_direction and "direction unknown, ranked as higher is better" in unknown.direction_note
    assert [r.repo_id for r in unknown.rows] == ["test/depth-c", "test/depth-a"]
    default = gallery.leaderboard(entries, DEPTH)  # the data set and metric most cards report
    assert (default.dataset, default.metric) == ("motorcycle-zivid", "abs_rel")
    assert [r.repo_id for r in gallery.leaderboard(entries, DEPTH, "nyu-mini").rows] == ["test/depth-a"]
    assert [r.value for r in gallery.leaderboard(entries, PLANT).rows] == [0.75]
    with pytest.raises(ConfigError, match="nowhere"):
        gallery.leaderboard(entries, DEPTH, "nowhere")
    assert gallery.leaderboard(entries, "mask-generation").rows == []


def test_leaderboard_ties_share_a_rank(store):
    entries = gallery.list_entries(store)
    entries[0].task, entries[0].metrics = DEPTH, [gallery.MetricResult("abs_rel", 0.12, "motorcycle-zivid", "test")]
    board = gallery.leaderboard(entries, DEPTH, "motorcycle-zivid", "abs_rel")
    assert [r.rank for r in board.rows] == [1, 2, 2, 4]


def test_compare_two_to_four_adapters(store):
    entries = by_id(gallery.list_entries(store))
    result = gallery.compare([entries["test/depth-a"], entries["test/depth-b"]])
    row = next(r for r in result.metrics if (r["metric"], r["dataset"]) == ("abs_rel", "motorcycle-zivid"))
    assert (row["test/depth-a"], row["test/depth-b"], row["best"], row["direction"]) == (
        0.12,
        0.08,
        "test/depth-b",
        "lower",
    )
    only_a = next(r for r in result.metrics if r["dataset"] == "nyu-mini")
    assert only_a["test/depth-b"] is None and only_a["best"] is None
    fields = {r["field"]: r for r in result.config}
    assert fields["r"]["test/depth-a"] == entries["test/depth-a"].config["r"]
    assert fields["base"]["test/depth-b"] == DEPTH_BASE and "target_modules" in fields
    with pytest.raises(ConfigError, match="2 to 4"):
        gallery.compare([entries["test/depth-a"]])
    with pytest.raises(ConfigError, match="not adapters"):
        gallery.compare([entries["test/depth-a"], entries[DEPTH_BASE]])


def test_headline_metric_and_filters(store):
    entries = gallery.list_entries(store)
    got = by_id(entries)
    assert gallery.headline_metric(got["test/depth-b"]) == ("abs_rel", 0.08)
    assert gallery.headline_metric(got[DEPTH_BASE]) is None
    values = gallery.facets(entries)
    assert {DEPTH, PLANT} <= set(values["task"]) and "depth" in values["domain"] and DEPTH_BASE in values["base"]
    depth_adapters = gallery.filter_entries(entries, task=DEPTH, kind="adapter")
    assert {e.base for e in depth_adapters} == {DEPTH_BASE} and "test/depth-a" in {e.repo_id for e in depth_adapters}
    assert {e.repo_id for e in gallery.filter_entries(entries, base=PLANT_BASE)} >= {PLANT_BASE, "test/plant-a"}
    assert all(e.domain == "plant" for e in gallery.filter_entries(entries, domain="plant"))
    assert {e.repo_id for e in gallery.filter_entries(entries, tag="lora", text="DEPTH-B")} == {"test/depth-b"}


def test_space_links(store):
    entries = by_id(gallery.list_entries(store))
    assert gallery.space_link(entries["test/depth-a"]) == f"/spaces/depth/?base={DEPTH_BASE}&adapter=test/depth-a"
    assert gallery.space_link(entries["test/plant-a"]) == f"/spaces/plant/?base={PLANT_BASE}&adapter=test/plant-a"
    assert gallery.space_link(entries["hubkit-tiny/pixcell"]) == "/spaces/pixcell/?base=hubkit-tiny/pixcell"
    assert gallery.space_link(entries["hubkit-tiny/sam-demo-lora-0"]).startswith("/spaces/segma/?base=hubkit-tiny/sam&")
    assert gallery.space_link(entries[ZIVID]) is None
    assert gallery.space_link(entries["hubkit-tiny/diffusion"]) is None  # no Space serves it


def test_known_tasks_and_spaces_match_the_registry_and_the_tree():
    from hubkit.tasks import list_tasks

    assert sorted(gallery.KNOWN_TASKS) == list_tasks()
    for space in set(gallery.TASK_SPACES.values()):
        assert (SPACES / space / "app.py").is_file(), space


def test_space_readme_is_valid():
    assert cards.validate_card(APP.parent / "README.md", repo_type="space") == []
    meta = cards.read_card(APP.parent, repo_type="space").data
    assert (meta.sdk, meta.sdk_version, meta.app_file) == ("streamlit", "1.67.0", "app.py")
    pins = dict(line.split("==") for line in (APP.parent / "requirements.txt").read_text().split() if "==" in line)
    repo_pins = Path(APP.parents[2] / "requirements.txt").read_text()
    assert pins and all(f"{name}=={version}" in repo_pins for name, version in pins.items())


# -- the Streamlit app ------------------------------------------------------------------------------------------
def run_app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_app_table_leaderboard_card_and_compare(store):
    at = run_app()
    table = dataframe(at, 0)
    n = len(store.list_repos("model") + store.list_repos("dataset"))
    assert len(table) == n and f"{n} of {n} repos shown · 2 with card problems" in [c.value for c in at.caption]
    row = table.set_index("repo").loc["test/depth-b"]
    assert row["metric"] == "abs_rel" and row["value"] == 0.08
    assert row["space"] == f"http://127.0.0.1:7860/spaces/depth/?base={DEPTH_BASE}&adapter=test/depth-b"
    assert "YAML metadata does not parse" in table.set_index("repo").loc["test/bad-yaml", "warning"]
    assert table["value"].isna().any() and at.tabs[0].dataframe[0].proto.placeholder == ""  # shown empty, not "None"

    at.selectbox(key="lb_task").select(DEPTH).run()
    at.selectbox(key="lb_dataset").select("motorcycle-zivid").run()
    at.selectbox(key="lb_metric").select("abs_rel").run()
    board = dataframe(at, 1)
    assert list(board["repo"]) == ["test/depth-b", "test/depth-a", "test/depth-c"]
    assert list(board["abs_rel"]) == [0.08, 0.12, 0.15]
    assert any("abs_rel: lower is better." in m.value for m in at.markdown)
    at.selectbox(key="lb_metric").select("d1").run()
    assert list(dataframe(at, 1)["d1"]) == [0.91, 0.85, 0.80]

    at.selectbox(key="card_repo").select("test/depth-a").run()
    assert any("# depth-a" in m.value and "## How to load" in m.value for m in at.markdown)
    assert any(j.value and '"lora_alpha"' in j.value for j in at.json)
    at.selectbox(key="card_repo").select("test/bad-yaml").run()
    assert any("YAML metadata does not parse" in w.value for w in at.warning)
    assert not at.exception

    at.multiselect(key="compare_pick").select("test/depth-a").select("test/depth-c").run()
    metrics = dataframe(at, 3)
    abs_rel = metrics[(metrics["metric"] == "abs_rel") & (metrics["dataset"] == "motorcycle-zivid")].iloc[0]
    assert (abs_rel["test/depth-a"], abs_rel["test/depth-c"], abs_rel["best"]) == (0.12, 0.15, "test/depth-a")
    assert "lora_alpha" in list(dataframe(at, 3, 1)["field"])


def test_app_sidebar_filters(store):
    at = run_app()
    at.selectbox(key="f_domain").select("plant").run()
    repos = set(dataframe(at, 0)["repo"])
    assert repos >= {PLANT_BASE, "test/plant-a"} and all("depth" not in r for r in repos)


def test_app_empty_store_says_run_bootstrap(isolated_home):
    at = run_app()
    assert any("is empty. Run `hubkit bootstrap`" in i.value for i in at.info)
    assert not at.dataframe


def test_app_unknown_hub_is_one_line(isolated_home, monkeypatch):
    monkeypatch.setenv("HUBKIT_HUB", "nonsense")
    at = run_app()
    assert [e.value for e in at.error] == [
        "The store cannot be read: Unknown hub 'nonsense': use 'local', 'hf', an http(s) endpoint, or a folder path."
    ]


def dataframe(at, tab: int, index: int = 0):
    """The `index`-th table of tab `tab` (0 models, 1 leaderboard, 2 card, 3 compare) as a pandas DataFrame."""
    return at.tabs[tab].dataframe[index].value


@pytest.mark.browser
@pytest.mark.slow
def test_streamlit_run_serves_the_page_in_chromium(store, tmp_path):
    """The command `hubkit serve` uses to start the gallery, then the page in headless Chromium."""
    import subprocess
    import sys
    import time
    import urllib.request

    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM, CHROMIUM_ARGS, _need_chromium
    from test_space_depth import free_port

    _need_chromium()
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port)]
    command += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    env = {**os.environ, "HUBKIT_HOME": str(store.root), "HUBKIT_HUB": "local"}
    with open(tmp_path / "streamlit.log", "w+b") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=APP.parents[2])
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, log.seek(0) or log.read().decode()
                    time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
                n = len(store.list_repos("model") + store.list_repos("dataset"))
                page.get_by_text(f"{n} of {n} repos shown · 2 with card problems").wait_for(timeout=120_000)
                assert page.get_by_role("link", name="← All Spaces").get_attribute("href") == "http://127.0.0.1:7860/"
                page.get_by_role("tab", name="Leaderboard").click()
                page.get_by_text("abs_rel: lower is better.").wait_for(timeout=60_000)
                page.get_by_role("tab", name="Card").click()
                page.get_by_role("link", name="Open in the segma Space").wait_for(timeout=60_000)  # hubkit-tiny/blip
                assert page.locator('[data-testid="stException"]').count() == 0
                page.screenshot(path=str(tmp_path / "gallery.png"))
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
