"""What the Spaces need beyond the UI: which bases and adapters the store offers, and one call per action.

`spaces/<domain>/app.py` builds widgets and calls these; model logic, file writing and input checks live here
so they are tested without a browser and shared by every Space.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import hub, viz
from .errors import HubkitError, InvalidImageError
from .predictor import BASE, Predictor, load
from .tasks import get_task, to_pil

logger = logging.getLogger(__name__)
DEPTH_TASK = "depth-estimation"
MAX_DEMO_PIXELS = 50_000_000  # a Space refuses bigger uploads before decoding them
KEEP_REQUESTS = 16  # per-request output folders kept on disk (the UI has copied older ones already)
MAX_RESIDENT_BASES = int(os.environ.get("HUBKIT_SPACE_MAX_BASES", "2"))  # memory cap per Space process


# -- what the store offers -----------------------------------------------------------------------------
def _local_store():
    return hub.LocalStore(hub.local_home())


def _head_files(store, repo_id: str) -> dict[str, int]:
    revisions = store.list_revisions(repo_id)
    return revisions[0].files if revisions else {}


def _pipeline_tag(store, repo_id: str) -> str | None:
    from huggingface_hub import RepoCard

    folder = store.pull(repo_id, include=["README.md"])
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    try:
        return getattr(RepoCard.load(readme).data, "pipeline_tag", None)
    except Exception:  # a card that does not parse only hides the repo from the menu
        logger.warning("%s: README.md does not parse; not listed as a base", repo_id)
        return None


def available_bases(task: str, *, store=None) -> list[str]:
    """Base models for `task` in the local store (non-adapter model repos whose card has the task's
    pipeline_tag), with the task's default base first."""
    spec = get_task(task)
    store = store or _local_store()
    found = []
    for ref in store.list_repos("model"):
        files = _head_files(store, ref.repo_id)
        if "adapter_config.json" in files or "README.md" not in files:
            continue
        if _pipeline_tag(store, ref.repo_id) == spec.pipeline_tag:
            found.append(ref.repo_id)
    first = default_base(task, store=store)
    return [first, *sorted(b for b in found if b != first)]


def available_adapters(task: str, base: str, *, store=None) -> list[str]:
    """LoRA adapter repos in the local store whose adapter_config.json names `base` as base model."""
    get_task(task)  # an unknown task fails here, listing the known ones
    store = store or _local_store()
    adapters = [
        ref.repo_id
        for ref in store.list_repos("model")
        if "adapter_config.json" in _head_files(store, ref.repo_id) and _adapter_base(store, ref.repo_id) == str(base)
    ]
    if task == DEPTH_TASK:  # e.g. Hub adapter ids on a Space, whose local store starts empty
        adapters += [a.strip() for a in os.environ.get("HUBKIT_DEPTH_ADAPTERS", "").split(",") if a.strip()]
    return sorted(set(adapters))


def _adapter_base(store, repo_id: str) -> str | None:
    folder = hub.pull(repo_id, hub=store, include=["adapter_config.json"])
    try:
        return json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        logger.warning("%s: adapter_config.json is unreadable; not listed", repo_id)
        return None


def default_base(task: str, *, store=None) -> str:
    """The base a Space starts with.

    ``HUBKIT_DEPTH_BASE`` (depth) when set; else the task's real Hub id when it is in the local store or the
    Hub is reachable; else the tiny random-weight base from ``hubkit bootstrap`` when that is in the store;
    else the real id (loading it then fails with a message saying what to do).
    """
    spec = get_task(task)
    if task == DEPTH_TASK and os.environ.get("HUBKIT_DEPTH_BASE"):
        return os.environ["HUBKIT_DEPTH_BASE"]
    store = store or _local_store()
    if store.exists(spec.default_base):
        return spec.default_base
    try:
        hub.HfStore().check_reachable()
        return spec.default_base
    except HubkitError:
        pass
    from .tiny import FAMILIES

    tiny_repo = FAMILIES[spec.tiny_family].repo_name
    return tiny_repo if store.exists(tiny_repo) else spec.default_base


# -- the depth Space -----------------------------------------------------------------------------------
def _adapter_name(repo_id: str) -> str:
    """A PEFT adapter name for a repo id (PEFT names cannot hold '.', and '/' reads badly in module paths)."""
    return str(repo_id).replace("/", "--").replace(".", "_")


