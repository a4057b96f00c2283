"""The search Space in headless Chromium under `hubkit serve`, with a fake camera that films a catalogue item:
capture a frame -> the item comes first; also upload, drag-and-drop, an example click and an error in the page."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_browser import CHROMIUM, CHROMIUM_ARGS, _need_chromium, _run_server

from hubkit.data.garments import make_catalogue
from hubkit.search import build_search_model, finetune_embedding, write_catalogue_index

ROOT = Path(__file__).resolve().parent.parent
CAMERA_ITEM = "dress-0001"  # what the fake camera films
UPLOAD_ITEM = "shoe-0002"
DROP_ITEM = "bag-0003"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def write_y4m(image: Image.Image, path: Path, *, width: int = 160, height: int = 120, frames: int = 10) -> Path:
    """A YUV4MPEG2 (4:2:0, full range) clip of `image` centred on its own background colour, as Chromium's
    --use-file-for-fake-video-capture reads it."""
    image = image.convert("RGB")
    side = min(width, height)
    frame = Image.new("RGB", (width, height), image.getpixel((1, 1)))
    frame.paste(image.resize((side, side), Image.BICUBIC), ((width - side) // 2, (height - side) // 2))
    y, cb, cr = frame.convert("YCbCr").split()
    planes = [np.asarray(y), np.asarray(cb.resize((width // 2, height // 2), Image.BOX))]
    planes.append(np.asarray(cr.resize((width // 2, height // 2), Image.BOX)))
    with open(path, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            fh.write(b"FRAME\n" + b"".join(p.astype(np.uint8).tobytes() for p in planes))
    return path


@pytest.fixture
def search_server(tmp_path, isolated_home, monkeypatch):
    shop = make_catalogue(tmp_path / "shop", n_per_category=4, seed=0, size=64)
    # Trained briefly: an untrained model's vectors all sit within cosine 0.99 of each other.
    base = build_search_model(tmp_path / "base", seed=0)
    model = finetune_embedding(base, shop, tmp_path / "model", steps=60, batch_size=20, seed=0)
    index = write_catalogue_index(shop, tmp_path / "index", model=model, probe_views=1)
    spaces = tmp_path / "spaces"
    shutil.copytree(ROOT / "spaces" / "search", spaces / "search")
    monkeypatch.setenv("HUBKIT_SEARCH_INDEX", str(index))
    with _run_server(isolated_home, tmp_path, "--spaces-dir", str(spaces), "--no-bootstrap") as url:
        yield url, shop


def test_search_page_with_a_fake_camera(search_server, tmp_path):
    _need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    url, shop = search_server
    video = write_y4m(Image.open(shop / "images" / f"{CAMERA_ITEM}.png"), tmp_path / "camera.y4m")
    camera_args = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    ]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + camera_args, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1300})
            page.set_default_timeout(30_000)
            page.goto(url)
            page.locator(".hubkit-tile[data-space=search] a[style*='font-weight']").click()  # from the landing page
            page.wait_for_url("**/spaces/search/")
            expect(page.locator("#status")).to_contain_text("Ready", timeout=60_000)
            loaded_at = page.evaluate("performance.timeOrigin")

            # Camera: getUserMedia on the fake device, capture a frame, the filmed item comes first.
            page.get_by_role("button", name="Use the camera").click()
            page.wait_for_function("document.getElementById('video').videoWidth > 0")
            page.get_by_role("button", name="Capture").click()
            first = page.locator("#results li.result").first
            expect(first).to_have_attribute("data-id", CAMERA_ITEM)
            expect(page.locator("#results li.result")).to_have_count(8)
            expect(page.locator("#categories li")).to_have_count(3)
            expect(page.locator("#timings")).to_contain_text("embed")
            page.wait_for_function(
                "(el) => el.complete && el.naturalWidth > 0", arg=first.locator("img").element_handle()
            )
            page.screenshot(path=str(tmp_path / "search-camera.png"), full_page=True)
            page.get_by_role("button", name="Close camera").click()

            # Upload a file.
            page.locator("#file").set_input_files(str(shop / "images" / f"{UPLOAD_ITEM}.png"))
            expect(first).to_have_attribute("data-id", UPLOAD_ITEM)

            # Drag and drop: a File in a DataTransfer, dropped on the zone.
            data = list((shop / "images" / f"{DROP_ITEM}.png").read_bytes())
            page.evaluate(
                """(bytes) => {
                    const file = new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" });
                    const dt = new DataTransfer();
                    dt.items.add(file);
                    const drop = new DragEvent("drop", { dataTransfer: dt, bubbles: true });
                    document.getElementById("drop").dispatchEvent(drop);
                }""",
                data,
            )
            expect(first).to_have_attribute("data-id", DROP_ITEM)

            # An example.
            example = page.locator("#examples button.example").first
            example_id = example.get_attribute("data-id")
            example.click()
            expect(first).to_have_attribute("data-id", example_id)

            # An error from the server, shown in the page.
            (tmp_path / "notes.png").write_bytes(b"this is not an image")
            page.locator("#file").set_input_files(str(tmp_path / "notes.png"))
            expect(page.locator("#error")).to_contain_text("not a readable image")
            expect(page.locator("#progress")).to_be_hidden()
            expect(page.locator("#results li.result")).to_have_count(0)  # no stale results under the error
            assert page.evaluate("performance.timeOrigin") == loaded_at  # never reloaded
            page.screenshot(path=str(tmp_path / "search-error.png"), full_page=True)
        finally:
            browser.close()
    for name in ("search-camera.png", "search-error.png"):
        assert (tmp_path / name).stat().st_size > 10_000
