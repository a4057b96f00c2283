"""The depth Space: DepthDemo on real images with tiny models, then the Gradio app over HTTP."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zlib
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from hubkit import hub, spaces_support, viz
from hubkit.bootstrap import bootstrap, demo_adapter_repo
from hubkit.errors import InvalidImageError
from hubkit.spaces_support import DepthDemo, RequestDirs

TASK = "depth-estimation"
TINY_BASE = "hubkit-tiny/depth-anything"
LORA0, LORA1 = demo_adapter_repo(TASK, 0), demo_adapter_repo(TASK, 1)
ADAPTER_DIRS = "HUBKIT_SPACE_ADAPTER_DIRS"


def store_template(tmp_path_factory) -> Path:
    """A bootstrapped store built once per test session; tests copy it into their own HUBKIT_HOME."""
    root = tmp_path_factory.getbasetemp() / "bootstrapped-store"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        bootstrap(hub.LocalStore(root))
        (root / ".complete").touch()
    return root


@pytest.fixture
def store(tmp_path_factory, isolated_home):
    """This test's HUBKIT_HOME, filled with hard links to the template (store files are replaced, never edited)."""
    template = store_template(tmp_path_factory)
    shutil.copytree(template, isolated_home, ignore=shutil.ignore_patterns(".complete"), copy_function=os.link)
    return isolated_home


