"""Reading Segma exports and COCO folders for the recipes; the synthetic shapes set is what it says it is."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import hubkit
from hubkit.data.segma import COLOURS, SHAPE_COLOUR, make_shapes_dataset, read_detection_data, split_samples
from hubkit.errors import DataError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "set", images=9, size=64, seed=1)


def test_shapes_set_masks_boxes_and_captions_are_true(shapes):
    data = read_detection_data(shapes)
    assert len(data.samples) == 9 and data.classes == sorted(data.classes) and set(data.classes) <= set(SHAPE_COLOUR)
    for sample in data.samples:
        pixels = np.asarray(Image.open(sample.image_path).convert("RGB"))
        assert pixels.shape == (sample.height, sample.width, 3) == (64, 64, 3)
        for obj in sample.objects:
            mask = obj.mask(sample.height, sample.width)
            assert (pixels[mask] == COLOURS[SHAPE_COLOUR[obj.label]]).all()  # the mask is exactly the shape
            ys, xs = np.nonzero(mask)
            assert obj.box_xyxy == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert f"{SHAPE_COLOUR[obj.label]} {obj.label}" in sample.caption
    # the export loads with datasets too, captions included
    import datasets

    rows = datasets.load_dataset("imagefolder", data_dir=str(shapes), split="train")
    assert rows.num_rows == 9 and all(r["caption"] for r in rows)


def test_plain_coco_folder_with_polygons_and_a_dataset_repo(tmp_path, shapes):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new("RGB", (40, 30), "white").save(root / "images" / "a.jpg")
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 30}],
        "categories": [{"id": 3, "name": "plate"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 5, 20, 10], "iscrowd": 0,
             "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]},
        ],
    }  # fmt: skip
    (root / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    data = read_detection_data(root)
    (sample,) = data.samples
    mask = sample.objects[0].mask(30, 40)
    assert data.classes == ["plate"] and sample.image_path.name == "a.jpg" and sample.caption == ""
    assert mask[5:15, 10:30].mean() > 0.9 and not mask[20:, :].any()
    # a dataset repo in the store reads the same as its folder
    hubkit.push(shapes, "me/shapes", repo_type="dataset")
    assert read_detection_data("me/shapes").classes == read_detection_data(shapes).classes


def test_bad_data_is_named(tmp_path):
    with pytest.raises(DataError, match="holds no COCO annotations"):
        read_detection_data(tmp_path)
    (tmp_path / "coco.json").write_text("{not json")
    with pytest.raises(DataError, match="coco.json is not COCO JSON"):
        read_detection_data(tmp_path)
    doc = {
        "images": [{"id": 1, "file_name": "gone.png", "width": 4, "height": 4}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"gone.png \(listed in coco.json\) is not in"):
        read_detection_data(tmp_path)


def test_split_is_seeded_and_never_empty():
    train, val = split_samples(range(10), val_fraction=0.2, seed=0)
    assert len(train) == 8 and len(val) == 2 and sorted(train + val) == list(range(10))
    assert (train, val) == split_samples(range(10), val_fraction=0.2, seed=0)
    assert split_samples(range(2), val_fraction=0.1, seed=0)[1]  # at least one held out
