"""The search service's logic, apart from HTTP: model versions (A/B), lazy loading with a fallback, micro-batching
of concurrent requests and Prometheus metrics.

    service = SearchService([Version("a", "me/garment-index", weight=0.9), Version("b", "me/garment-index-v2", 0.1)])
    service.start()                      # loads in a background thread; `ready` once every version can answer
    result = await service.search(image, k=5, client="user-42")   # the same client always gets the same version

Each version is an index repo; the index names the model that embedded it (index.json), so a version's queries
and its catalogue always share one embedding space. A version whose model fails to load answers with the
weight-free fallback features and the fallback vectors stored in its index; `health()` says so.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError, RepoNotFoundError
from ._catalogue import Catalogue, load_catalogue, thumbnail_bytes
from ._embed import FeatureEmbedder, ModelEmbedder
from ._index import check_item_id

logger = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Version:
    """One model version: an index repo (whose index.json names the model) and its share of the traffic."""

    name: str
    index: str
    weight: float = 1.0
    model: str | None = None  # overrides index.json's model (same embedding space assumed)
    revision: str | None = None  # the index repo's revision


# -- micro-batching --------------------------------------------------------------------------------------
class MicroBatcher:
    """Collects concurrent calls for up to `window_ms` (or `max_batch` items) and runs `fn` once on the batch in
    a worker thread. `max_batch=1` turns batching off (each call runs alone, still off the event loop)."""

    def __init__(self, fn: Callable[[list], list], *, max_batch: int = 8, window_ms: float = 5.0):
        if max_batch < 1 or window_ms < 0:
            raise ConfigError(f"max_batch must be >= 1 and window_ms >= 0, got {max_batch!r}, {window_ms!r}")
        self.fn, self.max_batch, self.window = fn, max_batch, window_ms / 1000.0
        # One thread runs the model: batches are serial anyway, and torch's intra-op thread pool stays with it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubkit-search-embed")
        self._queue: asyncio.Queue | None = None
        self._loop = None
        self.batches = 0
        self.items = 0

    async def submit(self, item):
        """The result of `fn` for `item`, with (queue_s, run_s, batch_size)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests, a restarted server): a new queue and worker
            self._loop, self._queue = loop, asyncio.Queue()
            loop.create_task(self._worker(self._queue))
        future = loop.create_future()
        await self._queue.put((item, future, time.perf_counter()))
        return await future

    async def _worker(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.window
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [item for item, _, _ in batch])
                error = None
            except Exception as err:  # every waiting request gets the error; the worker lives on
                results, error = None, err
            run = time.perf_counter() - started
            self.batches += 1
            self.items += len(batch)
            for i, (_, future, queued) in enumerate(batch):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result((results[i], started - queued, run, len(batch)))


# -- metrics -----------------------------------------------------------------------------------------------
def _labels(**labels: str) -> str:
    def esc(v: str) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


