from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hubkit import viz
from hubkit.tasks.depth import DepthPrediction


@pytest.mark.parametrize("cmap", viz.CMAPS)
def test_lut_runs_cold_to_warm(cmap):
    lut = viz.cmap_lut(cmap)
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    low, high = lut[25].astype(int), lut[230].astype(int)
    assert low[2] > low[0] and high[0] > high[2]  # blue-ish low end, red-ish high end
    with pytest.raises(ValueError, match="cmap"):
        viz.cmap_lut("viridis-ish")


def test_colorize_relative_and_metric_put_near_at_the_warm_end():
    ramp = np.tile(np.linspace(0.0, 1.0, 101), (4, 1))
    rgb, (vmin, vmax) = viz.colorize_depth(ramp, relative=True)
    assert rgb.shape == (4, 101, 3) and rgb.dtype == np.uint8
    assert 0.0 <= vmin < 0.05 and 0.95 < vmax <= 1.0  # 1st / 99th percentile
    assert (rgb[:, -1] == viz.cmap_lut()[-1]).all()  # biggest inverse depth = nearest = warm end
    metric, _ = viz.colorize_depth(ramp + 0.5, relative=False)
    assert (metric[:, 0] == viz.cmap_lut()[-1]).all()  # smallest metric depth = nearest = warm end


def test_colorize_marks_invalid_pixels_and_honours_a_fixed_range():
    depth = np.array([[1.0, 2.0, np.nan], [0.0, 3.0, 4.0]])
    rgb, span = viz.colorize_depth(depth, relative=False, vmin=1.0, vmax=4.0)
    assert span == (1.0, 4.0)
    assert (rgb[0, 2] == 0).all() and (rgb[1, 0] == 0).all()  # NaN and 0 mm are "no depth"
    valid = np.ones_like(depth, bool)
    valid[0, 0] = False
    masked, _ = viz.colorize_depth(depth, relative=False, valid=valid)
    assert (masked[0, 0] == 0).all() and not (masked[1, 2] == 0).all()
    flat, (lo, hi) = viz.colorize_depth(np.full((3, 3), 2.0), relative=True)
    assert hi > lo and flat.shape == (3, 3, 3)


def test_legend_has_the_colour_bar_and_labels():
    legend = viz.depth_legend(500.0, 4500.0, "mm", width=300)
    assert legend.dtype == np.uint8 and legend.shape[1] == 300 and legend.shape[2] == 3
    bar_row = legend[10, 12:288].astype(int)
    assert len({tuple(c) for c in bar_row}) > 50  # a gradient, not one colour
    assert (bar_row[0] == viz.cmap_lut()[-1]).all()  # metric: near (500 mm, left) is warm
    text = legend[20:].min(axis=2)
    assert (text < 100).sum() > 50  # dark tick labels and caption under the bar
    relative = viz.depth_legend(0.0, 1.0, "relative", width=300)
    assert (relative[10, 12] == viz.cmap_lut()[0]).all()  # relative: far (small, left) is cold
    combined = viz.with_legend(np.zeros((50, 200, 3), np.uint8), legend)
    assert combined.shape == (50 + legend.shape[0], 300, 3)
    assert viz.format_depth(1234.4, "mm") == "1,234" and viz.format_depth(0.000123, "relative") == "0.000123"


def test_points_of_a_plane_lie_on_the_plane():
    h, w, f, cx, cy, z0 = 40, 60, 50.0, 29.5, 19.5, 2.0
    depth = np.full((h, w), z0)
    depth[0, 0] = 0.0  # no measurement
    depth[5, 5] = np.nan
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = np.arange(w, dtype=np.uint8)[None, :]
    xyz, colours = viz.depth_to_points(depth, rgb, f, f, cx, cy)
    assert xyz.shape == (h * w - 2, 3) and colours.shape == xyz.shape
    assert np.allclose(xyz[:, 2], z0)
    # Pixel (u, v) = (59, 39): x = (59 - 29.5) * 2 / 50, y = (39 - 19.5) * 2 / 50.
    assert np.allclose(xyz[-1], [1.18, 0.78, 2.0], atol=1e-6) and colours[-1, 0] == 59
    # A tilted plane z = 1 + 0.01 u stays planar: x / z is linear in u.
    tilted = 1.0 + 0.01 * np.tile(np.arange(w, dtype=float), (h, 1))
    pts, _ = viz.depth_to_points(tilted, None, f, f, cx, cy)
    u = pts[:, 0] / pts[:, 2] * f + cx
    assert np.allclose(pts[:, 2], 1.0 + 0.01 * u, atol=1e-5)
    with pytest.raises(ValueError, match="fx"):
        viz.depth_to_points(depth, rgb, 0.0, f, cx, cy)


@pytest.mark.parametrize("binary", [True, False])
def test_ply_round_trip(tmp_path, binary):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(500, 3)).astype(np.float32)
    colours = rng.integers(0, 256, size=(500, 3), dtype=np.uint8)
    path = viz.write_ply(tmp_path / "cloud.ply", xyz, colours, binary=binary)
    header = path.read_bytes()[:300].split(b"end_header")[0].decode()
    assert header.startswith("ply\n") and "element vertex 500" in header and "property uchar red" in header
    back_xyz, back_colours = viz.read_ply(path)
    assert np.allclose(back_xyz, xyz, atol=1e-5) and (back_colours == colours).all()
    empty = viz.write_ply(tmp_path / "empty.ply", np.zeros((0, 3)), binary=binary)
    assert viz.read_ply(empty)[0].shape == (0, 3)


def test_png16_metric_in_millimetres_and_relative_stretched(tmp_path):
    metric = DepthPrediction(np.array([[0.5, 1.25], [2.0, 0.0]], np.float32), relative=False)
    png = viz.save_depth_png16(tmp_path / "metric.png", metric)
    with Image.open(png) as img:
        assert img.mode.startswith("I;16") or img.mode == "I"
        assert np.asarray(img).astype(int).tolist() == [[500, 1250], [2000, 0]]
    relative = DepthPrediction(np.array([[1e-8, 3e-8]], np.float32), relative=True)
    with Image.open(viz.save_depth_png16(tmp_path / "relative.png", relative)) as img:
        assert np.asarray(img).astype(int).tolist() == [[0, 65535]]


def test_inverse_to_depth_is_monotonic_and_bounded():
    inverse = np.linspace(0.0, 1.0, 50)[None, :]
    depth = viz.inverse_to_depth(inverse, near=1.0, far=10.0)
    assert depth.min() >= 1.0 - 1e-9 and depth.max() <= 10.0 + 1e-9
    assert (np.diff(depth[0]) <= 0).all()  # bigger inverse depth = nearer