@pytest.fixture(scope="module")
def shared_demo():
    """One DepthDemo for the input-format tests: the base loads in the first of them (model loads cost seconds)."""
    return DepthDemo(device="cpu")


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    """Real photos from scikit-image in the formats people upload: RGB, greyscale, 16-bit, RGBA."""
    paths = {name: tmp_path / f"{name}.png" for name in ("astronaut", "camera", "sixteen_bit", "rgba")}
    Image.fromarray(data.astronaut()[::4, ::4]).save(paths["astronaut"])
    Image.fromarray(data.camera()[::4, ::4]).save(paths["camera"])  # mode L
    Image.fromarray((data.coins().astype(np.uint16) * 257)[::3, ::3]).save(paths["sixteen_bit"])  # mode I;16
    coffee = data.coffee()[::4, ::4]
    alpha = np.full(coffee.shape[:2], 255, np.uint8)
    alpha[:, : coffee.shape[1] // 3] = 0
    Image.fromarray(np.dstack([coffee, alpha])).save(paths["rgba"])
    return paths


def huge_png(path: Path, width: int = 10_000, height: int = 6_000) -> Path:
    """A PNG whose header claims width x height pixels (no pixel data: the size check must come first)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("name", ["astronaut", "camera", "sixteen_bit", "rgba"])
def test_run_returns_both_maps_and_files(store, images, shared_demo, name):
    path = images[name]
    with Image.open(path) as img:
        width, height = img.size
    demo = shared_demo
    result = demo.run(path, TINY_BASE, [LORA0], intrinsics=(200.0, 200.0, None, None))
    for key in ("base", "adapted"):
        picture = result[key]
        assert (
            picture.dtype == np.uint8 and picture.shape[1] == max(width, 160) and picture.shape[0] > height
        )  # + legend (>= 160 px)
    assert result["unit"] == "relative" and result["adapted_id"] == LORA0
    with Image.open(result["png16"]) as png:
        assert png.size == (width, height) and png.mode in ("I;16", "I")
        assert np.asarray(png).max() == 65535  # relative depth stretched to the full 16-bit range
    assert np.load(result["npy"]).shape == (height, width)
    xyz, colours = viz.read_ply(result["ply"])
    assert xyz.shape == (width * height, 3) and np.isfinite(xyz).all() and colours.dtype == np.uint8
    assert {p.suffix for p in result["files"]} == {".png", ".npy", ".ply"} and len(result["files"]) == 6
    assert all(Path(p).is_file() for p in result["files"])
    assert "relative" in demo.summary(result)


def test_adapters_change_the_map_without_reloading_the_base(store, images, monkeypatch):
    loads = []
    real_load = spaces_support.load
    monkeypatch.setattr(spaces_support, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    demo = DepthDemo(device="cpu")
    assert loads == []  # nothing loads before the first request
    path = images["astronaut"]

    base_only = demo.run(path, TINY_BASE, [])
    predictor = demo.predictor(TINY_BASE)
    assert base_only["adapted"] is None and base_only["ply"] is None
    first = demo.run(path, TINY_BASE, [LORA0])
    backbone = predictor.model.get_base_model()
    second = demo.run(path, TINY_BASE, [LORA1, LORA0])

    assert len(loads) == 1 and demo.predictor(TINY_BASE) is predictor
    assert predictor.model.get_base_model() is backbone  # same weights object: the base was never reloaded
    assert len(predictor.adapters) == 2  # each adapter attached once, then switched with set_adapter
    base_depth = np.load(base_only["npy"])
    lora0 = np.load(first["npy"])
    lora1 = np.load(second["npy"])  # the first adapter listed gives the headline outputs
    lora0_again = np.load(next(p for p in second["files"] if p.name == f"{LORA0.replace('/', '--')}.depth.npy"))
    beside = np.load(first["files"][1])  # the base output is the same beside an adapter (another row of one pass)
    assert np.allclose(beside, base_depth, rtol=1e-4, atol=1e-5 * np.abs(base_depth).max())
    assert not np.allclose(lora0, base_depth, rtol=1e-3, atol=0) and not np.allclose(lora1, lora0, rtol=1e-3, atol=0)
    assert np.array_equal(lora0_again, lora0)  # switching away and back gives the same map
    assert not np.array_equal(first["adapted"], first["base"])
    assert set(second["adapters"]) == {LORA0, LORA1} and second["adapted_id"] == LORA1


def test_bad_inputs_raise_invalid_image_error(store, tmp_path):
    demo = DepthDemo(device="cpu")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    cases = {
        text: "not an image",
        empty: "empty file",
        huge_png(tmp_path / "huge.png"): "60 MP",
        None: "No image",
        tmp_path / "missing.png": "No such file",
    }
    for image, message in cases.items():
        with pytest.raises(InvalidImageError, match=message) as err:
            demo.run(image, TINY_BASE, [])
        assert "upload" in str(err.value).lower()  # says what to do
    with pytest.raises(InvalidImageError, match="empty"):
        demo.run(np.zeros((0, 5, 3), np.uint8), TINY_BASE, [])
    assert demo._predictors == {}  # inputs are checked before any model loads


def test_menus_come_from_the_store(store, monkeypatch):
    assert spaces_support.default_base(TASK) == TINY_BASE  # offline, the real base is not in the store
    bases = spaces_support.available_bases(TASK)
    assert bases[0] == TINY_BASE and "hubkit-tiny/dpt" in bases
    assert not any("lora" in b for b in bases) and "hubkit-tiny/vit" not in bases
    assert spaces_support.available_adapters(TASK, TINY_BASE) == [LORA0, LORA1]
    assert spaces_support.available_adapters(TASK, "hubkit-tiny/dpt") == []  # adapters are per base
    monkeypatch.setenv("HUBKIT_DEPTH_BASE", "me/my-depth")
    assert DepthDemo().default_base() == "me/my-depth" and DepthDemo().available_bases()[0] == "me/my-depth"


def handler(demo, api_name: str):
    """The Python function behind one of the app's events (what the HTTP API calls)."""
    return next(fn.fn for fn in demo.fns.values() if fn.api_name == api_name)


def server_adapter(folder: Path) -> Path:
    """A real adapter in a server folder outside the store: a client must neither load it nor learn it exists."""
    return Path(shutil.copytree(hub.pull(LORA0), folder))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_app(monkeypatch):
    from hubkit import serve

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    (space,) = [s for s in serve.discover_spaces() if s.name == "depth"]
    return space, serve.load_space_demo(space)


def test_app_builds_without_loading_models(store, monkeypatch):
    import gradio as gr

    loads = []
    monkeypatch.setattr(spaces_support, "load", lambda *a, **k: loads.append(a))
    space, demo = load_app(monkeypatch)
    assert isinstance(demo, gr.Blocks) and loads == []
    assert space.title == "hubkit depth"
    names = {fn.api_name for fn in demo.fns.values()}
    assert None not in names and {"predict", "menus", "refresh", "adapters", "preview"} <= names


def test_app_over_http(store, images, monkeypatch, tmp_path):
    import httpx
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    _, demo = load_app(monkeypatch)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "dl"))
        base_menu, adapter_menu = client.predict(api_name="/menus")
        assert base_menu["value"] == TINY_BASE
        assert [c[0] for c in adapter_menu["choices"]] == [LORA0, LORA1]

        def predict(path, adapters=(LORA0,)):
            return client.predict(handle_file(str(path)), TINY_BASE, list(adapters), 150, None, None, None, True,
                                  api_name="/predict")  # fmt: skip

        base_img, adapted, others, files, info = predict(images["camera"])
        assert f"**Adapted** `{LORA0}`" in info and not others  # plain values, no component updates
        with Image.open(base_img) as a, Image.open(adapted) as b:
            assert a.size == b.size and a.size[0] == 160  # 128 px photo, legend 160 px wide
            assert np.asarray(a)[:128, :128].std() > 0  # the depth map itself varies, not only the legend under it
            assert not np.array_equal(np.asarray(a), np.asarray(b))
        assert sorted(Path(f).suffix for f in files) == [".npy", ".npy", ".ply", ".ply", ".png", ".png"]
        assert "relative" in info

        bad = tmp_path / "broken.png"
        bad.write_bytes(b"\x89PNG but not really")
        with pytest.raises(AppError, match="not an image this demo can read"):
            predict(bad)
        _, adapted, others, files, info = predict(images["rgba"], adapters=(LORA1, LORA0))  # still serving
        assert f"**Adapted** `{LORA1}`" in info and len(files) == 9
        assert [Path(item["image"]).is_file() and item["caption"] for item in others] == [LORA0]

        refusals = set()  # a client cannot tell a server folder from a missing one
        for probe in ("/etc", str(server_adapter(tmp_path / "server-adapter")), "/nonexistent"):
            with pytest.raises(AppError) as err:
                predict(images["camera"], adapters=(probe,))
            refusals.add(str(err.value))
        assert len(refusals) == 1 and ADAPTER_DIRS in refusals.pop()

        # Gradio copies returned files into its cache before answering, so ours can go right after.
        depth = handler(demo, "predict").__globals__["depth"]
        depth.outputs.keep = 1
        raw = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        args = (handle_file(str(images["camera"])), TINY_BASE, [LORA0], None, None, None, None, True)
        first = raw.predict(*args, api_name="/predict")[3]
        raw.predict(*args, api_name="/predict")
        root = depth.outputs.root
        assert len(list(root.iterdir())) == 1  # the first request's folder is gone...
        for file in first:  # ... and its downloads are still served
            response = httpx.get(file["url"], timeout=30)
            assert response.status_code == 200 and response.content.startswith((b"\x89PNG", b"\x93NUMPY"))
    finally:
        demo.close()
    assert not root.exists()  # the server's shutdown removed the Space's temporary outputs


