"""The Zivid RGB + XYZ format: ``images/<stem>.png`` (8-bit RGB) paired by stem with ``depth/<stem>.npy``.

Each ``.npy`` is an (H, W, 3) point cloud in millimetres (X, Y, Z); Z (channel 2) is the depth. A pixel is
invalid where Z is NaN, infinite or not positive. Stems may carry a role suffix, as Zivid exports do
(``images/<scene>_color.png`` with ``depth/<scene>_rawDepth.npy``): see ``scan_zivid`` for the pairing
rules. Readers here are pure functions of files: scan and validate a folder, load one pair, split
train / val, and a torch ``Dataset`` with aligned augmentations.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PATCH = 14  # ViT patch size of DINOv2 / Depth Anything: input sides must be multiples of it
_MODES = {"RGB", "RGBA", "L", "LA", "P"}  # 8-bit modes that convert to RGB without loss of meaning
# "<scene>_color.png" / "<scene>_rawDepth.npy": the role suffixes stripped to find a file's scene (any case)
IMAGE_ROLES = ("color", "rgb", "image")
DEPTH_ROLES = ("rawdepth", "depth", "xyz", "pointcloud")
_IMAGE_ROLE = re.compile(rf"^(.+?)[_-](?:{'|'.join(IMAGE_ROLES)})$", re.IGNORECASE)
_DEPTH_ROLE = re.compile(rf"^(.+?)[_-](?:{'|'.join(DEPTH_ROLES)})$", re.IGNORECASE)


@dataclass(frozen=True)
class ZividSample:
    stem: str
    image_path: Path
    depth_path: Path


@dataclass(frozen=True)
class AmbiguousMatch:
    """Files that share a scene stem but do not make exactly one image + one depth map: none is paired."""

    stem: str
    images: tuple[Path, ...]
    depths: tuple[Path, ...]
    reason: str

    def describe(self) -> str:
        names = " + ".join(p.name for p in self.images) + " / " + " + ".join(p.name for p in self.depths)
        return f"{names} ({self.reason})"


@dataclass
class ZividReport:
    """What ``scan_zivid`` found: usable pairs, and every file it skipped with the reason."""

    samples: list[ZividSample]
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_depth: list[Path] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    root: Path | None = None
    ambiguous: list[AmbiguousMatch] = field(default_factory=list)

    def problems(self) -> str:
        parts = []
        if self.unpaired_images:
            parts.append(f"{len(self.unpaired_images)} images without depth")
        if self.unpaired_depth:
            parts.append(f"{len(self.unpaired_depth)} depth maps without image")
        if self.ambiguous:
            shown = "; ".join(m.describe() for m in self.ambiguous[:3])
            more = f"; ... {len(self.ambiguous) - 3} more" if len(self.ambiguous) > 3 else ""
            parts.append(
                f"{len(self.ambiguous)} ambiguous matches, not paired: {shown}{more} "
                "(rename so that each scene has one image and one depth map)"
            )
        if self.unreadable:
            shown = "; ".join(f"{Path(p).name}: {why}" for p, why in self.unreadable[:3])
            more = f"; ... {len(self.unreadable) - 3} more" if len(self.unreadable) > 3 else ""
            parts.append(f"{len(self.unreadable)} unreadable ({shown}{more})")
        return ", ".join(parts)

    def summary(self) -> str:
        where = f" in {self.root}" if self.root is not None else ""
        problems = self.problems()
        return f"{len(self.samples)} usable pairs{where}" + (f"; skipped {problems}" if problems else "")


def _check_pair(image_path: Path, depth_path: Path) -> tuple[str, str] | None:
    """None if the pair is usable, else (path at fault, reason). Reads headers and the Z channel only."""
    try:
        with Image.open(image_path) as im:
            size, mode = im.size, im.mode
            im.verify()
    except Exception as exc:  # PIL raises many types for broken files
        return str(image_path), f"not a readable PNG ({type(exc).__name__}: {exc})"
    if mode not in _MODES:
        return str(image_path), f"PNG mode {mode!r} is not 8-bit RGB / grey"
    try:
        xyz = np.load(depth_path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        return str(depth_path), f"not a readable .npy ({type(exc).__name__}: {exc})"
    try:
        if not np.issubdtype(xyz.dtype, np.number):
            return str(depth_path), f"dtype {xyz.dtype} is not numeric"
        if xyz.ndim != 3 or xyz.shape[-1] != 3:
            return str(depth_path), f"shape {tuple(xyz.shape)}, expected (H, W, 3) XYZ"
        width, height = size
        if xyz.shape[:2] != (height, width):
            return str(depth_path), f"depth is {xyz.shape[0]}x{xyz.shape[1]}, image is {height}x{width}"
        z = np.asarray(xyz[..., 2])
        with np.errstate(invalid="ignore"):
            if not np.any(np.isfinite(z) & (z > 0)):
                return str(depth_path), "no valid Z pixel (all NaN / non-finite / non-positive)"
    finally:
        del xyz
    return None


def _scene_stem(path: Path, *, depth: bool) -> str:
    """The file's stem without its role suffix (``_color``, ``-rgb``, ``_RawDepth``, ...), if it has one."""
    match = (_DEPTH_ROLE if depth else _IMAGE_ROLE).match(path.stem)
    return match.group(1) if match else path.stem


