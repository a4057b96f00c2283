"""The process-wide model pool every Space (and pipeline) in one `hubkit serve` shares.

    from hubkit.pool import get_pool

    with get_pool().lease("depth-estimation", "hubkit-tiny/depth-anything", adapters=["me/depth-lora"]) as predictor:
        depth = predictor.predict(image)

- **Load once.** A model is keyed by task, base (repo id in this process's local store, or a folder) and load options
  (device, dtype, quantize, ...). Concurrent requests for one key wait for a single load.
- **Adapters join the resident base.** Adapters asked for later are attached to the loaded base (`add_adapter`),
  never a reload; a lease makes the first adapter asked for active (none: the base).
- **A byte budget, measured.** ``HUBKIT_POOL_BYTES`` (or `budget_bytes`; default 8 GiB) bounds the parameter +
  buffer bytes of the loaded models plus their adapters (`AdapterInfo.nbytes`), measured after loading.
- **LRU eviction, never of a model in use.** When a load or an attach takes the pool past its budget, the least
  recently used models no lease holds are dropped. A lease pins its model from the moment it is asked for until
  the ``with`` block ends; if pinned models alone exceed the budget the pool runs over it (with a warning) rather
  than fail or wait, and evicts as soon as they are released.
- **Oversize policy: load alone, with a warning.** A model larger than the whole budget is still loaded (a server
  whose operator set the budget too low keeps answering); every model not in use is evicted first, and the next
  load of anything else evicts it.
- **One user at a time per model.** A lease gives its holder the predictor to itself (switching adapters mutates
  the model), so requests for one model run one after another and requests for different models in parallel.

Before a model's first load its size is unknown, so memory can peak at budget + that model's size; on a reload
the size measured last time is evicted for first. `pool.predictor(...)` (no lease) returns a predictor that may be
evicted afterwards: the caller's reference then keeps its memory alive outside the pool's accounting.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import hub
from .errors import ConfigError, HubkitError

if TYPE_CHECKING:
    from .predictor import Predictor

logger = logging.getLogger(__name__)
BUDGET_ENV = "HUBKIT_POOL_BYTES"
DEFAULT_BUDGET = 8 * 2**30  # room for a few base-size vision models beside one 4-bit 7B LLM
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
Adapters = Sequence[str | Path] | Mapping[str, str | Path]


def parse_bytes(value: str | int, *, name: str = BUDGET_ENV) -> int:
    """Bytes from an int or a string such as "8GiB", "500MB", "2e9" or "1073741824"."""
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(value).lower())
        if not match or match.group(2) not in _UNITS:
            raise ConfigError(f"{name}={value!r} is not a size: use bytes or a unit, e.g. 8GiB, 500MB, 2e9")
        number, unit = float(match.group(1)), match.group(2)
    nbytes = int(number * _UNITS[unit])
    if nbytes <= 0:
        raise ConfigError(f"{name}={value!r}: the pool budget must be a positive number of bytes")
    return nbytes


def adapter_name(source: str | Path) -> str:
    """The PEFT adapter name the pool gives an adapter source (PEFT names cannot hold '.', and '/' reads badly)."""
    return str(source).replace("/", "--").replace(".", "_")


def model_nbytes(model: Any) -> int:
    """Parameter + buffer bytes of a torch module (or of an object whose `components` are modules), each tensor
    counted once."""
    import torch

    modules = [model] if isinstance(model, torch.nn.Module) else []
    modules += [m for m in getattr(model, "components", {}).values() if isinstance(m, torch.nn.Module)]
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


@dataclass(eq=False)
class _Entry:
    key: tuple
    task: str
    base: str
    predictor: Predictor | None = None
    base_bytes: int = 0
    bytes: int = 0
    adapters: tuple[str, ...] = ()  # PEFT names, as attached (a copy the reports read under the pool's lock)
    pins: int = 0  # leases held or waiting: never evicted while > 0
    last_used: float = field(default_factory=time.time)
    ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    use: threading.RLock = field(default_factory=threading.RLock)  # one holder at a time


class ModelPool:
    """Loaded predictors shared by every caller in the process, within a byte budget. Thread-safe."""

    def __init__(self, budget_bytes: int | str | None = None, *, loader: Callable[..., Predictor] | None = None):
        """`budget_bytes`: default ``HUBKIT_POOL_BYTES``, else 8 GiB. `loader(task, base, **load_options)` returns
        a Predictor; default `hubkit.load`."""
        if budget_bytes is None:
            self._budget = parse_bytes(os.environ.get(BUDGET_ENV) or DEFAULT_BUDGET, name=BUDGET_ENV)
        else:
            self._budget = parse_bytes(budget_bytes, name="budget_bytes")
        self._loader = loader
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()  # least recently used first
        self._loads: dict[tuple, int] = {}  # per key, kept across evictions
        self._sizes: dict[tuple, int] = {}  # base bytes measured at the last load: what a reload must make room for
        self._evictions = 0

    def __repr__(self) -> str:
        stats = self.stats()
        return f"ModelPool(models={stats['models']}, used={stats['used_bytes']:,}/{stats['budget_bytes']:,} bytes)"

    # -- budget -----------------------------------------------------------------------------------------
    @property
    def budget_bytes(self) -> int:
        return self._budget

    def set_budget(self, budget_bytes: int | str) -> None:
        """Change the budget; models not in use are evicted at once to fit it."""
        with self._lock:
            self._budget = parse_bytes(budget_bytes, name="budget_bytes")
            self._fit()

    # -- getting models -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(
        self,
        task: str,
        base: str | Path | None = None,
        adapters: Adapters = (),
        *,
        loader: Callable[..., Predictor] | None = None,
        **load_options: Any,
    ) -> Iterator[Predictor]:
        """The predictor for `task` + `base` with `adapters` attached, for the ``with`` block's exclusive use.

        `adapters`: repo ids or folders (named by `adapter_name`), or a mapping {PEFT name: repo id or folder}. The
        first one is made active (none: the base); pass ``adapter=`` to `predict` to choose another. `loader`
        replaces the pool's loader for this key's load, if one is needed. `load_options` go to `hubkit.load`
        (device, dtype, quantize, revision, ...) and are part of the key: the same base in bf16 is another model.
        """
        key, base = self._key(task, base, load_options)
        wanted = _adapter_sources(adapters)
        with self._lock:
            entry = self._entries.get(key)
            must_load = entry is None
            if must_load:
                entry = self._entries[key] = _Entry(key, key[0], base)
            entry.pins += 1
            self._entries.move_to_end(key)
        try:
            if must_load:
                self._load(entry, loader or self._loader, load_options)
            else:
                entry.ready.wait()
                if entry.error is not None:
                    raise entry.error
            with entry.use:
                self._attach(entry, wanted)
                entry.last_used = time.time()
                yield entry.predictor
        finally:
            with self._lock:
                entry.pins -= 1
                entry.last_used = time.time()
                self._fit()

    def predictor(self, task: str, base: str | Path | None = None, adapters: Adapters = (), **kwargs: Any) -> Predictor:
        """Like `lease`, without holding the model: for scripts and single-threaded use. The pool may evict it
        later (then the caller's reference keeps it alive outside the budget); servers use `lease`."""
        with self.lease(task, base, adapters, **kwargs) as predictor:
            return predictor

    def peek(self, task: str, base: str | Path | None = None, **load_options: Any) -> Predictor | None:
        """The resident predictor for the key, or None; loads nothing and does not count as a use."""
        key, _ = self._key(task, base, load_options)
        with self._lock:
            entry = self._entries.get(key)
            return entry.predictor if entry is not None and entry.ready.is_set() else None

    def evict(self, task: str, base: str | Path | None = None, **load_options: Any) -> bool:
        """Drop the key's model now unless a lease holds it; True if it was dropped."""
        key, _ = self._key(task, base, load_options)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.pins or not entry.ready.is_set():
                return False
            self._drop(entry, "on request")
        _free_accelerator_memory()
        return True

    def clear(self) -> int:
        """Evict every model no lease holds; return how many went."""
        with self._lock:
            idle = [e for e in self._entries.values() if not e.pins and e.ready.is_set()]
            for entry in idle:
                self._drop(entry, "pool cleared")
        _free_accelerator_memory()
        return len(idle)

    # -- reporting ---------------------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per loaded model, least recently used first: task, base, adapters (PEFT names), bytes,
        last_used (Unix time), in_use (leases held or waiting), loads (times loaded, reloads included)."""
        with self._lock:
            return [
                {
                    "task": e.task,
                    "base": e.base,
                    "adapters": list(e.adapters),
                    "bytes": e.bytes,
                    "last_used": e.last_used,
                    "in_use": e.pins,
                    "loads": self._loads.get(e.key, 0),
                }
                for e in self._entries.values()
                if e.ready.is_set() and e.predictor is not None
            ]

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "budget_bytes": self._budget,
                "used_bytes": self._used(),
                "models": sum(1 for e in self._entries.values() if e.ready.is_set()),
                "loads": sum(self._loads.values()),
                "evictions": self._evictions,
            }

    def status(self) -> dict[str, Any]:
        """What ``/api/pool`` answers: {"budget_bytes", "used_bytes", "models": snapshot()}."""
        models = self.snapshot()
        return {"budget_bytes": self._budget, "used_bytes": sum(m["bytes"] for m in models), "models": models}

    # -- internals ---------------------------------------------------------------------------------------
    def _key(self, task: str, base: str | Path | None, load_options: Mapping[str, Any]) -> tuple[tuple, str]:
        from .predictor import _device, _dtype
        from .tasks import get_task

        spec = get_task(task)  # an unknown task fails here, listing the known ones
        base = str(base or spec.default_base)
        path = Path(base).expanduser()
        # a repo id means what this process's local store holds (tests and tools may switch HUBKIT_HOME)
        where = (str(path.resolve()), "") if path.is_dir() else (base, str(hub.local_home()))
        options = {k: v for k, v in load_options.items() if _load_defaults().get(k, inspect.Parameter.empty) != v}
        options["device"] = _device(load_options.get("device", _load_defaults().get("device")))
        if options.get("dtype") is not None:
            options["dtype"] = _dtype(options["dtype"])
        frozen = tuple(sorted((k, v if _hashable(v) else repr(v)) for k, v in options.items()))
        return (spec.name, *where, frozen), base

    def _load(self, entry: _Entry, loader: Callable[..., Predictor] | None, load_options: dict) -> None:
        if loader is None:
            from .predictor import load as loader
        with self._lock:  # a reload: make room for the size measured last time before loading
            self._fit(incoming=self._sizes.get(entry.key, 0), keep=entry)
        _free_accelerator_memory()
        started = time.perf_counter()
        try:
            predictor = loader(entry.task, entry.base, **load_options)
            base_bytes = model_nbytes(predictor.model) - sum(a.nbytes for a in predictor.adapters.values())
        except BaseException as err:
            with self._lock:
                entry.error = err
                if self._entries.get(entry.key) is entry:
                    del self._entries[entry.key]  # the next request tries again
            entry.ready.set()
            raise
        with self._lock:
            entry.predictor, entry.base_bytes = predictor, base_bytes
            entry.bytes = base_bytes + sum(a.nbytes for a in predictor.adapters.values())
            entry.adapters = tuple(predictor.adapters)
            self._sizes[entry.key] = base_bytes
            self._loads[entry.key] = self._loads.get(entry.key, 0) + 1
            entry.ready.set()
            if entry.bytes > self._budget:
                logger.warning(
                    "%s (%s) is %s, more than the pool's whole budget of %s (%s): loaded alone, every model not in "
                    "use evicted", entry.base, entry.task, _size(entry.bytes), _size(self._budget), BUDGET_ENV,
                )  # fmt: skip
            self._fit(keep=entry)
        logger.info("pool: loaded %s (%s, %s) in %.1f s", entry.base, entry.task, _size(base_bytes),
                    time.perf_counter() - started)  # fmt: skip

    def _attach(self, entry: _Entry, wanted: list[tuple[str, str | Path]]) -> None:
        """Attach the adapters the base lacks and activate the first one asked for; holds `entry.use`."""
        from .predictor import BASE

        predictor = entry.predictor
        before = dict(predictor.adapters)
        try:
            for name, source in wanted:
                info = predictor.adapters.get(name)
                if info is not None and info.source == str(source):
                    continue
                if info is not None:  # the same name now points elsewhere (e.g. a newer revision's folder)
                    logger.info("pool: adapter %s of %s moved from %s to %s; reattaching", name, entry.base,
                                info.source, source)  # fmt: skip
                    predictor.remove_adapter(name)
                predictor.add_adapter(source, name=name)
            predictor.set_adapter(wanted[0][0] if wanted else BASE)
        finally:
            if predictor.adapters != before:
                with self._lock:
                    entry.bytes = entry.base_bytes + sum(a.nbytes for a in predictor.adapters.values())
                    entry.adapters = tuple(predictor.adapters)
                    self._fit(keep=entry)

    def _used(self) -> int:
        return sum(e.bytes for e in self._entries.values())

    def _fit(self, incoming: int = 0, keep: _Entry | None = None) -> None:
        """Evict least recently used models no lease holds until `incoming` more bytes fit. Holds `_lock`."""
        evicted = False
        while self._used() + incoming > self._budget:
            if not incoming and len(self._entries) == 1:
                break  # a model alone in the pool stays, however big (the oversize policy)
            idle = next((e for e in self._entries.values() if e is not keep and not e.pins and e.ready.is_set()), None)
            if idle is None:
                if self._used() > self._budget:
                    logger.warning("pool: %s in use is over the %s budget (%s); evicting as leases end",
                                   _size(self._used()), _size(self._budget), BUDGET_ENV)  # fmt: skip
                break
            self._drop(idle, f"least recently used, to stay within the {_size(self._budget)} budget")
            evicted = True
        if evicted:
            _free_accelerator_memory()

    def _drop(self, entry: _Entry, why: str) -> None:
        del self._entries[entry.key]
        entry.predictor = None
        self._evictions += 1
        logger.info("pool: evicted %s (%s, %s): %s", entry.base, entry.task, _size(entry.bytes), why)


def _adapter_sources(adapters: Adapters) -> list[tuple[str, str | Path]]:
    if isinstance(adapters, (str, Path)):
        adapters = [adapters]
    if isinstance(adapters, Mapping):
        pairs = [(str(name), source) for name, source in adapters.items()]
    else:
        pairs = [(adapter_name(source), source) for source in adapters]
    for name, source in pairs:
        if not name or not isinstance(source, (str, Path)) or not str(source):
            raise HubkitError(f"An adapter is a repo id or folder (optionally under a name); got {name!r}: {source!r}")
    return pairs


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


_DEFAULTS: dict[str, Any] | None = None


def _load_defaults() -> dict[str, Any]:
    """`hubkit.load`'s keyword defaults: an option given at its default value does not make another key."""
    global _DEFAULTS
    if _DEFAULTS is None:
        from .predictor import load

        params = inspect.signature(load).parameters.values()
        _DEFAULTS = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return _DEFAULTS


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def _free_accelerator_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


_POOL: ModelPool | None = None
_POOL_LOCK = threading.Lock()


def get_pool() -> ModelPool:
    """The process's pool, made on first use with the budget from ``HUBKIT_POOL_BYTES`` (default 8 GiB)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ModelPool()
        return _POOL


__all__ = ["BUDGET_ENV", "DEFAULT_BUDGET", "ModelPool", "adapter_name", "get_pool", "model_nbytes", "parse_bytes"]