def test_requests_cannot_load_arbitrary_bases(store, images, tmp_path, monkeypatch):
    import shutil

    from hubkit import tiny
    from hubkit.errors import HubkitError
    from hubkit.spaces_support import DepthDemo

    demo = DepthDemo(device="cpu")
    other = tiny.build("depth-anything", tmp_path / "server-folder")
    with pytest.raises(HubkitError, match="not offered here"):
        demo.run(images["camera"], str(other), [])
    monkeypatch.setenv("HUBKIT_DEPTH_BASES", str(other))  # the operator may allow more
    assert demo.run(images["camera"], str(other), [])["base"] is not None
    second = shutil.copytree(other, tmp_path / "second")
    monkeypatch.setenv("HUBKIT_DEPTH_BASES", f"{other},{second}")
    demo.run(images["camera"], TINY_BASE, [])
    demo.run(images["camera"], str(second), [])  # a third base: the least recently used one is dropped
    assert len(demo._predictors) == 2 and str(other) not in demo._predictors


def test_adapters_outside_the_allow_list_get_one_message(store, images, tmp_path, monkeypatch):
    import gradio as gr

    _, demo = load_app(monkeypatch)
    predict = handler(demo, "predict")
    image = str(images["camera"])
    outside = server_adapter(tmp_path / "server-adapter")

    def refusal(adapter: str) -> tuple[str, str]:
        with pytest.raises(gr.Error) as err:
            predict(image, TINY_BASE, [adapter], None, None, None, None)
        return err.value.message, err.value.title

    probes = [
        "/etc",  # an existing server folder
        str(outside),  # an existing folder holding a real adapter
        "/nonexistent",
        "../x",
        os.path.relpath(outside),  # the same adapter, relative to the server's working directory
        f"{outside}/../server-adapter",
        "nobody/missing",  # a repo id in no store (the Hub is off in tests)
        TINY_BASE,  # a store repo that is not an adapter
    ]
    refusals = {probe: refusal(probe) for probe in probes}
    assert len(set(refusals.values())) == 1, refusals  # byte-identical, whatever exists on disk
    message = refusals["/etc"][0]
    assert ADAPTER_DIRS in message and "/etc" not in message and str(tmp_path) not in message

    assert f"**Adapted** `{LORA0}`" in predict(image, TINY_BASE, [LORA0], None, None, None, None)[4]

    # Folders the operator names: an adapter folder itself, or a folder of adapter folders.
    parent = tmp_path / "operator"
    server_adapter(parent / "sharp")
    monkeypatch.setenv(ADAPTER_DIRS, os.pathsep.join([str(outside), str(parent), "/nonexistent-operator-dir"]))
    sharp = str(parent / "sharp")
    assert spaces_support.available_adapters(TASK, TINY_BASE) == sorted([LORA0, LORA1, str(outside), sharp])
    for allowed in (str(outside), sharp):
        assert f"**Adapted** `{allowed}`" in predict(image, TINY_BASE, [allowed], None, None, None, None)[4]
    for probe in ("/etc", f"{outside}/../server-adapter", os.path.relpath(outside), str(parent)):
        assert refusal(probe) == refusals["/etc"]  # only the names as listed, no other spelling or parent