def _match(images: list[Path], depths: list[Path], report: ZividReport) -> list[tuple[str, Path, Path]]:
    """(stem, image, depth) pairs; fills the report's unpaired and ambiguous lists.

    1. Exact stems first: ``a.png`` with ``a.npy``, ``a_color.png`` with ``a_color.npy``.
    2. The files left over are grouped by scene stem (role suffix removed, ``_scene_stem``); a scene with
       exactly one image and one depth map is a pair named by the scene. A scene with several candidates
       on either side, or whose name an exact pair already has, is reported as ambiguous and not paired.
    """
    by_stem: dict[str, tuple[list[Path], list[Path]]] = {}
    for index, files in enumerate((images, depths)):
        for path in files:
            by_stem.setdefault(path.stem, ([], []))[index].append(path)
    pairs, left_images, left_depths = [], [], []
    for stem, (ims, dps) in sorted(by_stem.items()):
        if len(ims) == 1 and len(dps) == 1:
            pairs.append((stem, ims[0], dps[0]))
        else:
            left_images += ims
            left_depths += dps
    exact = {stem for stem, _, _ in pairs}
    scenes: dict[str, tuple[list[Path], list[Path]]] = {}
    for index, files in enumerate((left_images, left_depths)):
        for path in files:
            scenes.setdefault(_scene_stem(path, depth=bool(index)), ([], []))[index].append(path)
    for scene, (ims, dps) in sorted(scenes.items()):
        if not ims or not dps:
            report.unpaired_images += ims
            report.unpaired_depth += dps
        elif scene in exact:
            reason = f"scene {scene!r} is already an exact-stem pair"
            report.ambiguous.append(AmbiguousMatch(scene, tuple(ims), tuple(dps), reason))
        elif len(ims) > 1 or len(dps) > 1:
            reason = f"scene {scene!r}: {len(ims)} images, {len(dps)} depth maps"
            report.ambiguous.append(AmbiguousMatch(scene, tuple(ims), tuple(dps), reason))
        else:
            pairs.append((scene, ims[0], dps[0]))
    report.unpaired_images.sort()
    report.unpaired_depth.sort()
    return sorted(pairs)


