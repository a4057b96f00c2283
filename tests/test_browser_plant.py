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
        finally:
            browser.close()
    assert (tmp_path / "plant-run.png").stat().st_size > 20_000
