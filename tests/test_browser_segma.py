"""The Segma Space in a real (headless) Chromium under `hubkit serve`: upload -> Run (with a SAM adapter) ->
overlays -> reject a region -> add to the data set -> export; then the pushed data set loads with `datasets`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, _need_chromium, server  # noqa: F401  (server: a fixture)
from test_browser_plant import recorded_run

from hubkit import hub

EXAMPLE = Path(__file__).resolve().parent.parent / "spaces" / "segma" / "examples" / "coins.png"
SAM_LORA = "hubkit-tiny/sam-demo-lora-0"
REPO = "me/browser-coins"

pytestmark = pytest.mark.browser


RUN_TIMEOUT_MS = 120_000  # two pipeline runs and the first model loads, on a busy 2-core machine


def _loaded(page, locator, timeout: float = 30_000) -> None:
    """Wait until the <img> under `locator` shows a decoded picture."""
    locator.wait_for(state="visible", timeout=timeout)
    page.wait_for_function("(el) => el.complete && el.naturalWidth > 0", arg=locator.element_handle(), timeout=timeout)


def _regions(page) -> list[tuple[str, str, str]]:
    """(id, label, status) of every region, from the review menu's options ("3 · coin (pending)")."""
    menu = page.locator("#segma-region input")
    menu.click()
    page.get_by_role("option").first.wait_for()
    texts = page.get_by_role("option").all_inner_texts()
    menu.blur()  # closes the list
    page.get_by_role("option").first.wait_for(state="detached")
    # the selected option starts with a check mark
    found = [re.search(r"(\d+) · (.*) \((pending|accepted|rejected)\)$", t.strip()) for t in texts]
    assert all(found), texts
    return [m.groups() for m in found]


def _pick(page, elem_id: str, option: str) -> None:
    """Choose `option` (its shown text, or the start of it) in the Gradio dropdown `elem_id`."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).first.click()


def test_segma_space_in_chromium(server, tmp_path, monkeypatch):  # noqa: F811  (the fixture imported above)
    _need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    expect.set_options(timeout=30_000)  # the default 5 s is short for a busy machine
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(server)
            page.get_by_role("link", name="hubkit segma").click()
            page.wait_for_url("**/spaces/segma/")
            expect(page.locator("#segma-note")).to_contain_text("random-weight demo models")

            page.locator("#segma-upload input[type=file]").set_input_files(str(EXAMPLE))
            page.get_by_label("Classes (optional)").fill("coin, shadow")
            page.get_by_text("Models and adapters").click()
            expect(page.get_by_label("SAM base")).to_have_value("hubkit-tiny/sam")
            _pick(page, "segma-sam-adapter", SAM_LORA)
            page.locator("#segma-run").click()
            _loaded(page, page.locator("#segma-overlay img"), timeout=RUN_TIMEOUT_MS)
            _loaded(page, page.locator("#segma-base-overlay img"))  # an adapter: the base's overlay beside
            expect(page.locator("#segma-summary")).to_contain_text("from you (the LLM was skipped)")
            for name in ("coins.coco.json", "coins.label.json", "coins.features.csv"):
                expect(page.locator(f"#segma-downloads a[href$='{name}']")).to_have_count(1)
            regions = _regions(page)
            grid = page.locator("#segma-regions [role=grid]")
            expect(grid).to_have_attribute("aria-rowcount", str(len(regions) + 1))  # the table: header + a row each
            expect(grid).to_have_attribute("aria-colcount", "9")
            labelled = [r for r in regions if r[1] in ("coin", "shadow")]
            assert labelled, regions
            page.screenshot(path=str(tmp_path / "segma-run.png"), full_page=True)

            gone = labelled[0][0]  # reject the first labelled region
            before = page.locator("#segma-overlay img").get_attribute("src")
            _pick(page, "segma-region", f"{gone} · ")
            page.locator("#segma-reject").click()
            expect(page.locator("#segma-review-info")).to_contain_text(f"Region {gone} rejected")
            expect(page.locator("#segma-overlay img")).not_to_have_attribute("src", before)  # redrawn without it
            regions = _regions(page)
            assert [status for rid, _, status in regions if rid == gone] == ["rejected"]
            page.locator("#segma-add").click()
            expect(page.locator("#segma-dataset-info")).to_contain_text("Added coins.png")
            page.locator("#segma-repo textarea, #segma-repo input").first.fill(REPO)
            page.locator("#segma-export").click()
            expect(page.locator("#segma-export-info")).to_contain_text("revision", timeout=60_000)
            expect(page.locator("#segma-export-info")).to_contain_text(f"dataset  {REPO}")
            expect(page.locator("#segma-archive a[href$='me--browser-coins.zip']")).to_have_count(1)
            page.screenshot(path=str(tmp_path / "segma-export.png"), full_page=True)

            inputs, _, images = recorded_run(page, page.url, "/run")  # menus shown, both overlays not broken
            assert inputs[4:6] == [("SAM base", "hubkit-tiny/sam"), ("adapter", SAM_LORA)], inputs
            assert images == 2  # the adapted and the base overlays
        finally:
            browser.close()
    assert (tmp_path / "segma-run.png").stat().st_size > 20_000

    # The server pushed into this test's HUBKIT_HOME: pull the data set and load it as a user would.
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = hub.pull(REPO, repo_type="dataset", to=tmp_path / "pulled")
    ds = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "ds-cache"))["train"]
    kept = sorted(label for _, label, status in regions if label in ("coin", "shadow") and status != "rejected")
    assert sorted(ds[0]["objects"]["categories"]) == kept  # the reviewed labels, without the rejected region
    coco = json.loads((folder / "coco.json").read_text())
    assert int(gone) not in [a["region_id"] for a in coco["annotations"]]
