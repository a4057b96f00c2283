"""Small real depth data sets built from images that ship inside packages (no network)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .zivid import write_zivid

logger = logging.getLogger(__name__)

# Middlebury 2014 "Motorcycle" calibration at full resolution (2964 x 1988): f = 3979.911 px,
# cx = 1244.772 px, cy = 1019.507 px, doffs = 124.343 px (cx1 - cx0), baseline = 193.001 mm.
# skimage.data.stereo_motorcycle() is that scene down-sampled by 4 (downscale_local_mean), and its
# docstring gives the calibration for the down-sampled images, which we use as they are:
MOTORCYCLE_FOCAL_PX = 994.978  # 3979.911 / 4
MOTORCYCLE_BASELINE_MM = 193.001  # a length: unchanged by down-sampling
MOTORCYCLE_DOFFS_PX = 31.086  # 124.343 / 4: x-difference of the two principal points
MOTORCYCLE_CX, MOTORCYCLE_CY = 311.193, 254.877


def disparity_to_depth_mm(
    disparity: np.ndarray, focal_px: float, baseline_mm: float, doffs_px: float = 0.0
) -> np.ndarray:
    """Middlebury's ``Z = f * B / (d + doffs)`` in mm; NaN where the disparity is non-finite or <= 0."""
    d = np.asarray(disparity, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = np.isfinite(d) & (d > 0)
        z = np.where(ok, focal_px * baseline_mm / np.where(ok, d + doffs_px, 1.0), np.nan)
    return z.astype(np.float32)


def make_motorcycle_zivid(
    root: str | Path,
    *,
    crops: int = 12,
    crop_size: tuple[int, int] = (96, 128),
    focal_px: float = MOTORCYCLE_FOCAL_PX,
    baseline_mm: float = MOTORCYCLE_BASELINE_MM,
    doffs_px: float = MOTORCYCLE_DOFFS_PX,
    full_view: bool = True,
    seed: int = 0,
) -> Path:
    """Write a Zivid-format data set (``root/images``, ``root/depth``) from scikit-image's stereo motorcycle.

    ``skimage.data.stereo_motorcycle()`` returns the left and right images of the Middlebury 2014
    Motorcycle scene, down-sampled by 4 to 500 x 741, and the left view's ground-truth disparity in pixels
    of that resolution (NaN / inf where unknown). Depth follows Middlebury's formula
    ``depth_mm = focal_px * baseline_mm / (disparity + doffs_px)`` with the down-sampled calibration from
    the skimage docstring: f = 3979.911 / 4 = 994.978 px, baseline = 193.001 mm, doffs = 124.343 / 4 =
    31.086 px (Middlebury stores disparities relative to the two cameras' principal-point offset, so
    ``f * B / d`` alone would overestimate depth by ~1.8x). The disparities 7.2-59.9 px give depths of
    about 2.1-5.0 m (median ~2.75 m). Pass ``doffs_px=0`` for the plain ``f * B / d``.

    Written: ``crops`` random (height, width) = ``crop_size`` windows of the left image at full skimage
    resolution (exact depths, principal point shifted by the window offset), plus with ``full_view`` the
    whole scene down-sampled by 4 again (125 x 185; image by area mean, depth by nearest sample, f / 4).
    Deterministic by ``seed``. Returns ``root``.
    """
    from skimage.data import stereo_motorcycle  # lazy: skimage.data is slowish to import

    left, _, disparity = stereo_motorcycle()
    depth = disparity_to_depth_mm(disparity, focal_px, baseline_mm, doffs_px)
    height, width = depth.shape
    ch, cw = crop_size
    if not (0 < ch <= height and 0 < cw <= width):
        raise DataError(f"crop_size must fit in the {height} x {width} motorcycle image, got {crop_size!r}")
    if crops < 0:
        raise DataError(f"crops must be >= 0, got {crops!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    valid = np.isfinite(depth)
    for i in range(crops):
        for _ in range(20):  # keep windows that are mostly valid (over 90% of the scene is)
            y0, x0 = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
            if valid[y0 : y0 + ch, x0 : x0 + cw].mean() >= 0.5:
                break
        window = (slice(y0, y0 + ch), slice(x0, x0 + cw))
        write_zivid(
            root,
            f"motorcycle_{i:03d}",
            np.ascontiguousarray(left[window]),
            depth[window],
            fx=focal_px,
            fy=focal_px,
            cx=MOTORCYCLE_CX - x0,
            cy=MOTORCYCLE_CY - y0,
        )
    if full_view:
        k = 4
        h4, w4 = height // k, width // k
        small = Image.fromarray(left[: h4 * k, : w4 * k]).reduce(k)  # area mean, like downscale_local_mean
        # nearest sample at each block centre: depth values stay exact, invalid never mixes with valid
        sub = depth[k // 2 : h4 * k : k, k // 2 : w4 * k : k]
        write_zivid(
            root,
            "motorcycle_full",
            np.asarray(small),
            sub,
            fx=focal_px / k,
            fy=focal_px / k,
            cx=(MOTORCYCLE_CX + 0.5) / k - 0.5,
            cy=(MOTORCYCLE_CY + 0.5) / k - 0.5,
        )
    logger.info("wrote %d motorcycle crops%s to %s", crops, " + full view" if full_view else "", root)
    return root
