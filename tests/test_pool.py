"""The shared model pool: load once, adapters on the resident base, a measured byte budget, LRU, leases."""

from __future__ import annotations

import logging
import shutil
import threading
import time

import numpy as np
import pytest
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import ConfigError, HubkitError
from hubkit.pool import BUDGET_ENV, DEFAULT_BUDGET, ModelPool, adapter_name, get_pool, model_nbytes, parse_bytes

TASK = "depth-estimation"
IMAGE = data.astronaut()[::8, ::8]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Two tiny depth bases of the same size (different weights) and two adapters for the first."""
    root = tmp_path_factory.mktemp("pool")
    first = tiny.build("depth-anything", root / "first", seed=0)
    second = tiny.build("depth-anything", root / "second", seed=1)
    adapters = [tiny.random_adapter(TASK, first, root / f"lora{i}", seed=i) for i in range(2)]
    return first, second, adapters


class CountingLoader:
    """hubkit.load that counts its calls per base and can be slowed down to widen race windows."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[str] = []
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, task, base, **options):
        with self._lock:
            self.calls.append(str(base))
        time.sleep(self.delay)
        return hubkit.load(task, base, **options)

    def count(self, base) -> int:
        return self.calls.count(str(base))


def by_base(pool: ModelPool) -> dict[str, dict]:
    return {m["base"]: m for m in pool.snapshot()}


def test_concurrent_requests_for_one_model_load_it_once(bases):
    first, _, _ = bases
    loader = CountingLoader(delay=0.3)
    pool = ModelPool(loader=loader)
    start = threading.Barrier(8)
    got, errors = [], []

    def request():
        try:
            start.wait()
            with pool.lease(TASK, first) as predictor:
                got.append(predictor)
                predictor.predict(IMAGE)
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and len(got) == 8
    assert loader.count(first) == 1 and all(p is got[0] for p in got)
    (model,) = pool.snapshot()
    assert model["loads"] == 1 and model["in_use"] == 0


def test_adapters_join_the_resident_base(bases):
    first, _, (lora0, lora1) = bases
    loader = CountingLoader()
    pool = ModelPool(loader=loader)
    with pool.lease(TASK, first) as predictor:
        plain = predictor.predict(IMAGE).depth
        base_bytes = model_nbytes(predictor.model)
    assert pool.snapshot()[0]["bytes"] == base_bytes  # parameters + buffers, measured

    with pool.lease(TASK, first, [lora0]) as adapted:
        assert adapted is predictor and adapted.active == adapter_name(lora0)  # the first asked for is active
        with_lora0 = adapted.predict(IMAGE).depth
    with pool.lease(TASK, first, [lora1, lora0]) as both:
        assert both.active == adapter_name(lora1)
        again = both.predict(IMAGE, adapter=adapter_name(lora0)).depth
        infos = list(both.adapters.values())
    with pool.lease(TASK, first) as bare:
        assert bare.active == "base" and np.array_equal(bare.predict(IMAGE).depth, plain)

    assert loader.count(first) == 1 and len(infos) == 2  # attached to the loaded base, never reloaded
    assert not np.allclose(with_lora0, plain) and np.array_equal(again, with_lora0)
    (model,) = pool.snapshot()
    assert model["adapters"] == [adapter_name(lora0), adapter_name(lora1)]
    assert model["bytes"] == base_bytes + sum(info.nbytes for info in infos) and all(i.nbytes > 0 for i in infos)

    with pool.lease(TASK, first, {"mine": lora0}) as named:  # a caller may name an adapter itself
        assert named.active == "mine" and len(named.adapters) == 3


def test_a_small_budget_evicts_the_least_recently_used_and_reloads_it(bases):
    first, second, _ = bases
    loader = CountingLoader()
    pool = ModelPool(loader=loader)
    pool.predictor(TASK, first)
    size = pool.stats()["used_bytes"]
    assert size > 0 and pool.snapshot()[0]["bytes"] == size
    pool.set_budget(size + 1)  # room for one of the two (same-size) models

    pool.predictor(TASK, second)
    assert list(by_base(pool)) == [str(second)] and pool.stats()["evictions"] == 1
    assert pool.peek(TASK, first) is None

    pool.predictor(TASK, first)  # back again: the second goes, the first is loaded a second time
    models = by_base(pool)
    assert list(models) == [str(first)] and models[str(first)]["loads"] == 2
    assert loader.count(first) == 2 and loader.count(second) == 1
    stats = pool.stats()
    assert stats["evictions"] == 2 and stats["used_bytes"] == size <= stats["budget_bytes"]
    assert stats["loads"] == 3

    pool.set_budget(10 * size)
    pool.predictor(TASK, second)  # with room for both, nothing is evicted
    assert set(by_base(pool)) == {str(first), str(second)} and pool.stats()["evictions"] == 2
    assert [m["base"] for m in pool.snapshot()] == [str(first), str(second)]  # least recently used first
    pool.predictor(TASK, first)
    assert [m["base"] for m in pool.snapshot()] == [str(second), str(first)]


