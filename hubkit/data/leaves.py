"""A learnable synthetic plant-disease set for the Plantset tools and recipe, made offline in a few seconds.

Each class is a species (leaf outline + base colour) crossed with a disease pattern (dark spots, concentric rings,
yellowed patches, white mildew-like texture, streaks along the veins, or none), drawn at a random pose, scale and
rotation on crops of real textures (scikit-image grass and gravel, scikit-learn's flower.jpg). Some classes are
drawn identically and differ only by their text (the default set holds one such pair: "Tomato___Early_blight" and
"Tomato___Septoria_leaf_spot"), so a model reading the symptom text can beat an image-only one on them.

    leaves = make_leaf_dataset(tmp_path / "leaves", per_class=12, size=64, seed=0)
    leaves.image_dir / "Apple___healthy" / "000.png", leaves.diseases_json, leaves.text_only_pairs

The tree is `out/images/<class>/<i>.png` plus `out/diseases.json` (the canonical schema of `hubkit.plant.texts`).
With `corrupt=True` bad files are planted beside the good ones (a truncated PNG, a text file named .jpg, a tiny
image, an exact duplicate, a near duplicate) and listed in `LeafSet.planted` with the reason a cleaner should give.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import ConfigError

SPECIES = {  # outline, base RGB colour, names (fr, en)
    "Apple": ("ellipse", (70, 140, 45), ("pommier", "apple")),
    "Corn": ("lanceolate", (120, 175, 60), ("maïs", "corn")),
    "Squash": ("heart", (40, 110, 60), ("courge", "squash")),
    "Tomato": ("lobed", (50, 120, 35), ("tomate", "tomato")),
}
PATTERNS = ("healthy", "spots", "rings", "yellowing", "mildew", "streaks")

# class name -> (species, pattern, name fr, name en, description fr, description en, symptoms fr, symptoms en,
# treatments fr, treatments en). The first two are drawn identically: only their texts tell them apart.
_CLASSES: dict[str, tuple] = {
    "Tomato___Early_blight": (
        "Tomato",
        "spots",
        "Alternariose de la tomate",
        "Tomato early blight",
        "Champignon Alternaria solani : taches brunes à anneaux concentriques sur les feuilles âgées, "
        "qui jaunissent puis tombent.",
        "Fungus Alternaria solani: brown spots with concentric rings on older leaves, which turn yellow and drop.",
        ["taches brunes en cible", "anneaux concentriques", "feuilles basses atteintes en premier"],
        ["brown target-like spots", "concentric rings in the lesions", "lower leaves affected first"],
        ["retirer les feuilles atteintes", "fongicide à base de cuivre", "rotation des cultures"],
        ["remove infected leaves", "copper-based fungicide", "crop rotation"],
    ),
    "Tomato___Septoria_leaf_spot": (
        "Tomato",
        "spots",
        "Septoriose de la tomate",
        "Tomato Septoria leaf spot",
        "Champignon Septoria lycopersici : nombreuses petites taches circulaires à centre gris et bord sombre, "
        "ponctuées de pycnides noires.",
        "Fungus Septoria lycopersici: many small circular spots with grey centres, dark margins and black pycnidia.",
        ["petites taches à centre gris", "points noirs (pycnides) au centre", "bord sombre net"],
        ["small spots with grey centres", "black specks (pycnidia) in the centre", "sharp dark margin"],
        ["éviter l'arrosage du feuillage", "pailler le sol", "fongicide au chlorothalonil"],
        ["avoid wetting the foliage", "mulch the soil", "chlorothalonil fungicide"],
    ),
    "Apple___healthy": (
        "Apple",
        "healthy",
        "Pommier sain",
        "Healthy apple",
        "Feuille de pommier saine : limbe vert uniforme, sans tache ni déformation.",
        "Healthy apple leaf: an even green blade with no spots or deformation.",
        ["feuille verte uniforme", "aucune tache"],
        ["even green leaf", "no spots"],
        [],
        [],
    ),
    "Corn___Northern_Leaf_Blight": (
        "Corn",
        "streaks",
        "Helminthosporiose du maïs",
        "Corn northern leaf blight",
        "Champignon Exserohilum turcicum : longues lésions grisâtres en forme de cigare, parallèles aux nervures.",
        "Fungus Exserohilum turcicum: long greyish cigar-shaped lesions running along the veins.",
        ["lésions allongées grisâtres", "stries parallèles aux nervures"],
        ["long greyish lesions", "streaks along the veins"],
        ["variétés résistantes", "enfouir les résidus de culture"],
        ["resistant hybrids", "bury crop residue"],
    ),
    "Squash___Powdery_mildew": (
        "Squash",
        "mildew",
        "Oïdium de la courge",
        "Squash powdery mildew",
        "Champignon Podosphaera xanthii : feutrage blanc poudreux à la surface des feuilles.",
        "Fungus Podosphaera xanthii: a white powdery felt on the leaf surface.",
        ["poudre blanche sur le limbe", "taches farineuses"],
        ["white powder on the blade", "floury patches"],
        ["soufre mouillable", "aérer la culture"],
        ["wettable sulphur", "space plants for air flow"],
    ),
    "Apple___Cedar_apple_rust": (
        "Apple",
        "rings",
        "Rouille grillagée du pommier",
        "Apple cedar rust",
        "Champignon Gymnosporangium : taches orangées cerclées, en anneaux, sur la face supérieure.",
        "Fungus Gymnosporangium: ringed orange spots on the upper side of the leaf.",
        ["taches orange cerclées", "anneaux autour des taches"],
        ["ringed orange spots", "rings around the spots"],
        ["supprimer les genévriers proches", "fongicide au printemps"],
        ["remove nearby junipers", "spring fungicide"],
    ),
    "Tomato___Tomato_Yellow_Leaf_Curl_Virus": (
        "Tomato",
        "yellowing",
        "Virus des feuilles jaunes en cuillère",
        "Tomato yellow leaf curl virus",
        "Virus transmis par l'aleurode : plages jaunes entre les nervures et feuilles enroulées.",
        "Virus spread by whiteflies: yellow patches between the veins and curled leaves.",
        ["plages jaunes", "jaunissement internervaire"],
        ["yellow patches", "yellowing between the veins"],
        ["lutter contre les aleurodes", "arracher les plants atteints"],
        ["control whiteflies", "pull out infected plants"],
    ),
    "Tomato___healthy": (
        "Tomato",
        "healthy",
        "Tomate saine",
        "Healthy tomato",
        "Feuille de tomate saine : folioles vertes, découpées, sans lésion.",
        "Healthy tomato leaf: green, lobed leaflets without lesions.",
        ["folioles vertes", "aucune lésion"],
        ["green leaflets", "no lesions"],
        [],
        [],
    ),
}
DEFAULT_TEXT_ONLY_PAIRS = (("Tomato___Early_blight", "Tomato___Septoria_leaf_spot"),)
_PATTERN_WORDS = {  # for the extra classes past the eight written above
    "healthy": ("sain", "healthy"),
    "spots": ("taches", "leaf spot"),
    "rings": ("anneaux", "ring spot"),
    "yellowing": ("jaunissement", "yellowing"),
    "mildew": ("oïdium", "powdery mildew"),
    "streaks": ("stries", "streak"),
}
PLANTED_REASONS = ("truncated", "unreadable", "too_small", "duplicate", "near_duplicate")


@dataclass(frozen=True)
class LeafSet:
    root: Path
    image_dir: Path  # class-per-folder tree: image_dir/<class>/<i>.png
    diseases_json: Path
    classes: list[str]  # sorted
    text_only_pairs: list[tuple[str, str]]  # classes drawn identically whose texts differ
    per_class: int
    size: int
    planted: dict[str, str] = field(default_factory=dict)  # path relative to image_dir (posix) -> reason

    @property
    def text_only_classes(self) -> set[str]:
        return {name for pair in self.text_only_pairs for name in pair}

    def images(self) -> list[tuple[Path, str]]:
        """The good images (planted files left out), sorted: (path, class)."""
        return [
            (path, path.parent.name)
            for path in sorted(self.image_dir.glob("*/*"))
            if path.relative_to(self.image_dir).as_posix() not in self.planted
        ]


def leaf_classes(num_classes: int = 8) -> list[tuple[str, str, str]]:
    """(class name, species, pattern) for `num_classes` classes: the eight written above first (the text-only pair
    among them), then the other species x pattern crossings. At most 4 x 6 + 1 = 25."""
    table = [(name, spec[0], spec[1]) for name, spec in _CLASSES.items()]
    taken = {(species, pattern) for _, species, pattern in table}
    for pattern in PATTERNS:
        for species in SPECIES:
            if (species, pattern) not in taken:
                name = f"{species}___{'healthy' if pattern == 'healthy' else pattern.capitalize()}"
                table.append((name, species, pattern))
    if not 2 <= num_classes <= len(table):
        raise ConfigError(f"num_classes={num_classes!r} is out of range: the leaf set draws 2 to {len(table)} classes.")
    return table[:num_classes]


def make_leaf_dataset(
    out: str | Path,
    *,
    per_class: int = 12,
    size: int = 64,
    seed: int = 0,
    corrupt: bool = False,
    num_classes: int = 8,
) -> LeafSet:
    """Write `per_class` leaf images of `size` px for each class into `out/images/<class>/` and the class texts to
    `out/diseases.json`. Deterministic: the same arguments give the same bytes. Give a new folder: files already
    there with the same names are overwritten, others are left as they are."""
    if per_class < 1 or size < 16:
        raise ConfigError(f"per_class={per_class!r} and size={size!r}: need per_class >= 1 and size >= 16.")
    if corrupt and per_class < 3:
        raise ConfigError(f"corrupt=True copies a class's images 001 and 002: need per_class >= 3, got {per_class}.")
    out = Path(out)
    image_dir = out / "images"
    table = leaf_classes(num_classes)
    for class_id, (name, species, pattern) in enumerate(table):
        folder = image_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            rng = np.random.default_rng([seed, class_id, index])
            render_leaf(species, pattern, size=size, rng=rng).save(folder / f"{index:03d}.png")
    diseases = {name: _texts(name, species, pattern) for name, species, pattern in table}
    diseases_json = out / "diseases.json"
    tmp = diseases_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(diseases, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, diseases_json)
    names = [name for name, _, _ in table]
    pairs = [pair for pair in DEFAULT_TEXT_ONLY_PAIRS if set(pair) <= set(names)]
    planted = _plant_bad_files(image_dir, names, size, seed) if corrupt else {}
    return LeafSet(out, image_dir, diseases_json, sorted(names), pairs, per_class, size, planted)


def _texts(name: str, species: str, pattern: str) -> dict:
    if name in _CLASSES:
        _, _, nfr, nen, dfr, den, sfr, sen, tfr, ten = _CLASSES[name]
    else:
        sp_fr, sp_en = SPECIES[species][2]
        pw_fr, pw_en = _PATTERN_WORDS[pattern]
        nfr, nen = f"{sp_fr} : {pw_fr}", f"{sp_en} {pw_en}"
        dfr, den = f"Feuille de {sp_fr} ({pw_fr}).", f"{sp_en.capitalize()} leaf with {pw_en}."
        sfr, sen, tfr, ten = [pw_fr], [pw_en], [], []
    return {
        "name": {"fr": nfr, "en": nen},
        "description": {"fr": dfr, "en": den},
        "symptoms": {"fr": list(sfr), "en": list(sen)},
        "treatments": {"fr": list(tfr), "en": list(ten)},
    }


# -- drawing ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, ...]:
    """Real photo textures as float RGB in [0, 1]: scikit-image's grass and gravel, tinted, and scikit-learn's
    flower.jpg, read from the packages' folders (importing them is slower than reading three pictures)."""
    grass = _package_image("skimage", "data/grass.png")[..., :1] * np.array([0.55, 0.62, 0.35], np.float32)
    gravel = _package_image("skimage", "data/gravel.png")[..., :1] * np.array([0.72, 0.68, 0.62], np.float32)
    flower = _package_image("sklearn", "datasets/images/flower.jpg") * 0.8
    return grass, gravel, flower