def test_request_folders_are_capped_and_removed(store, images, tmp_path, monkeypatch):
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))  # only this test's folders are seen
    demo = DepthDemo(device="cpu", outputs=RequestDirs("hubkit-depth-", keep=3))
    results = [demo.run(images["camera"], TINY_BASE, [LORA0], (150.0, 150.0, None, None)) for _ in range(5)]
    (root,) = private.glob("hubkit-depth-*")
    kept = sorted(root.iterdir())
    assert len(kept) == 3 and {p.parent for r in results[-3:] for p in r["files"]} == set(kept)
    assert all(p.is_file() for p in results[-1]["files"]) and not results[0]["files"][0].exists()
    demo.outputs.cleanup()
    assert list(private.iterdir()) == []
    demo.run(images["camera"], TINY_BASE, [])  # a later request starts a new folder
    assert len(list(private.glob("hubkit-depth-*/request-*"))) == 1


def test_request_folders_stay_under_the_byte_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dirs = RequestDirs("hubkit-test-", keep=10, max_bytes=2_500)
    made = []
    for _ in range(5):
        made.append(dirs.new())
        (made[-1] / "depth.npy").write_bytes(b"x" * 1_000)
    assert sorted(dirs.root.iterdir()) == sorted(made[-3:])  # the oldest went to stay near 2,500 bytes
    dirs.cleanup()
    assert not dirs.root_exists() and list(tmp_path.iterdir()) == []


