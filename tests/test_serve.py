"""`hubkit serve` over a temporary spaces dir: a FastAPI Space, a Gradio Space, a broken one and a Streamlit one."""

from __future__ import annotations

import logging
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from test_space_depth import free_port

from hubkit import serve

FASTAPI_SPACE = """
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel


@asynccontextmanager
async def lifespan(app):
    yield {"ready": True}  # a real Space would load its model here


app = FastAPI(lifespan=lifespan)


class Numbers(BaseModel):
    values: list[float]


@app.get("/", response_class=HTMLResponse)
def page():
    return "<html><body><h1>Sum service</h1><p>POST numbers to api/predict</p></body></html>"


@app.get("/api/health")
def health(request: Request):
    return {"status": "ok", "ready": request.state.ready}


@app.post("/api/predict")
def predict(body: Numbers):
    return {"sum": sum(body.values)}
"""

GRADIO_SPACE = """
import gradio as gr

with gr.Blocks() as demo:
    text = gr.Textbox(label="Text")
    out = gr.Textbox(label="Shouted")
    gr.Button("Shout").click(lambda s: s.upper(), text, out, api_name="shout")

if __name__ == "__main__":
    demo.launch()
"""

BROKEN_SPACE = 'raise ImportError("no module named foo")\n'
STREAMLIT_SPACE = 'import streamlit as st\n\nst.title("Gallery")\n'  # streamlit is not installed: never imported


def readme(title: str, sdk: str | None, description: str = "") -> str:
    lines = (
        [f"title: {title}"]
        + ([f"sdk: {sdk}"] if sdk else [])
        + ([f"short_description: {description}"] * bool(description))
    )
    return "---\n" + "\n".join(lines) + "\n---\n\n# " + title + "\n"


def write_space(root: Path, name: str, app_py: str, card: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "app.py").write_text(textwrap.dedent(app_py))
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


def write_spaces(root: Path) -> Path:
    """The four kinds of Space folder `hubkit serve` meets; used by test_browser.py too."""
    write_space(root, "sums", FASTAPI_SPACE, readme("Sum API", "docker", "adds numbers over REST"))
    write_space(root, "shout", GRADIO_SPACE, readme("Shout", "gradio", "upper-cases text"))
    write_space(root, "broken", BROKEN_SPACE, readme("Broken demo", "gradio"))
    write_space(root, "gallery", STREAMLIT_SPACE)  # no README: the streamlit import says what it is
    return root


@pytest.fixture
def spaces_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    return write_spaces(tmp_path / "spaces")


@pytest.fixture
def client(spaces_dir, caplog):
    from fastapi.testclient import TestClient

    caplog.set_level(logging.ERROR, logger="hubkit.serve")
    with TestClient(serve.build_app(spaces_dir=spaces_dir)) as test_client:  # `with`: runs the lifespans
        yield test_client


def landing_tiles(client) -> str:
    """The tiles' HTML as the landing page's Gradio config carries it."""
    config = client.get("/config").json()
    (tiles,) = [c["props"]["value"] for c in config["components"] if "hubkit-tiles" in str(c["props"].get("value"))]
    return tiles


def test_discover_reads_title_sdk_and_kind(spaces_dir):
    spaces = {s.name: s for s in serve.discover_spaces(spaces_dir)}
    assert sorted(spaces) == ["broken", "gallery", "shout", "sums"]
    assert (spaces["sums"].title, spaces["sums"].sdk, spaces["sums"].description) == (
        "Sum API",
        "docker",
        "adds numbers over REST",
    )
    assert (spaces["gallery"].title, spaces["gallery"].sdk) == ("gallery", None)
    kinds = {name: serve.source_kind(space) for name, space in spaces.items()}
    assert kinds == {"sums": "fastapi", "shout": "gradio", "broken": "gradio", "gallery": "streamlit"}


