"""Make `spaces/<name>/thumbnail.png`, the picture on each Space's tile of the `hubkit serve` landing page.

Each thumbnail is what the Space's own flow makes from its first example with the tiny random-weight models of
`hubkit bootstrap` (so the outputs show the layout, not a trained model's quality), or the example input where
the output is not a picture (plant: a list of classes). The caption saying which is written into the PNG
(tEXt "Description"); the landing page shows it under the picture.

    .venv/bin/python scripts/make_space_thumbnails.py [depth segma pixcell plant search gallery]

The gallery's is a screenshot of its page (Streamlit, headless Chromium at /usr/bin/chromium).

Runs on CPU in a temporary store (a minute or two); the store you use is not touched.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "spaces"
SIZE = (480, 270)  # 16:9, small: a PNG of a few tens of kB per Space


def _fit(image, size):
    """`image` scaled to fit `size` and centred on a white canvas."""
    from PIL import Image

    image = image.convert("RGB")
    scale = min(size[0] / image.width, size[1] / image.height)  # up too: tiny models sample tiny images
    resample = Image.Resampling.NEAREST if scale > 2 else Image.Resampling.LANCZOS
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    canvas = Image.new("RGB", size, "white")
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return canvas


def _side_by_side(images):
    from PIL import Image

    width = SIZE[0] // len(images)
    canvas = Image.new("RGB", SIZE, "white")
    for i, image in enumerate(images):
        canvas.paste(_fit(image, (width - 4, SIZE[1])), (i * width + 2, 0))
    return canvas


def _as_pil(value):
    import numpy as np
    from PIL import Image

    return value if isinstance(value, Image.Image) else Image.fromarray(np.asarray(value))


def _example(space: str) -> Path:
    return sorted((SPACES / space / "examples").glob("*.png"))[0]


def depth():
    from hubkit.spaces_support import DepthDemo

    demo = DepthDemo(device="cpu")
    example = _example("depth")
    base = demo.available_bases()[0]
    result = demo.run(str(example), base, demo.available_adapters(base)[:1])
    maps = [result["base"]] + ([result["adapted"]] if result["adapted"] is not None else [])
    picture = _side_by_side([_as_pil(Image_open(example)), *(_as_pil(m) for m in maps)])
    return picture, (
        f"Example output: {example.name} and its depth maps (base, adapted) from the tiny random-weight "
        "models of `hubkit bootstrap`, made by the Space's own flow"
    )


def segma():
    from hubkit.segma.demo import SegmaDemo

    demo = SegmaDemo(device="cpu")
    example = _example("segma")
    run = demo.run(str(example), classes="object")
    adapted, _ = demo.overlays(run)
    return _side_by_side([_as_pil(Image_open(example)), _as_pil(adapted)]), (
        f"Example output: {example.name} and its labelled regions from the tiny random-weight models of "
        "`hubkit bootstrap`, made by the Space's own flow"
    )


def pixcell():
    from hubkit.pixcell.demo import PixCellDemo

    demo = PixCellDemo(device="cpu")
    example = _example("pixcell")
    base = demo.available_bases()[0]
    adapters = demo.available_adapters(base)
    run = demo.run(str(example), base=base, adapter=adapters[0] if adapters else None, num_inference_steps=4,
                   num_images=2, seed=0)  # fmt: skip
    samples = list(run.base_images[:1]) + list((run.adapted_images or [])[:1])
    return _side_by_side([_as_pil(Image_open(example)), *(_as_pil(s) for s in samples)]), (
        f"Example output: {example.name} and samples (base, adapted) from the tiny random-weight models of "
        "`hubkit bootstrap` (noise-like), made by the Space's own flow"
    )


def plant():
    example = _example("plant")
    return _fit(Image_open(example), SIZE), (
        f"Example input ({example.name}): the Space answers with disease classes and text, not a picture"
    )


def search():
    import asyncio
    import io

    import numpy as np
    from PIL import Image

    from hubkit.data.garments import camera_view, make_catalogue, read_catalogue
    from hubkit.search import SearchService, Version, build_search_model, write_catalogue_index

    work = Path(os.environ["HUBKIT_HOME"]) / "search-thumbnail"
    shop = make_catalogue(work / "shop", n_per_category=4, seed=0, size=128)
    index = write_catalogue_index(shop, work / "index", model=build_search_model(work / "model", seed=0))
    service = SearchService([Version("a", str(index))]).load()
    item = read_catalogue(shop)[0]
    query = camera_view(Image_open(shop / item["file"]), np.random.default_rng(1))
    answer = asyncio.run(service.search(query, k=3))
    found = [Image.open(io.BytesIO(service.thumbnail(hit["id"]))) for hit in answer["results"]]
    return _side_by_side([query, *found]), (
        "Example output: a phone-style photo of a generated garment and its 3 nearest catalogue items, from a "
        "small untrained embedder, made by the Space's own search service"
    )


def gallery():
    """The gallery page itself, in headless Chromium: a Streamlit run on the bootstrapped store."""
    import socket
    import subprocess
    import time
    import urllib.request

    from playwright.sync_api import sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "streamlit", "run", str(SPACES / "gallery" / "app.py"), "--server.port",
               str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--client.toolbarMode", "viewer"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "_stcore/health", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the gallery's Streamlit server did not start") from None
                time.sleep(0.5)
        shot = Path(os.environ["HUBKIT_HOME"]) / "gallery.png"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"], headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(url, wait_until="commit")
            page.get_by_text("repos shown").wait_for(timeout=60_000)
            page.locator("[data-testid=stDataFrame] canvas").first.wait_for(timeout=60_000)
            page.wait_for_timeout(3000)  # the table's rows draw on its canvas after it appears
            page.screenshot(path=str(shot), clip={"x": 300, "y": 60, "width": 960, "height": 540})  # no sidebar
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    return _fit(Image_open(shot), SIZE), "The gallery's first page on the store `hubkit bootstrap` fills"


def Image_open(path):  # noqa: N802 (reads like PIL's)
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


MAKERS = {"depth": depth, "segma": segma, "pixcell": pixcell, "plant": plant, "search": search, "gallery": gallery}


def main(names: list[str]) -> int:
    from PIL.PngImagePlugin import PngInfo

    os.environ["HUBKIT_HOME"] = tempfile.mkdtemp(prefix="hubkit-thumbs-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hubkit import hub
    from hubkit.bootstrap import bootstrap

    bootstrap(hub.LocalStore(os.environ["HUBKIT_HOME"]))
    failed = 0
    for name in names or list(MAKERS):
        try:
            picture, caption = MAKERS[name]()
        except Exception as err:  # one Space failing leaves its old thumbnail and the others go on
            print(f"{name}: failed: {type(err).__name__}: {err}", file=sys.stderr)
            failed += 1
            continue
        info = PngInfo()
        info.add_text("Description", caption)
        target = SPACES / name / "thumbnail.png"
        picture.save(target, optimize=True, pnginfo=info)
        print(f"{target.relative_to(ROOT)}: {target.stat().st_size // 1024} kB: {caption}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