def test_request_folders_go_at_interpreter_exit(tmp_path):
    code = (
        "from hubkit.spaces_support import RequestDirs\n"
        "dirs = RequestDirs('hubkit-depth-')\n"
        "for i in range(3):\n"
        "    (dirs.new() / 'depth.npy').write_bytes(b'x')\n"
        "assert len(list(dirs.root.iterdir())) == 3\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []


# -- batching, mixed adapters, bad inputs and load over the real HTTP API (issue 14) ---------------------------
def test_mixed_adapter_batch_matches_each_adapter_alone(store, images):
    demo = DepthDemo(device="cpu")
    asks = [(images["astronaut"], [LORA0]), (images["astronaut"], [LORA1]), (images["rgba"], [LORA1, LORA0]),
            (images["astronaut"], [])]  # fmt: skip
    requests = [demo.check(path, TINY_BASE, adapters, files=i != 0) for i, (path, adapters) in enumerate(asks)]
    assert not demo.is_loaded(TINY_BASE) and demo.passes == deque()  # checks load nothing
    results = demo.run_batch(requests)
    assert not any(isinstance(r, BaseException) for r in results)
    predictor = demo.predictor(TINY_BASE)
    names = {repo: repo.replace("/", "--") for repo in (LORA0, LORA1)}
    for (path, adapters), request, result in zip(asks, requests, results, strict=True):
        alone = {"base": predictor.predict(request.image, adapter="base")}
        alone |= {repo: predictor.predict(request.image, adapter=names[repo]) for repo in adapters}
        assert set(result["range"]) == set(alone)
        for key, prediction in alone.items():
            _, span, _ = demo.render(prediction)
            assert np.allclose(span, result["range"][key], rtol=1e-3, atol=1e-4), (path.name, key)
            if result["files"]:
                stem = "base" if key == "base" else names[key]
                ours = np.load(next(p for p in result["files"] if p.name == f"{stem}.depth.npy"))
                scale = float(np.abs(prediction.depth).max())
                assert np.allclose(ours, prediction.depth, rtol=1e-3, atol=1e-4 * scale), (path.name, key)
    assert not np.allclose(results[0]["range"][LORA0], results[1]["range"][LORA1])  # rows kept their adapters
    # Two passes: the 256x256 astronaut's rows (2 + 2 + 1, three adapters mixed) and the RGBA coffee's 3 rows.
    assert sorted(demo.passes) == [3, 5]
    assert results[0]["files"] == [] and results[0]["npy"] is None  # downloads only when asked
    assert len(results[2]["files"]) == 6 and results[2]["ply"] is None  # PNG + .npy per map; no .ply without K


def test_microbatcher_batches_concurrent_calls_and_isolates_errors():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from hubkit.spaces_support import MicroBatcher

    gate = threading.Event()

    def run_batch(items):
        gate.wait(5)  # the first batch holds the worker until every other call is queued
        return [ValueError(f"bad {i}") if i % 5 == 4 else i * 10 for i in items]

    batcher = MicroBatcher(run_batch, max_batch_size=8)

    def call(i):
        try:
            return batcher(i)
        except ValueError as err:
            return str(err)

    with ThreadPoolExecutor(17) as pool:
        futures = [pool.submit(call, 0)]
        while not batcher.sizes:  # the worker took call 0 and waits at the gate
            threading.Event().wait(0.01)
        futures += [pool.submit(call, i) for i in range(1, 17)]
        while len(batcher._queue) < 16:
            threading.Event().wait(0.01)
        gate.set()
        answers = [f.result(timeout=30) for f in futures]
    assert answers == [f"bad {i}" if i % 5 == 4 else i * 10 for i in range(17)]  # each caller its own outcome
    assert list(batcher.sizes) == [1, 8, 8]


def test_concurrent_submits_share_forward_passes(store, images):
    from concurrent.futures import ThreadPoolExecutor

    demo = DepthDemo(device="cpu", max_batch_size=8)
    requests = [demo.check(images["astronaut"], TINY_BASE, [(LORA0, LORA1)[i % 2]]) for i in range(8)]
    demo.submit(requests[0])  # loads the model and both adapters' first use
    demo.passes.clear()
    demo.batcher.sizes.clear()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(demo.submit, requests))
    assert all(r["adapted_id"] == (LORA0, LORA1)[i % 2] for i, r in enumerate(results))
    assert sum(demo.batcher.sizes) == 8 and max(demo.batcher.sizes) > 1  # requests shared a batch...
    assert sum(demo.passes) == 16 and max(demo.passes) > 2  # ... and a forward pass mixing both adapters


def test_small_images_are_refused_with_the_minimum(store, tmp_path):
    demo = DepthDemo(device="cpu")
    for size in ((1, 1), (15, 300)):
        path = tmp_path / f"{size[0]}x{size[1]}.png"
        Image.new("RGB", size, (10, 20, 30)).save(path)
        with pytest.raises(InvalidImageError, match=f"{size[0]}x{size[1]} px.*at least 16 px"):
            demo.check(path, TINY_BASE, [])
    Image.new("RGB", (16, 16), (10, 20, 30)).save(tmp_path / "ok.png")
    result = demo.run(tmp_path / "ok.png", TINY_BASE, [], files=False)
    assert result["base"].shape[1] == 160 and result["files"] == []  # the legend keeps its minimum width


