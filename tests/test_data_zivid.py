from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from hubkit.data import (
    ZividDepthDataset,
    ZividSample,
    load_pair,
    make_motorcycle_zivid,
    scan_zivid,
    split,
    write_zivid,
)
from hubkit.data.synthetic import MOTORCYCLE_BASELINE_MM, MOTORCYCLE_DOFFS_PX, MOTORCYCLE_FOCAL_PX
from hubkit.data.zivid import IMAGENET_MEAN, IMAGENET_STD
from hubkit.errors import DataError

H, W = 12, 16


def _rgb(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _depth(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).uniform(300, 3000, size=(h, w)).astype(np.float32)


def _xyz(z: np.ndarray) -> np.ndarray:
    return np.stack([np.zeros_like(z), np.zeros_like(z), z], axis=-1).astype(np.float32)


@pytest.fixture
def messy(tmp_path):
    """2 good pairs, 1 image without depth, 1 depth without image, 4 unreadable pairs."""
    write_zivid(tmp_path, "a_good", _rgb(0), _depth(0))
    write_zivid(tmp_path, "b_good", _rgb(1), _depth(1))
    write_zivid(tmp_path, "c_noimage", _rgb(2), _depth(2))
    (tmp_path / "images" / "c_noimage.png").unlink()
    write_zivid(tmp_path, "d_nodepth", _rgb(3), _depth(3))
    (tmp_path / "depth" / "d_nodepth.npy").unlink()
    write_zivid(tmp_path, "e_badpng", _rgb(4), _depth(4))
    (tmp_path / "images" / "e_badpng.png").write_bytes(b"not a png at all")
    write_zivid(tmp_path, "f_2d", _rgb(5), _depth(5))
    np.save(tmp_path / "depth" / "f_2d.npy", _depth(5))  # (H, W), not XYZ
    write_zivid(tmp_path, "g_allnan", _rgb(6), np.full((H, W), np.nan, np.float32))
    write_zivid(tmp_path, "h_size", _rgb(7), _depth(7))
    np.save(tmp_path / "depth" / "h_size.npy", _xyz(_depth(7, h=H + 1)))
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    return tmp_path


def test_scan_counts_and_reasons(messy, caplog):
    with caplog.at_level(logging.WARNING, logger="hubkit.data.zivid"):
        report = scan_zivid(messy)
    assert [s.stem for s in report.samples] == ["a_good", "b_good"]
    assert [p.name for p in report.unpaired_images] == ["d_nodepth.png"]
    assert [p.name for p in report.unpaired_depth] == ["c_noimage.npy"]
    reasons = {Path(p).name: why for p, why in report.unreadable}
    assert set(reasons) == {"e_badpng.png", "f_2d.npy", "g_allnan.npy", "h_size.npy"}
    assert "not a readable PNG" in reasons["e_badpng.png"]
    assert "expected (H, W, 3)" in reasons["f_2d.npy"]
    assert "no valid Z" in reasons["g_allnan.npy"]
    assert f"depth is {H + 1}x{W}, image is {H}x{W}" in reasons["h_size.npy"]
    summary = report.summary()
    for text in ("2 usable pairs", "1 images without depth", "1 depth maps without image", "4 unreadable"):
        assert text in summary
    assert "2 usable pairs" in caplog.text and "4 unreadable" in caplog.text


def test_scan_no_usable_pair_says_what_was_found(messy):
    for stem in ("a_good", "b_good"):
        (messy / "depth" / f"{stem}.npy").unlink()
    with pytest.raises(
        DataError,
        match=r"0 usable pairs in .*3 images without depth, 1 depth maps without image, "
        r"4 unreadable \(e_badpng.png: not a readable PNG",
    ):
        scan_zivid(messy)


def test_scan_missing_or_empty_folders(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no depth/ folder"):
        scan_zivid(tmp_path)
    (tmp_path / "depth").mkdir()
    with pytest.raises(DataError, match="0 usable pairs.*hold no .png / .npy"):
        scan_zivid(tmp_path)
    with pytest.raises(DataError, match="no images/ folder"):
        scan_zivid(tmp_path / "nowhere")


def test_load_pair_marks_invalid_as_nan(tmp_path):
    depth = _depth(0)
    depth[0, 0], depth[1, 1], depth[2, 2], depth[3, 3] = np.nan, np.inf, 0.0, -5.0
    sample = write_zivid(tmp_path, "x", _rgb(0), depth, fx=20.0, fy=25.0, cx=7.0, cy=5.0)
    rgb, depth_mm, valid = load_pair(sample)
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3) and np.array_equal(rgb, _rgb(0))
    assert depth_mm.dtype == np.float32 and valid.dtype == bool
    assert valid.sum() == H * W - 4 and not valid[[0, 1, 2, 3], [0, 1, 2, 3]].any()
    assert np.isnan(depth_mm[~valid]).all() and np.array_equal(depth_mm[valid], depth[valid])
    xyz = np.load(sample.depth_path)  # pinhole X, Y; NaN everywhere a pixel is invalid
    assert np.isnan(xyz[~valid]).all()
    assert xyz[4, 10, 0] == pytest.approx((10 - 7.0) * depth[4, 10] / 20.0)
    assert xyz[4, 10, 1] == pytest.approx((4 - 5.0) * depth[4, 10] / 25.0)


def test_split_is_seeded_disjoint_and_order_free():
    samples = [ZividSample(f"s{i:02d}", f"i{i}.png", f"d{i}.npy") for i in range(10)]
    train, val = split(samples, val_fraction=0.2, seed=1)
    assert len(val) == 2 and len(train) == 8
    assert not {s.stem for s in train} & {s.stem for s in val}
    assert {s.stem for s in train} | {s.stem for s in val} == {s.stem for s in samples}
    assert split(list(reversed(samples)), val_fraction=0.2, seed=1) == (train, val)
    assert split(samples, val_fraction=0.2, seed=2)[1] != val
    assert len(split(samples[:2], val_fraction=0.01)[1]) == 1
    assert split(samples[:1]) == (samples[:1], [])
    with pytest.raises(DataError, match="val_fraction"):
        split(samples, val_fraction=1.0)


def _halves(tmp_path, h: int = 20, w: int = 40) -> ZividSample:
    """Left half bright and near (500 mm), right half dark and far (2000 mm)."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2] = 255
    depth = np.full((h, w), 2000.0, np.float32)
    depth[:, : w // 2] = 500.0
    return write_zivid(tmp_path, "halves", rgb, depth)


def _unnormalise(pixel_values: torch.Tensor) -> np.ndarray:
    return pixel_values.numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN


def test_dataset_shapes_masks_and_nearest_depth(tmp_path):
    depth = _depth(3)
    depth[2:5, 3:9] = np.nan
    sample = write_zivid(tmp_path, "x", _rgb(3), depth)
    for augment in (False, True):
        item = ZividDepthDataset([sample], size=28, augment=augment, seed=0)[0]
        assert item["pixel_values"].shape == (3, 28, 28) and item["pixel_values"].dtype == torch.float32
        assert item["depth"].shape == (28, 28) and item["depth"].dtype == torch.float32
        assert item["valid"].shape == (28, 28) and item["valid"].dtype == torch.bool
        d, v = item["depth"].numpy(), item["valid"].numpy()
        assert (d[~v] == 0).all() and (d[v] > 0).all() and 0 < v.mean() < 1
        assert np.isin(d[v], depth[np.isfinite(depth)]).all()  # nearest: no value invented between pixels
    plain = ZividDepthDataset([sample], size=28)[0]
    assert np.abs(_unnormalise(plain["pixel_values"])).max() <= 1.0 + 1e-5
    with pytest.raises(DataError, match="multiple of 14"):
        ZividDepthDataset([sample], size=30)


def test_dataset_flip_keeps_image_and_depth_aligned(tmp_path):
    ds = ZividDepthDataset([_halves(tmp_path)], size=28, augment=True, seed=0)
    flips = set()
    for epoch in range(16):
        ds.set_epoch(epoch)
        item = ds[0]
        bright = _unnormalise(item["pixel_values"]).mean(-1) > 0.45
        near = item["valid"].numpy() & (item["depth"].numpy() < 1000)
        assert (bright != near).mean() <= 2 / 28  # at most the interface column(s) disagree
        flipped = ds.augment_params(0, 20, 40)["flip"]
        flips.add(flipped)
        assert bright[:, -1 if flipped else 0].all() and near[:, -1 if flipped else 0].all()
        assert not near[:, 0 if flipped else -1].any()
    assert flips == {True, False}


def test_dataset_is_reproducible_per_seed_and_epoch(tmp_path):
    samples = [write_zivid(tmp_path, f"s{i}", _rgb(i), _depth(i)) for i in range(3)]

    def items(seed, epoch):
        ds = ZividDepthDataset(samples, size=14, augment=True, seed=seed)
        ds.set_epoch(epoch)
        return [ds[i] for i in range(len(ds))]

    def same(a, b):
        return all(torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)

    assert same(items(0, 1), items(0, 1))
    assert not same(items(0, 1), items(0, 2))
    assert not same(items(0, 1), items(1, 1))


@pytest.fixture(scope="module")
def motorcycle(tmp_path_factory):
    return make_motorcycle_zivid(tmp_path_factory.mktemp("moto"), crops=6, seed=0)


def test_motorcycle_builds_with_plausible_depths(motorcycle):
    report = scan_zivid(motorcycle)
    assert len(report.samples) == 7 and not report.problems()  # 6 crops + the full view
    depths, valid_fraction = [], []
    for sample in report.samples:
        rgb, depth, valid = load_pair(sample)
        expected = (96, 128) if sample.stem != "motorcycle_full" else (125, 185)
        assert rgb.shape[:2] == depth.shape == expected
        depths.append(depth[valid])
        valid_fraction.append(valid.mean())
    z = np.concatenate(depths)
    # Calibration bound: disparities lie in 7.2-59.9 px, so Z = f B / (d + doffs) lies in ~2,110-5,020 mm.
    f_b = MOTORCYCLE_FOCAL_PX * MOTORCYCLE_BASELINE_MM
    assert f_b / (60 + MOTORCYCLE_DOFFS_PX) <= z.min() and z.max() <= f_b / (7 + MOTORCYCLE_DOFFS_PX)
    assert 1_000 < np.median(z) < 10_000  # a motorcycle a few metres from the rig
    assert np.mean(valid_fraction) > 0.5


def test_motorcycle_is_deterministic(motorcycle, tmp_path):
    again = make_motorcycle_zivid(tmp_path / "again", crops=6, seed=0)
    other = make_motorcycle_zivid(tmp_path / "other", crops=6, seed=1, full_view=False)
    name = "depth/motorcycle_003.npy"
    assert (again / name).read_bytes() == (motorcycle / name).read_bytes()
    assert (other / name).read_bytes() != (motorcycle / name).read_bytes()
    assert not (other / "images" / "motorcycle_full.png").exists()
