"""The data a Segma run produces: regions (mask, box, label, score, source, features) of one image, and review."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from ..errors import ConfigError

Source = Literal["automatic", "detection", "detection+automatic", "manual"]
Status = Literal["pending", "accepted", "rejected"]
STATUSES = ("pending", "accepted", "rejected")
BACKGROUND = "background"
UNLABELLED = "unlabelled"  # an automatic mask no detector box and no classifier named; kept for review


@dataclass
class Region:
    """One labelled region of an image.

    `mask` is (H, W) bool at the image's size; `box` is xyxy pixels (x2, y2 exclusive, tight around the mask);
    `score` is the detector's score for detected regions, SAM's predicted IoU for automatic ones; `source` says which
    model found it ("detection+automatic" when a detector box matched an automatic mask); `features` holds the 61 HLBB
    features (None until computed); `status` is the review decision.
    """

    id: int
    mask: np.ndarray = field(repr=False)
    box: tuple[float, float, float, float]
    label: str
    score: float
    source: Source
    features: np.ndarray | None = field(default=None, repr=False)
    status: Status = "pending"

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox_xywh(self) -> list[float]:
        x1, y1, x2, y2 = self.box
        return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


@dataclass
class SegmaResult:
    """Everything one image's run produced: the regions, the caption, the classes and where they came from
    ("llm", "fallback": nouns of the caption, "given": `--classes`, "none"), the preset, the models and adapters
    used, and the seconds per stage."""

    image: Image.Image = field(repr=False)
    regions: list[Region]
    caption: str = ""
    classes: list[str] = field(default_factory=list)
    classes_source: Literal["llm", "fallback", "given", "none"] = "none"
    llm_answer: str = ""
    preset: str = "general"
    domain: str | None = None
    models: dict[str, str] = field(default_factory=dict)  # stage -> base id (and "+adapter" when one was active)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.size

    def labelled(self) -> list[Region]:
        """Regions that carry a class label (what counts as "found something"), rejected ones left out."""
        return [r for r in self.regions if r.label not in ("", BACKGROUND, UNLABELLED) and r.status != "rejected"]

    def review(self, decisions: dict[int, str]) -> None:
        """Apply a person's decisions: {region id: "accept" | "reject" | a new label}; unknown ids are refused."""
        by_id = {r.id: r for r in self.regions}
        unknown = sorted(set(decisions) - set(by_id))
        if unknown:
            raise ConfigError(f"No region with id {unknown} in this image; its regions are {sorted(by_id)}")
        for rid, decision in decisions.items():
            region = by_id[rid]
            text = str(decision).strip()
            if text in ("accept", "accepted"):
                region.status = "accepted"
            elif text in ("reject", "rejected"):
                region.status = "rejected"
            elif text:
                region.label, region.status = text.lower(), "accepted"
            else:
                raise ConfigError(f"Region {rid}: a decision is 'accept', 'reject' or a new label; got {decision!r}")
