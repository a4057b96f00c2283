"""The PixCell Space in a real (headless) Chromium under `hubkit serve`: open /spaces/pixcell/ -> upload an H&E
patch -> tiny sampling settings -> Generate -> base and adapted sample galleries, the summary and the PNG downloads."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, _need_chromium, server  # noqa: F401  (server: a fixture)
from test_browser_plant import recorded_run

EXAMPLES = Path(__file__).resolve().parent.parent / "spaces" / "pixcell" / "examples"
TINY = "hubkit-tiny/pixcell"
ADAPTER = "hubkit-tiny/pixcell-demo-lora-0"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_pixcell_space_in_chromium(server, tmp_path):  # noqa: F811  (the fixture imported above)
    _need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    expect.set_options(timeout=90_000)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(90_000)
            page.goto(f"{server}spaces/pixcell/")  # the landing page's tiles have their own test
            expect(page.locator("#pixcell-base input")).to_have_value(TINY)
            expect(page.locator("#pixcell-adapter input")).to_have_value(ADAPTER)
            page.locator("#pixcell-upload input[type=file]").set_input_files(str(EXAMPLES / "stain_shifted.png"))
            _set_slider(page, "pixcell-steps", 2)
            _set_slider(page, "pixcell-count", 2)
            page.locator("#pixcell-run").click()
            for gallery in ("#pixcell-base-samples", "#pixcell-adapted-samples"):
                images = page.locator(f"{gallery} img")
                expect(images).to_have_count(2)
                page.wait_for_function(
                    "(el) => el.complete && el.naturalWidth > 0", arg=images.first.element_handle(), timeout=60_000
                )
            expect(page.locator("#pixcell-info")).to_contain_text("2 samples")
            expect(page.locator("#pixcell-info")).to_contain_text(ADAPTER)
            expect(page.locator("#pixcell-files a[href$='.png']")).to_have_count(4)
            page.screenshot(path=str(tmp_path / "pixcell-run.png"), full_page=True)

            inputs, _, images = recorded_run(page, page.url, "/generate")  # menus shown, samples not broken
            assert inputs[1:3] == [("Base model", TINY), ("Adapter", ADAPTER)] and images == 4, (inputs, images)
        finally:
            browser.close()
    assert (tmp_path / "pixcell-run.png").stat().st_size > 20_000


# -- "Use via API" pages of the plant, pixcell and segma Spaces ------------------------------------------------------
API_EXAMPLE_URL = "https://raw.githubusercontent.com/gradio-app/gradio/main/test/test_files/bus.png"
MAIN_EVENTS = {"plant": "/predict", "pixcell": "/generate", "segma": "/run"}


def _api_page_text(browser, url: str) -> str:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_text("Use via API").first.click()
    page.get_by_text("api_name=", exact=False).first.wait_for()
    text = page.locator("body").inner_text()
    page.close()
    return text


def _snippet(text: str, api_name: str) -> str:
    """The Python example the page shows for `api_name`, from `from gradio_client` to `print(result)`."""
    start = text.index(f"API name: {api_name}")
    code = text[text.index("from gradio_client", start) : text.index("print(result)", start)]
    return code + "print(result)\n"


@pytest.mark.parametrize("space", sorted(MAIN_EVENTS))
def test_api_page_examples_are_typed_named_and_run_as_shown(server, tmp_path, space):  # noqa: F811
    """The page types inputs (no `Literal[]`), names outputs (no `value_27`), shows an image (not gradio's sample
    PDF) as the image, and its Python example for the main event runs against the server as shown (the example
    image URL swapped for a local copy of an example: the tests are offline)."""
    import re

    _need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            text = _api_page_text(browser, f"{server}spaces/{space}/")
        finally:
            browser.close()
    assert "Literal[]" not in text and "sample_file.pdf" not in text
    assert not re.search(r"\bvalue_\d+\b", text), re.findall(r".{60}\bvalue_\d+\b", text)
    code = _snippet(text, MAIN_EVENTS[space])
    assert API_EXAMPLE_URL in code
    local = sorted((EXAMPLES.parent.parent / space / "examples").glob("*.png"))[0]
    printed = tmp_path / "printed.txt"
    code = code.replace(API_EXAMPLE_URL, str(local)).replace("print(result)", f"open({str(printed)!r}, 'w').write"
                                                                                 "(repr(result))")  # fmt: skip
    exec(compile(code, f"<{space} API page example>", "exec"), {})  # noqa: S102  (the page's own example)
    assert printed.read_text().startswith("(")  # a tuple of named outputs came back