def check_upload(image: Any, *, max_pixels: int = MAX_DEMO_PIXELS) -> Image.Image:
    """An upload (path, PIL image or array) as an RGB PIL image, or InvalidImageError saying what to do.

    16-bit, greyscale, palette and RGBA images are converted; size is checked from the header before decoding.
    """
    if image is None:
        raise InvalidImageError("No image given: upload a photo (PNG, JPEG, WebP...) or pick one of the examples.")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.is_file() and path.stat().st_size == 0:
            raise InvalidImageError(f"{path.name} is an empty file (0 bytes): upload a photo (PNG, JPEG, WebP...).")
        try:
            with Image.open(path) as img:  # reads the header only
                width, height = img.size
        except FileNotFoundError:
            raise InvalidImageError(f"No such file {str(path)!r}: upload the image again.") from None
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise InvalidImageError(
                f"{path.name} is not an image this demo can read ({type(err).__name__}): upload a PNG, JPEG or WebP."
            ) from None
    elif isinstance(image, Image.Image):
        width, height = image.size
    elif isinstance(image, np.ndarray) and image.ndim >= 2:
        height, width = image.shape[:2]
    else:
        width = height = 1  # to_pil names the wrong type
    if width * height > max_pixels:
        raise InvalidImageError(
            f"The image is {width}x{height} ({width * height / 1e6:.0f} MP); this demo takes at most "
            f"{max_pixels / 1e6:.0f} MP. Downscale it (e.g. to 2000 px on the long side) and upload it again."
        )
    try:
        return to_pil(image, name="The upload")
    except InvalidImageError as err:
        raise InvalidImageError(f"{err}. Upload a PNG, JPEG or WebP photo.") from None


def parse_intrinsics(fx, fy, cx=None, cy=None) -> tuple[float, float, float | None, float | None] | None:
    """(fx, fy, cx, cy) in pixels from UI fields; None when fx and fy are both empty / 0.

    One focal length stands for both; cx / cy stay None (the image centre) when empty.
    """
    if not fx and not fy:
        return None
    try:
        fx_, fy_, cx_, cy_ = (None if v in (None, "") else float(v) for v in (fx, fy, cx, cy))
    except (TypeError, ValueError):
        raise HubkitError(f"Intrinsics must be numbers; got fx={fx!r}, fy={fy!r}, cx={cx!r}, cy={cy!r}.") from None
    fx_, fy_ = fx_ or fy_, fy_ or fx_
    if not (fx_ > 0 and fy_ > 0):
        raise HubkitError(f"Focal lengths must be positive numbers of pixels; got fx={fx!r}, fy={fy!r}.")
    return fx_, fy_, cx_, cy_


