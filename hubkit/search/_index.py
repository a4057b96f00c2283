"""A vector index over catalogue items: faiss inner product on L2-normalised vectors (= cosine similarity).

Below `approximate_threshold` items the index is exact (`IndexFlatIP`); past it, approximate: HNSW (default, no
training, good recall) or IVF (`IndexIVFFlat`, trained on the vectors themselves). The vectors stay in numpy beside
the faiss index, so writes (add / remove) rebuild it from them and `save` writes what a replica needs to rebuild
the very same index.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

KINDS = ("auto", "flat", "hnsw", "ivf")
DEFAULT_APPROXIMATE_THRESHOLD = 50_000  # exact search of 50k x 384 floats is ~10 ms on one core
ITEM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss-cpu is a dependency
        raise ConfigError("visual search needs faiss: pip install faiss-cpu") from err
    return faiss


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim != 2:
        raise DataError(f"vectors must be a 2-D (N, D) array, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.all(np.abs(norms - 1) < 1e-6):  # already unit: keep the bits (fingerprints compare them)
        return vectors
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12))


def check_item_id(item_id: object) -> str:
    if not isinstance(item_id, str) or not ITEM_ID.match(item_id):
        raise DataError(
            f"Invalid item id {item_id!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return item_id


class VectorIndex:
    """Ids + unit vectors + per-item metadata, searchable by cosine similarity. Thread-safe."""

    def __init__(
        self,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[dict] | None = None,
        *,
        kind: str = "auto",
        approximate_threshold: int = DEFAULT_APPROXIMATE_THRESHOLD,
        hnsw_m: int = 32,
        ef_search: int = 64,
        nprobe: int = 16,
    ):
        if kind not in KINDS:
            raise ConfigError(f"index kind must be one of {KINDS}, got {kind!r}")
        vectors = normalize(vectors) if len(ids) else np.zeros((0, vectors.shape[-1]), np.float32)
        if len(ids) != len(vectors):
            raise DataError(f"{len(ids)} ids but {len(vectors)} vectors")
        if len(set(ids)) != len(ids):
            raise DataError("item ids must be unique")
        self.ids = list(ids)
        self.vectors = vectors
        self.metadata = list(metadata) if metadata is not None else [{} for _ in ids]
        self.requested_kind = kind
        self.approximate_threshold = approximate_threshold
        self.hnsw_m, self.ef_search, self.nprobe = hnsw_m, ef_search, nprobe
        self._lock = threading.RLock()
        self._rebuild()

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._positions

    @property
    def kind(self) -> str:
        """The index actually built: flat below the threshold with kind='auto', else the requested one."""
        if self.requested_kind != "auto":
            return self.requested_kind
        return "hnsw" if len(self.ids) >= self.approximate_threshold else "flat"

    def _rebuild(self) -> None:
        faiss = _faiss()
        dim, n, kind = self.vectors.shape[1], len(self.ids), self.kind
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = max(40, 2 * self.hnsw_m)
            index.hnsw.efSearch = self.ef_search
        elif kind == "ivf" and n > 0:
            nlist = max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))  # faiss wants ~39+ training points per list
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(self.vectors)
            index.nprobe = min(self.nprobe, nlist)
            self._quantizer = quantizer  # the IVF index does not own it: keep it alive
        else:
            index = faiss.IndexFlatIP(dim)
        if n:
            index.add(self.vectors)
        self._index = index
        self._positions = {item_id: i for i, item_id in enumerate(self.ids)}

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """For each query, up to `k` (position, cosine) pairs, best first."""
        queries = normalize(queries)
        if queries.shape[1] != self.dim:
            raise DataError(f"query vectors have {queries.shape[1]} dims, the index {self.dim}")
        with self._lock:
            if not self.ids:
                return [[] for _ in queries]
            scores, positions = self._index.search(queries, min(int(k), len(self.ids)))
        return [
            [(int(p), float(s)) for p, s in zip(row_p, row_s, strict=True) if p >= 0]
            for row_p, row_s in zip(positions, scores, strict=True)
        ]

    def add(self, item_id: str, vector: np.ndarray, metadata: dict | None = None) -> None:
        check_item_id(item_id)
        vector = normalize(np.asarray(vector, np.float32).reshape(1, -1))
        with self._lock:
            if item_id in self._positions:
                raise DataError(f"Item {item_id!r} is already in the catalogue; delete it first")
            if vector.shape[1] != self.dim:
                raise DataError(f"the vector has {vector.shape[1]} dims, the index {self.dim}")
            self.ids.append(item_id)
            self.metadata.append(dict(metadata or {}))
            self.vectors = np.concatenate([self.vectors, vector])
            self._rebuild()

    def remove(self, item_id: str) -> None:
        with self._lock:
            if item_id not in self._positions:
                raise KeyError(item_id)
            i = self._positions[item_id]
            del self.ids[i], self.metadata[i]
            self.vectors = np.delete(self.vectors, i, axis=0)
            self._rebuild()

    def fingerprint(self) -> str:
        """12 hex digits of sha256 over ids and vectors: equal on every replica that holds the same index."""
        with self._lock:
            digest = hashlib.sha256("\n".join(self.ids).encode())
            digest.update(self.vectors.tobytes())
        return digest.hexdigest()[:12]

    # -- files ------------------------------------------------------------------------------------------
    def save(self, folder: str | Path, *, name: str = "vectors") -> None:
        """`<name>.npy` (N, D) float32 and `<name>.ids.json`; metadata is the catalogue's (items.jsonl)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            np.save(folder / f"{name}.npy", self.vectors)
            (folder / f"{name}.ids.json").write_text(json.dumps(self.ids), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path, *, name: str = "vectors", metadata: dict[str, dict] | None = None, **kwargs):
        folder = Path(folder)
        try:
            vectors = np.load(folder / f"{name}.npy", allow_pickle=False)
            ids = json.loads((folder / f"{name}.ids.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"{folder} holds no readable {name}.npy / {name}.ids.json ({err})") from None
        rows = [dict((metadata or {}).get(i, {})) for i in ids]
        return cls(ids, vectors, rows, **kwargs)


def recall_at_k(exact: list[list[tuple[int, float]]], approximate: list[list[tuple[int, float]]], k: int) -> float:
    """Mean share of the exact top-k that the approximate top-k found."""
    hits = [
        len({p for p, _ in a[:k]} & {p for p, _ in e[:k]}) / max(1, min(k, len(e)))
        for e, a in zip(exact, approximate, strict=True)
    ]
    return float(np.mean(hits)) if hits else float("nan")
