from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

from hubkit import tiny
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


# The seed's Zivid export: images/<scene>_color.png with depth/<scene>_rawDepth.npy (scene = a timestamp).
SEED_SCENES = [f"2{1 + i % 2}-{1 + i % 12:02d}-{3 + i:02d}-18-52-{10 + i:02d}_Zivid_acquisition" for i in range(15)]


def _write(root: Path, image_name: str, depth_name: str, seed: int = 0) -> None:
    """One pair under any names: a crop of scikit-image's astronaut photo and an XYZ map of its size."""
    from PIL import Image
    from skimage import data

    y, x = 16 * (seed % 8), 24 * (seed // 8)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()[y : y + H, x : x + W]).save(root / "images" / image_name)
    np.save(root / "depth" / depth_name, _xyz(_depth(seed)))


def test_scan_pairs_seed_named_files(tmp_path):
    for i, scene in enumerate(SEED_SCENES):
        _write(tmp_path, f"{scene}_color.png", f"{scene}_rawDepth.npy", seed=i)
    report = scan_zivid(tmp_path)
    assert len(report.samples) == 15 and not report.problems()
    assert [s.stem for s in report.samples] == sorted(SEED_SCENES)
    first = report.samples[0]
    assert first.image_path.name == f"{first.stem}_color.png" and first.depth_path.name == f"{first.stem}_rawDepth.npy"
    rgb, depth, valid = load_pair(first)
    assert rgb.shape == (H, W, 3) and depth.shape == (H, W) and valid.all()
    assert report.summary() == f"15 usable pairs in {tmp_path}"


def test_scan_mixes_exact_and_suffixed_stems_exact_first(tmp_path):
    names = [
        ("a.png", "a.npy"),  # exact stems, as before
        ("b_color.png", "b_depth.npy"),
        ("c.png", "c_xyz.npy"),  # only one side carries a role suffix
        ("d_rgb.png", "d.npy"),
        ("e-image.png", "e-pointcloud.npy"),  # "-" separator
        ("f_color.png", "f_color.npy"),  # exact wins: f_color pairs with f_color, not with f_depth
        ("g.png", "g.npy"),
    ]
    for i, (image, depth) in enumerate(names):
        _write(tmp_path, image, depth, seed=i)
    np.save(tmp_path / "depth" / "f_depth.npy", _xyz(_depth(9)))
    np.save(tmp_path / "depth" / "g_depth.npy", _xyz(_depth(9)))  # g.png is taken by g.npy
    report = scan_zivid(tmp_path)
    pairs = {s.stem: (s.image_path.name, s.depth_path.name) for s in report.samples}
    assert pairs == dict(zip(["a", "b", "c", "d", "e", "f_color", "g"], names, strict=True))
    assert [p.name for p in report.unpaired_depth] == ["f_depth.npy", "g_depth.npy"]
    assert not report.unpaired_images and not report.ambiguous and not report.unreadable


def test_scan_reports_ambiguous_matches_and_pairs_none_of_them(tmp_path, caplog):
    _write(tmp_path, "ok_color.png", "ok_rawDepth.npy", seed=0)
    _write(tmp_path, "a_color.png", "a_depth.npy", seed=1)
    _write(tmp_path, "a_rgb.png", "unused.npy", seed=2)  # a second image for scene "a"
    (tmp_path / "depth" / "unused.npy").unlink()
    _write(tmp_path, "b_color.png", "b_depth.npy", seed=3)
    np.save(tmp_path / "depth" / "b_xyz.npy", _xyz(_depth(3)))  # a second depth map for scene "b"
    _write(tmp_path, "c.png", "c.npy", seed=4)
    _write(tmp_path, "c_color.png", "c_depth.npy", seed=5)  # scene "c" is already the exact pair c.png + c.npy
    with caplog.at_level(logging.WARNING, logger="hubkit.data.zivid"):
        report = scan_zivid(tmp_path)
    assert [s.stem for s in report.samples] == ["c", "ok"]
    assert report.samples[0].image_path.name == "c.png"
    found = {m.stem: ([p.name for p in m.images], [p.name for p in m.depths]) for m in report.ambiguous}
    assert found == {
        "a": (["a_color.png", "a_rgb.png"], ["a_depth.npy"]),
        "b": (["b_color.png"], ["b_depth.npy", "b_xyz.npy"]),
        "c": (["c_color.png"], ["c_depth.npy"]),
    }
    assert not report.unpaired_images and not report.unpaired_depth  # counted as ambiguous, not twice
    summary = report.summary()
    assert summary.startswith("2 usable pairs") and "3 ambiguous matches, not paired" in summary
    assert "a_color.png + a_rgb.png / a_depth.npy (scene 'a': 2 images, 1 depth maps)" in summary
    assert "already an exact-stem pair" in summary and "3 ambiguous" in caplog.text
    (tmp_path / "depth" / "ok_rawDepth.npy").unlink()
    (tmp_path / "depth" / "c.npy").unlink()  # now c.png and c_color.png both claim c_depth.npy
    with pytest.raises(DataError, match=r"0 usable pairs in .*3 ambiguous matches, not paired: a_color.png") as err:
        scan_zivid(tmp_path)
    assert "c.png + c_color.png / c_depth.npy (scene 'c': 2 images, 1 depth maps)" in str(err.value)


def test_scan_role_suffixes_ignore_case_and_need_a_scene(tmp_path):
    _write(tmp_path, "s1_Color.png", "s1_RawDepth.npy", seed=0)
    _write(tmp_path, "s2_RGB.PNG", "s2-DEPTH.npy", seed=1)
    _write(tmp_path, "s3_IMAGE.png", "s3_XYZ.npy", seed=2)
    _write(tmp_path, "color.png", "depth.npy", seed=3)  # a role with no scene name before it is just a stem
    _write(tmp_path, "s4_colour.png", "s4_depthmap.npy", seed=4)  # not a listed role suffix
    report = scan_zivid(tmp_path)
    assert [s.stem for s in report.samples] == ["s1", "s2", "s3"]
    assert [p.name for p in report.unpaired_images] == ["color.png", "s4_colour.png"]
    assert [p.name for p in report.unpaired_depth] == ["depth.npy", "s4_depthmap.npy"]


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


@pytest.mark.slow
def test_depth_trainer_runs_on_seed_named_folder(motorcycle, tmp_path):
    """accelerate launch trainers/depth_lora.py on real data named as the seed's Zivid export (~12 s)."""
    data = tmp_path / "DATASET_DEVOIR"
    for folder in ("images", "depth"):
        (data / folder).mkdir(parents=True)
    stems = sorted(p.stem for p in (motorcycle / "images").glob("*.png"))
    for scene, stem in zip(SEED_SCENES, stems, strict=False):
        shutil.copy(motorcycle / "images" / f"{stem}.png", data / "images" / f"{scene}_color.png")
        shutil.copy(motorcycle / "depth" / f"{stem}.npy", data / "depth" / f"{scene}_rawDepth.npy")
    base = tiny.build("depth-anything", tmp_path / "base")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "trainers" / "depth_lora.py")]
    cmd += ["--config", str(ROOT / "trainers" / "configs" / "depth_zivid.yaml"), "--data", str(data)]
    cmd += ["--base", str(base), "--max_steps", "2", "--input_size", "56", "--output_dir", str(tmp_path / "run")]
    cmd += ["--report_to", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(stems)} usable pairs in {data}" in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == 2 and Path(result["adapter"]).is_dir()
