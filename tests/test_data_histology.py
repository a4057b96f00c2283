"""The offline histology domain: IHC slide patches (target), their stain-shifted copy (source), the folder readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hubkit.data.histology import (
    BLOCK,
    TEST_BLOCKS,
    load_patches,
    make_histology_dataset,
    read_patch_folder,
    stain_shift,
)
from hubkit.errors import ConfigError, DataError
from hubkit.metrics.generation import colour_distance, colour_statistics


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def metadata(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("histology")
    return {
        "target": make_histology_dataset(root / "target", count=48, split="train", seed=0),
        "held_out": make_histology_dataset(root / "held_out", count=24, split="test", seed=0),
        "source": make_histology_dataset(root / "source", count=24, split="test", seed=0, domain="source"),
    }


def test_layout_and_determinism(sets, tmp_path):
    target = sets["target"]
    assert [p.name for p in target.files] == [f"{i:04d}.png" for i in range(48)]
    assert target.images().shape == (48, 64, 64, 3) and target.images().dtype == np.uint8
    rows = metadata(target.root)
    assert [r["file_name"] for r in rows] == [p.name for p in target.files]
    assert {r["domain"] for r in rows} == {"target"} and {r["split"] for r in rows} == {"train"}
    again = make_histology_dataset(tmp_path / "again", count=48, split="train", seed=0)
    assert folder_bytes(again.root) == folder_bytes(target.root)  # same bytes, metadata included
    other = make_histology_dataset(tmp_path / "other", count=48, split="train", seed=1)
    assert folder_bytes(other.root) != folder_bytes(target.root)
    assert len({r["rot90"] for r in rows}) > 1 and len({r["flip"] for r in rows}) == 2  # augmentations vary
    resized = make_histology_dataset(tmp_path / "resized", count=2, patch=32, crop=96, split="all")
    assert resized.images().shape == (2, 32, 32, 3) and metadata(resized.root)[0]["crop"] == 96


def test_train_and_test_crops_never_overlap(sets):
    def blocks(row) -> set[tuple[int, int]]:
        y, x, c = row["y"], row["x"], row["crop"]
        return {(r, k) for r in {y // BLOCK, (y + c - 1) // BLOCK} for k in {x // BLOCK, (x + c - 1) // BLOCK}}

    for row in metadata(sets["held_out"].root):
        assert blocks(row) <= set(TEST_BLOCKS)
    for row in metadata(sets["target"].root):
        assert not blocks(row) & set(TEST_BLOCKS)


def test_source_is_the_same_tissue_in_other_colours(sets, tmp_path):
    from skimage.color import rgb2gray

    target, source = sets["held_out"], sets["source"]
    assert [{**r, "domain": None} for r in metadata(target.root)] == [
        {**r, "domain": None} for r in metadata(source.root)
    ]  # same crops, pixel-aligned
    t, s = target.images(), source.images()
    assert np.abs(t.astype(int) - s.astype(int)).mean() > 20  # the colours moved ...
    same = [np.corrcoef(rgb2gray(a).ravel(), rgb2gray(b).ravel())[0, 1] for a, b in zip(t, s, strict=True)]
    other = [np.corrcoef(rgb2gray(a).ravel(), rgb2gray(b).ravel())[0, 1] for a, b in zip(t, s[1:], strict=False)]
    assert min(same) > 0.95 and np.mean(np.abs(other)) < 0.5  # ... the morphology did not
    unshifted = make_histology_dataset(tmp_path / "s0", count=24, split="test", domain="source", strength=0)
    assert [p.read_bytes() for p in unshifted.files] == [p.read_bytes() for p in target.files]


def test_source_colour_distance_dwarfs_held_out_distance(sets, tmp_path):
    """What the PixCell recipe relies on: the target domain is measurably closer to a held-out target split than
    to the source domain, on every colour summary."""
    reference = colour_statistics(sets["target"].images())
    held_out = colour_distance(sets["held_out"].images(), reference)
    source = colour_distance(sets["source"].images(), reference)
    for key in ("colour_distance", "lab_mean_distance", "hed_mean_distance", "hed_w1"):
        assert source[key] > 5 * held_out[key], (key, source[key], held_out[key])
    assert held_out["colour_distance"] < 3.0 < 15.0 < source["colour_distance"]  # LAB units; measured 1.6 and 23.7
    weak = make_histology_dataset(tmp_path / "weak", count=24, split="test", domain="source", strength=0.25)
    weak_distance = colour_distance(weak.images(), reference)["colour_distance"]
    assert held_out["colour_distance"] < weak_distance < source["colour_distance"]  # grows with the shift


def test_stain_shift_checks_its_input():
    with pytest.raises(DataError, match="uint8"):
        stain_shift(np.zeros((4, 4, 3), np.float32))
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(stain_shift(image, strength=0), image)


def test_imagefolder_reads_the_folder_offline(sets, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    target = sets["held_out"]
    data = datasets.load_dataset("imagefolder", data_dir=str(target.root), split="train", cache_dir=str(tmp_path))
    assert len(data) == 24
    assert {"image", "domain", "split"} <= set(data.column_names)
    assert set(data["domain"]) == {"target"}
    first = data[0]["image"]
    assert first.size == (64, 64)
    assert np.array_equal(np.asarray(first.convert("RGB")), target.images()[0])


def test_read_patch_folder_any_folder(sets, tmp_path):
    assert read_patch_folder(sets["target"].root) == sets["target"].files
    loose = tmp_path / "loose"
    (loose / "b").mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(loose / "b" / "x.JPG")
    Image.new("RGB", (16, 16), (10, 200, 10)).save(loose / "a.png")
    (loose / "notes.txt").write_text("not an image")
    assert [p.relative_to(loose).as_posix() for p in read_patch_folder(loose)] == ["a.png", "b/x.JPG"]
    assert load_patches(loose).shape == (2, 16, 16, 3)
    Image.new("RGB", (20, 16)).save(loose / "c.png")
    with pytest.raises(DataError, match="different sizes"):
        load_patches(loose)
    assert load_patches(loose, size=8).shape == (3, 8, 8, 3)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_patch_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images"):
        read_patch_folder(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.jsonl").write_text('{"file_name": "gone.png"}\n')
    with pytest.raises(DataError, match="gone.png"):
        read_patch_folder(broken)
    with pytest.raises(ConfigError, match="domain"):
        make_histology_dataset(tmp_path / "x", domain="he")
    with pytest.raises(ConfigError, match="split"):
        make_histology_dataset(tmp_path / "x", split="val")
    with pytest.raises(ConfigError, match="crop"):
        make_histology_dataset(tmp_path / "x", split="test", patch=160)
