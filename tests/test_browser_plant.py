"""The plant Space in a real (headless) Chromium under `hubkit serve`: upload a leaf -> symptom text -> two models
(the tiny base and a second PlantVLM pushed to the store) -> top-k bars, descriptions, reference text, download."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, _need_chromium, server  # noqa: F401  (server: a fixture)

from hubkit import hub

EXAMPLES = Path(__file__).resolve().parent.parent / "spaces" / "plant" / "examples"
TINY = "hubkit-tiny/plant-vlm"
SECOND = "me/plant-three"

pytestmark = pytest.mark.browser


def _pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).first.click()


def recorded_run(page, space_url: str, api_name: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int]:
    """Open the Space's run-history page (gradio records each run in the browser) and read the newest run of
    `api_name`: its inputs and outputs as [(label, text shown)], and the images in its outputs. Fails if any image
    on the page is broken."""
    page.goto(f"{space_url.rstrip('/')}/gradio_api/runs")
    group = page.locator("section.group").filter(has=page.locator("header code").get_by_text(api_name, exact=True))
    run = group.locator("article.run").first
    sections = run.locator("section.run-values")
    sections.first.locator(".example-cell").first.wait_for()
    page.wait_for_function("() => [...document.images].every((i) => i.complete)")  # decoded, or failed
    broken = page.evaluate("() => [...document.images].filter((i) => !i.naturalWidth).map((i) => i.src)")
    assert not broken, f"broken images on the run-history page: {broken}"
    read = """(s) => [...s.querySelectorAll('.example-cell')].map((c) => [
        c.querySelector('.value-label').textContent.trim(),
        [...c.children].slice(1).map((e) => e.innerText).join(' ').trim()])"""
    inputs, outputs = ([tuple(pair) for pair in sections.nth(i).evaluate(read)] for i in (0, 1))
    return inputs, outputs, sections.nth(1).locator("img").count()


def test_plant_space_in_chromium(server, tmp_path):  # noqa: F811  (the fixture imported above)
    _need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    from hubkit.plant.demo import DESCRIPTIONS_FILE
    from hubkit.plant.model import PlantVLM

    classes = ["Apple___healthy", "Tomato___Early_blight", "Corn___rust"]
    folder = PlantVLM.from_pretrained(TINY).with_classes(classes).save_pretrained(tmp_path / "plant")
    (folder / DESCRIPTIONS_FILE).write_text(json.dumps({c: f"Reference text of {c}." for c in classes}))
    hub.push(folder, SECOND)  # the server reads the same HUBKIT_HOME

    expect = sync_api.expect
    expect.set_options(timeout=60_000)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(server)
            page.get_by_role("link", name="hubkit plant disease").click()
            page.wait_for_url("**/spaces/plant/")
            expect(page.locator("#plant-model-a input")).to_have_value(TINY)
            page.locator("#plant-upload input[type=file]").set_input_files(str(sorted(EXAMPLES.glob("*.png"))[0]))
            page.get_by_label("Symptoms (optional)").fill("brown spots with rings")
            _pick(page, "plant-model-b", SECOND)
            page.locator("#plant-run").click()
            expect(page.locator("#plant-b")).to_contain_text("Tomato · Early blight")
            expect(page.locator("#plant-info-b")).to_contain_text("Reference text of")
            expect(page.locator("#plant-info-a")).to_contain_text("Random-weight tiny model")
            expect(page.locator("#plant-files a[href$='prediction.json']")).to_have_count(1)
            page.screenshot(path=str(tmp_path / "plant-run.png"), full_page=True)

            # The menu's value, not a blank (SECOND, pushed after the server built the page's config, shows blank
            # there until a restart: the page renders recorded menus with the build-time choices).
            top_b = page.locator("#plant-info-b strong").nth(1).inner_text()  # "**model** — top class **…**"
            inputs, outputs, _ = recorded_run(page, page.url, "/predict")
            assert ("Model A (base)", TINY) in inputs, inputs
            assert ("Model B", top_b) in outputs, outputs  # the Label's value, not its title
        finally:
            browser.close()
    assert (tmp_path / "plant-run.png").stat().st_size > 20_000
