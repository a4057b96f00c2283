"""An offline garment catalogue for visual search: shirts, trousers, dresses, shoes and bags, made in seconds.

No clothing images ship in any package, so each item is a silhouette (one outline per category, its proportions
varied per item) filled with a texture and a colour taken from scikit-image's images (brick, grass, gravel,
camera, moon, coins, text, checkerboard as the weave; coffee, chelsea, astronaut, rocket as printed patterns),
drawn on a light studio background as a shop photo would be. `camera_view` turns a catalogue photo into a
phone-camera-like query of the same item: another background, perspective, rotation, crop, blur, noise and
lighting.

    catalogue = make_catalogue(tmp_path / "shop", n_per_category=8, seed=0)
    items = read_catalogue(catalogue)          # [{"id", "category", "colour", "name", "file"}, ...]
    query = camera_view(Image.open(catalogue / items[0]["file"]), np.random.default_rng(1))

The folder holds `images/<id>.png` and `metadata.jsonl` (one JSON object per line: id, category, colour, name,
file, texture). Deterministic by `seed`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import DataError

CATEGORIES = ("shirt", "trousers", "dress", "shoe", "bag")
COLOURS = {  # name -> RGB: the shop's colour facet
    "red": (190, 30, 40),
    "navy": (30, 40, 110),
    "green": (40, 130, 60),
    "black": (30, 30, 32),
    "white": (235, 235, 228),
    "yellow": (230, 190, 40),
    "pink": (230, 130, 170),
    "beige": (200, 175, 135),
    "grey": (130, 130, 135),
    "orange": (230, 110, 30),
}
WEAVES = ("brick", "grass", "gravel", "camera", "moon", "coins", "text", "checkerboard")  # greyscale -> weave
PRINTS = ("coffee", "chelsea", "astronaut", "rocket")  # colour images -> printed pattern
_NAMES = {
    "shirt": ("shirt", "tee", "blouse", "polo"),
    "trousers": ("trousers", "chinos", "jeans", "slacks"),
    "dress": ("dress", "sundress", "maxi dress", "shift dress"),
    "shoe": ("sneaker", "loafer", "boot", "derby"),
    "bag": ("tote", "handbag", "satchel", "shopper"),
}
_STYLES = ("classic", "slim", "relaxed", "vintage", "summer", "city", "organic", "essential")


@functools.cache
def _source(name: str) -> np.ndarray:
    """A scikit-image image as float RGB in [0, 1] (grey images repeated on three channels)."""
    from skimage import data  # lazy: skimage.data is slowish to import

    image = np.asarray(getattr(data, name)(), dtype=np.float32)
    image = image / (255.0 if image.max() > 1 else 1.0)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image[..., :3]


def _texture(name: str, size: int, rng: np.random.Generator, colour: tuple[int, int, int]) -> np.ndarray:
    """A (size, size, 3) uint8 fabric: a random crop of a scikit-image image, tinted by `colour`."""
    source = _source(name)
    h, w = source.shape[:2]
    crop = int(min(h, w) * rng.uniform(0.35, 0.7))
    y0, x0 = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    patch = Image.fromarray((source[y0 : y0 + crop, x0 : x0 + crop] * 255).astype(np.uint8))
    patch = np.asarray(patch.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    base = np.asarray(colour, dtype=np.float32) / 255.0
    if name in PRINTS:  # a printed pattern: half the colour, half the picture
        fabric = 0.55 * base + 0.45 * patch
    else:  # a weave: the colour, shaded by the grey texture
        grey = patch.mean(axis=2, keepdims=True)
        fabric = base * (0.6 + 0.55 * (grey - grey.mean())) + 0.08 * (grey - 0.5)
    return (np.clip(fabric, 0, 1) * 255).astype(np.uint8)


def _outline(category: str, rng: np.random.Generator) -> list[list[tuple[float, float]]]:
    """Polygons in unit coordinates (x right, y down) for one item of `category`, proportions varied."""
    j = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    if category == "shirt":
        body, sleeve, neck = j(0.2, 0.26), j(0.16, 0.26), j(0.06, 0.1)
        top, hem, drop = j(0.16, 0.22), j(0.82, 0.9), j(0.18, 0.3)
        return [
            [
                (0.5 - neck, top),
                (0.5 - body, top + 0.03),
                (0.5 - body - sleeve, top + drop),
                (0.5 - body - sleeve + 0.07, top + drop + 0.09),
                (0.5 - body, top + 0.2),
                (0.5 - body, hem),
                (0.5 + body, hem),
                (0.5 + body, top + 0.2),
                (0.5 + body + sleeve - 0.07, top + drop + 0.09),
                (0.5 + body + sleeve, top + drop),
                (0.5 + body, top + 0.03),
                (0.5 + neck, top),
                (0.5, top + j(0.05, 0.1)),
            ]
        ]
    if category == "trousers":
        waist, leg, gap = j(0.15, 0.2), j(0.08, 0.12), j(0.015, 0.04)
        top, crotch, hem = j(0.06, 0.12), j(0.32, 0.4), j(0.9, 0.96)
        flare = j(-0.02, 0.04)
        return [
            [
                (0.5 - waist, top),
                (0.5 + waist, top),
                (0.5 + waist + 0.02, crotch),
                (0.5 + gap + 2 * leg + flare, hem),
                (0.5 + gap, hem),
                (0.5, crotch + 0.03),
                (0.5 - gap, hem),
                (0.5 - gap - 2 * leg - flare, hem),
                (0.5 - waist - 0.02, crotch),
            ]
        ]
    if category == "dress":
        bodice, waist, hem_w = j(0.12, 0.16), j(0.09, 0.12), j(0.3, 0.42)
        top, waist_y, hem = j(0.12, 0.18), j(0.36, 0.44), j(0.86, 0.95)
        strap = j(0.015, 0.03)
        return [
            [
                (0.5 - bodice + 0.02, top - 0.07),
                (0.5 - bodice + 0.02 + strap, top - 0.07),
                (0.5 - bodice + 0.02 + strap, top),
                (0.5 + bodice - 0.02 - strap, top),
                (0.5 + bodice - 0.02 - strap, top - 0.07),
                (0.5 + bodice - 0.02, top - 0.07),
                (0.5 + bodice, top + 0.05),
                (0.5 + waist, waist_y),
                (0.5 + hem_w, hem),
                (0.5 - hem_w, hem),
                (0.5 - waist, waist_y),
                (0.5 - bodice, top + 0.05),
            ]
        ]
    if category == "shoe":
        sole, toe, heel_h = j(0.7, 0.8), j(0.12, 0.2), j(0.22, 0.36)
        left, base = 0.5 - sole / 2, j(0.66, 0.74)
        collar = left + j(0.2, 0.3)
        return [
            [
                (left, base),
                (left + sole, base),
                (left + sole, base - 0.06),
                (left + sole - toe, base - j(0.14, 0.2)),
                (collar + 0.08, base - heel_h + 0.04),
                (collar, base - heel_h),
                (left + 0.02, base - heel_h - 0.02),
                (left, base - 0.08),
            ],
            [(left - 0.01, base), (left + sole + 0.01, base), (left + sole + 0.01, base + 0.05), (left, base + 0.05)],
        ]
    if category == "bag":
        width, top, bottom = j(0.28, 0.36), j(0.4, 0.48), j(0.84, 0.9)
        taper = j(0.0, 0.06)
        return [[(0.5 - width + taper, top), (0.5 + width - taper, top), (0.5 + width, bottom), (0.5 - width, bottom)]]
    raise DataError(f"Unknown garment category {category!r}; categories: {', '.join(CATEGORIES)}")


def render_item(category: str, colour: str, texture: str, *, size: int = 128, seed: int = 0) -> Image.Image:
    """One catalogue photo: a `category` silhouette in `colour` with `texture`, on a light studio background."""
    if colour not in COLOURS:
        raise DataError(f"Unknown colour {colour!r}; colours: {', '.join(COLOURS)}")
    if texture not in WEAVES + PRINTS:
        raise DataError(f"Unknown texture {texture!r}; textures: {', '.join(WEAVES + PRINTS)}")
    rng = np.random.default_rng(seed)
    scale = 4  # draw large, then downsample: smooth edges
    big = size * scale
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    for polygon in _outline(category, rng):
        draw.polygon([(x * big, y * big) for x, y in polygon], fill=255)
    if category == "bag":  # a handle: an arc above the body
        width = rng.uniform(0.1, 0.18) * big
        box = (big / 2 - width, 0.2 * big, big / 2 + width, 0.62 * big)
        draw.arc(box, 180, 360, fill=255, width=int(0.035 * big))
    mask = mask.resize((size, size), Image.LANCZOS)
    fabric = Image.fromarray(_texture(texture, size, rng, COLOURS[colour]))
    shade = rng.uniform(236, 250)
    background = Image.new("RGB", (size, size), (int(shade), int(shade), int(shade - rng.uniform(0, 8))))
    shadow = mask.filter(ImageFilter.GaussianBlur(size / 40)).point(lambda v: int(v * 0.35))
    background.paste((120, 120, 120), (int(size * 0.02), int(size * 0.025)), shadow)
    background.paste(fabric, (0, 0), mask)
    return background


def make_catalogue(out: str | Path, n_per_category: int = 10, seed: int = 0, *, size: int = 128) -> Path:
    """Write `n_per_category` items of each category: `out/images/<id>.png` + `out/metadata.jsonl`. Returns `out`.

    Colours and textures cycle through shuffled lists, so items of one category differ in colour and fabric and
    the category can only be told by the silhouette."""
    if n_per_category < 1:
        raise DataError(f"n_per_category must be >= 1, got {n_per_category!r}")
    if size < 32:
        raise DataError(f"size must be >= 32 pixels, got {size!r}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours, textures = list(COLOURS), list(WEAVES + PRINTS)
    rows = []
    for c, category in enumerate(CATEGORIES):
        colour_order = rng.permutation(len(colours))
        texture_order = rng.permutation(len(textures))
        for i in range(n_per_category):
            colour = colours[colour_order[i % len(colours)]]
            texture = textures[texture_order[(i + i // len(textures)) % len(textures)]]
            item_id = f"{category}-{i:04d}"
            kind = _NAMES[category][int(rng.integers(len(_NAMES[category])))]
            name = f"{_STYLES[int(rng.integers(len(_STYLES)))].capitalize()} {colour} {kind}"
            image = render_item(category, colour, texture, size=size, seed=int(seed * 100_003 + c * 10_007 + i))
            image.save(out / "images" / f"{item_id}.png")
            rows.append(
                {
                    "id": item_id,
                    "category": category,
                    "colour": colour,
                    "name": name,
                    "file": f"images/{item_id}.png",
                    "texture": texture,
                }
            )
    with open(out / "metadata.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return out


def make_class_folders(out: str | Path, n_per_category: int = 24, seed: int = 0, *, size: int = 64) -> dict[str, int]:
    """The catalogue as a class-per-folder tree, `out/<category>/<id>.png` (what an image classifier trains on and
    `hubkit optimize` measures on). Returns {category: image count}."""
    import shutil
    import tempfile

    out = Path(out)
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="hubkit-garments-") as tmp:
        shop = make_catalogue(Path(tmp) / "shop", n_per_category, seed, size=size)
        for row in read_catalogue(shop):
            folder = out / row["category"]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.move(shop / row["file"], folder / Path(row["file"]).name)
            counts[row["category"]] = counts.get(row["category"], 0) + 1
    return counts


def read_catalogue(folder: str | Path) -> list[dict]:
    """The rows of `folder/metadata.jsonl` (each has at least id and file; file is relative to `folder`)."""
    path = Path(folder) / "metadata.jsonl"
    if not path.is_file():
        raise DataError(f"{folder} has no metadata.jsonl: make one with hubkit.data.garments.make_catalogue")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n} is not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not row.get("id") or not row.get("file"):
            raise DataError(f"{path}:{n} needs an object with 'id' and 'file'")
        rows.append(row)
    return rows


def _perspective_coeffs(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> list[float]:
    """PIL's PERSPECTIVE coefficients mapping output points `dst` back to input points `src`."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    a = np.asarray(rows, dtype=np.float64)
    b = np.asarray([c for point in src for c in point], dtype=np.float64)
    return np.linalg.solve(a, b).tolist()