def _package_image(package: str, relative: str) -> np.ndarray:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"The leaf set draws on textures shipped with {package!r}; install it (pip install it).")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), np.float32) / 255


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    texture = _textures()[int(rng.integers(len(_textures())))]
    crop = int(rng.integers(min(texture.shape[:2]) // 4, min(texture.shape[:2]) // 2))
    y0 = int(rng.integers(0, texture.shape[0] - crop))
    x0 = int(rng.integers(0, texture.shape[1] - crop))
    patch = Image.fromarray((texture[y0 : y0 + crop, x0 : x0 + crop] * 255).astype(np.uint8))
    return np.asarray(patch.resize((size, size), Image.BILINEAR), np.float32) / 255


def _outline(kind: str, rng: np.random.Generator) -> np.ndarray:
    """(N, 2) points (x, y) of a leaf outline in unit coordinates, tip towards -y."""
    t = np.linspace(0, 2 * np.pi, 160, endpoint=False)
    if kind == "ellipse":
        width = rng.uniform(0.5, 0.62)
        pts = np.stack([width * np.cos(t), np.sin(t)], 1)
    elif kind == "lanceolate":  # long and narrow, pointed at both ends
        width = rng.uniform(0.21, 0.26)
        pts = np.stack([width * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** 1.6, np.sin(t)], 1)
    elif kind == "heart":
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        pts = np.stack([x / 17, -(y + 2) / 15], 1)  # tip down in the formula: flip it up
    elif kind == "lobed":
        lobes = int(rng.integers(5, 8))
        r = 0.78 + rng.uniform(0.14, 0.2) * np.cos(lobes * t)
        pts = np.stack([0.8 * r * np.cos(t), r * np.sin(t)], 1)
    else:
        raise ConfigError(f"Unknown leaf outline {kind!r}; use one of ellipse, lanceolate, heart, lobed.")
    return pts


def render_leaf(species: str, pattern: str, *, size: int = 64, rng: np.random.Generator) -> Image.Image:
    """One RGB leaf picture of `species` with `pattern`, at a random pose on a random texture crop."""
    if species not in SPECIES or pattern not in PATTERNS:
        raise ConfigError(
            f"Unknown leaf {species!r} / {pattern!r}; species: {', '.join(SPECIES)}; patterns: {', '.join(PATTERNS)}."
        )
    big = size * 2  # drawn at twice the size, then downsampled: smooth edges
    outline, base, _ = SPECIES[species]
    angle = rng.uniform(0, 2 * np.pi)
    scale = big * rng.uniform(0.3, 0.42)
    centre = big / 2 + rng.uniform(-0.08, 0.08, size=2) * big
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def to_px(points: np.ndarray) -> list[tuple[float, float]]:
        return [tuple(p) for p in (points @ rot.T) * scale + centre]

    mask_img = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask_img).polygon(to_px(_outline(outline, rng)), fill=255)
    mask = np.asarray(mask_img, np.float32) / 255

    colour = np.clip(np.array(base, np.float32) / 255 * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03, 3), 0, 1)
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    along = ((xx - centre[0]) * -np.sin(angle) + (yy - centre[1]) * np.cos(angle)) / scale  # leaf axis coordinate
    leaf = np.broadcast_to(colour, (big, big, 3)) * (1 + 0.12 * along[..., None])
    leaf = leaf + rng.normal(0, 0.02, (big, big, 1)).astype(np.float32)
    veins = Image.new("L", (big, big), 0)
    ImageDraw.Draw(veins).line(to_px(np.array([[0.0, -0.95], [0.0, 0.95]])), fill=255, width=max(1, big // 64))
    leaf = _blend(leaf, np.asarray(veins, np.float32) / 255 * 0.5, colour * 1.35)
    leaf = _draw_pattern(leaf, pattern, mask, angle, scale, big, rng)

    canvas = _background(big, rng)
    shadow = np.asarray(mask_img.filter(ImageFilter.GaussianBlur(big / 40)), np.float32)[..., None] / 255
    canvas = canvas * (1 - 0.35 * np.roll(shadow, (big // 50, big // 50), (0, 1)))
    canvas = canvas * (1 - mask[..., None]) + np.clip(leaf, 0, 1) * mask[..., None]
    canvas = canvas * rng.uniform(0.85, 1.15)  # lighting
    image = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))
    return image.resize((size, size), Image.LANCZOS)


def _blend(leaf: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    alpha = alpha[..., None]
    return leaf * (1 - alpha) + np.asarray(colour, np.float32) * alpha


def _points_inside(mask: np.ndarray, count: int, rng: np.random.Generator, margin: float = 0.6) -> np.ndarray:
    """`count` random (x, y) pixels well inside the leaf (mask eroded by blurring)."""
    inner = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(3)), np.float32)
    ys, xs = np.nonzero(inner / 255 > margin)
    if len(xs) == 0:
        ys, xs = np.nonzero(mask > 0.5)
    picks = rng.integers(0, len(xs), size=count)
    return np.stack([xs[picks], ys[picks]], 1).astype(np.float32)


def _draw_pattern(leaf, pattern, mask, angle, scale, big, rng) -> np.ndarray:
    unit = big / 64  # sizes below are in pixels of a 64 px picture
    if pattern == "healthy":
        return leaf
    layer = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(layer)
    if pattern == "spots":  # dark brown spots with a yellow halo
        halo = Image.new("L", (big, big), 0)
        halo_draw = ImageDraw.Draw(halo)
        for x, y in _points_inside(mask, int(rng.integers(6, 12)), rng):
            r = rng.uniform(1.4, 2.8) * unit
            halo_draw.ellipse([x - r * 1.7, y - r * 1.7, x + r * 1.7, y + r * 1.7], fill=255)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        leaf = _blend(leaf, np.asarray(halo, np.float32) / 255 * 0.7, (0.75, 0.7, 0.2))
        return _blend(leaf, np.asarray(layer, np.float32) / 255, (0.25, 0.15, 0.08))
    if pattern == "rings":  # orange targets: alternating dark and orange rings
        for x, y in _points_inside(mask, int(rng.integers(3, 5)), rng):
            r = rng.uniform(4.0, 6.0) * unit
            for k, shade in enumerate((180, 255, 90, 255)):
                rr = r * (1 - k / 4)
                draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=shade)
        rings = np.asarray(layer, np.float32) / 255
        leaf = _blend(leaf, (rings > 0.5).astype(np.float32) * 0.9, (0.9, 0.5, 0.1))
        return _blend(leaf, ((rings > 0.3) & (rings < 0.8)).astype(np.float32) * 0.9, (0.35, 0.18, 0.05))
    if pattern == "yellowing":  # large soft yellow patches
        for x, y in _points_inside(mask, int(rng.integers(2, 4)), rng, margin=0.3):
            rx, ry = rng.uniform(6, 11, size=2) * unit
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=255)
        soft = layer.filter(ImageFilter.GaussianBlur(3 * unit))
        return _blend(leaf, np.asarray(soft, np.float32) / 255 * 0.9, (0.88, 0.82, 0.2))
    if pattern == "mildew":  # white powdery texture: smoothed noise, thresholded
        noise = rng.random((big // 4, big // 4)).astype(np.float32)
        noise = np.asarray(Image.fromarray((noise * 255).astype(np.uint8)).resize((big, big), Image.BICUBIC))
        speck = rng.random((big, big)).astype(np.float32)
        powder = np.clip((noise / 255 - 0.45) * 4, 0, 1) * (0.55 + 0.45 * speck)
        return _blend(leaf, powder * 0.85, (0.93, 0.93, 0.9))
    if pattern == "streaks":  # long tan lesions along the leaf axis
        axis = np.array([-np.sin(angle), np.cos(angle)])
        for x, y in _points_inside(mask, int(rng.integers(3, 6)), rng):
            half = rng.uniform(0.25, 0.45) * scale
            tilt = rng.normal(0, 0.08)
            d = axis * np.cos(tilt) + np.array([axis[1], -axis[0]]) * np.sin(tilt)
            draw.line(
                [(x - d[0] * half, y - d[1] * half), (x + d[0] * half, y + d[1] * half)],
                fill=255,
                width=int(rng.uniform(1.6, 2.6) * unit),
            )
        return _blend(leaf, np.asarray(layer, np.float32) / 255 * 0.95, (0.5, 0.42, 0.3))
    raise ConfigError(f"Unknown disease pattern {pattern!r}; use one of {', '.join(PATTERNS)}.")


# -- planted bad files ------------------------------------------------------------------------------------------


def _plant_bad_files(image_dir: Path, names: list[str], size: int, seed: int) -> dict[str, str]:
    """One bad file of each kind a cleaner must catch, spread over the first classes. Returns relpath -> reason."""
    planted: dict[str, str] = {}
    pick = [image_dir / names[k % len(names)] for k in range(5)]
    source = pick[0] / "000.png"
    data = source.read_bytes()
    (pick[0] / "900_truncated.png").write_bytes(data[: len(data) // 2])
    planted[f"{pick[0].name}/900_truncated.png"] = "truncated"
    (pick[1] / "901_not_an_image.jpg").write_text("this is not a picture of a leaf\n", encoding="utf-8")
    planted[f"{pick[1].name}/901_not_an_image.jpg"] = "unreadable"
    tiny = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (max(4, size // 8), size, 3), np.uint8))
    tiny.save(pick[2] / "902_tiny.png")  # min side size/8: under any min_size above it
    planted[f"{pick[2].name}/902_tiny.png"] = "too_small"
    shutil.copyfile(pick[3] / "001.png", pick[3] / "903_duplicate.png")  # sorts after 001.png: the copy is dropped
    planted[f"{pick[3].name}/903_duplicate.png"] = "duplicate"
    with Image.open(pick[4] / "002.png") as image:  # re-encoded and slightly brightened: new bytes, same look
        brighter = np.clip(np.asarray(image.convert("RGB"), np.int16) + 4, 0, 255).astype(np.uint8)
    Image.fromarray(brighter).save(pick[4] / "904_near_duplicate.jpg", quality=92)
    planted[f"{pick[4].name}/904_near_duplicate.jpg"] = "near_duplicate"
    return planted
