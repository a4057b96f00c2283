"""The PixCell Space's logic: N samples from the base beside N from the base + an adapter, for one H&E patch.

`spaces/pixcell/app.py` builds the widgets and calls these; nothing here imports Gradio. The base and its adapter
share one model in the process's pool (`hubkit.pool`): the base samples run with the adapter off. When the adapter
carries its target domain's colour statistics (``target_colour.json``, written by the pixcell_lora recipe), each set's
colour distance to that domain is shown: the number the adaptation should lower.

    demo = PixCellDemo()
    run = demo.run("patch.png", adapter="me/pixcell-nct", num_images=4, num_inference_steps=20)
    run.base_images, run.adapted_images, run.distances
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, HubkitError
from ..predictor import BASE
from ..spaces_support import (
    ADAPTER_NOT_AVAILABLE,
    RequestDirs,
    _adapter_name,
    available_adapters,
    available_bases,
    check_upload,
    default_base,
    resolve_adapter,
)

logger = logging.getLogger(__name__)
TASK = "histology-generation"
TARGET_COLOUR_FILE = "target_colour.json"  # ColourStats.to_dict() of the adapter's training patches
MAX_IMAGES = 8
MAX_STEPS = 100
MAX_GUIDANCE = 20.0


@dataclass
class PixCellRun:
    base: str
    adapter: str | None
    base_images: list  # PIL images
    adapted_images: list
    distances: dict[str, float | None] = field(default_factory=dict)  # "base" / "adapted" -> colour_distance
    seconds: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


class PixCellDemo:
    def __init__(self, *, device: str = "cpu", pool=None):
        self.device = device
        self._pool = pool
        self._lock = threading.Lock()
        self.outputs = RequestDirs("hubkit-pixcell-")

    @property
    def pool(self):
        from ..pool import get_pool

        return self._pool or get_pool()

    # -- menus ----------------------------------------------------------------------------------------------
    def default_base(self) -> str:
        return default_base(TASK)

    def available_bases(self) -> list[str]:
        return available_bases(TASK)

    def available_adapters(self, base: str | None = None) -> list[str]:
        return available_adapters(TASK, base or self.default_base())

    # -- a request ------------------------------------------------------------------------------------------
    def run(
        self,
        image: Any,
        *,
        base: str | None = None,
        adapter: str | None = None,
        sampler: str = "dpm++",
        num_inference_steps: int = 20,
        guidance_scale: float = 1.5,
        num_images: int = 4,
        seed: int = 0,
        progress: Callable[[float, str], None] | None = None,
    ) -> PixCellRun:
        """N base samples (and N adapted ones with an adapter) conditioned on `image`. Everything a request sends is
        checked before any model loads: InvalidImageError, ConfigError or HubkitError with the reason."""
        from ..pixcell.sampling import sampler_name

        pil = check_upload(image)
        base = base or self.default_base()
        if base not in set(self.available_bases()):
            raise HubkitError(f"Base {base!r} is not offered here. Choose one of: {', '.join(self.available_bases())}.")
        sampler_name(sampler)
        checks = [
            (isinstance(num_inference_steps, int) and 1 <= num_inference_steps <= MAX_STEPS, "steps",
             f"a whole number from 1 to {MAX_STEPS}"),
            (isinstance(num_images, int) and 1 <= num_images <= MAX_IMAGES, "samples", f"1 to {MAX_IMAGES}"),
            (isinstance(guidance_scale, (int, float)) and 0 <= guidance_scale <= MAX_GUIDANCE, "guidance",
             f"from 0 to {MAX_GUIDANCE:g}"),
            (isinstance(seed, int) and 0 <= seed < 2**31, "seed", "a whole number from 0 to 2^31 - 1"),
        ]  # fmt: skip
        for ok, name, what in checks:
            if not ok:
                raise ConfigError(f"{name} must be {what}.")
        folders = {}
        if adapter:
            if adapter not in self.available_adapters(base):
                raise HubkitError(ADAPTER_NOT_AVAILABLE)
            folders = {_adapter_name(adapter): resolve_adapter(adapter)}
        kwargs = dict(num_inference_steps=num_inference_steps, guidance_scale=float(guidance_scale),
                      sampler=sampler, num_images=num_images, seed=seed)  # fmt: skip
        passes = 2 if adapter else 1
        seconds: dict[str, float] = {}
        outputs = {}
        with self.pool.lease(TASK, base, folders, device=self.device) as predictor:
            for i, (key, name) in enumerate(
                [("base", BASE), *([("adapted", _adapter_name(adapter))] if adapter else [])]
            ):

                def callback(step: int, total: int, i: int = i, key: str = key) -> None:
                    if progress is not None:
                        progress((i + step / max(total, 1)) / passes, f"{key} samples: step {step}/{total}")

                start = time.perf_counter()
                outputs[key] = predictor.predict(pil, adapter=name, callback=callback, **kwargs)
                seconds[key] = time.perf_counter() - start
        run = PixCellRun(base, adapter, outputs["base"].images, outputs["adapted"].images if adapter else [],
                         seconds=seconds)  # fmt: skip
        run.distances = self.distances(run)
        folder = self.outputs.new()
        for key, images in (("base", run.base_images), ("adapted", run.adapted_images)):
            for k, img in enumerate(images):
                path = folder / f"{key}_{seed + k}.png"
                img.save(path)
                run.files.append(path)
        return run

    def target_colour(self, adapter: str | None):
        """The adapter's target-domain colour statistics, if it carries them."""
        from ..metrics.generation import ColourStats

        if not adapter:
            return None
        try:
            path = resolve_adapter(adapter) / TARGET_COLOUR_FILE
            return ColourStats.from_dict(json.loads(path.read_text())) if path.is_file() else None
        except (HubkitError, OSError, ValueError) as err:
            logger.warning("%s: target colour statistics unreadable (%s)", adapter, err)
            return None

    def distances(self, run: PixCellRun) -> dict[str, float | None]:
        from ..metrics.generation import colour_distance

        target = self.target_colour(run.adapter)
        if target is None:
            return {}
        out = {"base": colour_distance(run.base_images, target)["colour_distance"]}
        if run.adapted_images:
            out["adapted"] = colour_distance(run.adapted_images, target)["colour_distance"]
        return out

    @staticmethod
    def summary(run: PixCellRun) -> str:
        lines = [f"**Base** `{run.base}`: {len(run.base_images)} samples in {run.seconds.get('base', 0):.1f} s"]
        if run.adapter:
            lines.append(f"**Adapted** `{run.adapter}`: {len(run.adapted_images)} samples in "
                         f"{run.seconds.get('adapted', 0):.1f} s")  # fmt: skip
        if run.distances:
            lines += ["", "Colour distance to the adapter's target stain domain (LAB histogram W1, lower is closer):"]
            lines += [f"- {key}: **{value:.2f}**" for key, value in run.distances.items()]
        elif run.adapter:
            lines += ["", "This adapter carries no target colour statistics (target_colour.json)."]
        if run.base.startswith("hubkit-tiny/"):
            lines += ["", "Random-weight tiny model (offline demo): the samples are noise-like."]
        return "\n".join(lines)
