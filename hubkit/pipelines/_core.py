"""The generic pipeline: stages run in order, each a predictor from the pool fed by the image and earlier outputs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, StageError
from ..tasks import get_task, to_pil

if TYPE_CHECKING:
    from ..pool import ModelPool

logger = logging.getLogger(__name__)
IMAGE = "image"  # the context key of the input image; no stage may take this name


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: `task`'s predictor on `base` with `adapters`, called on the pipeline's image."""

    name: str = field(metadata={"help": "key of this stage's output in the result and in later stages' context"})
    task: str = field(metadata={"help": "a registered task name, e.g. 'image-to-text'"})
    base: str | Path | None = field(default=None, metadata={"help": "repo id or folder; None: the task's default"})
    adapters: Sequence[str | Path] | Mapping[str, str | Path] = field(
        default=(), metadata={"help": "adapters the pool attaches to the base (repo ids, folders, or {name: source})"}
    )
    adapter: str | Path | None = field(
        default=None, metadata={"help": "the adapter predict uses: one of `adapters`, 'base', or None for the first"}
    )
    kwargs: Mapping[str, Any] = field(default_factory=dict, metadata={"help": "fixed predict() keyword arguments"})
    prepare: Callable[[Mapping[str, Any]], Mapping[str, Any] | None] | None = field(
        default=None,
        metadata={
            "help": "more predict() kwargs from the context ({'image': PIL image, <earlier stage>: output, ...}); "
            "returning None skips the stage (e.g. an upstream found nothing)"
        },
    )
    requires: tuple[str, ...] = field(default=(), metadata={"help": "earlier stages whose skip skips this one"})
    enabled: bool = field(default=True, metadata={"help": "False: always skipped"})
    load_options: Mapping[str, Any] = field(
        default_factory=dict, metadata={"help": "hubkit.load options (device, dtype, quantize, revision, ...)"}
    )

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or self.name == IMAGE:
            raise ConfigError(f"A stage name must be a non-empty string other than {IMAGE!r}; got {self.name!r}")
        get_task(self.task)  # UnknownTaskError lists the known tasks
        requires = (self.requires,) if isinstance(self.requires, str) else tuple(self.requires)
        object.__setattr__(self, "requires", requires)
        if self.prepare is not None and not callable(self.prepare):
            raise ConfigError(f"Stage {self.name!r}: prepare must be a function of the context; got {self.prepare!r}")

    def adapter_to_use(self) -> str | None:
        """The PEFT name `predict(adapter=...)` takes for `adapter` (a source listed in `adapters`, or a name)."""
        from ..pool import _adapter_sources

        if self.adapter is None:
            return None
        for name, source in _adapter_sources(self.adapters):
            if str(self.adapter) in (name, str(source)):
                return name
        return str(self.adapter)  # "base", or a name Predictor checks (AdapterMismatchError lists the loaded ones)


@dataclass(frozen=True)
class PipelineResult:
    """What `Pipeline.run` returns: each run stage's output, its wall time in seconds (loading included when the
    pool had to load), and the stages skipped, in order."""

    outputs: dict[str, Any]
    timings: dict[str, float]
    skipped: list[str]
    seconds: float = 0.0  # the whole run

    def __getitem__(self, stage: str) -> Any:
        return self.outputs[stage]


class Pipeline:
    """Stages run in order on one image; models come from the pool (`hubkit.pool.get_pool()` unless given).

    A stage's predict() kwargs are its `kwargs` plus what its `prepare(ctx)` returns; ``ctx`` holds ``"image"``
    and the outputs of the stages run so far. A stage is skipped when disabled, when a stage it `requires` was
    skipped, or when `prepare` returns None. An exception in a stage raises StageError naming the stage.
    """

    def __init__(self, stages: Sequence[Stage], *, pool: ModelPool | None = None):
        stages = tuple(stages)
        if not stages or not all(isinstance(s, Stage) for s in stages):
            raise ConfigError(f"A pipeline needs one or more Stage objects; got {list(stages)!r}")
        seen: list[str] = []
        for stage in stages:
            if stage.name in seen:
                raise ConfigError(f"Two stages are named {stage.name!r}: stage names must be unique")
            unknown = [r for r in stage.requires if r not in seen]
            if unknown:
                raise ConfigError(
                    f"Stage {stage.name!r} requires {unknown!r}, not an earlier stage; earlier: {seen or 'none'}"
                )
            seen.append(stage.name)
        self.stages = stages
        self._pool = pool

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(f'{s.name}={s.task}' for s in self.stages)})"

    @property
    def pool(self) -> ModelPool:
        from ..pool import get_pool

        return self._pool or get_pool()

    def run(self, image: Any) -> PipelineResult:
        """Run every stage on `image` (path, PIL image or array); InvalidImageError for an unreadable image."""
        started = time.perf_counter()
        context: dict[str, Any] = {IMAGE: to_pil(image)}
        view = MappingProxyType(context)
        outputs: dict[str, Any] = {}
        timings: dict[str, float] = {}
        skipped: list[str] = []
        for stage in self.stages:
            if not stage.enabled or any(r in skipped for r in stage.requires):
                skipped.append(stage.name)
                continue
            begun = time.perf_counter()
            try:
                kwargs = dict(stage.kwargs)
                if stage.prepare is not None:
                    extra = stage.prepare(view)
                    if extra is None:
                        logger.info("pipeline: stage %s skipped: nothing to work on", stage.name)
                        skipped.append(stage.name)
                        continue
                    kwargs.update(extra)
                with self.pool.lease(stage.task, stage.base, stage.adapters, **stage.load_options) as predictor:
                    output = predictor.predict(context[IMAGE], adapter=stage.adapter_to_use(), **kwargs)
            except Exception as err:
                raise StageError(stage, err) from err
            timings[stage.name] = time.perf_counter() - begun
            outputs[stage.name] = context[stage.name] = output
        return PipelineResult(outputs, timings, skipped, time.perf_counter() - started)