def camera_view(image: Image.Image, rng: np.random.Generator, *, size: int | None = None) -> Image.Image:
    """A phone-camera-like photo of a catalogue item: on a textured table, seen at an angle (perspective),
    rotated, cropped off-centre, blurred, noisy and under another light. Output `size` defaults to the input's."""
    image = image.convert("RGB")
    w, h = image.size
    size = size or w
    # The studio background becomes a table / floor: grey texture, random tone.
    table = _source(str(rng.choice(["gravel", "grass", "brick", "moon"])))
    tone = rng.uniform(0.35, 0.85, size=3).astype(np.float32)
    y0, x0 = int(rng.integers(0, table.shape[0] - h)), int(rng.integers(0, table.shape[1] - w))
    floor = np.clip(table[y0 : y0 + h, x0 : x0 + w] * 0.5 + 0.5, 0, 1) * tone
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    studio = np.median(np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3)]), axis=0)
    is_bg = np.abs(pixels - studio).max(axis=2, keepdims=True) < 0.06
    pixels = np.where(is_bg, floor, pixels)
    image = Image.fromarray((pixels * 255).astype(np.uint8))
    # Perspective: move each corner inwards by up to 12% of the side.
    jitter = lambda: float(rng.uniform(0, 0.12))  # noqa: E731
    dst = [(0, 0), (w, 0), (w, h), (0, h)]
    src = [(-jitter() * w, -jitter() * h), (w + jitter() * w, -jitter() * h)]
    src += [(w + jitter() * w, h + jitter() * h), (-jitter() * w, h + jitter() * h)]
    fill = tuple(int(v * 255) for v in floor.reshape(-1, 3).mean(axis=0))
    image = image.transform((w, h), Image.PERSPECTIVE, _perspective_coeffs(src, dst), Image.BILINEAR, fillcolor=fill)
    image = image.rotate(float(rng.uniform(-15, 15)), Image.BILINEAR, fillcolor=fill)
    # Crop 75-95% of the frame, off-centre.
    crop = rng.uniform(0.75, 0.95)
    cw, ch = int(w * crop), int(h * crop)
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = image.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BILINEAR)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 1.2))))
    # Lighting: gain, a colour cast, a brightness gradient; then sensor noise.
    out = np.asarray(image, dtype=np.float32) / 255.0
    gain = rng.uniform(0.75, 1.2) * rng.uniform(0.9, 1.1, size=3)
    ramp = np.linspace(rng.uniform(-0.12, 0.12), rng.uniform(-0.12, 0.12), size, dtype=np.float32)
    out = out * gain + (ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None])
    out = out + rng.normal(0, rng.uniform(0.01, 0.04), size=out.shape)
    return Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8))