@dataclass
class Metrics:
    """Requests, errors and a latency histogram per (route, version), as Prometheus text."""

    requests: dict = field(default_factory=lambda: defaultdict(int))  # (route, version, code) -> n
    errors: dict = field(default_factory=lambda: defaultdict(int))  # (route, version) -> n
    buckets: dict = field(default_factory=dict)  # (route, version) -> [counts per bucket]
    sums: dict = field(default_factory=lambda: defaultdict(float))
    counts: dict = field(default_factory=lambda: defaultdict(int))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, route: str, version: str, code: int, seconds: float) -> None:
        with self.lock:
            self.requests[(route, version, str(code))] += 1
            if code >= 400:
                self.errors[(route, version)] += 1
            counts = self.buckets.setdefault((route, version), [0] * len(LATENCY_BUCKETS))
            i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
            if i < len(counts):
                counts[i] += 1
            self.sums[(route, version)] += seconds
            self.counts[(route, version)] += 1

    def render(self, gauges: list[tuple[str, str, dict, float]] = ()) -> str:
        lines = []
        with self.lock:
            lines += [
                "# HELP hubkit_search_requests_total HTTP requests by route, model version and status code.",
                "# TYPE hubkit_search_requests_total counter",
            ]
            for (route, version, code), n in sorted(self.requests.items()):
                lines.append(f"hubkit_search_requests_total{_labels(route=route, version=version, code=code)} {n}")
            lines += [
                "# HELP hubkit_search_errors_total HTTP responses with status >= 400 by route and version.",
                "# TYPE hubkit_search_errors_total counter",
            ]
            for (route, version), n in sorted(self.errors.items()):
                lines.append(f"hubkit_search_errors_total{_labels(route=route, version=version)} {n}")
            lines += [
                "# HELP hubkit_search_request_seconds Request latency by route and model version.",
                "# TYPE hubkit_search_request_seconds histogram",
            ]
            for key in sorted(self.buckets):
                route, version = key
                cumulative = 0
                for le, n in zip(LATENCY_BUCKETS, self.buckets[key], strict=True):
                    cumulative += n
                    lines.append(
                        f"hubkit_search_request_seconds_bucket{_labels(route=route, version=version, le=str(le))} "
                        f"{cumulative}"
                    )
                labels = _labels(route=route, version=version, le="+Inf")
                lines.append(f"hubkit_search_request_seconds_bucket{labels} {self.counts[key]}")
                lines.append(
                    f"hubkit_search_request_seconds_sum{_labels(route=route, version=version)} {self.sums[key]:.6f}"
                )
                lines.append(
                    f"hubkit_search_request_seconds_count{_labels(route=route, version=version)} {self.counts[key]}"
                )
        seen = set()
        for name, help_text, labels, value in gauges:
            if name not in seen:
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
                seen.add(name)
            lines.append(f"{name}{_labels(**labels)} {value:g}")
        return "\n".join(lines) + "\n"


# -- one version -------------------------------------------------------------------------------------------
class _Served:
    """A loaded version: its catalogue, its embedder (model or fallback) and its batcher."""

    def __init__(self, spec: Version, catalogue: Catalogue, embedder, fallback_reason: str | None, batching: dict):
        self.spec, self.catalogue, self.embedder, self.fallback_reason = spec, catalogue, embedder, fallback_reason
        self.batcher = MicroBatcher(self.embedder.embed_list, **batching)

    @property
    def fallback(self) -> bool:
        return self.fallback_reason is not None

    def describe(self) -> dict:
        cat = self.catalogue
        index, _ = cat.for_embedder(self.fallback)
        return {
            "model": {
                "repo": self.embedder.name,
                "revision": self.embedder.resolved_revision,
                "fallback": self.fallback,
                **({"fallback_reason": self.fallback_reason} if self.fallback else {}),
            },
            "index": {"repo": cat.repo, "version": cat.version, "size": len(index), "kind": index.kind},
        }


