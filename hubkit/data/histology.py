"""The offline histology test domain: patches of scikit-image's IHC slide ("target") and a stain-shifted copy.

scikit-image's ``data.immunohistochemistry()`` (a real 512x512 IHC image of colonic glands: haematoxylin + DAB, no
known copyright restrictions) ships with the package, so it works offline. It is the *target* stain domain. The
*source* domain is the same slide with its stains re-mixed, so the morphology is identical and only the colours
differ: in the colour-deconvolution optical-density space of ``skimage.color.rgb2hed`` (Ruifrok & Johnston) the
haematoxylin, eosin and DAB amounts are mixed by ``SOURCE_STAIN_MIX`` (DAB brown turns mostly eosin pink, as on an
H&E slide), then a fixed CIELAB shift (``SOURCE_LAB_SHIFT``: darker, redder, bluer) is added. ``strength`` scales
both (0 gives the target back bit for bit; the deconvolution is done without clipping so it inverts exactly).

    target = make_histology_dataset(tmp / "target", count=64, split="train")
    source = make_histology_dataset(tmp / "source", count=64, split="train", domain="source")
    held_out = make_histology_dataset(tmp / "test", count=32, split="test")

Patches are random crops (with a random flip and quarter turn) of ``crop`` px, resized to ``patch`` px when they
differ. The crop positions depend on ``seed`` and ``split`` only, not on ``domain``: the same arguments give
pixel-aligned target and source patches. ``split="test"`` crops inside the four 128 px blocks on the slide's
diagonal, ``split="train"`` inside the twelve other blocks, so the two never share a pixel (the diagonal blocks hold
glands and stroma in about the slide's proportions: their mean colour is within ~2.4 CIELAB units of the rest);
``split="all"`` crops anywhere.

The folder is an ImageFolder (``datasets.load_dataset("imagefolder", data_dir=...)`` reads it, offline): PNG
patches plus ``metadata.jsonl`` with ``file_name``, ``domain``, ``split`` and the crop (``x``, ``y``, ``crop``,
``rot90``, ``flip``). A training recipe reads it (or any folder of images) with :func:`read_patch_folder`.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError

DOMAINS = ("target", "source")
SPLITS = ("all", "train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
METADATA = "metadata.jsonl"
BLOCK = 128  # the slide is cut into 4 x 4 blocks of 128 px for the train / test split
TEST_BLOCKS = tuple((i, i) for i in range(4))  # (row, column) of the held-out blocks: the diagonal

# Rows: input stain amount (H, E, DAB); columns: output amount. H stays mostly H with a little eosin, DAB becomes
# mostly eosin: the brown IHC look turns into a pink/purple H&E-like one.
SOURCE_STAIN_MIX = np.array([[0.85, 0.25, 0.0], [0.0, 1.0, 0.0], [0.1, 0.5, 0.45]])
SOURCE_LAB_SHIFT = np.array([-4.0, 6.0, -6.0])  # L*, a*, b*
_LOG_ADJUST = np.log(1e-6)  # as skimage.color.rgb2hed


@dataclass(frozen=True)
class HistologySet:
    root: Path
    files: list[Path]  # the patches, in metadata order
    domain: str
    split: str
    patch: int
    seed: int

    @property
    def metadata(self) -> Path:
        return self.root / METADATA

    def images(self) -> np.ndarray:
        """The patches as one uint8 array (N, patch, patch, 3)."""
        return load_patches(self.files)


@functools.lru_cache(maxsize=1)
def _slide() -> np.ndarray:
    from skimage import data

    image = np.asarray(data.immunohistochemistry())
    image.setflags(write=False)
    return image


def stain_shift(rgb: np.ndarray, *, strength: float = 1.0) -> np.ndarray:
    """The source-domain colours of an RGB uint8 image (H, W, 3): stains re-mixed in HED space, then a CIELAB
    shift, both scaled by `strength` (0: the image unchanged)."""
    from skimage import color
    from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise DataError(f"stain_shift takes an RGB uint8 image (H, W, 3); got {rgb.dtype} {rgb.shape}.")
    if strength == 0:
        return rgb.copy()
    mix = np.eye(3) + strength * (SOURCE_STAIN_MIX - np.eye(3))
    # rgb2hed / hed2rgb without their clipping of negative amounts, so that mix = I inverts exactly
    stains = (np.log(np.maximum(rgb / 255.0, 1e-6)) / _LOG_ADJUST) @ hed_from_rgb
    shifted = np.clip(np.exp((stains @ mix * _LOG_ADJUST) @ rgb_from_hed), 0, 1)
    lab = color.rgb2lab(shifted) + strength * SOURCE_LAB_SHIFT
    return (np.clip(color.lab2rgb(lab), 0, 1) * 255 + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _domain_slide(domain: str, strength: float) -> np.ndarray:
    image = _slide() if domain == "target" else stain_shift(_slide(), strength=strength)
    image.setflags(write=False)
    return image


def _crop_origin(split: str, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left (y, x) of a `crop` px window lying entirely in the split's region."""
    size = _slide().shape[0]
    if split == "all":
        return int(rng.integers(0, size - crop + 1)), int(rng.integers(0, size - crop + 1))
    blocks = [(r, c) for r in range(size // BLOCK) for c in range(size // BLOCK)]
    blocks = [b for b in blocks if (b in TEST_BLOCKS) == (split == "test")]
    row, col = blocks[int(rng.integers(len(blocks)))]
    return (
        row * BLOCK + int(rng.integers(0, BLOCK - crop + 1)),
        col * BLOCK + int(rng.integers(0, BLOCK - crop + 1)),
    )


def make_histology_dataset(
    out: str | Path,
    *,
    patch: int = 64,
    count: int = 64,
    seed: int = 0,
    domain: str = "target",
    split: str = "all",
    crop: int | None = None,
    strength: float = 1.0,
) -> HistologySet:
    """Write `count` `patch`-px patches of the IHC slide in `domain` colours into `out` (PNG + metadata.jsonl).

    `crop` (default `patch`) is the side of the window cut from the 512 px slide before resizing to `patch`;
    `strength` scales the source domain's stain shift. Deterministic: the same arguments give the same bytes.
    """
    if domain not in DOMAINS:
        raise ConfigError(f"domain={domain!r} is not a histology domain; use one of {', '.join(DOMAINS)}.")
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not a split of the slide; use one of {', '.join(SPLITS)}.")
    crop = patch if crop is None else crop
    limit = _slide().shape[0] if split == "all" else BLOCK
    if count < 1 or patch < 8 or not 8 <= crop <= limit:
        raise ConfigError(
            f"count={count!r}, patch={patch!r}, crop={crop!r}: need count >= 1, patch >= 8 and 8 <= crop <= {limit} "
            f"(split={split!r} crops inside {'the 512 px slide' if split == 'all' else '128 px blocks'})."
        )
    slide = _domain_slide(domain, float(strength))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split_id = SPLITS.index(split)
    rows, files = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, split_id, index])
        y, x = _crop_origin(split, crop, rng)
        rot, flip = int(rng.integers(4)), bool(rng.integers(2))
        tile = np.rot90(slide[y : y + crop, x : x + crop], rot)
        tile = np.ascontiguousarray(tile[:, ::-1] if flip else tile)
        image = Image.fromarray(tile)
        if crop != patch:
            image = image.resize((patch, patch), Image.LANCZOS)
        name = f"{index:04d}.png"
        image.save(out / name)
        files.append(out / name)
        row = {"file_name": name, "domain": domain, "split": split, "x": x, "y": y, "crop": crop, "rot90": rot}
        rows.append({**row, "flip": flip})
    tmp = out / (METADATA + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, out / METADATA)
    return HistologySet(out, files, domain, split, patch, seed)


