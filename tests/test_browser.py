"""`hubkit serve` in a real (headless) Chromium: landing page -> depth Space -> upload -> Run -> two depth maps."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_serve import write_spaces
from test_space_depth import free_port, store_template

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EXAMPLE = Path(__file__).resolve().parent.parent / "spaces" / "depth" / "examples" / "astronaut.png"

pytestmark = pytest.mark.browser


def _need_chromium() -> None:
    if CHROMIUM.is_file():
        return
    reason = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); .ci/run does"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture
def server(tmp_path_factory, isolated_home, tmp_path):
    """`hubkit serve` on a free port over a bootstrapped store; killed at the end."""
    shutil.copytree(store_template(tmp_path_factory), isolated_home, ignore=shutil.ignore_patterns(".complete"))
    with _run_server(isolated_home, tmp_path) as url:
        yield url


@contextlib.contextmanager
def _run_server(home: Path, tmp_path: Path, *args: str):
    """`hubkit serve ARGS` on a free port; yields its URL once the landing page answers, then kills it."""
    port = free_port()
    env = {**os.environ, "HUBKIT_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(tmp_path / "serve.log", "w+b")  # noqa: SIM115  (closed below, after the process)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubkit", "serve", "--port", str(port), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240  # generous: it imports every Space, on a shared 2-core machine
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"hubkit serve exited with {proc.returncode}:\n{log.read().decode()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("hubkit serve did not answer within 240 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_depth_space_in_chromium(server, tmp_path):
    _need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            landing = browser.new_page()
            landing.set_default_timeout(30_000)
            landing.goto(server)
            landing.get_by_role("link", name="hubkit depth").click()  # the Space opens in the same tab
            page = landing
            page.set_default_timeout(30_000)
            page.set_viewport_size({"width": 1400, "height": 1000})
            page.wait_for_url("**/spaces/depth/")
            sync_api.expect(page.get_by_label("Base model")).to_have_value("hubkit-tiny/depth-anything")

            page.locator("#depth-upload input[type=file]").set_input_files(str(EXAMPLE))
            page.get_by_label("Make download files").check()  # downloads are written only when asked
            page.get_by_role("button", name="Run", exact=True).click()
            # the model loads on this first request, and the page says so while it does
            sync_api.expect(page.get_by_text(re.compile("first request loads the model")).first).to_be_visible()
            for elem_id in ("depth-base", "depth-adapted"):
                image = page.locator(f"#{elem_id} img")
                image.wait_for(state="visible")
                page.wait_for_function(
                    "(el) => el.complete && el.naturalWidth > 0", arg=image.element_handle(), timeout=30_000
                )
                assert image.get_attribute("src")
                assert image.evaluate("(el) => el.naturalWidth") == 256  # the example's width, legend below
            sync_api.expect(page.get_by_text("Adapted: hubkit-tiny/depth-anything-demo-lora-0")).to_be_visible()
            # Downloads: 16-bit PNG + .npy for the base and for the adapter (no .ply without intrinsics).
            sync_api.expect(page.locator("a[href$='.depth16.png']")).to_have_count(2)
            sync_api.expect(page.locator("a[href$='.depth.npy']")).to_have_count(2)
            sync_api.expect(page.locator("#depth-info")).to_contain_text("relative")  # the summary replaced the note
            page.screenshot(path=str(tmp_path / "depth-space.png"), full_page=True)
            if os.environ.get("HUBKIT_SCREENSHOTS"):  # for a person to look at the page
                shutil.copy(tmp_path / "depth-space.png", Path(os.environ["HUBKIT_SCREENSHOTS"]) / "depth-space.png")

            # Gradio's run history (kept in this browser) shows the run's menu choices and both maps.
            page.goto(server + "spaces/depth/gradio_api/runs")
            run = page.locator("section, div").filter(has_text="/predict").last
            expect_text = sync_api.expect(page.get_by_text("hubkit-tiny/depth-anything-demo-lora-0").first)
            expect_text.to_be_visible()
            sync_api.expect(page.get_by_text("hubkit-tiny/depth-anything", exact=True).first).to_be_visible()
            images = run.locator("img")
            sync_api.expect(images.first).to_be_visible()
            page.wait_for_function("() => [...document.images].every((img) => img.complete)")
            widths = images.evaluate_all("(imgs) => imgs.map((img) => img.naturalWidth)")
            assert len(widths) >= 2 and all(w > 0 for w in widths), widths  # no broken thumbnail
        finally:
            browser.close()
    assert (tmp_path / "depth-space.png").stat().st_size > 10_000


def test_landing_and_broken_space_in_chromium(isolated_home, tmp_path):
    """Every kind of Space on the landing page, then the broken one's error page; the others still open."""
    _need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    spaces = write_spaces(tmp_path / "spaces")
    with (
        _run_server(isolated_home, tmp_path, "--spaces-dir", str(spaces), "--no-bootstrap") as url,
        sync_api.sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(url)
            expect(page.locator(".hubkit-tile")).to_have_count(4)
            for name, text in [
                ("sums", "FastAPI"),
                ("shout", "Gradio"),
                ("broken", "broken: ImportError: no module named foo"),
                ("gallery", "streamlit run"),
            ]:
                expect(page.locator(f".hubkit-tile[data-space={name}]")).to_contain_text(text)
            expect(page.get_by_role("link", name="/api/health")).to_be_visible()
            expect(page.get_by_role("link", name="/api/pool")).to_be_visible()
            page.screenshot(path=str(tmp_path / "landing.png"), full_page=True)

            with page.expect_navigation() as navigation:
                page.get_by_role("link", name="Broken demo").click()
            assert navigation.value.status == 500
            assert page.url.endswith("/spaces/broken/")
            expect(page.get_by_role("heading")).to_contain_text("failed to load")
            expect(page.get_by_text("ImportError: no module named foo")).to_be_visible()
            assert "Traceback" not in page.content()
            page.screenshot(path=str(tmp_path / "broken.png"), full_page=True)

            page.go_back()  # the landing page again; the Spaces beside the broken one still open
            page.get_by_role("link", name="Sum API").click()
            expect(page.get_by_role("heading", name="Sum service")).to_be_visible()
            page.goto(url + "spaces/shout/")
            expect(page.get_by_role("button", name="Shout")).to_be_visible()
        finally:
            browser.close()
    assert (tmp_path / "landing.png").stat().st_size > 10_000
    assert (tmp_path / "broken.png").stat().st_size > 5_000