class _ListEmbedder:
    """Adapts an embedder to the batcher: a list of images in, a list of vectors out."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.resolved_revision = getattr(inner, "resolved_revision", "unknown")

    def embed_list(self, images: list[Image.Image]) -> list[np.ndarray]:
        return list(self.inner.embed(images))


class SearchService:
    """Versions + lazy loading + batching + metrics; the HTTP layer is `hubkit.search.create_app`."""

    def __init__(
        self,
        versions: list[Version],
        *,
        fallback: bool = True,
        max_batch: int = 8,
        window_ms: float = 5.0,
        device: str = "cpu",
        index_kind: str = "auto",
        loader: Callable[[Version], ModelEmbedder] | None = None,
    ):
        if not versions:
            raise ConfigError("the search service needs at least one version (an index repo)")
        names = [v.name for v in versions]
        if len(set(names)) != len(names):
            raise ConfigError(f"version names must be unique, got {names}")
        if any(v.weight < 0 for v in versions) or sum(v.weight for v in versions) <= 0:
            raise ConfigError(f"traffic weights must be >= 0 with a positive sum, got {[v.weight for v in versions]}")
        self.versions, self.fallback_allowed, self.device, self.index_kind = versions, fallback, device, index_kind
        self.batching = {"max_batch": max_batch, "window_ms": window_ms}
        self.loader = loader
        self.metrics = Metrics()
        self.served: dict[str, _Served] = {}
        self.error: str | None = None
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._writes = threading.Lock()

    # -- loading ---------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return len(self.served) == len(self.versions)

    def start(self) -> None:
        """Load in a background thread (health answers 503 meanwhile); returns at once."""
        with self._start_lock:  # not self._lock: the loading thread holds that one for the whole load
            if self._thread is None and not self.ready:
                self._thread = threading.Thread(target=self._load_quietly, name="hubkit-search-load", daemon=True)
                self._thread.start()

    def _load_quietly(self) -> None:
        try:
            self.load()
        except Exception as err:
            hint = ""
            if isinstance(err, RepoNotFoundError) and err.repo_type == "dataset":
                hint = (
                    " Build the index with `hubkit search index DIR --model REPO --to REPO` (or `hubkit search demo`)."
                )
            logger.warning(
                "search service failed to load: %s%s", err, hint, exc_info=logger.isEnabledFor(logging.DEBUG)
            )
            self.error = f"{type(err).__name__}: {err}{hint}"

    def load(self) -> SearchService:
        """Load every version once (the lazy singleton: concurrent callers wait for the one load)."""
        with self._lock:
            for spec in self.versions:
                if spec.name not in self.served:
                    self.served[spec.name] = self._load_version(spec)
            self.error = None
        return self

    def _load_version(self, spec: Version) -> _Served:
        catalogue = load_catalogue(spec.index, revision=spec.revision, kind=self.index_kind)
        model = spec.model or catalogue.info.get("model")
        reason = None
        try:
            embedder = self.loader(spec) if self.loader else ModelEmbedder(model, device=self.device)
            embedder.load()
        except Exception as err:
            if not self.fallback_allowed:
                raise
            reason = f"{type(err).__name__}: {' '.join(str(err).split())}"[:300]
            logger.warning(
                "version %s: model %s failed to load (%s); the fallback features serve", spec.name, model, reason
            )
            embedder = FeatureEmbedder()
        return _Served(spec, catalogue, _ListEmbedder(embedder), reason, self.batching)

    # -- routing ---------------------------------------------------------------------------------------
    def pick_version(self, client: str | None = None) -> str:
        """A version by traffic weight: sticky per client id (a hash), random without one."""
        total = sum(v.weight for v in self.versions)
        if client:
            point = int.from_bytes(hashlib.sha256(client.encode()).digest()[:8], "big") / 2**64 * total
        else:
            point = random.random() * total
        for v in self.versions:
            point -= v.weight
            if point < 0:
                return v.name
        return self.versions[-1].name

    # -- queries ---------------------------------------------------------------------------------------
    async def search(
        self, image: Image.Image, *, k: int = 5, version: str | None = None, client: str | None = None
    ) -> dict:
        """Top-k categories and the k most similar items, with timings (ms) per stage."""
        name = version or self.pick_version(client)
        served = self.served[name]
        vector, queue_s, embed_s, batch_size = await served.batcher.submit(image)
        started = time.perf_counter()
        index, probe = served.catalogue.for_embedder(served.fallback)
        hits = index.search(vector[None], k)[0]
        categories = (
            [{"label": c, "score": s} for c, s in probe.top_k(vector[None], min(k, len(probe.labels)))[0]]
            if probe is not None
            else []
        )
        items = [{"id": index.ids[p], "score": s, "metadata": index.metadata[p]} for p, s in hits]
        search_s = time.perf_counter() - started
        return {
            "version": name,
            **served.describe(),
            "categories": categories,
            "results": items,
            "batch_size": batch_size,
            "timings_ms": {"queue": queue_s * 1e3, "embed": embed_s * 1e3, "search": search_s * 1e3},
        }

    def thumbnail(self, item_id: str) -> bytes | None:
        for served in self.served.values():
            data = served.catalogue.thumbs.get(item_id)
            if data is not None:
                return data
        return None

    def examples(self, n: int = 6) -> list[dict]:
        if not self.served:
            return []
        served = next(iter(self.served.values()))
        ids = served.catalogue.index.ids
        step = max(1, len(ids) // n)
        return [{"id": i, "metadata": served.catalogue.index.metadata[p]} for p, i in enumerate(ids) if p % step == 0][
            :n
        ]

    # -- catalogue writes ------------------------------------------------------------------------------
    def add_item(self, item_id: str, image: Image.Image, metadata: dict) -> dict:
        """Add an item to every version (its model's vector and the fallback's). In this replica's memory."""
        check_item_id(item_id)
        with self._writes:
            for served in self.served.values():
                if item_id in served.catalogue.index:
                    raise DataError(f"Item {item_id!r} is already in the catalogue; delete it first")
            features = FeatureEmbedder().embed([image])[0]
            meta = {**metadata, "id": item_id}
            for served in self.served.values():
                cat = served.catalogue
                if not served.fallback:
                    cat.index.add(item_id, served.embedder.embed_list([image])[0], meta)
                else:  # the model is down: keep the model index consistent by not serving this id there
                    logger.warning("item %s added to the fallback index only (version %s)", item_id, served.spec.name)
                cat.fallback_index.add(item_id, features, meta)
                cat.thumbs[item_id] = thumbnail_bytes(image)
        return {"id": item_id, "metadata": meta}

    def remove_item(self, item_id: str) -> bool:
        with self._writes:
            found = False
            for served in self.served.values():
                cat = served.catalogue
                for index in (cat.index, cat.fallback_index):
                    if item_id in index:
                        index.remove(item_id)
                        found = True
                cat.thumbs.pop(item_id, None)
        return found

    # -- status ----------------------------------------------------------------------------------------
    def health(self) -> tuple[int, dict]:
        body = {
            "status": "ok" if self.ready else ("error" if self.error else "loading"),
            "ready": self.ready,
            "versions": {},
            "traffic": {v.name: v.weight / sum(x.weight for x in self.versions) for v in self.versions},
        }
        if self.error:
            body["error"] = self.error
        for spec in self.versions:
            served = self.served.get(spec.name)
            body["versions"][spec.name] = (
                served.describe() if served else {"index": {"repo": spec.index}, "loaded": False}
            )
        if self.ready and any(s.fallback for s in self.served.values()):
            body["status"] = "degraded"
            body["fallback"] = sorted(n for n, s in self.served.items() if s.fallback)
        return (200 if self.ready else 503), body

    def gauges(self) -> list[tuple[str, str, dict, float]]:
        out = []
        for name, served in self.served.items():
            model = served.embedder.name
            out.append(
                (
                    "hubkit_search_model_ready",
                    "1 once the version answers (0 if never loaded).",
                    {"version": name, "model": model},
                    1.0,
                )
            )
            out.append(
                (
                    "hubkit_search_fallback",
                    "1 while the fallback features serve this version.",
                    {"version": name},
                    1.0 if served.fallback else 0.0,
                )
            )
            index, _ = served.catalogue.for_embedder(served.fallback)
            out.append(("hubkit_search_index_items", "Items in the version's index.", {"version": name}, len(index)))
            b = served.batcher
            out.append(("hubkit_search_batches", "Embedding batches run.", {"version": name}, b.batches))
            out.append(("hubkit_search_batched_items", "Images embedded in batches.", {"version": name}, b.items))
        return out