def read_patch_folder(folder: str | Path) -> list[Path]:
    """The image files of a patch folder: in ``metadata.jsonl`` order when the folder has one (ImageFolder style),
    else every image below it (any depth), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Patch folder {str(folder)!r} does not exist or is not a folder; pass a folder of images.")
    metadata = folder / METADATA
    if metadata.is_file():
        paths = []
        for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                name = json.loads(line)["file_name"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{metadata} line {number} has no 'file_name' ({exc}); fix or remove it.") from exc
            path = folder / name
            if not path.is_file():
                raise DataError(f"{metadata} line {number} names {name!r}, which is not in {str(folder)!r}.")
            paths.append(path)
    else:
        paths = sorted(
            (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: p.relative_to(folder).as_posix(),
        )
    if not paths:
        raise DataError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}; pass a folder of patches.")
    return paths


def load_patches(source: str | Path | list[Path], *, size: int | None = None) -> np.ndarray:
    """Patches as one RGB uint8 array (N, H, W, 3) from a folder (see :func:`read_patch_folder`) or a list of paths;
    `size` resizes every patch to `size` x `size` (needed when they differ)."""
    paths = read_patch_folder(source) if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if not paths:
        raise DataError("load_patches got no paths; pass a folder or a non-empty list of image files.")
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if size is not None and image.size != (size, size):
                    image = image.resize((size, size), Image.BICUBIC)
                arrays.append(np.asarray(image))
        except OSError as exc:
            raise DataError(f"Cannot read {str(path)!r} as an image ({exc}); remove it or pass size=...") from exc
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise DataError(f"Patches have different sizes {shapes[:3]}; pass size=N to resize them to N x N.")
    return np.stack(arrays)
