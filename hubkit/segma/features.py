"""The 61 hand-made HLBB features of one region (mask) of an image, for the region classifier and its analysis.

Layout (the Segma Vision seed's, "5. Optimisation HLBB Features"):

- 0-47 ``color_histogram``: 16-bin histograms of R (0-15), G (16-31) and B (32-47) of the pixels inside the mask; bin
  ``k`` holds the values ``16k .. 16k + 15``; each channel's histogram sums to 1.
- 48-57 ``texture_lbp``: histogram of the uniform LBP codes (``skimage.feature.local_binary_pattern`` on the
  grayscale image, P=8, R=1, method="uniform") of the pixels inside the mask, summing to 1. Codes 0-8 are the uniform
  patterns (the code is the number of neighbours at least as bright as the centre), 9 gathers every non-uniform one.
- 58-60 ``geometric``: area ratio (mask pixels / image pixels), bounding-box aspect ratio (width / height), and
  compactness ``4 * pi * A / P**2`` (1 for a disc, about pi/4 for a square).

Compactness uses ``skimage.measure.regionprops`` on the whole mask as one region: A is its pixel count and P its
``perimeter`` (skimage's 4-neighbourhood estimate; with several components it is the sum of their perimeters, hole
borders included). That estimate is discrete: it runs about 5% long on curved borders (a disc scores about 0.90, not 1)
and short on tiny or one-pixel-thin masks (which would score above 1), so compactness is clipped to [0, 1]; a single
pixel (perimeter 0) scores 1.

The grayscale image and its LBP codes are computed once per image: pass every mask of an image to
``hlbb_features_batch``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..tasks import to_pil

__all__ = [
    "FEATURE_GROUPS",
    "FEATURE_NAMES",
    "LBP_BINS",
    "N_FEATURES",
    "as_feature_matrix",
    "check_training_data",
    "hlbb_features",
    "hlbb_features_batch",
]

N_FEATURES = 61
HIST_BINS = 16  # per colour channel, 16 grey levels each
LBP_POINTS, LBP_RADIUS = 8, 1
LBP_BINS = LBP_POINTS + 2  # "uniform" LBP: P + 1 uniform codes and one code for every non-uniform pattern
FEATURE_NAMES: tuple[str, ...] = (
    *(f"hist_{channel}_{k:02d}" for channel in "rgb" for k in range(HIST_BINS)),
    *(f"lbp_{k}" for k in range(LBP_BINS)),
    "area_ratio",
    "aspect_ratio",
    "compactness",
)
FEATURE_GROUPS: dict[str, range] = {
    "color_histogram": range(0, 48),
    "texture_lbp": range(48, 58),
    "geometric": range(58, 61),
}


def hlbb_features(image: Image.Image | np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 61 HLBB features (float32, shape (61,)) of the region `mask` (H, W bool) of `image` (PIL or HxWx3 uint8)."""
    return _features(image, [mask], single=True)[0]


def hlbb_features_batch(image: Image.Image | np.ndarray, masks: Iterable[np.ndarray] | np.ndarray) -> np.ndarray:
    """HLBB features of several regions of one image, shape (N, 61) float32; the LBP codes are computed once.

    `masks` is a sequence of (H, W) bool arrays or one (N, H, W) array; no mask gives a (0, 61) array.
    """
    return _features(image, _iter_masks(masks), single=False)


def _features(image: Image.Image | np.ndarray, masks: Iterable[Any], *, single: bool) -> np.ndarray:
    pil = to_pil(image)
    rgb = np.asarray(pil)
    height, width = rgb.shape[:2]
    checked = [_check_mask(mask, (height, width), None if single else i) for i, mask in enumerate(masks)]
    out = np.empty((len(checked), N_FEATURES), dtype=np.float32)
    if not checked:
        return out
    from skimage.feature import local_binary_pattern

    # PIL's integer luma keeps grey images exact (R = G = B = v gives v), so LBP's ties are the image's own ties.
    gray = np.asarray(pil.convert("L"))
    lbp = local_binary_pattern(gray, LBP_POINTS, LBP_RADIUS, method="uniform").astype(np.uint8)
    for row, mask in zip(out, checked, strict=True):
        row[:] = _region_features(rgb, lbp, mask)
    return out


