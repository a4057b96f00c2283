"""What the Spaces need beyond the UI: which bases and adapters the store offers, and one call per action.

`spaces/<domain>/app.py` builds widgets and calls these; model logic, file writing and input checks live here
so they are tested without a browser and shared by every Space.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import hub, viz
from .errors import HubkitError, InvalidImageError
from .pool import ModelPool, get_pool
from .predictor import BASE, Predictor, load
from .tasks import get_task, to_pil

logger = logging.getLogger(__name__)
DEPTH_TASK = "depth-estimation"
MAX_DEMO_PIXELS = 50_000_000  # a Space refuses bigger uploads before decoding them
# Gradio copies returned files into its own cache before answering, so a request's folder is needed only while
# its handler runs; a few are kept for requests running at once (the queue's concurrency), within a byte budget.
KEEP_REQUESTS = 8
MAX_REQUEST_BYTES = 512 * 2**20
ADAPTER_DIRS_ENV = "HUBKIT_SPACE_ADAPTER_DIRS"  # adapter folders an operator lets requests load (os.pathsep-separated)
# One text for every adapter a request may not load, so answers do not tell what exists on the server's disk.
ADAPTER_NOT_AVAILABLE = (
    "That adapter is not available on this server: it loads adapters from its store (the Adapters menu), "
    f"Hub repo ids when it is online, and folders its operator lists in {ADAPTER_DIRS_ENV}."
)
# Bases one Space keeps in the shared model pool (0: no count cap); bytes are bounded by the pool (HUBKIT_POOL_BYTES).
MAX_RESIDENT_BASES = int(os.environ.get("HUBKIT_SPACE_MAX_BASES", "2"))


# -- what the store offers -----------------------------------------------------------------------------
def _local_store():
    return hub.LocalStore(hub.local_home())


def build_time_menus(bases: Callable[[], list[str]], adapters: Callable[[str], list[str]]) -> tuple[list, list]:
    """A Space's bases and every adapter of them in the store now, as its menus' build-time choices.

    Gradio's run-history page (/gradio_api/runs) renders a recorded run with these, so a value missing from them
    shows blank there. Pages refill the menus on load, so later additions still reach the Space (their history
    entries show blank until a restart). An unreadable store gives empty menus now; the page load reports it.
    """
    try:
        found = bases()
        return found, sorted({a for b in found for a in adapters(b)})
    except HubkitError:
        return [], []


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
    """Adapters for `base`: LoRA repos in the local store and folders in ``HUBKIT_SPACE_ADAPTER_DIRS`` whose
    adapter_config.json names `base` as base model."""
    get_task(task)  # an unknown task fails here, listing the known ones
    store = store or _local_store()
    adapters = [
        ref.repo_id
        for ref in store.list_repos("model")
        if "adapter_config.json" in _head_files(store, ref.repo_id)
        and _adapter_base(hub.pull(ref.repo_id, hub=store, include=["adapter_config.json"]), ref.repo_id) == str(base)
    ]
    adapters += [name for name, folder in allowed_adapter_dirs().items() if _adapter_base(folder, name) == str(base)]
    if task == DEPTH_TASK:  # e.g. Hub adapter ids on a Space, whose local store starts empty
        adapters += [a.strip() for a in os.environ.get("HUBKIT_DEPTH_ADAPTERS", "").split(",") if a.strip()]
    return sorted(set(adapters))


def _adapter_base(folder: Path, name: str) -> str | None:
    try:
        return json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        logger.warning("%s: adapter_config.json is unreadable; not listed", name)
        return None


def allowed_adapter_dirs() -> dict[str, Path]:
    """Adapter folders the operator lets Space requests load, by the name a request must give, exactly.

    ``HUBKIT_SPACE_ADAPTER_DIRS`` lists folders (os.pathsep-separated): one holding adapter_config.json is an
    adapter, named by the entry as written; of any other folder, each direct subfolder holding
    adapter_config.json is one, named ``<entry>/<subfolder>``. Other spellings of these paths are not matched.
    """
    found: dict[str, Path] = {}
    for entry in (e.strip() for e in os.environ.get(ADAPTER_DIRS_ENV, "").split(os.pathsep)):
        if not entry:
            continue
        folder = Path(entry).expanduser()
        if (folder / "adapter_config.json").is_file():
            found[entry] = folder
        elif folder.is_dir():
            for child in sorted(folder.iterdir()):
                if (child / "adapter_config.json").is_file():
                    found[os.path.join(entry, child.name)] = child
        else:
            logger.warning("%s: %r is not a folder; ignored", ADAPTER_DIRS_ENV, entry)
    return found


def resolve_adapter(name: str) -> Path:
    """The local folder of an adapter a Space request names, if this server allows it.

    Allowed: a folder from ``HUBKIT_SPACE_ADAPTER_DIRS`` (named as `allowed_adapter_dirs` lists it) or a repo id
    holding adapter_config.json in the local store, or on the Hub when it is reachable. Anything else (a server
    path, a missing repo, a repo that is not an adapter) raises HubkitError with ADAPTER_NOT_AVAILABLE, the same
    text whatever the name and whatever exists on disk, so a client cannot probe the server's files.
    """
    folders = allowed_adapter_dirs()
    if isinstance(name, str) and name in folders:
        return folders[name]
    try:
        hub.parse_repo_id(name)  # never a path: "etc/ssl" is a repo id here, not a folder under the working dir
        if (hub.pull(name, include=["adapter_config.json"]) / "adapter_config.json").is_file():
            return hub.pull(name)
    except (HubkitError, OSError, ValueError) as err:  # a bad id, in no store, no such file, Hub unreachable
        logger.info("adapter %r refused: %s", name, err)
    raise HubkitError(ADAPTER_NOT_AVAILABLE)


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
    tiny_repo = spec.tiny_models[0].repo_name
    return tiny_repo if store.exists(tiny_repo) else spec.default_base


# -- temporary outputs ---------------------------------------------------------------------------------
_shutdown_watchers: set[asyncio.Task] = set()  # strong references: the event loop keeps only weak ones


class RequestDirs:
    """Per-request output folders under one temporary folder per Space, capped and removed on exit.

    Gradio copies each file a handler returns into its cache (GRADIO_TEMP_DIR) before it answers, so a
    request's folder is needed only while its handler runs. `new` keeps the newest `keep` folders (requests
    running at once) and drops older ones past `max_bytes`; the whole folder goes at interpreter exit (an
    atexit hook), on `cleanup`, and when a server started with `clean_on_shutdown` stops.
    """

    def __init__(self, prefix: str, *, keep: int = KEEP_REQUESTS, max_bytes: int = MAX_REQUEST_BYTES):
        if keep < 1:
            raise HubkitError(f"keep must be at least 1 (the request being answered); got {keep!r}")
        self.prefix, self.keep, self.max_bytes = prefix, keep, max_bytes
        self._lock = threading.Lock()
        self._root: Path | None = None
        self._recent: deque[Path] = deque()
        self._finalizer: weakref.finalize | None = None

    @property
    def root(self) -> Path | None:
        """The folder holding this process's request folders (None before the first request)."""
        return self._root

    def root_exists(self) -> bool:
        return self._root is not None and self._root.is_dir()

    def new(self) -> Path:
        """A fresh folder for one request's files; the oldest ones go past the caps."""
        with self._lock:
            if not self.root_exists():
                self._root = Path(tempfile.mkdtemp(prefix=self.prefix))
                self._recent.clear()
                # weakref.finalize runs at interpreter exit too (through atexit), and only once
                self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._root), ignore_errors=True)
            sizes = [_folder_bytes(folder) for folder in self._recent]
            # make room for the new folder; the newest existing one stays (a request may still be writing it)
            while len(self._recent) >= self.keep or (len(self._recent) > 1 and sum(sizes) > self.max_bytes):
                shutil.rmtree(self._recent.popleft(), ignore_errors=True)
                sizes.pop(0)
            folder = Path(tempfile.mkdtemp(prefix="request-", dir=self._root))
            self._recent.append(folder)
            return folder

    def cleanup(self) -> None:
        """Remove every request folder and the folder holding them; a later `new` starts afresh."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._recent.clear()


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def clean_on_shutdown(demo, outputs: RequestDirs) -> None:
    """Remove `outputs` when the server running the Gradio `demo` stops (`demo.close()`, Ctrl-C, or the app it
    is mounted in shutting down), not only at interpreter exit.

    A startup event starts a task that waits forever; uvicorn's event loop cancels it as the server stops.
    """

    async def wait_for_shutdown() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            outputs.cleanup()

    async def start_watching() -> None:
        task = asyncio.get_running_loop().create_task(wait_for_shutdown())
        _shutdown_watchers.add(task)
        task.add_done_callback(_shutdown_watchers.discard)

    demo.extra_startup_events.append(start_watching)


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
        message = str(err)
        if isinstance(image, (str, Path)):  # the user knows the file by its name, not by the server's temp path
            message = message.replace(repr(str(image)), Path(image).name)
        raise InvalidImageError(f"{message}. Upload a PNG, JPEG or WebP photo.") from None


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


MIN_SIDE = 16  # px: a depth model needs some context, and a legend under a 1 px map says nothing
ROWS_PER_PASS = 16  # rows (image x adapter) in one forward pass: 8 requests of base + one adapter


@dataclass
class DepthRequest:
    """One checked depth request: what `DepthDemo.check` accepted, ready to predict (nothing loaded yet)."""

    image: Image.Image
    base: str
    adapters: list[str]  # repo ids (or operator folders) as asked, in order
    folders: dict[str, Path]  # PEFT name -> folder
    intrinsics: tuple[float, float, float, float] | None = None
    files: bool = False  # write the 16-bit PNG / .npy downloads (the .ply comes with intrinsics)


class MicroBatcher:
    """Runs `run_batch(items)` on up to `max_batch_size` items that arrive while the previous batch runs.

    Callers block in `__call__` on their own item and get its own result or exception: a bad or failing item
    never fails its neighbours. One worker thread (started on first use) takes what is queued, waiting at most
    `max_wait` seconds for more when fewer than `max_batch_size` are there, so a lone request is not held back.
    """

    def __init__(self, run_batch, *, max_batch_size: int = 8, max_wait: float = 0.005, name: str = "batcher"):
        if max_batch_size < 1:
            raise HubkitError(f"max_batch_size must be at least 1; got {max_batch_size!r}")
        self.run_batch, self.max_batch_size, self.max_wait, self.name = run_batch, max_batch_size, max_wait, name
        self.sizes: deque[int] = deque(maxlen=10_000)  # batch sizes run, newest last (for tests and benches)
        self._queue: deque[tuple[Any, Future]] = deque()
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None

    def __call__(self, item: Any) -> Any:
        future: Future = Future()
        with self._cond:
            self._queue.append((item, future))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._worker.start()
            self._cond.notify()
        return future.result()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._queue, timeout=60):
                    self._worker = None  # idle a minute: the next call starts a new worker
                    return
                deadline = time.monotonic() + self.max_wait
                while len(self._queue) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
            self.sizes.append(len(batch))
            try:
                outcomes = self.run_batch([item for item, _ in batch])
            except BaseException as err:  # noqa: BLE001  (handed to every caller of this batch)
                outcomes = [err] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)


class DepthDemo:
    """The depth Space's logic, on predictors from the process's shared model pool (`hubkit.pool`).

    Nothing loads at construction; the first request for a base loads it into the pool, later ones (of this Space
    or any other asking for the same base) reuse it; adapters are attached once. Requests that arrive together
    (`submit`, through a MicroBatcher) share forward passes, even when they ask for different adapters of one base
    (peft's per-sample adapter names). The pool's byte budget bounds memory across Spaces; this Space also keeps at
    most ``HUBKIT_SPACE_MAX_BASES`` of its bases there (0: no cap), evicting its least recently used one unless a
    request is using it.
    """

    task = DEPTH_TASK

    def __init__(
        self,
        *,
        device: str | None = None,
        max_pixels: int = MAX_DEMO_PIXELS,
        cmap: str = "Spectral_r",
        outputs: RequestDirs | None = None,
        pool: ModelPool | None = None,
        max_batch_size: int = 8,
    ):
        self.device = device or os.environ.get("HUBKIT_DEVICE", "auto")
        self.max_pixels = max_pixels
        self.cmap = cmap
        self.outputs = outputs or RequestDirs("hubkit-depth-")
        self._pool = pool  # None: the process's shared pool
        self._bases: OrderedDict[str, None] = OrderedDict()  # this Space's bases, least recently used first
        self._adapter_folders: dict[tuple[str, str], Path] = {}  # (local store, adapter as asked) -> folder
        self._lock = threading.RLock()
        self.batcher = MicroBatcher(self.run_batch, max_batch_size=max_batch_size, name="depth-batcher")
        self.passes: deque[int] = deque(maxlen=10_000)  # rows in each forward pass, newest last

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

    @property
    def pool(self) -> ModelPool:
        return self._pool or get_pool()

    @property
    def _predictors(self) -> dict[str, Predictor]:
        """This Space's bases that the pool holds now, least recently used first."""
        with self._lock:
            bases = list(self._bases)
        resident = {base: self.pool.peek(self.task, base, device=self.device) for base in bases}
        return {base: predictor for base, predictor in resident.items() if predictor is not None}

    def is_loaded(self, base: str | None = None) -> bool:
        """Whether `base` is in the pool now (False: the next request for it loads it first, which takes a while)."""
        return self.pool.peek(self.task, base or self.default_base(), device=self.device) is not None

    def _admit(self, base: str) -> None:
        """Check that a request may load `base`; mark it this Space's most recently used, evicting past the cap."""
        with self._lock:
            if base not in self._bases:
                allowed = self.allowed_bases()
                if allowed is not None and base not in allowed:
                    raise HubkitError(
                        f"Base {base!r} is not offered here. Choose one of: {', '.join(sorted(allowed))} "
                        "(the server's HUBKIT_DEPTH_BASES can allow more)."
                    )
                while MAX_RESIDENT_BASES > 0 and len(self._bases) >= MAX_RESIDENT_BASES:
                    evicted, _ = self._bases.popitem(last=False)
                    if self.pool.evict(self.task, evicted, device=self.device):
                        logger.info("dropped %s to stay within %d bases per Space", evicted, MAX_RESIDENT_BASES)
            self._bases[base] = None
            self._bases.move_to_end(base)

    @staticmethod
    def _load(task: str, base: str, **options) -> Predictor:
        return load(task, base, **options)  # the module's `load`, looked up at call time (tests stand in for it)

    def predictor(self, base: str | None = None) -> Predictor:
        """The pool's Predictor for `base`, loaded on first use (adapters as the last request left them)."""
        base = base or self.default_base()
        self._admit(base)
        return self.pool.predictor(self.task, base, loader=self._load, device=self.device)

    def _adapter_folder(self, repo_id: str) -> Path:
        """The folder of an adapter a request names, checked against what this server allows once per store."""
        key = (str(hub.local_home()), repo_id)
        if key not in self._adapter_folders:
            self._adapter_folders[key] = resolve_adapter(repo_id)
        return self._adapter_folders[key]

    # -- requests ---------------------------------------------------------------------------------------
    def check(
        self,
        image: Any,
        base: str | None = None,
        adapters: Sequence[str] | str | None = (),
        intrinsics: Sequence[float | None] | None = None,
        *,
        files: bool = False,
    ) -> DepthRequest:
        """Every check a request gets before it may queue for the model: image, base, adapters, intrinsics.

        Raises InvalidImageError or HubkitError with one sentence saying what to do; loads no model.
        """
        pil = check_upload(image, max_pixels=self.max_pixels)
        if min(pil.size) < MIN_SIDE:
            raise InvalidImageError(
                f"The image is {pil.width}x{pil.height} px; this demo needs at least {MIN_SIDE} px on each side. "
                "Upload a larger photo."
            )
        base = base or self.default_base()
        if not isinstance(base, str):
            raise HubkitError(f"base must be a model id (a string); got {type(base).__name__}. Pick one from the menu.")
        adapters = [adapters] if isinstance(adapters, str) else [a for a in (adapters or []) if a]
        if not all(isinstance(a, str) for a in adapters):  # API callers can send any JSON
            raise HubkitError(ADAPTER_NOT_AVAILABLE)
        adapters = list(dict.fromkeys(adapters))  # one row per adapter, however often it is named
        if intrinsics is not None:
            if len(intrinsics) != 4:
                raise HubkitError(f"intrinsics must be (fx, fy, cx, cy) in pixels; got {intrinsics!r}")
            fx, fy, cx, cy = intrinsics  # cx / cy None: the image centre
            intrinsics = (fx, fy, (pil.width - 1) / 2 if cx is None else cx, (pil.height - 1) / 2 if cy is None else cy)
        with self._lock:  # adapters are checked before the base loads: a refused one costs no model load
            folders = {_adapter_name(repo): self._adapter_folder(repo) for repo in adapters}
            self._admit(base)
        return DepthRequest(pil, base, adapters, folders, intrinsics, bool(files))

    def run(
        self,
        image: Any,
        base: str | None = None,
        adapters: Sequence[str] | str | None = (),
        intrinsics: Sequence[float | None] | None = None,
        *,
        files: bool = True,
    ) -> dict[str, Any]:
        """Depth of `image` from `base` and from `base` + each adapter, in one forward pass, in this thread.

        Returns a dict: "base" (colourised map + legend, uint8 array), "adapted" (the first adapter's map, or None),
        "adapters" ({repo id: map} for every adapter), "unit", "range" ({name: (vmin, vmax)}), "png16" / "npy" /
        "ply" (the first adapter's outputs, or the base's without adapters; None when not written: `files` for the
        PNG / .npy, intrinsics for the .ply), "files" (every file written), "seconds".
        """
        started = time.perf_counter()
        request = self.check(image, base, adapters, intrinsics, files=files)
        (outcome,) = self.run_batch([request])
        if isinstance(outcome, BaseException):
            raise outcome
        outcome["seconds"] = time.perf_counter() - started
        return outcome

    def submit(self, request: DepthRequest, *, batch: bool = True) -> dict[str, Any]:
        """`request`'s result. batch=True: predicted together with requests other threads submit meanwhile (up
        to `max_batch_size`); False: its own forward pass, in this thread. Raises the request's own error."""
        started = time.perf_counter()
        if batch:
            result = self.batcher(request)
        else:
            (result,) = self.run_batch([request])
            if isinstance(result, BaseException):
                raise result
        result["seconds"] = time.perf_counter() - started
        return result

    def run_batch(self, requests: Sequence[DepthRequest]) -> list[dict[str, Any] | BaseException]:
        """Results of checked requests, one per request (an exception for a request that failed).

        Rows (a request's image x base / each adapter) of one base share forward passes of up to ROWS_PER_PASS rows
        whose inputs have the same size; each row uses its own adapter.
        """
        outcomes: list[dict[str, Any] | BaseException | None] = [None] * len(requests)
        by_base: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            by_base.setdefault(request.base, []).append(i)
        for base, indices in by_base.items():
            folders: dict[str, Path] = {}
            for i in indices:
                folders.update(requests[i].folders)
            try:
                with self.pool.lease(self.task, base, folders, loader=self._load, device=self.device) as predictor:
                    predictions = self._predict_rows(predictor, [requests[i] for i in indices])
            except Exception as err:  # noqa: BLE001  (a model that fails to load fails its own requests only)
                for i in indices:
                    outcomes[i] = err
                continue
            for i, prediction in zip(indices, predictions, strict=True):
                try:
                    outcomes[i] = self._result(requests[i], prediction)
                except Exception as err:  # noqa: BLE001
                    outcomes[i] = err
        return outcomes  # type: ignore[return-value]

    def _predict_rows(self, predictor: Predictor, requests: Sequence[DepthRequest]) -> list[dict[str, Any]]:
        """{BASE or repo id: DepthPrediction} per request, from batched mixed-adapter forward passes."""
        import torch

        from .tasks.depth import DepthPrediction

        model = predictor.model
        parameter = next(model.parameters())
        base_model = model.get_base_model() if hasattr(model, "get_base_model") else model
        relative = getattr(base_model.config, "depth_estimation_type", "relative") != "metric"
        pixels = [predictor.processor(images=r.image, return_tensors="pt")["pixel_values"][0] for r in requests]
        rows = [(i, key) for i, r in enumerate(requests) for key in (BASE, *r.adapters)]
        groups: dict[tuple[int, ...], list[tuple[int, str]]] = {}
        for row in rows:
            groups.setdefault(tuple(pixels[row[0]].shape), []).append(row)
        out: list[dict[str, Any]] = [{} for _ in requests]
        for group in groups.values():
            for start in range(0, len(group), ROWS_PER_PASS):
                chunk = group[start : start + ROWS_PER_PASS]
                batch = torch.stack([pixels[i] for i, _ in chunk]).to(parameter.device, parameter.dtype)
                names = [BASE if key == BASE else _adapter_name(key) for _, key in chunk]
                depth = predictor.forward_mixed(names, pixel_values=batch).predicted_depth.float()
                self.passes.append(len(chunk))
                for (i, key), row in zip(chunk, depth, strict=True):
                    image = requests[i].image
                    resized = torch.nn.functional.interpolate(
                        row[None, None], size=(image.height, image.width), mode="bicubic", align_corners=False
                    )[0, 0]
                    out[i][key] = DepthPrediction(resized.cpu().numpy().astype(np.float32), relative)
        return out

    # -- outputs ----------------------------------------------------------------------------------------
    def render(self, prediction) -> tuple[np.ndarray, tuple[float, float], str]:
        """A colourised map with its legend underneath; metric depth is shown in millimetres."""
        unit = "relative" if prediction.relative else "mm"
        depth = prediction.depth if prediction.relative else prediction.depth * 1000.0
        rgb, (vmin, vmax) = viz.colorize_depth(depth, relative=prediction.relative, cmap=self.cmap)
        legend = viz.depth_legend(vmin, vmax, unit, width=rgb.shape[1], cmap=self.cmap)
        return viz.with_legend(rgb, legend), (vmin, vmax), unit

    def _result(self, request: DepthRequest, predictions: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {"adapters": {}, "range": {}, "files": [], "base_id": request.base}
        result.update(png16=None, npy=None, ply=None)
        first = request.adapters[0] if request.adapters else None
        out_dir = self.outputs.new() if request.files or request.intrinsics is not None else None
        rgb = np.asarray(request.image)
        for key, prediction in predictions.items():
            picture, span, unit = self.render(prediction)
            result["range"][key] = span
            result["unit"] = unit
            if key == BASE:
                result["base"] = picture
            else:
                result["adapters"][key] = picture
            stem = "base" if key == BASE else _adapter_name(key)
            png = npy = ply = None
            if request.files:
                png = viz.save_depth_png16(out_dir / f"{stem}.depth16.png", prediction)
                npy = out_dir / f"{stem}.depth.npy"
                np.save(npy, prediction.depth)
            if request.intrinsics is not None:
                depth = viz.inverse_to_depth(prediction.depth) if prediction.relative else prediction.depth
                xyz, colours = viz.depth_to_points(depth, rgb, *request.intrinsics)
                ply = viz.write_ply(out_dir / f"{stem}.ply", xyz, colours)
            result["files"] += [p for p in (png, npy, ply) if p is not None]
            if key == (first or BASE):
                result["png16"], result["npy"], result["ply"] = png, npy, ply
        result["adapted"] = result["adapters"][first] if first else None
        result["adapted_id"] = first
        result["relative"] = predictions[BASE].relative
        result["seconds"] = 0.0
        return result

    def summary(self, result: dict[str, Any]) -> str:
        """A few lines of Markdown about a `run` result."""
        unit = result["unit"]
        head = f"**Base** `{result['base_id']}` · depth shown in **{unit}** · {result['seconds']:.2f} s"
        if result["adapted_id"]:
            head += f"  \n**Adapted** `{result['adapted_id']}`"
        if result["relative"]:
            head += "  \nRelative inverse depth: bigger (red) is nearer; the values have no unit or scale."
        if result["ply"] is not None and result["relative"]:
            head += "  \nThe point cloud uses a pseudo depth from the relative map: its shape, not its scale."
        ranges = [
            f"- {'base' if key == BASE else f'`{key}`'}: {viz.format_depth(lo, unit)} .. {viz.format_depth(hi, unit)}"
            for key, (lo, hi) in result["range"].items()
        ]
        return head + "\n\nColour range (1st-99th percentile):\n\n" + "\n".join(ranges)


# -- the way home and links into a Space (the landing page, the gallery) ------------------------------------
def back_link() -> str:
    """The HTML of a Space's "← hubkit" link to the landing page (`/` under `hubkit serve`, or the hub's URL
    from HUBKIT_SERVER_URL when the Space runs as its own server)."""
    target = os.environ.get("HUBKIT_SERVER_URL", "").rstrip("/") + "/"
    return f'<a href="{target}" class="hubkit-back" style="text-decoration:none">← hubkit</a>'


def query_choice(request: Any, key: str, allowed: list) -> Any:
    """The value of `?key=` in the page's URL when the menu offers it (a choice or a (label, value) pair's
    value), else None: a link may preselect a base or an adapter, never add one."""
    params = getattr(request, "query_params", None)
    value = params.get(key) if params is not None else None
    if not value:
        return None
    values = [c[1] if isinstance(c, tuple | list) else c for c in allowed]
    return value if value in values else None
