"""Pictures and files from depth maps: colour maps with a legend, point clouds (PLY), 16-bit PNGs.

Pure functions of arrays (numpy + Pillow only; no matplotlib, no gradio), shared by Spaces, the CLI and
trainers' validation images.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from .tasks.depth import DepthPrediction

# ColorBrewer "Spectral" (11 classes), reversed: low values purple-blue, high values dark red. Depth Anything's
# own demos colour relative inverse depth with it, so near (big values) is red.
_SPECTRAL_R = np.array(
    [
        [0x5E, 0x4F, 0xA2], [0x32, 0x88, 0xBD], [0x66, 0xC2, 0xA5], [0xAB, 0xDD, 0xA4], [0xE6, 0xF5, 0x98],
        [0xFF, 0xFF, 0xBF], [0xFE, 0xE0, 0x8B], [0xFD, 0xAE, 0x61], [0xF4, 0x6D, 0x43], [0xD5, 0x3E, 0x4F],
        [0x9E, 0x01, 0x42],
    ],
    dtype=np.float64,
)  # fmt: skip
# Google's polynomial fit of Turbo (Mikhailov 2019): close to the real map except at the two dark ends.
_TURBO_COEFFS = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)
CMAPS = ("Spectral_r", "turbo")
INVALID_RGB = (0, 0, 0)  # pixels without a depth value


def cmap_lut(cmap: str = "Spectral_r", n: int = 256) -> np.ndarray:
    """An (n, 3) uint8 lookup table for `cmap` ("Spectral_r" or "turbo"); index 0 is the low end."""
    t = np.linspace(0.0, 1.0, n)
    if cmap == "Spectral_r":
        pos = np.linspace(0.0, 1.0, len(_SPECTRAL_R))
        rgb = np.stack([np.interp(t, pos, _SPECTRAL_R[:, c]) for c in range(3)], axis=1)
    elif cmap == "turbo":
        powers = t[:, None] ** np.arange(6)[None, :]
        rgb = np.clip(powers @ _TURBO_COEFFS.T, 0.0, 1.0) * 255.0
    else:
        raise ValueError(f"cmap={cmap!r} is not one of {', '.join(CMAPS)}")
    return np.round(rgb).astype(np.uint8)


def _valid_mask(depth: np.ndarray, valid: np.ndarray | None, relative: bool) -> np.ndarray:
    mask = np.isfinite(depth)
    if not relative:
        mask &= depth > 0  # metric depth of 0 (or less) means "no measurement"
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != depth.shape:
            raise ValueError(f"valid has shape {valid.shape}, the depth map {depth.shape}")
        mask &= valid
    return mask


def depth_range(depth: np.ndarray, *, valid: np.ndarray | None = None, relative: bool, clip: float = 1.0):
    """(vmin, vmax) of the valid pixels, ignoring `clip` percent at each end; (0, 1) when none is valid."""
    depth = np.asarray(depth, dtype=np.float64)
    values = depth[_valid_mask(depth, valid, relative)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [clip, 100.0 - clip]))
    if hi <= lo:  # flat map: widen so the colours and the legend still make sense
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            hi = lo + 1.0
    return lo, hi


def _scale(values: np.ndarray, vmin: float, vmax: float, *, relative: bool) -> np.ndarray:
    """Values -> [0, 1] colour positions, near always at the warm (high) end.

    Relative outputs are inverse depth (bigger = nearer); metric depth grows with distance, so it is flipped.
    """
    t = (np.asarray(values, dtype=np.float64) - vmin) / max(vmax - vmin, 1e-12)
    t = np.clip(t, 0.0, 1.0)
    return t if relative else 1.0 - t


def colorize_depth(
    depth: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    relative: bool,
    cmap: str = "Spectral_r",
    vmin: float | None = None,
    vmax: float | None = None,
) -> tuple[np.ndarray, tuple[float, float]]:
    """Colour an (H, W) depth map: returns an (H, W, 3) uint8 image and the (vmin, vmax) the colours span.

    Without vmin / vmax the range is the 1st-99th percentile of the valid pixels (finite; > 0 when metric),
    so a few outliers do not wash out the picture. Invalid pixels are black.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be an (H, W) array, got shape {depth.shape}")
    lo, hi = depth_range(depth, valid=valid, relative=relative)
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    lut = cmap_lut(cmap)
    mask = _valid_mask(depth, valid, relative)
    t = _scale(np.where(mask, depth, lo), lo, hi, relative=relative)
    rgb = lut[np.round(t * (len(lut) - 1)).astype(np.intp)]
    rgb[~mask] = INVALID_RGB
    return rgb, (lo, hi)