def test_fastapi_space_is_mounted_with_its_routes_and_lifespan(client):
    assert client.get("/spaces/sums/api/health").json() == {"status": "ok", "ready": True}
    assert client.post("/spaces/sums/api/predict", json={"values": [1, 2.5]}).json() == {"sum": 3.5}
    page = client.get("/spaces/sums/")
    assert page.status_code == 200 and "Sum service" in page.text
    redirect = client.get("/spaces/sums", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "sums/"
    assert client.get("/spaces/sums").url.path == "/spaces/sums/"
    assert client.get("/spaces/nope", follow_redirects=False).status_code == 404


def test_gradio_space_answers_its_config_and_api(client):
    config = client.get("/spaces/shout/config")
    assert config.status_code == 200 and config.json()["mode"] == "blocks"
    info = client.get("/spaces/shout/gradio_api/info").json()
    assert "/shout" in info["named_endpoints"]


def test_broken_space_gets_an_error_page_and_the_rest_work(client, caplog):
    for path in ("/spaces/broken/", "/spaces/broken/gradio_api/info", "/spaces/broken/x/y"):
        page = client.get(path)
        assert page.status_code == 500, path
        assert page.headers["content-type"].startswith("text/html")
        assert "ImportError: no module named foo" in page.text
        assert "Traceback" not in page.text and 'app.py", line' not in page.text
    # The full traceback goes to the server log, naming the Space (logged while the fixture built the app).
    (record,) = [r for r in caplog.get_records("setup") if "broken" in r.getMessage()]
    assert record.exc_info and record.exc_info[0] is ImportError
    # The others are not affected.
    assert client.get("/spaces/sums/api/health").status_code == 200
    assert client.get("/spaces/shout/config").status_code == 200
    assert client.get("/").status_code == 200


def test_streamlit_space_is_listed_with_how_to_run_it(client):
    page = client.get("/spaces/gallery/")
    assert page.status_code == 501
    assert "streamlit run" in page.text and "gallery/app.py" in page.text
    assert "hubkit_space_gallery" not in sys.modules  # its script was never run in this process


def test_landing_page_lists_every_space_with_kind_and_state(client):
    assert client.get("/").status_code == 200
    tiles = landing_tiles(client)
    for name, kind, state in [
        ("sums", "fastapi", "ok"),
        ("shout", "gradio", "ok"),
        ("broken", "gradio", "broken"),
        ("gallery", "streamlit", "external"),
    ]:
        assert f'data-space="{name}" data-kind="{kind}" data-state="{state}"' in tiles
    for label in ("FastAPI", "Gradio", "Streamlit", "Sum API", "Shout", "Broken demo"):
        assert label in tiles
    assert '<a href="/spaces/broken/"' in tiles and "ImportError: no module named foo" in tiles
    assert "streamlit run" in tiles and '<a href="/spaces/gallery/"' not in tiles
    config = client.get("/config").text
    assert 'href=\\"/api/health\\"' in config and 'href=\\"/api/pool\\"' in config
    assert {fn["api_name"] for fn in client.get("/config").json()["dependencies"]} >= {"spaces", "list_store"}


def test_health_reports_each_space(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok"
    spaces = health["spaces"]
    assert spaces["sums"] == spaces["shout"] == "ok"
    assert spaces["broken"] == "error: ImportError: no module named foo"
    assert spaces["gallery"].startswith("not mounted: run `streamlit run ")


def test_pool_endpoint(client):
    pytest.importorskip("hubkit.pool")
    answer = client.get("/api/pool")
    assert answer.status_code == 200
    status = answer.json()
    assert isinstance(status["budget_bytes"], int) and isinstance(status["used_bytes"], int)
    assert isinstance(status["models"], list)


def test_pool_endpoint_without_the_pool_module(client, monkeypatch):
    monkeypatch.setitem(sys.modules, "hubkit.pool", None)  # as if hubkit/pool.py did not exist
    answer = client.get("/api/pool")
    assert answer.status_code == 503 and "hubkit.pool" in answer.json()["error"]


def test_fastapi_space_failing_at_startup_is_broken_alone(tmp_path, monkeypatch, caplog):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    root = tmp_path / "spaces"
    failing = """
        from contextlib import asynccontextmanager
        from fastapi import FastAPI

        @asynccontextmanager
        async def lifespan(app):
            raise RuntimeError("weights not found")
            yield

        app = FastAPI(lifespan=lifespan)
        """
    write_space(root, "starts-badly", failing)
    write_space(root, "sums", FASTAPI_SPACE)
    caplog.set_level(logging.ERROR, logger="hubkit.serve")
    app = serve.build_app(spaces_dir=root)
    with TestClient(app) as client:
        page = client.get("/spaces/starts-badly/")
        assert page.status_code == 500 and "RuntimeError: weights not found" in page.text
        assert client.get("/spaces/sums/api/health").json() == {"status": "ok", "ready": True}
        assert client.get("/api/health").json()["spaces"] == {
            "starts-badly": "error: RuntimeError: weights not found",
            "sums": "ok",
        }
        # The landing page was built before startup; its load event redraws the tiles from the same states.
        assert 'data-space="starts-badly" data-kind="fastapi" data-state="broken"' in serve.space_tiles(
            app.state.spaces
        )
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)


@pytest.mark.parametrize(
    ("sdk", "kind"), [("docker", "fastapi"), ("fastapi", "fastapi"), ("gradio", "gradio"), (None, "gradio")]
)
def test_sdk_decides_when_app_py_has_both(tmp_path, sdk, kind):
    both = """
        import gradio as gr
        from fastapi import FastAPI

        app = FastAPI()
        with gr.Blocks() as demo:
            gr.Markdown("hi")
        """
    folder = write_space(tmp_path, "both", both, readme("Both", sdk))
    (space,) = serve.discover_spaces(folder.parent)
    entry = serve.load_space(space)
    assert (entry.kind, entry.error) == (kind, None)


def test_reasons_are_one_line_escaped_and_redacted(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    write_space(tmp_path, "nothing", "x = 1\n")
    write_space(tmp_path, "evil", 'raise ValueError("<script>alert(1)</script>\\n token hf_abcdefghijklmnop")\n')
    with TestClient(serve.build_app(spaces_dir=tmp_path)) as client:
        health = client.get("/api/health").json()["spaces"]
        assert health["nothing"].startswith("error: HubkitError: app.py exposes neither `demo`")
        assert health["evil"] == "error: ValueError: <script>alert(1)</script> token hf_***"
        page = client.get("/spaces/evil/").text
        assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "hf_abcdefghijklmnop" not in page and "hf_abcdefghijklmnop" not in landing_tiles(client)


def test_over_a_real_port_with_gradio_client(spaces_dir, tmp_path):
    """The app `hubkit serve` runs, under uvicorn on a free port: gradio_client drives the Gradio Space."""
    import httpx
    import uvicorn
    from gradio_client import Client

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(serve.build_app(spaces_dir=spaces_dir), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        client = Client(f"{url}/spaces/shout/", verbose=False, download_files=str(tmp_path / "dl"))
        assert client.predict("hello", api_name="/shout") == "HELLO"
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.post("/spaces/sums/api/predict", json={"values": [2, 3]}).json() == {"sum": 5}
            broken = http.get("/spaces/broken/")
            assert broken.status_code == 500 and "ImportError: no module named foo" in broken.text
            assert http.get("/api/health").json()["spaces"]["shout"] == "ok"
            assert http.get("/").status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# -- the landing page's content: tiles, newest adapters, store and Hub line -------------------------------
def _thumbnail(path: Path, caption: str) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Description", caption)
    Image.new("RGB", (48, 27), (200, 30, 30)).save(path, pnginfo=info)


def test_tiles_show_task_models_and_thumbnail(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    card = readme("Shout", "gradio", "upper-cases text").replace(
        "---\n\n", "models:\n- org/shouter\ndatasets:\n- org/phrases\ntags:\n- lora\n- image-to-text\n---\n\n"
    )
    folder = write_space(tmp_path, "shout", GRADIO_SPACE, card)
    _thumbnail(folder / "thumbnail.png", "Example output: made by the test")
    write_space(tmp_path, "plain", GRADIO_SPACE, readme("Plain", "gradio"))
    with TestClient(serve.build_app(spaces_dir=tmp_path)) as client:
        tiles = landing_tiles(client)
        shout = tiles.split('data-space="shout"')[1].split("</li>")[0]
        assert "task: <code>image-to-text</code>" in shout  # the tag naming a HF task, not the first tag
        assert "<code>org/shouter</code>" in shout and "<code>org/phrases</code>" in shout
        assert 'src="/api/thumbnail/shout"' in shout and "Example output: made by the test" in shout
        plain = tiles.split('data-space="plain"')[1].split("</li>")[0]
        assert "no example image" in plain and "/api/thumbnail/" not in plain
        picture = client.get("/api/thumbnail/shout")
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        assert picture.content == (folder / "thumbnail.png").read_bytes()
        for name in ("plain", "nope", "..%2Fshout", "shout%2Fapp.py"):
            assert client.get(f"/api/thumbnail/{name}").status_code == 404, name


@pytest.fixture
def bootstrapped(tmp_path_factory, isolated_home):
    import os
    import shutil

    from test_space_depth import store_template

    shutil.copytree(
        store_template(tmp_path_factory),
        isolated_home,
        ignore=shutil.ignore_patterns(".complete"),
        copy_function=os.link,
    )
    from hubkit import hub

    return hub.get_store()


def _push_adapter_with_metric(store, tmp_path) -> str:
    from hubkit import cards, hub

    folder = tmp_path / "new-adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    card = cards.adapter_card(
        model_name="depth-test-lora",
        base_model="hubkit-tiny/depth-anything",
        pipeline_tag="depth-estimation",
        metrics=[cards.Metric("abs_rel", 0.1234, "nyu-test", "depth")],
    )
    card.save(folder / "README.md")
    hub.push(folder, "me/depth-test-lora", hub=store)
    return "me/depth-test-lora"


def test_newest_adapters_with_headline_metric_and_link(bootstrapped, tmp_path):
    store = bootstrapped
    adapters = {r[1] for r in serve.store_table(store) if r[0] == "adapter"}
    rows = serve.newest_adapters(store, limit=5)
    assert len(rows) == 5 and {r["repo_id"] for r in rows} <= adapters
    assert [r["updated"] for r in rows] == sorted((r["updated"] for r in rows), reverse=True)
    newest = _push_adapter_with_metric(store, tmp_path)
    (first, *_) = serve.newest_adapters(store, limit=5)
    assert first["repo_id"] == newest
    assert (first["metric"][0], first["metric"][1]) == ("abs_rel", pytest.approx(0.1234))
    link = urlsplit(first["link"])
    assert link.path == "/spaces/depth/" and parse_qs(link.query)["adapter"] == [newest]
    page = serve.adapters_html(store)
    assert f'data-repo="{newest}"' in page and "abs_rel 0.1234" in page
    assert page.count('class="hubkit-adapter"') == 8


def test_store_line_counts_and_hub_state(bootstrapped, monkeypatch):
    store = bootstrapped
    kinds = [row[0] for row in serve.store_table(store)]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = serve.store_line(store, serve.HubCheck())
    assert (
        f"{kinds.count('model')} models, {kinds.count('adapter')} adapters, {kinds.count('dataset')} data sets" in line
    )
    assert str(store.root) in line and 'data-hub="offline"' in line and "HF_HUB_OFFLINE=1" in line
    monkeypatch.delenv("HF_HUB_OFFLINE")
    check = serve.HubCheck(timeout=1.0)
    monkeypatch.setattr(check, "URL", f"http://127.0.0.1:{free_port()}/")  # nothing listens there
    assert 'data-hub="unreachable"' in serve.store_line(store, check, wait=5)
    assert check.result() == "unreachable"  # cached: no second request


def test_landing_page_has_the_new_sections(bootstrapped, spaces_dir):
    from fastapi.testclient import TestClient

    with TestClient(serve.build_app(spaces_dir=spaces_dir)) as client:
        config = client.get("/config").json()
        values = " ".join(str(c["props"].get("value")) for c in config["components"])
        assert 'class="hubkit-store"' in values and 'class="hubkit-adapters"' in values
        assert "hubkit-tiny/" in values  # the newest adapters of the bootstrapped store
        assert {fn["api_name"] for fn in config["dependencies"]} >= {"spaces", "newest_adapters", "store_status"}
        assert "Everything in the store" in str(config)


# -- Streamlit Spaces as their own processes ---------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture
def streamlit_dir(tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    root = tmp_path / "spaces"
    write_space(root, "gallery", STREAMLIT_SPACE, readme("Gallery", "streamlit", "every adapter"))
    return root


def test_streamlit_space_runs_as_its_own_process_and_stops(streamlit_dir, monkeypatch):
    import httpx
    from fastapi.testclient import TestClient

    monkeypatch.setenv("HUBKIT_HUB", "local")
    app = serve.build_app(spaces_dir=streamlit_dir, start_processes=True, port=7999)
    (entry,) = app.state.spaces
    with TestClient(app) as client:
        process = entry.process
        pid = process.pid
        _wait(lambda: process.state[0] == "ok", 90, f"streamlit did not start: {process.state} {process.log_tail(5)}")
        env = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
        assert env["HUBKIT_SERVER_URL"] == "http://127.0.0.1:7999"
        assert env["HUBKIT_HUB"] == "local" and env["HUBKIT_HOME"]
        assert client.get("/api/health").json()["spaces"]["gallery"] == "ok"
        redirect = client.get("/spaces/gallery/", follow_redirects=False)
        assert redirect.status_code == 307 and redirect.headers["location"] == f"http://testserver:{process.port}/"
        tile = serve.space_tiles(app.state.spaces)  # what the page's load event draws on each visit
        assert 'data-space="gallery" data-kind="streamlit" data-state="ok"' in tile
        assert f'href="http://127.0.0.1:{process.port}/"' in tile
        assert httpx.get(process.url(), timeout=10).status_code == 200  # Streamlit's own page
    assert not _alive(pid), "the Streamlit process outlived the server"


def test_streamlit_process_that_dies_shows_broken(streamlit_dir):
    import os
    import signal

    from fastapi.testclient import TestClient

    app = serve.build_app(spaces_dir=streamlit_dir, start_processes=True)
    (entry,) = app.state.spaces
    with TestClient(app) as client:
        os.kill(entry.process.pid, signal.SIGKILL)
        _wait(lambda: entry.process.state[0] == "broken", 30, "the death was not noticed")
        assert "exited with code -9" in entry.process.state[1]
        assert client.get("/api/health").json()["spaces"]["gallery"].startswith("error: its streamlit process exited")
        page = client.get("/spaces/gallery/", follow_redirects=False)
        assert page.status_code == 502 and "exited with code -9" in page.text and "Traceback" not in page.text
        assert 'data-space="gallery" data-kind="streamlit" data-state="broken"' in serve.space_tiles(app.state.spaces)


def test_streamlit_process_that_never_answers_is_broken(streamlit_dir, monkeypatch):
    monkeypatch.setattr(serve.StreamlitProcess, "_answers", lambda self: False)  # as if it hung at start
    (space,) = serve.discover_spaces(streamlit_dir)
    process = serve.StreamlitProcess(space, start_timeout=1.0).start()
    try:
        _wait(lambda: process.state[0] == "broken", 30, "no time-out")
        assert process.state[1] == "its streamlit server did not answer within 1 s"
    finally:
        process.stop()
    assert not _alive(process.pid)


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_hubkit_serve_stops_streamlit_on_signal(streamlit_dir, isolated_home, tmp_path, signame):
    """`hubkit serve` in a subprocess, stopped with SIGTERM or Ctrl-C (SIGINT): no orphan Streamlit server."""
    import os
    import signal
    import subprocess

    import httpx

    port = free_port()
    env = {**os.environ, "HUBKIT_HOME": str(isolated_home), "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "hubkit", "serve", "--port", str(port), "--spaces-dir", str(streamlit_dir),
           "--no-bootstrap"]  # fmt: skip
    with open(tmp_path / "serve.log", "w+b") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:

            def gallery_ok() -> bool:
                assert proc.poll() is None, "hubkit serve exited"
                try:
                    health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json()
                except httpx.HTTPError:
                    return False
                return health["spaces"]["gallery"] == "ok"

            _wait(gallery_ok, 120, "the gallery did not start")
            children = [
                int(p.name)
                for p in Path("/proc").iterdir()
                if p.name.isdigit() and _ppid(p) == proc.pid and "streamlit" in _cmdline(p)
            ]
            assert len(children) == 1
            proc.send_signal(getattr(signal, signame))
            assert proc.wait(timeout=30) is not None
            _wait(lambda: not _alive(children[0]), 15, f"streamlit outlived hubkit serve ({signame})")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _ppid(proc_dir: Path) -> int | None:
    try:
        return int(proc_dir.joinpath("stat").read_text().split(")")[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(proc_dir: Path) -> str:
    try:
        return proc_dir.joinpath("cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""