def scan_zivid(root: str | Path) -> ZividReport:
    """Pair ``images/*.png`` with ``depth/*.npy``, validate each pair, report what was skipped.

    Pairing: an identical stem first; else the same stem once a role suffix is removed (``_color``,
    ``_rgb``, ``_image`` on images; ``_rawDepth``, ``_depth``, ``_xyz``, ``_pointcloud`` on depth maps;
    any case, ``_`` or ``-`` before it), so the seed's ``<scene>_color.png`` pairs with
    ``<scene>_rawDepth.npy`` as the sample ``<scene>``. Ambiguous matches are reported, never guessed.
    Raises ``DataError`` if ``images/`` or ``depth/`` is missing or no pair is usable.
    """
    root = Path(root)
    folders = {name: root / name for name in ("images", "depth")}
    for name, folder in folders.items():
        if not folder.is_dir():
            raise DataError(
                f"Zivid data set {str(root)!r} has no {name}/ folder "
                "(expected images/<stem>.png paired with depth/<stem>.npy, or <scene>_color.png with "
                "<scene>_rawDepth.npy)"
            )
    images = [p for p in sorted(folders["images"].iterdir()) if p.suffix.lower() == ".png"]
    depths = [p for p in sorted(folders["depth"].iterdir()) if p.suffix.lower() == ".npy"]
    report = ZividReport(samples=[], root=root)
    for stem, image_path, depth_path in _match(images, depths, report):
        problem = _check_pair(image_path, depth_path)
        if problem is None:
            report.samples.append(ZividSample(stem, image_path, depth_path))
        else:
            report.unreadable.append(problem)
    if not report.samples:
        found = report.problems() or "images/ and depth/ hold no .png / .npy files"
        raise DataError(
            f"0 usable pairs in {root}: {found}. Expected images/<stem>.png (8-bit RGB) paired with "
            "depth/<stem>.npy (H, W, 3) XYZ in mm with some finite, positive Z; stems may end in a role "
            f"suffix ({', '.join(IMAGE_ROLES)} / {', '.join(DEPTH_ROLES)}), e.g. <scene>_color.png with "
            "<scene>_rawDepth.npy."
        )
    if report.problems():
        logger.warning("Zivid scan: %s", report.summary())
    else:
        logger.info("Zivid scan: %s", report.summary())
    return report


def load_pair(sample: ZividSample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb uint8 (H, W, 3), depth_mm float32 (H, W) with NaN where invalid, valid bool (H, W))."""
    try:
        with Image.open(sample.image_path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        xyz = np.load(sample.depth_path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"Cannot read Zivid pair {sample.stem!r}: {type(exc).__name__}: {exc}") from exc
    if xyz.ndim != 3 or xyz.shape[-1] != 3 or xyz.shape[:2] != rgb.shape[:2]:
        raise DataError(
            f"Zivid pair {sample.stem!r}: depth shape {xyz.shape} does not match image {rgb.shape[:2]} x 3 (XYZ)"
        )
    depth = np.asarray(xyz[..., 2], dtype=np.float32).copy()
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
    depth[~valid] = np.nan
    return rgb, depth, valid


def split(
    samples: Sequence[ZividSample], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[ZividSample], list[ZividSample]]:
    """Seeded train / val split, independent of input order; at least one val sample when there are two."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    ordered = sorted(samples, key=lambda s: s.stem)
    n = len(ordered)
    n_val = min(max(int(round(n * val_fraction)), 1), n - 1) if n >= 2 and val_fraction > 0 else 0
    if n < 2:
        logger.warning("split: %d sample(s), nothing held out for validation", n)
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(ordered) if i not in val_idx]
    val = [s for i, s in enumerate(ordered) if i in val_idx]
    return train, val