class DepthDemo:
    """The depth Space's logic: one lazily loaded Predictor per base, adapters loaded once and switched.

    Nothing loads at construction; the first `run` for a base loads it, later runs reuse it and only
    `set_adapter` between adapters.
    """

    task = DEPTH_TASK

    def __init__(self, *, device: str | None = None, max_pixels: int = MAX_DEMO_PIXELS, cmap: str = "Spectral_r"):
        self.device = device or os.environ.get("HUBKIT_DEVICE", "auto")
        self.max_pixels = max_pixels
        self.cmap = cmap
        self._predictors: dict[str, Predictor] = {}
        self._adapter_names: dict[tuple[str, str], str] = {}  # (base, repo id) -> PEFT adapter name
        self._lock = threading.RLock()
        self._out_root: Path | None = None
        self._recent: deque[Path] = deque()

    # -- menus ------------------------------------------------------------------------------------------
    def default_base(self) -> str:
        return default_base(self.task)

    def available_bases(self) -> list[str]:
        return available_bases(self.task)

    def available_adapters(self, base: str | None = None) -> list[str]:
        return available_adapters(self.task, base or self.default_base())

    # -- models -----------------------------------------------------------------------------------------
    def allowed_bases(self) -> set[str] | None:
        """Bases a request may load: those the menus offer plus ``HUBKIT_DEPTH_BASES`` (comma-separated;
        "*" allows any repo id or server path, for a private local server). None means any."""
        extra = {b.strip() for b in os.environ.get("HUBKIT_DEPTH_BASES", "").split(",") if b.strip()}
        if "*" in extra:
            return None
        return set(self.available_bases()) | extra | {self.default_base()}

    def predictor(self, base: str | None = None) -> Predictor:
        """The Predictor for `base`, loaded on first use; the least recently used is dropped past the cap."""
        base = base or self.default_base()
        with self._lock:
            if base not in self._predictors:
                allowed = self.allowed_bases()
                if allowed is not None and base not in allowed:
                    raise HubkitError(
                        f"Base {base!r} is not offered here. Choose one of: {', '.join(sorted(allowed))} "
                        "(the server's HUBKIT_DEPTH_BASES can allow more)."
                    )
                while len(self._predictors) >= MAX_RESIDENT_BASES:
                    evicted = next(iter(self._predictors))
                    del self._predictors[evicted]
                    self._adapter_names = {k: v for k, v in self._adapter_names.items() if k[0] != evicted}
                    logger.info("dropped %s to stay within %d resident bases", evicted, MAX_RESIDENT_BASES)
                started = time.perf_counter()
                self._predictors[base] = load(self.task, base, device=self.device)
                logger.info("loaded %s in %.1f s", base, time.perf_counter() - started)
            self._predictors[base] = self._predictors.pop(base)  # most recently used last
            return self._predictors[base]

    def _adapter(self, predictor: Predictor, base: str, repo_id: str) -> str:
        key = (base, repo_id)
        if key not in self._adapter_names:
            self._adapter_names[key] = predictor.add_adapter(repo_id, name=_adapter_name(repo_id))
        return self._adapter_names[key]

    # -- outputs ----------------------------------------------------------------------------------------
    def _request_dir(self) -> Path:
        if self._out_root is None or not self._out_root.is_dir():
            self._out_root = Path(tempfile.mkdtemp(prefix="hubkit-depth-"))
        folder = Path(tempfile.mkdtemp(prefix="request-", dir=self._out_root))
        self._recent.append(folder)
        while len(self._recent) > KEEP_REQUESTS:
            shutil.rmtree(self._recent.popleft(), ignore_errors=True)
        return folder

    def render(self, prediction) -> tuple[np.ndarray, tuple[float, float], str]:
        """A colourised map with its legend underneath; metric depth is shown in millimetres."""
        unit = "relative" if prediction.relative else "mm"
        depth = prediction.depth if prediction.relative else prediction.depth * 1000.0
        rgb, (vmin, vmax) = viz.colorize_depth(depth, relative=prediction.relative, cmap=self.cmap)
        legend = viz.depth_legend(vmin, vmax, unit, width=rgb.shape[1], cmap=self.cmap)
        return viz.with_legend(rgb, legend), (vmin, vmax), unit

    def run(
        self,
        image: Any,
        base: str | None = None,
        adapters: Sequence[str] | str | None = (),
        intrinsics: Sequence[float | None] | None = None,
    ) -> dict[str, Any]:
        """Depth of `image` from `base` and from `base` + each adapter.

        Returns a dict: "base" (colourised map + legend, uint8 array), "adapted" (the first adapter's map, or None),
        "adapters" ({repo id: map} for every adapter), "unit", "range" ({name: (vmin, vmax)}), "png16" / "npy" /
        "ply" (the first adapter's outputs, or the base's without adapters; "ply" only with intrinsics),
        "files" (every file written), "seconds".
        """
        started = time.perf_counter()
        pil = check_upload(image, max_pixels=self.max_pixels)
        base = base or self.default_base()
        adapters = [adapters] if isinstance(adapters, str) else [a for a in (adapters or []) if a]
        if intrinsics is not None:
            if len(intrinsics) != 4:
                raise HubkitError(f"intrinsics must be (fx, fy, cx, cy) in pixels; got {intrinsics!r}")
            fx, fy, cx, cy = intrinsics  # cx / cy None: the image centre
            intrinsics = (fx, fy, (pil.width - 1) / 2 if cx is None else cx, (pil.height - 1) / 2 if cy is None else cy)
        with self._lock:
            predictor = self.predictor(base)
            names = {repo: self._adapter(predictor, base, repo) for repo in adapters}
            predictions = {BASE: predictor.predict(pil, adapter=BASE)}
            for repo, name in names.items():
                predictions[repo] = predictor.predict(pil, adapter=name)
        out_dir = self._request_dir()
        rgb = np.asarray(pil)
        result: dict[str, Any] = {"adapters": {}, "range": {}, "files": [], "ply": None, "base_id": base}
        for key, prediction in predictions.items():
            picture, span, unit = self.render(prediction)
            result["range"][key] = span
            result["unit"] = unit
            if key == BASE:
                result["base"] = picture
            else:
                result["adapters"][key] = picture
            stem = "base" if key == BASE else _adapter_name(key)
            png = viz.save_depth_png16(out_dir / f"{stem}.depth16.png", prediction)
            npy = out_dir / f"{stem}.depth.npy"
            np.save(npy, prediction.depth)
            ply = None
            if intrinsics is not None:
                depth = viz.inverse_to_depth(prediction.depth) if prediction.relative else prediction.depth
                xyz, colours = viz.depth_to_points(depth, rgb, *intrinsics)
                ply = viz.write_ply(out_dir / f"{stem}.ply", xyz, colours)
            result["files"] += [p for p in (png, npy, ply) if p is not None]
            if key == BASE or key == next(iter(names), None):
                result["png16"], result["npy"], result["ply"] = png, npy, ply
        first = next(iter(names), None)
        result["adapted"] = result["adapters"][first] if first else None
        result["adapted_id"] = first
        result["relative"] = predictions[BASE].relative
        result["seconds"] = time.perf_counter() - started
        return result

    def summary(self, result: dict[str, Any]) -> str:
        """A few lines of Markdown about a `run` result."""
        unit = result["unit"]
        head = f"**Base** `{result['base_id']}` · depth shown in **{unit}** · {result['seconds']:.2f} s"
        if result["relative"]:
            head += "  \nRelative inverse depth: bigger (red) is nearer; the values have no unit or scale."
        if result["ply"] is not None and result["relative"]:
            head += "  \nThe point cloud uses a pseudo depth from the relative map: its shape, not its scale."
        ranges = [
            f"- {'base' if key == BASE else f'`{key}`'}: {viz.format_depth(lo, unit)} .. {viz.format_depth(hi, unit)}"
            for key, (lo, hi) in result["range"].items()
        ]
        return head + "\n\nColour range (1st-99th percentile):\n\n" + "\n".join(ranges)
