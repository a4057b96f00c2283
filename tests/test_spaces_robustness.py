"""The segma, plant, pixcell and search Spaces under bad input and under load, through their real HTTP APIs.

Gradio Spaces: one `hubkit serve` per module over a bootstrapped tiny store, driven with gradio_client (uploads,
as a person's script would) and with raw calls to /gradio_api/call/<name> (wrong types, missing arguments, server
paths as files), which gradio_client would refuse before sending. Search: FastAPI's TestClient over a small index.
Each sweep sends >= 10 kinds of bad input (tests/bad_inputs.py), checks the one-line message, then checks that a good
request is still answered. Each load test: 50 concurrent clients (threads), 0 errors, p50 / p95 printed.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from bad_inputs import SERVER_PATHS, UNKNOWN_MODEL, BadUpload, bad_uploads, encode, matches, photo
from test_browser import _run_server
from test_space_depth import store_template

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 50
RANGE_WORDS = ("less than minimum", "greater than maximum", "not in the list of choices")  # gradio's own checks
LOAD_BOUND_S = 300  # generous: 2 shared CPU cores; the point is 0 errors and completion, not speed


# -- a server for the Gradio Spaces ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`hubkit serve` on a free port over a copy of the bootstrapped store (module-wide: starting it costs ~20 s)."""
    root = tmp_path_factory.mktemp("robust")
    home = root / "home"
    shutil.copytree(store_template(tmp_path_factory), home, ignore=shutil.ignore_patterns(".complete"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(root / "hf-home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("HF_TOKEN", raising=False)
        with _run_server(home, root) as url:
            yield url


def client_for(server: str, space: str):
    from gradio_client import Client

    # a long read timeout: under load a request waits in the queue for tens of seconds (gradio_client's default: 5 s)
    return Client(f"{server}spaces/{space}/", verbose=False, httpx_kwargs={"timeout": 300})


def raw_call(server: str, space: str, api_name: str, data) -> tuple[str, object]:
    """("complete", outputs) or ("error", message) from Gradio's HTTP call API, or ("http-<code>", body)."""
    base = f"{server}spaces/{space}/gradio_api/call/{api_name}"
    response = httpx.post(base, json={"data": data}, timeout=60)
    if response.status_code != 200:
        return f"http-{response.status_code}", response.text
    event_id = response.json()["event_id"]
    kind, payload = None, None
    with httpx.stream("GET", f"{base}/{event_id}", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind in ("complete", "error"):
                payload = json.loads(line[5:].strip() or "null")
                break
    if kind == "error":
        return "error", (payload or {}).get("error") if isinstance(payload, dict) else payload
    return kind, payload


def uploaded(server: str, space: str, path: Path) -> dict:
    """`path` uploaded to the Space as a browser does; the FileData a raw call passes."""
    with open(path, "rb") as f:
        response = httpx.post(f"{server}spaces/{space}/gradio_api/upload", files={"files": (path.name, f)}, timeout=60)
    response.raise_for_status()
    return {"path": response.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def assert_one_line(message: str) -> None:
    assert message and "Traceback" not in message and "\n" not in message.strip(), message
    assert "/tmp/" not in message, f"a server path leaks into the message: {message}"
    assert os.getcwd() not in message, f"the server's working directory leaks into the message: {message}"


def sweep_uploads(call, tmp_path: Path, check_answer) -> dict[str, str]:
    """Every kind of bad upload through `call(handle)`; refused ones must raise AppError with a clear one-line
    message, the others must be answered (checked by `check_answer`). Returns kind -> message / "answered"."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    seen = {}
    for bad in bad_uploads():
        path = bad.write(tmp_path)
        if bad.refused:
            with pytest.raises(AppError) as err:
                call(handle_file(str(path)))
            message = str(err.value)
            assert_one_line(message)
            assert matches(message, bad.words), f"{bad.kind}: {message}"
            seen[bad.kind] = message
        else:
            check_answer(call(handle_file(str(path))))
            seen[bad.kind] = "answered"
    assert len(seen) >= 10
    return seen


def good_image(tmp_path: Path, size: int = 64) -> Path:
    return BadUpload("good", "photo.png", encode(photo(size)), False).write(tmp_path)


def api_refusals(server: str, space: str, api_name: str, good_args: list, tmp_path: Path, *, image_at: int = 0,
                 model_at: int, wrong_type: tuple[int, object]) -> list[str]:  # fmt: skip
    """Wrong types, missing arguments, a non-list body, unknown model ids and server paths (as the file and as the
    model): each answered with an error event (or a 422) and a message; returns the messages."""
    messages = []
    at, value = wrong_type
    kind, message = raw_call(server, space, api_name, [*good_args[:at], value, *good_args[at + 1 :]])
    assert kind == "error" and "Expected" in message, (kind, message)
    messages.append(message)
    kind, message = raw_call(server, space, api_name, good_args[:1])
    assert kind == "error" and "enough input values" in message, (kind, message)
    messages.append(message)
    kind, message = raw_call(server, space, api_name, "not a list")
    assert kind == "http-422", (kind, message)
    for model in (UNKNOWN_MODEL, *SERVER_PATHS):
        args = list(good_args)
        args[model_at] = model
        kind, message = raw_call(server, space, api_name, args)
        assert kind == "error", (model, kind, message)
        assert_one_line(message)
        assert "not offered" in message or "not available" in message, message
        messages.append(message)
    # a real image on the server outside Gradio's upload folder (the Space's examples/ are served on purpose)
    private = BadUpload("private", "photo.png", encode(photo()), False).write(tmp_path)
    for path in (*SERVER_PATHS, str(private)):
        args = list(good_args)
        args[image_at] = {"path": path, "meta": {"_type": "gradio.FileData"}}
        kind, message = raw_call(server, space, api_name, args)
        assert kind == "error", (path, kind, message)  # never read: hubkit serve's mounts check uploads too
        assert_one_line(message.replace(str(path), "PATH"))  # the message may echo the path the client sent
        assert "not uploaded by a user" in message or "Invalid file type" in message, message
        messages.append(message)
    return messages


def load(call, n: int = CLIENTS) -> dict[str, float]:
    """`n` concurrent calls of `call()`, one per thread; every one must succeed. p50 / p95 in seconds."""
    latencies, errors = [], []
    lock = threading.Lock()
    start = threading.Barrier(n)

    def one(_):
        start.wait()
        began = time.perf_counter()
        try:
            call()
        except Exception as err:  # noqa: BLE001  (counted and reported below)
            with lock:
                errors.append(f"{type(err).__name__}: {err}")
            return
        with lock:
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))
    wall = time.perf_counter() - began
    assert errors == [], errors[:3]
    assert len(latencies) == n and wall < LOAD_BOUND_S
    q = statistics.quantiles(latencies, n=20)
    stats = {"p50_s": statistics.median(latencies), "p95_s": q[18], "wall_s": wall, "calls_per_s": n / wall}
    print(f"load: {n} clients: " + ", ".join(f"{k} {v:.2f}" for k, v in stats.items()))
    return stats


# -- plant --------------------------------------------------------------------------------------------------------
TINY_PLANT = "hubkit-tiny/plant-vlm"


def plant_answer(result) -> None:
    label_a, info_a, _label_b, info_b, files = result
    assert len(label_a["confidences"]) == 3 and TINY_PLANT in info_a and info_b == "" and len(files) == 1


@pytest.mark.slow
def test_plant_bad_inputs_get_clear_messages_and_the_server_keeps_serving(server, tmp_path):
    from gradio_client import handle_file

    client = client_for(server, "plant")
    seen = sweep_uploads(
        lambda image: client.predict(image, None, "", TINY_PLANT, None, 3, False, api_name="/predict"),
        tmp_path,
        plant_answer,
    )
    kind, text = raw_call(server, "plant", "predict", [None, None, "", TINY_PLANT, None, 3, False])
    assert kind == "error" and "No image" in text
    good = [uploaded(server, "plant", good_image(tmp_path)), None, "", TINY_PLANT, None, 3, False]
    api_refusals(server, "plant", "predict", good, tmp_path, model_at=3, wrong_type=(5, "many"))
    kind, text = raw_call(server, "plant", "predict", [*good[:5], 0, False])
    assert kind == "error" and matches(text, ("top_k must be", "less than minimum")), text  # gradio checks first
    kind, text = raw_call(server, "plant", "predict", [*good[:2], "x" * 5000, *good[3:]])
    assert kind == "error" and "characters" in text
    plant_answer(
        client.predict(
            handle_file(str(good_image(tmp_path))), None, "", TINY_PLANT, None, 3, False, api_name="/predict"
        )
    )  # fmt: skip  (still serving)
    assert len(seen) == 11


@pytest.mark.slow
def test_plant_under_load(server, tmp_path):
    from gradio_client import handle_file

    client = client_for(server, "plant")
    image = handle_file(str(good_image(tmp_path)))
    plant_answer(client.predict(image, None, "", TINY_PLANT, None, 3, False, api_name="/predict"))  # warm
    load(lambda: plant_answer(client.predict(image, None, "", TINY_PLANT, None, 3, False, api_name="/predict")))


# -- pixcell ------------------------------------------------------------------------------------------------------
TINY_PIXCELL, PIXCELL_ADAPTER = "hubkit-tiny/pixcell", "hubkit-tiny/pixcell-demo-lora-0"
PIXCELL_TINY_WORK = ["dpm++", 2, 1.5, 1, 0]  # sampler, steps, guidance, samples, seed: 2 steps, 1 sample


def pixcell_answer(result) -> None:
    base, adapted, info, files = result
    assert len(base) == 1 and len(adapted) == 1 and TINY_PIXCELL in info and len(files) == 2


@pytest.mark.slow
def test_pixcell_bad_inputs_get_clear_messages_and_the_server_keeps_serving(server, tmp_path):
    from gradio_client import handle_file

    client = client_for(server, "pixcell")
    call = lambda image: client.predict(image, TINY_PIXCELL, PIXCELL_ADAPTER, *PIXCELL_TINY_WORK,  # noqa: E731
                                        api_name="/generate")  # fmt: skip
    sweep_uploads(call, tmp_path, pixcell_answer)
    good = [uploaded(server, "pixcell", good_image(tmp_path)), TINY_PIXCELL, PIXCELL_ADAPTER, *PIXCELL_TINY_WORK]
    api_refusals(server, "pixcell", "generate", good, tmp_path, model_at=1, wrong_type=(4, "twenty"))
    for at, value, words in [(2, "/etc/passwd", "not available"), (2, UNKNOWN_MODEL, "not available"),
                             (3, "magic", "sampler"), (4, 0, "steps"), (4, 10_000, "steps"), (6, 99, "samples"),
                             (5, -1, "guidance"), (7, -5, "seed")]:  # fmt: skip
        args = list(good)
        args[at] = value
        kind, text = raw_call(server, "pixcell", "generate", args)
        # the Space's own message, or gradio's when the component's range or choices refuse the value first
        assert kind == "error" and matches(text, (words, *RANGE_WORDS)), (at, value, kind, text)
        assert_one_line(text)
    pixcell_answer(call(handle_file(str(good_image(tmp_path)))))  # still serving


@pytest.mark.slow
def test_pixcell_under_load(server, tmp_path):
    from gradio_client import handle_file

    client = client_for(server, "pixcell")
    image = handle_file(str(good_image(tmp_path)))
    seeds = itertools.count()
    lock = threading.Lock()

    def call():
        """1 step, base only: the load is on the queue and the API, not on sampling. Each call its own seed, as
        users' requests differ: identical outputs from concurrent requests share one file in Gradio's cache (named
        by content hash), and a download can race its rewrite (seen here: 2 of 50 cut downloads)."""
        with lock:
            seed = next(seeds)
        base, adapted, info, files = client.predict(
            image, TINY_PIXCELL, "", "dpm++", 1, 1.5, 1, seed, api_name="/generate"
        )
        assert len(base) == 1 and not adapted and info.startswith("**Base**") and len(files) == 1

    call()
    load(call)


# -- segma --------------------------------------------------------------------------------------------------------
def segma_menus(client) -> list[str]:
    """The 8 base / adapter values the page starts with (tiny bases, no adapters)."""
    updates = client.predict(api_name="/menus")[:8]
    return [u["value"] if isinstance(u, dict) else u for u in updates]


def segma_answer(result) -> None:
    overlay, _base, summary, table, files, *_ = result
    overlay = overlay.get("value", overlay) if isinstance(overlay, dict) else overlay
    assert overlay and "Regions:" in summary and len(files.get("value", files) if isinstance(files, dict) else files)


@pytest.mark.slow
def test_segma_bad_inputs_get_clear_messages_and_the_server_keeps_serving(server, tmp_path):
    from gradio_client import handle_file

    client = client_for(server, "segma")
    menus = segma_menus(client)
    assert menus[0] == "hubkit-tiny/sam"
    call = lambda image: client.predict(image, "general", "none", "", *menus, 0.25, 0.2, api_name="/run")  # noqa: E731
    sweep_uploads(call, tmp_path, segma_answer)
    good = [uploaded(server, "segma", good_image(tmp_path)), "general", "none", "", *menus, 0.25, 0.2]
    api_refusals(server, "segma", "run", good, tmp_path, model_at=4, wrong_type=(12, "high"))
    for at, value, words in [(5, "/etc/passwd", "not available"), (1, "best", "preset"), (2, "mars", "domain"),
                             (12, 7.5, "threshold")]:  # fmt: skip
        args = list(good)
        args[at] = value
        kind, text = raw_call(server, "segma", "run", args)
        assert kind == "error" and matches(text, (words, *RANGE_WORDS)), (at, value, kind, text)
        assert_one_line(text)
    segma_answer(call(handle_file(str(good_image(tmp_path)))))  # still serving


@pytest.mark.slow
def test_segma_under_load(server, tmp_path):
    from gradio_client import handle_file

    client = client_for(server, "segma")
    menus = segma_menus(client)
    image = handle_file(str(good_image(tmp_path, 32)))
    call = lambda: client.predict(image, "general", "none", "coin", *menus, 0.25, 0.2, api_name="/run")  # noqa: E731
    segma_answer(call())
    load(lambda: segma_answer(call()))


# -- search (FastAPI) ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def search_client(tmp_path_factory):
    from fastapi.testclient import TestClient
    from test_search_api import wait_ready

    from hubkit.data.garments import make_catalogue
    from hubkit.search import SearchService, Version, build_search_model, create_app, write_catalogue_index

    root = tmp_path_factory.mktemp("search")
    shop = make_catalogue(root / "shop", n_per_category=2, seed=0, size=64)
    index = write_catalogue_index(shop, root / "index", model=build_search_model(root / "model", seed=0),
                                  probe_views=1)  # fmt: skip
    app = create_app(SearchService([Version("a", str(index))]), static_dir=ROOT / "spaces" / "search" / "static")
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def search_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "status"} and body["status"] == status
    assert_one_line(body["error"])
    return body["error"]


def test_search_bad_uploads_get_json_errors_and_the_server_keeps_serving(search_client):
    """The upload kinds tests/test_search_api.py does not send (it covers text, empty, size, URLs, k, routes)."""
    import base64

    from bad_inputs import png_header_only

    statuses = {}
    for bad in bad_uploads():
        response = search_client.post("/api/predict?k=3", files={"file": (bad.filename, bad.data)})
        if bad.refused:
            status = 413 if bad.kind == "huge" else 400
            message = search_error(response, status)
            assert matches(message, (*bad.words, "too many pixels")), (bad.kind, message)
        else:
            assert response.status_code == 200, (bad.kind, response.text)
            assert len(response.json()["results"]) == 3
        statuses[bad.kind] = response.status_code
    # under PIL's own bomb limit (81 MP) but over the API's: refused from the header, nothing decoded
    assert "9000x9000" in search_error(
        search_client.post("/api/predict", files={"file": ("big.png", png_header_only(9000, 9000))}), 413
    )
    pdf = base64.b64encode(bad_uploads()[1].data).decode()
    assert "not a readable image" in search_error(search_client.post("/api/predict", json={"image": pdf}), 400)
    assert "image" in search_error(search_client.post("/api/predict", json={"image": 123}), 422)
    assert "image" in search_error(search_client.post("/api/predict", json={"image": None}), 422)
    good = encode(photo())
    for path in SERVER_PATHS:
        message = search_error(search_client.post("/api/predict", json={"image": path}), 400)
        assert ("URLs are refused" if path.startswith("file:") else "base64") in message
        search_error(search_client.post("/api/predict", files={"file": ("a.png", good)},
                                        headers={"X-Model-Version": path}), 400)  # fmt: skip
        search_error(search_client.get(f"/api/thumbnails/{path.replace('/', '%2F')}"), 404)
    assert search_client.post("/api/predict", files={"file": ("a.png", good)}).status_code == 200  # still serving
    assert len(statuses) == 11


def test_search_under_load(search_client):
    good = encode(photo())

    def call():
        response = search_client.post("/api/predict?k=3", files={"file": ("a.png", good)})
        assert response.status_code == 200, response.text

    stats = load(call)
    assert stats["p95_s"] >= stats["p50_s"]


# -- plant batching (in-process: no server needed) ---------------------------------------------------------------
def test_plant_batched_requests_share_passes_and_answer_as_alone(tmp_path_factory, isolated_home, tmp_path):
    """8 concurrent requests with batch=True run in fewer passes than requests and give the answers each request
    gets alone; a bad upload among them fails alone."""
    from hubkit.errors import InvalidImageError
    from hubkit.plant.demo import PlantDemo
    from hubkit.pool import ModelPool

    shutil.copytree(store_template(tmp_path_factory), isolated_home, ignore=shutil.ignore_patterns(".complete"),
                    copy_function=os.link)  # fmt: skip
    demo = PlantDemo(pool=ModelPool(), max_batch_size=8)
    images = [BadUpload("leaf", f"{i}.png", encode(photo(48 + 8 * i)), False).write(tmp_path) for i in range(7)]
    texts = ["brown rings", None, "yellow edges", None, "white powder", "", "spots"]
    alone = [demo.run(str(p), text=t, models=[TINY_PLANT], top_k=3) for p, t in zip(images, texts, strict=True)]
    broken = bad_uploads()[3].write(tmp_path)  # a truncated PNG
    barrier = threading.Barrier(8)

    def one(i):
        barrier.wait()
        if i == 7:
            with pytest.raises(InvalidImageError):
                demo.run(str(broken), models=[TINY_PLANT], batch=True)
            return None
        return demo.run(str(images[i]), text=texts[i], models=[TINY_PLANT], top_k=3, batch=True)

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, range(8)))[:7]
    sizes = list(demo._batchers[TINY_PLANT].sizes)
    assert sum(sizes) == 7 and max(sizes) > 1, sizes
    for a, b in zip(alone, together, strict=True):
        assert a.answers[0].labels == b.answers[0].labels
        assert a.answers[0].scores == pytest.approx(b.answers[0].scores, abs=1e-5)
