"""The plant Space's logic: a leaf photo (+ an optional symptom text) through two PlantVLM models side by side.

`spaces/plant/app.py` builds the widgets and calls these; nothing here imports Gradio, so it is tested without a
browser. Models come from the process's shared pool (`hubkit.pool`), loaded on first use.

    demo = PlantDemo()
    run = demo.run("leaf.jpg", text="brown rings on old leaves", models=["hubkit-tiny/plant-vlm", "me/plant"])
    run.predictions["me/plant"].labels          # top-k classes, best first
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import hub
from ..errors import ConfigError, HubkitError
from ..spaces_support import MicroBatcher, RequestDirs, check_upload

logger = logging.getLogger(__name__)
TASK = "plant-disease"
ARCHITECTURE = "PlantVLM"
TINY = "hubkit-tiny/plant-vlm"
MODELS_ENV = "HUBKIT_PLANT_MODELS"  # more model ids a request may load (comma-separated), e.g. Hub ids on a Space
DESCRIPTIONS_FILE = "descriptions.json"  # {class: reference description}, written by the plant_vlm recipe
MAX_TEXT = 1000  # characters of symptom text a request may send
MAX_TOP_K = 20
CONCURRENCY = 16  # requests the Space runs at once: enough to fill a batch of 8 while the previous one runs
MODEL_NOT_AVAILABLE = (
    "That model is not available here: pick one from the Model menus (PlantVLM models in this server's store, "
    "plus those the operator lists in HUBKIT_PLANT_MODELS)."
)


OFFERED_TTL_S = 10.0  # how long a store listing answers "may this request load that model?"


@dataclass
class PlantAnswer:
    """One model's answer: top-k classes with probabilities, the generated description (when asked for) and the
    reference description of the top class (when the model carries its classes' texts)."""

    model: str
    labels: list[str]
    scores: list[float]
    description: str | None
    reference: str | None
    seconds: float


@dataclass
class PlantRun:
    text: str | None
    answers: list[PlantAnswer] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def display_name(label: str) -> str:
    """A class name as people read it: PlantVillage's "Tomato___Early_blight" -> "Tomato · Early blight"."""
    return " · ".join(part.replace("_", " ").strip() for part in label.split("___") if part.strip()) or label


def _is_plant_model(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return ARCHITECTURE in (config.get("architectures") or [])


class PlantDemo:
    """Lists PlantVLM models in the local store and answers requests with one or two of them."""

    def __init__(self, *, device: str = "cpu", pool=None, max_batch_size: int = 8):
        self.device = device
        self._pool = pool
        # a request's folder must outlive its handler until Gradio copies the file: keep several times the requests
        # that run at once (the Space's concurrency_limit, CONCURRENCY)
        self.outputs = RequestDirs("hubkit-plant-", keep=4 * CONCURRENCY)
        self.max_batch_size = max_batch_size
        self._batchers: dict[str, MicroBatcher] = {}  # model id -> its batcher (requests arriving together share
        self._batchers_lock = threading.Lock()  # one forward pass; each still gets its own answer or error)
        self._offered: tuple[float, set[str]] = (float("-inf"), set())  # (listed at, model ids) for _is_offered

    @property
    def pool(self):
        from ..pool import get_pool

        return self._pool or get_pool()

    # -- menus ------------------------------------------------------------------------------------------------
    def available_models(self) -> list[str]:
        """PlantVLM repos in the local store (config.json names the architecture), the tiny one first, then the
        rest newest first, then the operator's extra ids."""
        store = hub.LocalStore(hub.local_home())
        found = []
        for ref in store.list_repos("model"):
            revisions = store.list_revisions(ref.repo_id)
            if not revisions or "config.json" not in revisions[0].files:
                continue
            if _is_plant_model(store.pull(ref.repo_id, include=["config.json"])):
                found.append((revisions[0].time, ref.repo_id))
        names = [name for _, name in sorted(found, key=lambda x: x[0], reverse=True)]
        if TINY in names:
            names = [TINY, *(n for n in names if n != TINY)]
        extra = [m.strip() for m in os.environ.get(MODELS_ENV, "").split(",") if m.strip()]
        names += [m for m in extra if m not in names]
        self._offered = (time.monotonic(), set(names))
        return names

    def _is_offered(self, models: list[str]) -> bool:
        """Whether a request may load `models`. Listing the store reads every repo's head (a few hundred ms on a
        full store): a listing younger than OFFERED_TTL_S answers; a name missing from it gets a fresh listing, so
        a model pushed a moment ago is never refused."""
        stamp, offered = self._offered
        if time.monotonic() - stamp < OFFERED_TTL_S and all(m in offered for m in models):
            return True
        offered = set(self.available_models())
        return all(m in offered for m in models)

    def default_models(self) -> list[str]:
        """What the page starts with: the base (the tiny model offline) beside the newest trained model."""
        models = self.available_models()
        return models[:2]

    def loaded(self, *models: str | None) -> bool:
        """Whether every named model is already in the pool (False: this request loads one, say so first)."""
        try:
            return all(self.pool.peek(TASK, m, device=self.device) is not None for m in models if m)
        except (HubkitError, OSError, ValueError):
            return True  # a name the run will refuse: nothing to load

    # -- a request --------------------------------------------------------------------------------------------
    def run(
        self,
        image: Any,
        *,
        text: str | None = None,
        models: list[str | None] | None = None,
        top_k: int = 5,
        describe: bool = False,
        batch: bool = False,
    ) -> PlantRun:
        """Top-k classes from each picked model (one or two; the same model twice runs once). Raises
        InvalidImageError for an unusable upload, ConfigError for bad options, HubkitError for a model this server
        does not offer — all before any model loads. `batch`: this request may share a forward pass with others
        running at the same time (up to `max_batch_size`; the Space's default)."""
        pil = check_upload(image)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise ConfigError(f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {top_k!r}.")
        text = (text or "").strip() or None
        if text is not None and len(text) > MAX_TEXT:
            raise ConfigError(f"The symptom text is {len(text)} characters; keep it under {MAX_TEXT}.")
        picked = list(dict.fromkeys(m for m in (models or self.default_models()) if m))
        if not picked:
            raise HubkitError("No model picked, and none is in the store: run `hubkit bootstrap` or train one.")
        if not self._is_offered(picked):
            raise HubkitError(MODEL_NOT_AVAILABLE)
        run = PlantRun(text=text)
        for name in picked:
            start = time.perf_counter()
            if batch:
                prediction = self._batcher(name)((pil, text, top_k, describe))
            else:
                prediction = self._predict_many(name, [(pil, text, top_k, describe)])[0]
            seconds = time.perf_counter() - start
            labels = list(prediction.labels)
            reference = self.reference(name, labels[0]) if labels else None
            run.answers.append(
                PlantAnswer(
                    name, labels, [float(s) for s in prediction.scores], prediction.description, reference, seconds
                )  # fmt: skip
            )
        folder = self.outputs.new()
        out = folder / "prediction.json"
        out.write_text(json.dumps(self.as_dict(run), ensure_ascii=False, indent=2) + "\n")
        run.files = [out]
        return run

    def _batcher(self, model: str) -> MicroBatcher:
        with self._batchers_lock:
            if model not in self._batchers:
                self._batchers[model] = MicroBatcher(
                    lambda items: self._predict_many(model, items),
                    max_batch_size=self.max_batch_size,
                    name=f"plant-batcher-{model}",
                )
            return self._batchers[model]

    def _predict_many(self, model: str, items: list[tuple]) -> list:
        """Predictions for (image, text, top_k, describe) items with one forward pass per (top_k, describe)."""
        predictor = self.pool.predictor(TASK, model, device=self.device)
        out: list = [None] * len(items)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, (_, _, top_k, describe) in enumerate(items):
            groups.setdefault((top_k, describe), []).append(i)
        for (top_k, describe), rows in groups.items():
            predictions = predictor.predict([items[i][0] for i in rows], texts=[items[i][1] for i in rows],
                                            top_k=top_k, generate_description=describe)  # fmt: skip
            for i, prediction in zip(rows, predictions, strict=True):
                out[i] = prediction
        return out

    def reference(self, model: str, label: str) -> str | None:
        """The model's reference description of `label` (descriptions.json in its repo), if it has one."""
        try:
            folder = hub.pull(model, include=[DESCRIPTIONS_FILE])
            return json.loads((folder / DESCRIPTIONS_FILE).read_text()).get(label)
        except (HubkitError, OSError, ValueError):
            return None

    # -- views ------------------------------------------------------------------------------------------------
    @staticmethod
    def as_dict(run: PlantRun) -> dict:
        return {
            "text": run.text,
            "models": [
                {"model": a.model, "top_k": [{"class": c, "probability": round(p, 6)} for c, p in
                                              zip(a.labels, a.scores, strict=True)],
                 "description": a.description, "reference": a.reference}
                for a in run.answers
            ],
        }  # fmt: skip

    @staticmethod
    def label_values(answer: PlantAnswer) -> dict[str, float]:
        """{class as people read it: probability} for a bar chart of the top-k."""
        return {display_name(c): s for c, s in zip(answer.labels, answer.scores, strict=True)}

    @staticmethod
    def summary(answer: PlantAnswer) -> str:
        lines = [f"**{answer.model}** — top class **{display_name(answer.labels[0])}** ({answer.scores[0]:.1%}), "
                 f"{answer.seconds * 1000:.0f} ms"]  # fmt: skip
        if answer.description is not None:
            lines += ["", f"*Generated description:* {answer.description or '(empty)'}"]
        if answer.reference:
            lines += ["", f"*Reference text for {display_name(answer.labels[0])}:* {answer.reference}"]
        if answer.model.startswith("hubkit-tiny/"):
            lines += ["", "Random-weight tiny model (offline demo): its answers are meaningless."]
        return "\n".join(lines)