def as_feature_matrix(features: Any, *, name: str = "features") -> np.ndarray:
    """`features` as a float64 (N, 61) array: one row per region; a single (61,) vector becomes one row.

    Raises ConfigError for another shape, no rows, or NaN / infinite values.
    """
    try:
        array = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be a numeric (N, {N_FEATURES}) array of HLBB features; {err}.") from None
    if array.ndim == 1 and array.shape[0] == N_FEATURES:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != N_FEATURES:
        raise ConfigError(
            f"{name} has shape {array.shape}; expected (N, {N_FEATURES}): one row of {N_FEATURES} HLBB features per "
            "region, as hlbb_features_batch returns."
        )
    if array.shape[0] == 0:
        raise ConfigError(f"{name} has no rows; compute the HLBB features of at least one region.")
    bad = ~np.isfinite(array)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise ConfigError(
            f"{name} holds {int(bad.sum())} NaN or infinite value(s), first at row {int(rows[0])}, feature "
            f"{FEATURE_NAMES[int(cols[0])]!r}; recompute the features of those regions or drop them."
        )
    return array


def check_training_data(features: Any, labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Features as (N, 61) float64 and labels as N non-empty strings of at least two classes, or ConfigError."""
    matrix = as_feature_matrix(features)
    if isinstance(labels, str):
        raise ConfigError(f"labels must be a list of class names, one per region; got the string {labels!r}.")
    labels = list(labels)
    if len(labels) != matrix.shape[0]:
        raise ConfigError(
            f"Got {matrix.shape[0]} feature rows but {len(labels)} labels; pass exactly one label per region."
        )
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"labels[{i}] is {label!r}; every label must be a non-empty class name (a str).")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ConfigError(
            f"All {len(labels)} regions are labelled {classes[0]!r}; a classifier needs at least 2 classes. "
            "Label regions of another class too (e.g. 'background')."
        )
    return matrix, labels


def _iter_masks(masks: Iterable[np.ndarray] | np.ndarray) -> Iterable[Any]:
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        raise ConfigError(
            f"masks is one (H, W) = {masks.shape} mask; pass a list of masks (or an (N, H, W) array), "
            "or call hlbb_features for a single mask."
        )
    return masks


def _check_mask(mask: Any, shape: tuple[int, int], index: int | None) -> np.ndarray:
    """`mask` as an (H, W) bool array matching the image, with at least one pixel; ConfigError otherwise."""
    what = "mask" if index is None else f"masks[{index}]"
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ConfigError(f"{what} has shape {array.shape}; it must be a 2-D (H, W) boolean array, one per region.")
    if array.shape != shape:
        raise ConfigError(
            f"{what} has shape {array.shape} but the image is (H, W) = {shape}; masks must be at the image's size "
            "(note PIL's size is (W, H))."
        )
    if array.dtype != np.bool_:
        if array.dtype.kind not in "biuf" or not np.isin(array, (0, 1)).all():
            raise ConfigError(f"{what} must be a boolean mask (or 0 / 1 values); got dtype {array.dtype}.")
        array = array.astype(bool)
    if not array.any():
        raise ConfigError(f"{what} is empty (no pixel set); HLBB features need a region: drop empty masks first.")
    return array


def _region_features(rgb: np.ndarray, lbp: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y1, y2, x1, x2 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = mask[y1:y2, x1:x2]  # everything below reads only the bounding box
    pixels = rgb[y1:y2, x1:x2][crop]
    count = pixels.shape[0]
    colour = [np.bincount(pixels[:, c] >> 4, minlength=HIST_BINS) for c in range(3)]  # 256 / 16 = 16 levels a bin
    texture = np.bincount(lbp[y1:y2, x1:x2][crop], minlength=LBP_BINS)
    geometric = [count / mask.size, (x2 - x1) / (y2 - y1), _compactness(crop)]
    return np.concatenate([np.concatenate([*colour, texture]) / count, geometric])


def _compactness(crop: np.ndarray) -> float:
    from skimage.measure import regionprops

    props = regionprops(crop.astype(np.uint8))[0]  # one label for the whole mask: summed perimeters
    if props.perimeter == 0:  # a lone pixel: skimage's estimate is 0
        return 1.0
    return min(max(4 * math.pi * float(props.area) / float(props.perimeter) ** 2, 0.0), 1.0)