class ZividDepthDataset(torch.utils.data.Dataset):
    """Square ``size`` crops for DINOv2-based depth models, with aligned image / depth augmentations.

    Items: ``pixel_values`` float32 (3, size, size) normalised with ``mean`` / ``std`` (the model processor's),
    ``depth`` float32 (size, size) in mm
    with 0 where invalid, ``valid`` bool (size, size). The image is resized bilinearly, the depth and mask
    by nearest neighbour (never mixing valid and invalid pixels). With ``augment``: horizontal flip (p=0.5),
    a random window of ``CROP_SCALE`` of each side resized back to ``size``, colour jitter on the image
    only. The randomness is a pure function of (seed, epoch, index): call ``set_epoch`` every epoch (in the
    process that owns the dataset; with ``persistent_workers`` the workers keep their own copy).
    """

    CROP_SCALE = (0.6, 1.0)
    JITTER = 0.2  # brightness, contrast and saturation factors in [1 - JITTER, 1 + JITTER]

    def __init__(
        self,
        samples: Sequence[ZividSample],
        *,
        size: int = 518,
        augment: bool = False,
        seed: int = 0,
        mean: Sequence[float] = tuple(IMAGENET_MEAN),
        std: Sequence[float] = tuple(IMAGENET_STD),
    ):
        if not isinstance(size, int) or size <= 0 or size % PATCH:
            raise DataError(f"size must be a positive multiple of {PATCH} (e.g. 518), got {size!r}")
        self.samples, self.size, self.augment, self.seed = list(samples), size, augment, seed
        # the model processor's image_mean / image_std, so training normalises as serving does
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def augment_params(self, index: int, height: int, width: int) -> dict:
        """The augmentation drawn for (seed, epoch, index): crop box (x0, y0, w, h), flip, jitter factors."""
        if not self.augment:
            return {"box": (0, 0, width, height), "flip": False, "jitter": None}
        rng = np.random.default_rng([self.seed, self.epoch, index])
        scale = rng.uniform(*self.CROP_SCALE)
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        flip = bool(rng.random() < 0.5)
        jitter = rng.uniform(1 - self.JITTER, 1 + self.JITTER, size=3)
        return {"box": (x0, y0, w, h), "flip": flip, "jitter": tuple(float(j) for j in jitter)}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb, depth, valid = load_pair(self.samples[index])
        height, width = valid.shape
        params = self.augment_params(index, height, width)
        x0, y0, w, h = params["box"]
        n = self.size
        image = Image.fromarray(rgb).resize((n, n), Image.Resampling.BILINEAR, box=(x0, y0, x0 + w, y0 + h))
        img = np.asarray(image, dtype=np.float32) / 255.0
        # nearest neighbour with the same pixel-centre mapping as PIL's box resize
        rows = np.minimum(y0 + ((np.arange(n) + 0.5) * h / n).astype(np.int64), height - 1)
        cols = np.minimum(x0 + ((np.arange(n) + 0.5) * w / n).astype(np.int64), width - 1)
        depth, valid = depth[np.ix_(rows, cols)], valid[np.ix_(rows, cols)]
        if params["flip"]:
            img, depth, valid = img[:, ::-1], depth[:, ::-1], valid[:, ::-1]
        if params["jitter"] is not None:
            img = _jitter(img, *params["jitter"])
        img = (img - self.mean) / self.std
        return {
            "pixel_values": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)),
            "depth": torch.from_numpy(np.ascontiguousarray(np.where(valid, depth, 0.0), dtype=np.float32)),
            "valid": torch.from_numpy(np.ascontiguousarray(valid)),
        }


def _jitter(img: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Colour jitter on a float image in [0, 1]: brightness, then contrast, then saturation."""
    img = img * brightness
    img = (img - img.mean()) * contrast + img.mean()
    grey = (img @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    img = grey + (img - grey) * saturation
    return np.clip(img, 0.0, 1.0)


def write_zivid(
    root: str | Path,
    stem: str,
    rgb: np.ndarray,
    depth_mm: np.ndarray,
    *,
    fx: float | None = None,
    fy: float | None = None,
    cx: float | None = None,
    cy: float | None = None,
) -> ZividSample:
    """Write one pair in the Zivid format; X, Y come from a pinhole model, NaN where depth is invalid.

    Defaults: ``fx = fy = W`` (about a 53 degree horizontal field of view), principal point at the centre.
    """
    rgb, depth = np.asarray(rgb), np.asarray(depth_mm, dtype=np.float32)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise DataError(f"rgb must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if depth.shape != rgb.shape[:2]:
        raise DataError(f"depth_mm must be (H, W) = {rgb.shape[:2]}, got {depth.shape}")
    if not stem or Path(stem).name != stem:
        raise DataError(f"stem must be a plain file name, got {stem!r}")
    height, width = depth.shape
    fx = float(width if fx is None else fx)
    fy = float(fx if fy is None else fy)
    cx = (width - 1) / 2 if cx is None else float(cx)
    cy = (height - 1) / 2 if cy is None else float(cy)
    with np.errstate(invalid="ignore"):
        z = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float32)
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    xyz = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1).astype(np.float32)
    root = Path(root)
    image_path, depth_path = root / "images" / f"{stem}.png", root / "depth" / f"{stem}.npy"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    depth_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(image_path)
    np.save(depth_path, xyz)
    return ZividSample(stem, image_path, depth_path)
