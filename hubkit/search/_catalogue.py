"""A searchable catalogue as one data set repo, so every replica pulls the very same index.

    build_catalogue_index("shop/", model="me/garment-embedder", to="me/garment-index")   # embed, index, push
    catalogue = load_catalogue("me/garment-index")                                       # on each replica

The repo holds `index.json` (model repo + revision, dims, counts, the index fingerprint), `items.jsonl` (metadata
per item), `vectors.npy` + `vectors.ids.json` (the model's unit vectors), `fallback.npy` + `fallback.ids.json`
(the weight-free features, for when the model cannot load), `probe.npz` / `probe-fallback.npz` (a linear
category probe on each set of vectors, when items have a `category`) and `thumbs/<id>.jpg`.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .. import hub
from ..errors import DataError
from ._embed import FALLBACK, FeatureEmbedder, ModelEmbedder, model_revision
from ._index import DEFAULT_APPROXIMATE_THRESHOLD, VectorIndex, check_item_id

logger = logging.getLogger(__name__)
FORMAT = 1
THUMB_SIZE = 96


@dataclass
class CategoryProbe:
    """A linear softmax classifier on unit vectors: category scores for a query."""

    labels: list[str]
    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)

    def top_k(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        logits = vectors @ self.weight.T + self.bias
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        order = np.argsort(-probs, axis=1)[:, :k]
        return [[(self.labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)]

    def save(self, path: Path) -> None:
        np.savez(path, weight=self.weight, bias=self.bias, labels=np.asarray(self.labels))

    @classmethod
    def load(cls, path: Path) -> CategoryProbe:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                [str(x) for x in data["labels"]], data["weight"].astype(np.float32), data["bias"].astype(np.float32)
            )

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: list[str], *, seed: int = 0) -> CategoryProbe:
        from sklearn.linear_model import LogisticRegression

        classes = sorted(set(labels))
        if len(classes) < 2:
            raise DataError("a category probe needs at least two categories")
        # Embeddings sit in a narrow cone (cosines ~0.9): standardise, fit, then fold the scaling into W and b.
        mean, std = vectors.mean(axis=0), vectors.std(axis=0) + 1e-6
        clf = LogisticRegression(C=1.0, max_iter=5000, random_state=seed).fit((vectors - mean) / std, labels)
        weight = clf.coef_ / std
        bias = clf.intercept_ - weight @ mean
        return cls([str(c) for c in clf.classes_], weight.astype(np.float32), bias.astype(np.float32))


@dataclass
class Catalogue:
    """A loaded catalogue: the model's index, the fallback's index, probes, thumbnails and the repo facts."""

    info: dict
    index: VectorIndex
    fallback_index: VectorIndex
    probe: CategoryProbe | None
    fallback_probe: CategoryProbe | None
    thumbs: dict[str, bytes] = field(default_factory=dict)
    repo: str = ""
    revision: str = ""

    @property
    def version(self) -> str:
        """`<store revision>:<fingerprint>`: the same on every replica serving the same index."""
        return f"{self.revision or 'folder'}:{self.index.fingerprint()}"

    def for_embedder(self, fallback: bool) -> tuple[VectorIndex, CategoryProbe | None]:
        return (self.fallback_index, self.fallback_probe) if fallback else (self.index, self.probe)


def _thumbnail(image: Image.Image, size: int) -> bytes:
    image = image.convert("RGB")
    image.thumbnail((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _embed_all(embedder, paths: list[Path], batch_size: int) -> np.ndarray:
    out = []
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start : start + batch_size]:
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        out.append(embedder.embed(images))
    return np.concatenate(out)


def write_catalogue_index(
    folder: str | Path,
    out: str | Path,
    *,
    model: str | Path,
    revision: str | None = None,
    probe_views: int = 2,
    batch_size: int = 32,
    thumb_size: int = THUMB_SIZE,
    seed: int = 0,
) -> Path:
    """Embed a catalogue folder (`metadata.jsonl` + images, see hubkit.data.garments) into the repo layout at `out`."""
    from ..data.garments import camera_view, read_catalogue

    folder, out = Path(folder), Path(out)
    rows = read_catalogue(folder)
    if not rows:
        raise DataError(f"{folder}/metadata.jsonl lists no items")
    ids = [check_item_id(row["id"]) for row in rows]
    if len(set(ids)) != len(ids):
        raise DataError(f"{folder}/metadata.jsonl repeats item ids")
    paths = []
    for row in rows:
        path = (folder / row["file"]).resolve()
        if not path.is_relative_to(folder.resolve()) or not path.is_file():
            raise DataError(f"item {row['id']!r}: {row['file']!r} is not a file inside {folder}")
        paths.append(path)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    embedder, features = ModelEmbedder(model, revision=revision).load(), FeatureEmbedder()
    metadata = [{k: v for k, v in row.items() if k != "file"} for row in rows]
    vectors = {"vectors": _embed_all(embedder, paths, batch_size), "fallback": _embed_all(features, paths, batch_size)}
    for name, vecs in vectors.items():
        VectorIndex(ids, vecs, metadata, kind="flat").save(out, name=name)
    with open(out / "items.jsonl", "w", encoding="utf-8") as fh:
        for row in metadata:
            fh.write(json.dumps(row) + "\n")
    for item_id, path in zip(ids, paths, strict=True):
        with Image.open(path) as img:
            (out / "thumbs" / f"{item_id}.jpg").write_bytes(_thumbnail(img, thumb_size))
    categories = [str(row.get("category", "")) for row in rows]
    has_probe = all(categories) and len(set(categories)) >= 2
    if has_probe:  # the probe also sees camera-like views, so it learns the silhouette, not the studio
        rng = np.random.default_rng(seed)
        for name, emb in (("probe", embedder), ("probe-fallback", features)):
            train_x, train_y = [vectors["vectors" if name == "probe" else "fallback"]], list(categories)
            for _ in range(probe_views):
                views = []
                for path in paths:
                    with Image.open(path) as img:
                        views.append(camera_view(img, rng))
                train_x.append(
                    np.concatenate([emb.embed(views[i : i + batch_size]) for i in range(0, len(views), batch_size)])
                )
                train_y += categories
            CategoryProbe.fit(np.concatenate(train_x), train_y, seed=seed).save(out / f"{name}.npz")
    info = {
        "format": FORMAT,
        "model": str(model),
        "model_revision": model_revision(model, revision),
        "dim": int(vectors["vectors"].shape[1]),
        "fallback": FALLBACK,
        "fallback_dim": int(vectors["fallback"].shape[1]),
        "count": len(ids),
        "categories": sorted(set(categories)) if has_probe else [],
        "fingerprint": VectorIndex(ids, vectors["vectors"], kind="flat").fingerprint(),
    }
    (out / "index.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def build_catalogue_index(
    folder: str | Path, *, model: str | Path, to: str, hub_name: str | None = None, message: str | None = None, **kwargs
):
    """Embed `folder` with `model` and push the index as the data set repo `to`; returns the RevisionInfo."""
    with tempfile.TemporaryDirectory(prefix="hubkit-index-") as tmp:
        write_catalogue_index(folder, Path(tmp) / "index", model=model, **kwargs)
        msg = message or f"visual-search index of {Path(folder).name} with {model}"
        return hub.push(Path(tmp) / "index", to, hub=hub_name, repo_type="dataset", message=msg)


def load_catalogue(
    repo: str | Path,
    *,
    revision: str | None = None,
    kind: str = "auto",
    approximate_threshold: int = DEFAULT_APPROXIMATE_THRESHOLD,
) -> Catalogue:
    """A catalogue from its data set repo (or a folder in that layout)."""
    path = Path(repo).expanduser()
    if path.is_dir():
        folder, rev = path, ""
    else:
        folder = hub.pull(str(repo), repo_type="dataset", revision=revision)
        try:
            rev = hub.LocalStore(hub.local_home()).resolve_revision(str(repo), revision, repo_type="dataset").id[:12]
        except Exception:
            rev = revision or ""
    try:
        info = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(
            f"{repo} is not a search index (index.json: {err}); build one with `hubkit search index`"
        ) from None
    if info.get("format") != FORMAT:
        raise DataError(f"{repo}: index format {info.get('format')!r} is not {FORMAT}; rebuild it")
    metadata = {}
    for line in (folder / "items.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            metadata[row["id"]] = row
    options = dict(kind=kind, approximate_threshold=approximate_threshold)
    index = VectorIndex.load(folder, name="vectors", metadata=metadata, **options)
    fallback = VectorIndex.load(folder, name="fallback", metadata=metadata, **options)
    probes = [
        CategoryProbe.load(folder / f"{n}.npz") if (folder / f"{n}.npz").is_file() else None
        for n in ("probe", "probe-fallback")
    ]
    thumbs = {}
    for item_id in index.ids:
        thumb = folder / "thumbs" / f"{item_id}.jpg"
        if thumb.is_file():
            thumbs[item_id] = thumb.read_bytes()
    return Catalogue(info, index, fallback, probes[0], probes[1], thumbs, repo=str(repo), revision=rev)


def thumbnail_bytes(image: Image.Image) -> bytes:
    return _thumbnail(image, THUMB_SIZE)