@functools.lru_cache(maxsize=16)
def _font(size: int):  # cached: Pillow decodes its built-in font on every load_default call (~20 ms)
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError):
        return ImageFont.load_default()


def format_depth(value: float, unit: str) -> str:
    """A depth value as a legend label: whole millimetres, centimetre-precise metres, 3 digits otherwise."""
    if unit == "mm":
        return f"{value:,.0f}"
    if unit == "m":
        return f"{value:.2f}"
    return f"{value:.3g}"


@functools.lru_cache(maxsize=4096)
def _text_mask(text: str, size: int) -> tuple[Image.Image, float]:
    """`text` rasterised once (an "L" mask as wide as the text) and its advance width: every depth map gets a
    legend, and FreeType rasterising its labels cost more CPU than the model's forward pass on small inputs."""
    font = _font(size)
    length = ImageDraw.Draw(Image.new("L", (1, 1))).textlength(text, font=font)
    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (max(1, right), max(1, bottom)), 0)
    ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font)
    return mask, length


def _draw_text(image: Image.Image, xy: tuple[float, float], text: str, size: int, fill: tuple[int, int, int]):
    mask, _ = _text_mask(text, size)
    image.paste(fill, (round(xy[0]), round(xy[1])), mask)


def depth_legend(
    vmin: float,
    vmax: float,
    unit: str,
    *,
    relative: bool | None = None,
    width: int = 512,
    cmap: str = "Spectral_r",
    ticks: int = 5,
) -> np.ndarray:
    """A colour bar (H x `width` x 3 uint8) from vmin (left) to vmax (right) with tick labels and the unit.

    `unit` is "mm", "m" or "relative"; `relative` (default: unit == "relative") says which way the colours run,
    the same way colorize_depth ran them.
    """
    relative = (unit == "relative") if relative is None else relative
    width = max(int(width), 160)
    # Sized with the image: a map is shown scaled to its panel's width, so a fixed 12 px font under a 3000 px map
    # would shrink to a hairline. At least 12 px (small maps), one step per 480 px of width.
    scale = max(1.0, width / 480)
    pad, bar_h, font_size = round(12 * scale), round(14 * scale), round(12 * scale)
    line = max(1, round(scale))
    height = bar_h + font_size * 2 + round(22 * scale)
    legend = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    span = width - 2 * pad
    values = vmin + (vmax - vmin) * np.linspace(0.0, 1.0, span)
    lut = cmap_lut(cmap)
    colours = lut[np.round(_scale(values, vmin, vmax, relative=relative) * (len(lut) - 1)).astype(np.intp)]
    bar = np.repeat(colours[None], bar_h, axis=0)
    top = round(4 * scale)
    legend.paste(Image.fromarray(bar), (pad, top))
    draw.rectangle([pad - line, top - line, pad + span, top + bar_h], outline=(80, 80, 80), width=line)
    y = top + bar_h
    tick = round(4 * scale)
    for n in range(max(ticks, 2), 1, -1):  # fewer ticks when the labels would overlap on a narrow bar
        labels = [format_depth(vmin + (vmax - vmin) * i / (n - 1), unit) for i in range(n)]
        widths = [_text_mask(text, font_size)[1] for text in labels]
        if n == 2 or max(widths) * n + 8 * scale * (n - 1) <= span:
            break
    for i, (text, w) in enumerate(zip(labels, widths, strict=True)):
        x = pad + round(i * (span - 1) / (n - 1))
        draw.line([x, y, x, y + tick], fill=(0, 0, 0), width=line)
        _draw_text(legend, (min(max(x - w / 2, 2), width - w - 2), y + tick + line), text, font_size, (0, 0, 0))
    if unit == "relative":
        caption = "relative inverse depth (unitless): far <-> near"
    else:
        caption = f"depth in {unit}: near <-> far"
    if _text_mask(caption, font_size)[1] > width - pad:  # a narrow legend: the short form
        caption = "relative: far <-> near" if unit == "relative" else f"{unit}: near <-> far"
    _draw_text(legend, (pad, y + tick + 3 * line + font_size), caption, font_size, (60, 60, 60))
    return np.asarray(legend)


def with_legend(rgb: np.ndarray, legend: np.ndarray) -> np.ndarray:
    """Stack a legend strip under an image (white padding when their widths differ)."""
    width = max(rgb.shape[1], legend.shape[1])
    out = np.full((rgb.shape[0] + legend.shape[0], width, 3), 255, dtype=np.uint8)
    out[: rgb.shape[0], : rgb.shape[1]] = rgb
    out[rgb.shape[0] :, : legend.shape[1]] = legend
    return out