def test_legend_scales_with_the_image():
    small, big = viz.depth_legend(0.0, 1.0, "relative", width=200), viz.depth_legend(0.0, 1.0, "relative", width=3000)
    assert small.shape[1] == 200 and big.shape[1] == 3000
    assert big.shape[0] >= 5 * small.shape[0]  # bar and labels grow with the width, so they stay readable scaled down
    dark = (big.min(axis=2) < 100).any(axis=1)  # rows holding dark text / ticks
    assert dark[big.shape[0] // 2 :].sum() > 20  # the labels are tall strokes, not a hairline


@contextlib.contextmanager
def served(monkeypatch, batch: bool = True):
    """The depth app (build_demo(batch)) on a free port; yields its URL."""
    from hubkit import serve

    space, _ = load_app(monkeypatch)
    app = serve._import_app_module(space)
    demo = app.build_demo(batch=batch)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", app
    finally:
        demo.close()


def bad_files(tmp_path: Path) -> dict[str, Path]:
    """Uploads people send that this Space must refuse, each with its own message."""
    files = {name: tmp_path / f"{stem}.png" for name, stem in
             [("not an image", "notes"), ("empty", "empty"), ("truncated", "truncated"), ("1x1", "one")]}  # fmt: skip
    files["not an image"].write_text("meeting notes, not a photo")
    files["empty"].write_bytes(b"")
    good = tmp_path / "good.png"
    Image.fromarray(data.astronaut()[::4, ::4]).save(good)
    files["truncated"].write_bytes(good.read_bytes()[:400])
    Image.new("RGB", (1, 1), (200, 0, 0)).save(files["1x1"])
    files["huge"] = huge_png(tmp_path / "huge.png")
    return files


def good_files(tmp_path: Path) -> dict[str, Path]:
    """Uploads that look odd but are photos: converted, not refused."""
    files = {"16-bit": tmp_path / "sixteen.png", "RGBA": tmp_path / "rgba.png", "CMYK": tmp_path / "cmyk.jpg",
             "animated GIF": tmp_path / "anim.gif"}  # fmt: skip
    Image.fromarray((data.coins().astype(np.uint16) * 257)[::4, ::4]).save(files["16-bit"])
    coffee = data.coffee()[::4, ::4]
    Image.fromarray(np.dstack([coffee, np.full(coffee.shape[:2], 128, np.uint8)])).save(files["RGBA"])
    Image.fromarray(coffee).convert("CMYK").save(files["CMYK"])
    frames = [Image.fromarray(np.roll(coffee, 10 * i, axis=1)) for i in range(3)]
    frames[0].save(files["animated GIF"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    return files


def test_bad_input_sweep_over_http(store, tmp_path, monkeypatch):
    """Thirteen kinds of bad input through the real HTTP API: each a one-line message, and the server still serves."""
    import httpx
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    with served(monkeypatch) as (url, _):
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))

        def predict(image, base=TINY_BASE, adapters=(LORA0,), fx=None):
            return client.predict(image, base, list(adapters), fx, None, None, None, False, api_name="/predict")

        expected = {
            "not an image": "not an image this demo can read",
            "empty": r"empty file \(0 bytes\)",
            "truncated": "not an image this demo can read|not a readable image",
            "huge": "takes at most 50 MP",
            "1x1": "at least 16 px on each side",
        }
        messages = {}
        for kind, path in bad_files(tmp_path).items():
            with pytest.raises(AppError, match=expected[kind]) as err:
                predict(handle_file(str(path)))
            messages[kind] = str(err.value)
        good = handle_file(str(tmp_path / "good.png"))
        api_cases = {
            "unknown base": (dict(image=good, base="nobody/no-such-depth"), "not offered here"),
            "server path as adapter": (dict(image=good, adapters=["/etc/passwd"]), "not available on this server"),
            "unknown adapter": (dict(image=good, adapters=["nobody/missing-lora"]), "not available on this server"),
            "adapter of wrong type": (dict(image=good, adapters=[{"path": "/etc"}]), "not available on this server"),
            "base of wrong type": (dict(image=good, base=12), "base must be a model id"),
            "intrinsics of wrong type": (dict(image=good, fx="wide"), "fx must be a number"),
            "no image": (dict(image=None), "No image given"),
        }
        for kind, (kwargs, pattern) in api_cases.items():
            with pytest.raises(AppError, match=pattern) as err:
                predict(**kwargs)
            messages[kind] = str(err.value)
        # a missing argument over plain HTTP: refused before any handler runs
        response = httpx.post(url + "gradio_api/call/predict", json={"data": [None, TINY_BASE]}, timeout=30)
        if response.status_code == 200:
            event = response.json()["event_id"]
            stream = httpx.get(url + f"gradio_api/call/predict/{event}", timeout=60).text
            assert "event: error" in stream
            messages["missing arguments"] = stream
        else:
            assert response.status_code in (400, 422)
            messages["missing arguments"] = response.text
        assert len(messages) >= 13
        for kind, message in messages.items():
            assert "Traceback" not in message and str(tmp_path) not in message, (kind, message)

        for kind, path in good_files(tmp_path).items():  # odd but valid: converted, answered
            base_map, adapted, *_ = predict(handle_file(str(path)))
            with Image.open(base_map) as picture:
                assert picture.width >= 160, kind
        base_map, adapted, _, _, info = predict(good)  # and the server still answers a good request
        assert f"**Adapted** `{LORA0}`" in info and "relative" in info and Path(adapted).is_file()


def _gradio_call(client, url: str, data: list) -> dict:
    """One call through /gradio_api/call/predict (POST, then read the event stream); the parsed result or error."""
    import json

    response = client.post(url + "gradio_api/call/predict", json={"data": data})
    response.raise_for_status()
    event = response.json()["event_id"]
    kind, payload = None, None
    with client.stream("GET", url + f"gradio_api/call/predict/{event}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: ") and kind in ("complete", "error"):
                payload = json.loads(line[len("data: ") :]) if kind == "complete" else line
                break
    return {"kind": kind, "data": payload}


@pytest.mark.slow
def test_fifty_concurrent_clients(store, tmp_path, monkeypatch):
    """50 clients at once on the batched Space (httpx on /gradio_api/): all answered, within a generous bound."""
    import statistics
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    with served(monkeypatch) as (url, app):
        path = tmp_path / "photo.png"
        Image.fromarray(data.astronaut()[::4, ::4]).save(path)
        with httpx.Client(timeout=120) as http:
            uploaded = http.post(url + "gradio_api/upload", files={"files": ("photo.png", path.read_bytes())}).json()
            image = {"path": uploaded[0], "meta": {"_type": "gradio.FileData"}, "orig_name": "photo.png"}
            assert _gradio_call(http, url, [image, TINY_BASE, [LORA0], None, None, None, None, False])["kind"] == (
                "complete"
            )  # the model loads once, outside the measurement
        app.depth.batcher.sizes.clear()

        def client(i: int) -> float:
            started = time.perf_counter()
            with httpx.Client(timeout=120) as http:
                answer = _gradio_call(http, url, [image, TINY_BASE, [(LORA0, LORA1)[i % 2]], None, None, None, None,
                                                  False])  # fmt: skip
            assert answer["kind"] == "complete", answer
            assert f"**Adapted** `{(LORA0, LORA1)[i % 2]}`" in answer["data"][4]  # its own adapter, not a neighbour's
            return time.perf_counter() - started

        started = time.perf_counter()
        with ThreadPoolExecutor(50) as pool:
            latencies = sorted(pool.map(client, range(50)))
        wall = time.perf_counter() - started
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * len(latencies)) - 1]
    sizes = list(app.depth.batcher.sizes)
    print(f"\n50 clients: 0 errors, {50 / wall:.1f} calls/s, p50 {p50:.2f} s, p95 {p95:.2f} s, batches {sizes}")
    assert len(latencies) == 50 and wall < 300
    assert sum(sizes) == 50 and max(sizes) > 1  # concurrent requests shared passes
