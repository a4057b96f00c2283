"""Image -> vector: an `image-embedding` model from the store, or the weight-free fallback features.

`FeatureEmbedder` needs no weights and always loads: colour layout (an 8 x 8 thumbnail), a colour histogram and
an edge-orientation histogram. It is what the service answers with when its model cannot load; catalogue indexes
hold its vectors too, so the fallback searches the same items.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .. import hub

logger = logging.getLogger(__name__)
FALLBACK = "fallback-features"


def model_revision(repo: str | Path, revision: str | None = None) -> str:
    """The store revision id (12 hex digits) `repo` resolves to; a folder reports 'folder'."""
    if Path(repo).expanduser().is_dir():
        return "folder"
    try:
        return hub.LocalStore(hub.local_home()).resolve_revision(str(repo), revision).id[:12]
    except Exception:  # a Hub repo or an odd store: the revision asked for is the best we know
        return revision or "unknown"


class ModelEmbedder:
    """An `image-embedding` model (repo id or folder), loaded on first use; vectors are L2-normalised."""

    def __init__(self, repo: str | Path, *, revision: str | None = None, pooling: str = "cls", device: str = "cpu"):
        self.repo, self.revision, self.pooling, self.device = str(repo), revision, pooling, device
        self.predictor = None

    @property
    def name(self) -> str:
        return self.repo

    def load(self) -> ModelEmbedder:
        if self.predictor is None:
            from ..predictor import load

            self.predictor = load("image-embedding", self.repo, revision=self.revision, device=self.device)
            self.predictor.model.eval()
            self.resolved_revision = model_revision(self.repo, self.revision)
        return self

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        self.load()
        p = self.predictor
        with torch.inference_mode():
            out = p.task.predict(p.model, p.processor, [im.convert("RGB") for im in images], pooling=self.pooling)
        return np.stack([e.vector for e in out]).astype(np.float32)


class FeatureEmbedder:
    """Weight-free features (384 dims): 8x8 colour layout, 4x4x4 colour histogram, 4x4 cells x 8 edge directions."""

    name = FALLBACK
    resolved_revision = "builtin"

    def load(self) -> FeatureEmbedder:
        return self

    @staticmethod
    def _one(image: Image.Image) -> np.ndarray:
        image = ImageOps.fit(image.convert("RGB"), (64, 64), Image.BILINEAR, centering=(0.5, 0.5))
        x = np.asarray(image, dtype=np.float32) / 255.0
        layout = np.asarray(image.resize((8, 8), Image.BOX), dtype=np.float32).ravel() / 255.0
        layout = layout - layout.mean()
        bins = np.minimum((x * 4).astype(int), 3)
        hist = np.bincount((bins[..., 0] * 16 + bins[..., 1] * 4 + bins[..., 2]).ravel(), minlength=64)
        hist = np.sqrt(hist / hist.sum())
        grey = x.mean(axis=2)
        gy, gx = np.gradient(grey)
        magnitude, angle = np.hypot(gx, gy), (np.arctan2(gy, gx) % np.pi) / np.pi
        direction = np.minimum((angle * 8).astype(int), 7)
        cells = np.zeros((4, 4, 8), np.float32)
        for cy in range(4):
            for cx in range(4):
                window = (slice(cy * 16, cy * 16 + 16), slice(cx * 16, cx * 16 + 16))
                cells[cy, cx] = np.bincount(direction[window].ravel(), magnitude[window].ravel(), minlength=8)
        edges = np.sqrt(cells.ravel() / max(float(cells.sum()), 1e-6))
        parts = [layout / max(np.linalg.norm(layout), 1e-6), hist, edges]
        vector = np.concatenate([p / max(np.linalg.norm(p), 1e-6) for p in parts])
        return vector / max(np.linalg.norm(vector), 1e-6)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        return np.stack([self._one(im) for im in images]).astype(np.float32)