def depth_to_points(
    depth: np.ndarray,
    rgb: np.ndarray | None,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    *,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Back-project a depth map through a pinhole camera: (N, 3) float32 xyz and (N, 3) uint8 colours.

    x = (u - cx) * z / fx, y = (v - cy) * z / fy, z = depth at pixel (u, v) (column u, row v), in the depth
    map's unit. Only pixels with a finite depth > 0 (and `valid`, when given) become points.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be an (H, W) array, got shape {depth.shape}")
    for name, value in (("fx", fx), ("fy", fy)):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name}={value!r}: focal lengths must be positive numbers (pixels)")
    mask = _valid_mask(depth, valid, relative=False)
    v, u = np.nonzero(mask)
    z = depth[v, u]
    xyz = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=1).astype(np.float32)
    if rgb is None:
        colours = np.full((len(z), 3), 255, dtype=np.uint8)
    else:
        rgb = np.asarray(rgb)
        if rgb.shape[:2] != depth.shape:
            raise ValueError(f"rgb has shape {rgb.shape}, the depth map {depth.shape}")
        colours = rgb[v, u, :3].astype(np.uint8)
    return xyz, colours


def write_ply(path: str | Path, xyz: np.ndarray, colours: np.ndarray | None = None, *, binary: bool = True) -> Path:
    """Write a point cloud as PLY (binary little-endian, or ASCII) with float xyz and uchar red/green/blue."""
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    colours = np.full((len(xyz), 3), 255, np.uint8) if colours is None else np.asarray(colours, np.uint8).reshape(-1, 3)
    if len(colours) != len(xyz):
        raise ValueError(f"{len(xyz)} points but {len(colours)} colours")
    header = "\n".join(
        [
            "ply",
            f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
            "comment written by hubkit",
            f"element vertex {len(xyz)}",
            "property float x",
            "property float y",
            "property float z",
            "property uchar red",
            "property uchar green",
            "property uchar blue",
            "end_header",
        ]
    )
    path = Path(path)
    with open(path, "wb") as f:
        f.write(header.encode("ascii") + b"\n")
        if binary:
            rows = np.empty(len(xyz), dtype=_PLY_DTYPE)
            rows["x"], rows["y"], rows["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
            rows["red"], rows["green"], rows["blue"] = colours[:, 0], colours[:, 1], colours[:, 2]
            f.write(rows.tobytes())
        else:
            for (x, y, z), (r, g, b) in zip(xyz.tolist(), colours.tolist(), strict=True):
                f.write(f"{x:.7g} {y:.7g} {z:.7g} {r} {g} {b}\n".encode("ascii"))
    return path


_PLY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read back a PLY written by write_ply: (N, 3) float32 xyz and (N, 3) uint8 colours."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    header = data[:end].decode("ascii").splitlines()
    count = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    body = data[end + len(b"end_header\n") :]
    if "format binary_little_endian 1.0" in header:
        rows = np.frombuffer(body, dtype=_PLY_DTYPE, count=count)
        xyz = np.stack([rows["x"], rows["y"], rows["z"]], axis=1)
        colours = np.stack([rows["red"], rows["green"], rows["blue"]], axis=1)
    elif "format ascii 1.0" in header:
        table = np.loadtxt(body.decode("ascii").splitlines(), ndmin=2) if count else np.zeros((0, 6))
        xyz, colours = table[:count, :3].astype(np.float32), table[:count, 3:6].astype(np.uint8)
    else:
        raise ValueError(f"{path}: unsupported PLY format")
    return xyz, colours


def save_depth_png16(path: str | Path, prediction: DepthPrediction) -> Path:
    """A 16-bit greyscale PNG: metric depth in millimetres, relative depth stretched to 0..65535."""
    from .tasks.depth import depth_to_uint16

    path = Path(path)
    Image.fromarray(depth_to_uint16(prediction)).save(path)
    return path


def inverse_to_depth(inverse: np.ndarray, *, near: float = 1.0, far: float = 10.0) -> np.ndarray:
    """Relative inverse depth -> a pseudo depth in [near, far] (shape only, no true scale), for point clouds.

    The 1st-99th percentile range of `inverse` maps linearly onto 1/far..1/near, then inverts.
    """
    inverse = np.asarray(inverse, dtype=np.float64)
    lo, hi = depth_range(inverse, relative=True)
    t = np.clip((inverse - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return 1.0 / (1.0 / far + t * (1.0 / near - 1.0 / far))
