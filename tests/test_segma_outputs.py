"""hubkit.segma.outputs / export: label maps, label.json, COCO, features.csv, regions.json round trip, Hub data set."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from hubkit.errors import ConfigError, DataError
from hubkit.segma.export import export_dataset, push_dataset
from hubkit.segma.features import FEATURE_NAMES
from hubkit.segma.outputs import (
    TABLE_COLUMNS,
    coco_document,
    features_table,
    label_json,
    label_map,
    load_result,
    mask_to_rle,
    overlay,
    rle_to_mask,
    save_result,
    write_folder_outputs,
)
from hubkit.segma.regions import Region, SegmaResult

H, W = 120, 160


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def disc(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_result() -> SegmaResult:
    """coins() cropped, three of its coins as regions, plus a hand-drawn disc with a small square inside it."""
    from scipy.ndimage import binary_fill_holes
    from skimage import data, filters, measure

    grey = data.coins()[:H, :W]
    labels = measure.label(binary_fill_holes(grey > filters.threshold_otsu(grey)))
    sizes = np.bincount(labels.ravel())
    coins = [labels == k for k in np.argsort(sizes)[::-1] if k != 0 and 300 <= sizes[k] < 5000][:3]
    assert len(coins) == 3
    plate = disc(100, 110, 18)  # below the coins (rows 29-74)
    chip = np.zeros((H, W), bool)
    chip[95:105, 105:115] = True  # inside the plate
    rng = np.random.default_rng(0)
    specs = [  # (mask, label, score, source, status, features)
        (coins[0], "coin", 0.91234567, "detection+automatic", "accepted", rng.random(61)),
        (plate, "plate", 0.5, "detection", "pending", None),
        (chip, "chip", 0.77777, "manual", "pending", rng.random(61).astype(np.float32)),
        (coins[1], "coin", 0.4, "detection", "rejected", None),
        (coins[2], "", 0.95, "automatic", "pending", None),  # an automatic mask nobody named
    ]
    regions = [
        Region(id=10 + i, mask=m, box=tight_box(m), label=lab, score=s, source=src, features=f, status=st)
        for i, (m, lab, s, src, st, f) in enumerate(specs)
    ]
    return SegmaResult(
        image=Image.fromarray(grey).convert("RGB"),
        regions=regions,
        caption="a tray of old coins, a plate and a chip",
        classes=["coin", "plate", "chip"],
        classes_source="llm",
        llm_answer="coin, plate, chip",
        preset="general",
        domain="numismatics",
        models={"caption": "blip-tiny", "detect": "gdino-tiny+me/coins-lora", "segment": "sam-tiny"},
        timings={"caption": 0.125, "detect": 0.5, "segment": 1.0 / 3},
        skipped=["classify"],
    )


@pytest.fixture
def result() -> SegmaResult:
    return make_result()


# ---- label map and label.json ----


def test_label_map_values_and_overlap(result):
    lm = label_map(result)
    assert lm.dtype == np.uint16 and lm.shape == (H, W)
    shown = [r for r in result.regions if r.status != "rejected"]
    assert set(np.unique(lm)) == set(range(len(shown) + 1))  # 0 and 1..4; the rejected coin has no value
    by_id = {r.id: r for r in result.regions}
    assert not (lm[by_id[13].mask] > 0).any()  # rejected: background
    # the chip (k=3) lies inside the plate (k=2): larger drawn first, so the chip keeps all its pixels
    assert (lm[by_id[12].mask] == 3).all()
    assert (lm[by_id[11].mask & ~by_id[12].mask] == 2).all()


def test_label_json_matches_label_map(result):
    doc = label_json(result)
    lm = label_map(result)
    assert doc["caption"] == result.caption
    assert doc["mask"][0] == {"value": 0, "label": "background"}
    shown = [r for r in result.regions if r.status != "rejected"]
    assert [e["value"] for e in doc["mask"]] == list(range(len(shown) + 1))
    for entry, region in zip(doc["mask"][1:], shown, strict=True):
        assert set(entry) == {"value", "label", "logit", "box"}
        assert entry["label"] == region.label and entry["box"] == list(region.box)
        assert entry["logit"] == round(region.score, 4)
        ys, xs = np.nonzero(lm == entry["value"])
        assert region.mask[ys, xs].all()  # every pixel with value k belongs to region k
    assert doc["mask"][1]["logit"] == 0.9123


def test_overlay_draws_shown_regions_only(result):
    image = overlay(result)
    base = np.asarray(result.image.convert("RGB"))
    drawn = np.asarray(image)
    assert image.size == result.image.size and image.mode == "RGB"
    by_id = {r.id: r for r in result.regions}
    assert not np.array_equal(drawn[by_id[11].mask], base[by_id[11].mask])  # tinted
    # the rejected coin is not drawn: the same picture as without it
    without = make_result()
    without.regions = [r for r in without.regions if r.id != 13]
    assert np.array_equal(drawn, np.asarray(overlay(without)))
    only_chip = np.asarray(overlay(result, regions=[12], show_labels=False))
    assert np.array_equal(only_chip[by_id[10].mask], base[by_id[10].mask])
    assert not np.array_equal(only_chip[by_id[12].mask], base[by_id[12].mask])


def test_bad_mask_size_is_refused(result):
    result.regions[0].mask = np.zeros((10, 10), bool)
    with pytest.raises(ConfigError, match="Region 10: mask shape"):
        label_map(result)


# ---- COCO and the features table ----


def test_coco_loads_in_pycocotools_and_masks_round_trip(result, tmp_path):
    from pycocotools.coco import COCO

    second = make_result()
    second.review({10: "reject", 11: "dish"})
    doc = coco_document([("a.png", result), ("b.png", second)])
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(doc))
    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["chip", "coin", "dish", "plate"]
    assert sorted(coco.getCatIds()) == [1, 2, 3, 4]
    assert doc["info"]["description"].startswith("Segma Vision")
    regions = {(1, r.id): r for r in result.regions} | {(2, r.id): r for r in second.regions}
    anns = coco.loadAnns(coco.getAnnIds())
    # a: coin, plate, chip (rejected coin and the unnamed mask left out); b: plate renamed dish, chip
    assert sorted((a["image_id"], a["region_id"]) for a in anns) == [(1, 10), (1, 11), (1, 12), (2, 11), (2, 12)]
    for ann in anns:
        region = regions[ann["image_id"], ann["region_id"]]
        assert np.array_equal(coco.annToMask(ann).astype(bool), region.mask)
        assert ann["area"] == region.area and ann["bbox"] == region.bbox_xywh and ann["iscrowd"] == 0
        assert coco.loadCats(ann["category_id"])[0]["name"] == region.label
        assert ann["score"] == region.score and ann["source"] == region.source


def test_rle_helpers_round_trip(result):
    for region in result.regions:
        rle = mask_to_rle(region.mask)
        assert rle["size"] == [H, W] and isinstance(rle["counts"], str)
        assert np.array_equal(rle_to_mask(json.loads(json.dumps(rle))), region.mask)


def test_features_table_and_csv(result, tmp_path):
    names = FEATURE_NAMES
    assert len(names) == 61 and len(set(names)) == 61
    rows = features_table([("a.png", result)])
    assert len(rows) == len(result.regions)  # every region, rejected too, with its status
    assert list(rows[0]) == [*TABLE_COLUMNS, *names]
    assert rows[3]["status"] == "rejected" and rows[1][names[0]] == ""
    assert rows[0][names[5]] == pytest.approx(result.regions[0].features[5], rel=1e-6)
    paths = write_folder_outputs(tmp_path, [("a.png", result)])
    with open(paths["features"], newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [int(r["region_id"]) for r in table] == [10, 11, 12, 13, 14]
    assert table[1][names[-1]] == ""
    assert np.float32(table[2][names[7]]) == result.regions[2].features[7]  # float32's shortest repr
    assert json.loads(paths["coco"].read_text())["categories"][0]["name"] == "chip"


# ---- the per-image record ----


def test_save_and_load_result_round_trip(result, tmp_path):
    paths = save_result(result, tmp_path, "img_001")
    assert {p.name for p in paths.values()} == {
        "img_001.overlay.png",
        "img_001.labels.png",
        "img_001.label.json",
        "img_001.regions.json",
    }
    assert not list(tmp_path.glob(".*.tmp"))  # temp files renamed away
    with Image.open(paths["labels"]) as png:
        assert png.mode.startswith("I;16")
        assert np.array_equal(np.asarray(png), label_map(result))
    assert json.loads(paths["label_json"].read_text()) == label_json(result)

    back = load_result(paths["regions"], result.image)
    for name in ("caption", "classes", "classes_source", "llm_answer", "preset", "domain", "models", "timings"):
        assert getattr(back, name) == getattr(result, name), name
    assert back.skipped == result.skipped and back.image is result.image
    assert len(back.regions) == len(result.regions)
    for got, want in zip(back.regions, result.regions, strict=True):
        assert (got.id, got.label, got.score, got.source, got.status) == (
            want.id,
            want.label,
            want.score,
            want.source,
            want.status,
        )
        assert got.box == want.box
        assert got.mask.dtype == bool and np.array_equal(got.mask, want.mask)
        if want.features is None:
            assert got.features is None
        else:
            assert got.features.dtype == np.float32
            assert np.array_equal(got.features, np.asarray(want.features, dtype=np.float32))
    # from a path too; and the same record again
    result.image.save(tmp_path / "img_001.png")
    assert load_result(paths["regions"], tmp_path / "img_001.png").regions[2].label == "chip"


def test_corrupt_regions_json_names_the_file(result, tmp_path):
    path = save_result(result, tmp_path, "x")["regions"]
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # cut short, as by a killed run without atomic writes
    with pytest.raises(ConfigError, match=r"x\.regions\.json is not a readable Segma regions\.json"):
        load_result(path, result.image)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ConfigError, match="x.regions.json.*not a Segma regions.json"):
        load_result(path, result.image)
    record = json.loads(text)
    del record["regions"][0]["mask"]
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="x.regions.json"):
        load_result(path, result.image)
    path.write_text(text)
    with pytest.raises(ConfigError, match="160x120 image, but the image given is 10x10"):
        load_result(path, Image.new("RGB", (10, 10)))


# ---- data set export and push ----


def _offline_datasets(monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    return datasets


def test_export_loads_with_datasets_and_pushes(result, tmp_path, monkeypatch):
    datasets = _offline_datasets(monkeypatch)
    result.review({11: "dish", 12: "reject"})  # a person renamed the plate and rejected the chip
    second = make_result()
    second.regions = [r for r in second.regions if r.id == 10]  # one coin only
    image_path = tmp_path / "src.jpg"
    second.image.save(image_path)
    out = export_dataset(
        [(result.image, "tray.png", result), (image_path, "more/tray2.png", second)],
        tmp_path / "export",
        reviewed=True,
        name="Coins test set",
    )
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "coco.json", "metadata.jsonl", "more", "tray.png"]

    ds = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "ds-cache"))["train"]
    rows = sorted(ds, key=lambda row: len(row["objects"]["categories"]))
    assert [row["objects"]["categories"] for row in rows] == [["coin"], ["coin", "dish"]]
    tray = rows[1]
    assert tray["caption"] == result.caption and tray["image"].size == (W, H)
    from pycocotools import mask as mask_utils

    dish = tray["objects"]["segmentation"][1]
    assert np.array_equal(mask_utils.decode(dish).astype(bool), result.regions[1].mask)
    assert tray["objects"]["bbox"][1] == result.regions[1].bbox_xywh

    coco = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["coin", "dish"]
    card = (out / "README.md").read_text()
    for needle in ("object-detection", "image-segmentation", "license: unknown", "| 2 | dish | 1 | 1 |"):
        assert needle in card, needle
    assert "me/coins-lora" in card and "Reviewed by a person: yes" in card

    rev = push_dataset(out, "me/coins-labels")
    listed = run_cli("ls", "--repo-type", "dataset", check=True).stdout
    assert "me/coins-labels" in listed and "dataset" in listed
    assert len(rev.id) >= 12


def test_export_with_one_image_loads_from_the_folder(result, tmp_path, monkeypatch):
    # One .png against coco.json: without the card's `configs`, datasets would load the folder as JSON.
    datasets = _offline_datasets(monkeypatch)
    out = export_dataset([(result.image, "only.png", result)], tmp_path / "one", reviewed=False)
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "ds-cache"))["train"]
    assert ds.num_rows == 1 and ds[0]["objects"]["categories"] == ["coin", "plate", "chip"]
    assert "auto-labelled" in (out / "README.md").read_text()


def test_export_refusals(result, tmp_path):
    result.review({10: "reject"})
    for region in result.regions:
        if region.status != "rejected":
            region.status = "pending"
    with pytest.raises(DataError, match="no labelled region is left.*include_pending=False"):
        export_dataset([(result.image, "a.png", result)], tmp_path / "e1", reviewed=True, include_pending=False)
    assert not (tmp_path / "e1").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "old.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_dataset([(result.image, "a.png", result)], taken, reviewed=False)
    with pytest.raises(ConfigError, match="image extension"):
        export_dataset([(result.image, "a.txt", result)], tmp_path / "e2", reviewed=False)
    with pytest.raises(ConfigError, match="used twice"):
        export_dataset(
            [(result.image, "a.png", result), (result.image, "a.png", result)], tmp_path / "e3", reviewed=False
        )
    with pytest.raises(ConfigError, match="10x10 but its result's masks are for 160x120"):
        export_dataset([(Image.new("RGB", (10, 10)), "a.png", result)], tmp_path / "e4", reviewed=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".", "e"))]  # nothing half-written left
    with pytest.raises(ConfigError, match="not a Segma export"):
        push_dataset(taken, "me/nothing")


def test_overlay_at_a_scale_is_the_overlay_of_the_scaled_image(result):
    """scale=3 tints at the masks' size and repeats: the same picture as tinting 3x-repeated masks one by one."""
    from dataclasses import replace

    from PIL import Image

    width, height = result.size
    scaled = replace(
        result,
        image=result.image.convert("RGB").resize((3 * width, 3 * height), Image.LANCZOS),
        regions=[
            replace(r, mask=r.mask.repeat(3, 0).repeat(3, 1), box=tuple(3 * v for v in r.box)) for r in result.regions
        ],
    )
    fast = np.asarray(overlay(result, scale=3, show_labels=False), dtype=int)
    slow = np.asarray(overlay(scaled, show_labels=False), dtype=int)
    assert fast.shape == (3 * height, 3 * width, 3)
    assert np.abs(fast - slow).max() <= 1  # float rounding of the same sums
    assert (np.abs(fast - slow) > 0).mean() < 0.01
