"""`hubkit serve` (every Space of the checkout, a bootstrapped store) in headless Chromium: the landing page shows a
tile per Space and the gallery's own server; each tile opens its Space, which renders and links back; a link with
`?base=&adapter=` preselects the menus."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.request
from urllib.parse import urljoin

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, _need_chromium, _run_server
from test_space_depth import store_template

from hubkit import serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SCREENSHOTS = "/tmp/hubkit-landing-shots"  # kept after the run, to look at

# What shows that each Space rendered (a Space not listed here only has to show its back link).
RENDERED = {
    "depth": "#depth-upload",
    "segma": "#segma-upload",
    "plant": "#plant-run",
    "pixcell": "#pixcell-run",
    "search": "h1:has-text('Find similar items')",
    "gallery": "[data-testid='stApp']",  # the shell; its back link (below) shows the script ran
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`hubkit serve` over a copy of the bootstrapped store, once for the module; waits until no Space is
    starting (the gallery's Streamlit server)."""
    home = tmp_path_factory.mktemp("home")
    shutil.copytree(store_template(tmp_path_factory), home, ignore=shutil.ignore_patterns(".complete"),
                    dirs_exist_ok=True)  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        with _run_server(home, tmp_path_factory.mktemp("serve")) as url:
            deadline = time.monotonic() + 120
            while True:
                with urllib.request.urlopen(url + "api/health", timeout=10) as response:
                    spaces = json.load(response)["spaces"]
                if "starting" not in spaces.values() or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            yield url, spaces


@pytest.fixture(scope="module")
def browser():
    _need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(45_000)
    return page


def test_landing_page_tiles_and_each_space_opens_and_links_back(served, browser):
    from pathlib import Path

    from playwright.sync_api import expect

    url, health = served
    names = [s.name for s in serve.discover_spaces()]
    assert all(state == "ok" for state in health.values()), health
    Path(SCREENSHOTS).mkdir(exist_ok=True)
    page = _page(browser)
    page.goto(url)
    expect(page.locator(".hubkit-tile")).to_have_count(len(names))
    expect(page.locator(".hubkit-store")).to_contain_text("Hugging Face Hub: offline")
    expect(page.locator("tr.hubkit-adapter").first).to_be_visible()
    if "gallery" in names:  # the Streamlit Space: its own server, linked from its tile
        gallery = page.locator(".hubkit-tile[data-space=gallery]")
        expect(gallery).to_have_attribute("data-state", "ok", timeout=30_000)  # once the page's load event ran
        href = gallery.get_by_role("link", name="hubkit gallery", exact=True).get_attribute("href")
        assert href.startswith("http://127.0.0.1:") and not href.startswith(url)
    for name in names:
        tile = page.locator(f".hubkit-tile[data-space={name}]")
        expect(tile).to_have_attribute("data-state", "ok")
        expect(tile.locator("img.hubkit-thumb, div.hubkit-thumb")).to_be_visible()
    page.wait_for_function("[...document.querySelectorAll('img.hubkit-thumb')].every(i => i.naturalWidth > 0)")
    page.screenshot(path=f"{SCREENSHOTS}/landing.png", full_page=True)

    for name in names:
        page.goto(url)
        title = page.locator(f".hubkit-tile[data-space={name}] a[style*='font-weight']")
        if name == "gallery":  # its own server (the link checked above); its load event can wait on an offline
            page.goto(href, wait_until="commit")  # request, and a click racing the tiles' redraw was seen lost
        else:
            title.click()  # opens in place, as a person would
            page.wait_for_load_state()
        if name in RENDERED:
            expect(page.locator(RENDERED[name]).first).to_be_visible(timeout=60_000)
        back = page.get_by_role("link", name=re.compile("^← (hubkit|All Spaces)"))  # the gallery says "All Spaces"
        expect(back.first).to_be_visible(timeout=30_000)
        page.screenshot(path=f"{SCREENSHOTS}/{name}.png")
        assert urljoin(page.url, back.first.get_attribute("href")) == url
        if back.first.get_attribute("target") == "_blank":  # Streamlit opens Markdown links in a new tab
            page.goto(url)
        else:
            back.first.click()
            page.wait_for_url(url)
        expect(page.locator(".hubkit-tile")).to_have_count(len(names))
    page.close()


@pytest.mark.parametrize(
    ("space", "query", "menus"),
    [
        (
            "depth",
            "base=hubkit-tiny/depth-anything&adapter=hubkit-tiny/depth-anything-demo-lora-1",
            {"Adapters": "hubkit-tiny/depth-anything-demo-lora-1"},
        ),
        # an adapter the menu does not offer (here: another task's) is ignored: the default stays
        ("depth", "adapter=hubkit-tiny/sam-demo-lora-1", {"Adapters": "hubkit-tiny/depth-anything-demo-lora-0"}),
        (
            "pixcell",
            "base=hubkit-tiny/pixcell&adapter=hubkit-tiny/pixcell-demo-lora-1",
            {"#pixcell-adapter": "hubkit-tiny/pixcell-demo-lora-1"},
        ),
        # plant's Model B starts empty; a link fills it with a model the menu offers
        ("plant", "adapter=hubkit-tiny/plant-vlm", {"#plant-model-b": "hubkit-tiny/plant-vlm"}),
        (
            "segma",
            "base=hubkit-tiny/sam&adapter=hubkit-tiny/sam-demo-lora-1",
            {"#segma-sam-adapter": "hubkit-tiny/sam-demo-lora-1"},
        ),
    ],
)
def test_query_params_preselect_base_and_adapter(served, browser, space, query, menus):
    from playwright.sync_api import expect

    url, _ = served
    page = _page(browser)
    page.goto(f"{url}spaces/{space}/?{query}")
    if space == "segma":
        page.get_by_text("Models and adapters").click()  # the menus sit in a closed accordion
    for where, value in menus.items():
        if where.startswith("#"):  # a single-choice dropdown: its input shows the value
            expect(page.locator(f"{where} input").first).to_have_value(value)
        else:  # the multiselect: the chosen adapters are tokens in its block
            expect(page.locator(".block", has=page.get_by_label(where, exact=True)).first).to_contain_text(value)
    page.screenshot(path=f"{SCREENSHOTS}/preselect-{space}.png")
    page.close()