def test_a_leased_model_is_not_evicted(bases, caplog):
    first, second, _ = bases
    pool = ModelPool()
    pool.predictor(TASK, first)
    pool.set_budget(pool.stats()["used_bytes"] + 1)
    holding, release, done = threading.Event(), threading.Event(), threading.Event()

    def long_request():
        with pool.lease(TASK, first) as predictor:
            holding.set()
            release.wait(timeout=60)
            predictor.predict(IMAGE)  # still usable: nobody took it away
        done.set()

    worker = threading.Thread(target=long_request)
    worker.start()
    assert holding.wait(timeout=60)
    with caplog.at_level(logging.WARNING, logger="hubkit.pool"), pool.lease(TASK, second):
        models = by_base(pool)
        assert set(models) == {str(first), str(second)}  # over budget rather than evict a model in use
        assert models[str(first)]["in_use"] == 1 and models[str(second)]["in_use"] == 1
    assert "over the" in caplog.text
    # the idle one went as soon as its lease ended; the leased one stays
    assert list(by_base(pool)) == [str(first)] and pool.evict(TASK, first) is False
    release.set()
    worker.join(timeout=60)
    assert done.is_set() and by_base(pool)[str(first)]["in_use"] == 0
    assert pool.evict(TASK, first) is True and pool.snapshot() == []


def test_a_model_over_the_whole_budget_loads_alone_with_a_warning(bases, caplog):
    first, second, _ = bases
    pool = ModelPool(budget_bytes=1)
    pool.predictor(TASK, first)
    with caplog.at_level(logging.WARNING, logger="hubkit.pool"):
        predictor = pool.predictor(TASK, second)
    assert "more than the pool's whole budget" in caplog.text and BUDGET_ENV in caplog.text
    assert list(by_base(pool)) == [str(second)] and pool.peek(TASK, second) is predictor


def test_a_failed_load_reaches_every_waiter_and_the_next_request_retries(bases, tmp_path):
    first, _, _ = bases
    broken = tmp_path / "broken"
    broken.mkdir()
    loader = CountingLoader(delay=0.2)
    pool = ModelPool(loader=loader)
    start = threading.Barrier(3)
    errors = []

    def request():
        try:
            start.wait()
            pool.predictor(TASK, broken)
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=request) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(errors) == 3 and all(e is errors[0] for e in errors)  # the one load's error, for every waiter
    assert loader.count(broken) == 1 and pool.snapshot() == []
    shutil.copytree(first, broken, dirs_exist_ok=True)  # fixed on disk: the next request loads it
    assert pool.predictor(TASK, broken) is not None and loader.count(broken) == 2


def test_keys_split_on_load_options_not_on_their_spelling(bases):
    first, _, _ = bases
    loader = CountingLoader()
    pool = ModelPool(loader=loader)
    a = pool.predictor(TASK, first)
    assert pool.predictor(TASK, first, device="cpu", dtype=None, allow_pickle=False) is a  # defaults, spelled out
    assert pool.predictor(TASK, str(first) + "/") is a  # the same folder
    half = pool.predictor(TASK, first, dtype="bfloat16")
    assert half is not a and loader.count(first) == 2
    assert pool.predictor(TASK, first, dtype="bf16") is half


def test_status_budget_and_the_process_pool(bases, monkeypatch):
    first, _, _ = bases
    pool = ModelPool(budget_bytes="1GiB")
    assert pool.status() == {"budget_bytes": 2**30, "used_bytes": 0, "models": []}
    pool.predictor(TASK, first)
    status = pool.status()
    assert set(status) == {"budget_bytes", "used_bytes", "models"} and status["budget_bytes"] == 2**30
    (model,) = status["models"]
    assert set(model) == {"task", "base", "adapters", "bytes", "last_used", "in_use", "loads"}
    assert model["task"] == TASK and model["base"] == str(first) and status["used_bytes"] == model["bytes"] > 0
    assert model["last_used"] <= time.time() and model["in_use"] == 0 and model["loads"] == 1

    assert get_pool() is get_pool() and hubkit.get_pool() is get_pool()
    monkeypatch.setenv(BUDGET_ENV, "512MB")
    assert ModelPool().budget_bytes == 512 * 10**6
    monkeypatch.delenv(BUDGET_ENV)
    assert ModelPool().budget_bytes == DEFAULT_BUDGET
    assert parse_bytes("8GiB") == 8 * 2**30 and parse_bytes("2e9") == 2 * 10**9 and parse_bytes(1024) == 1024
    for bad in ("lots", "-1", "0", "8 parsecs"):
        with pytest.raises(ConfigError, match="budget|size"):
            parse_bytes(bad)
    monkeypatch.setenv(BUDGET_ENV, "eight gigs")
    with pytest.raises(ConfigError, match=BUDGET_ENV):
        ModelPool()
    with pytest.raises(HubkitError, match="Unknown task"):
        pool.predictor("no-such-task", first)
