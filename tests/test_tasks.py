"""Every registered task, on its tiny model: load, predict on a real image, save, adapters change outputs.

Parametrised over the registry, so a new task module is tested as soon as it registers.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import same
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import InvalidImageError, MissingModelFileError, UnknownTaskError
from hubkit.tasks import get_task, list_tasks

TASKS = list_tasks()


def as_array(output) -> np.ndarray:
    """A numeric fingerprint of any task output, to compare predictions."""
    values = []
    for value in vars(output).values():
        if isinstance(value, np.ndarray):
            values.append(value.astype(np.float64).ravel())
        elif hasattr(value, "tobytes") and hasattr(value, "size"):  # PIL image
            values.append(np.asarray(value, dtype=np.float64).ravel())
        elif isinstance(value, str):
            values.append(np.frombuffer(value.encode() or b"\0", dtype=np.uint8).astype(np.float64))
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
            values.append(np.frombuffer("|".join(value).encode(), dtype=np.uint8).astype(np.float64))
    return np.concatenate(values) if values else np.zeros(0)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {name: tiny.build(get_task(name).tiny_family, root / name) for name in TASKS}


def test_registry_lists_every_family():
    assert {"depth-estimation"} <= set(TASKS)
    for name in TASKS:
        task = get_task(name)
        assert task.tiny_family in tiny.FAMILIES, name
        assert task.default_base.count("/") == 1
        assert task.preset.targets
    with pytest.raises(UnknownTaskError, match="depth-estimation"):
        get_task("no-such-task")


@pytest.mark.parametrize("name", TASKS)
def test_task_predicts_and_saves(name, bases, tmp_path):
    task = get_task(name)
    predictor = hubkit.load(name, bases[name])
    image = data.astronaut()
    output = predictor.predict(image, **task.example_kwargs)
    again = predictor.predict(image, **task.example_kwargs)
    assert same(as_array(output), as_array(again))  # deterministic
    paths = task.save_output(output, tmp_path / "out", "astronaut")
    assert paths and all(p.is_file() and p.stat().st_size > 0 for p in paths)
    batch = predictor.predict([image, data.coffee()], **task.example_kwargs)
    assert len(batch) == 2


@pytest.mark.parametrize("name", TASKS)
def test_adapters_switch_without_reload_and_match_fresh_loads(name, bases, tmp_path):
    task = get_task(name)
    adapters = [tiny.random_adapter(name, bases[name], tmp_path / f"a{i}", seed=i) for i in range(3)]
    predictor = hubkit.load(name, bases[name], adapters=adapters)
    image = data.chelsea()
    kwargs = task.example_kwargs
    base_model = predictor.model.get_base_model()
    outs = {a: as_array(predictor.predict(image, adapter=a, **kwargs)) for a in ["base", "a0", "a1", "a2"]}
    assert predictor.model.get_base_model() is base_model  # switching never reloaded the base
    distinct = {a for a in outs if a != "base" and not same(outs[a], outs["base"])}
    assert distinct, f"no adapter changed the output of {name}"
    for i, folder in enumerate(adapters):
        fresh = hubkit.load(name, bases[name], adapters=[folder])
        assert same(as_array(fresh.predict(image, **kwargs)), outs[f"a{i}"])
    plain = hubkit.load(name, bases[name])
    assert same(as_array(plain.predict(image, **kwargs)), outs["base"])


@pytest.mark.parametrize("bad", ["not-a-file.png", np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 7)), 42])
def test_bad_images_are_clear_errors(bad, bases):
    predictor = hubkit.load("depth-estimation", bases["depth-estimation"])
    with pytest.raises(InvalidImageError):
        predictor.predict(bad)


def test_corrupt_image_file(tmp_path, bases):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    predictor = hubkit.load("depth-estimation", bases["depth-estimation"])
    with pytest.raises(InvalidImageError, match="not a readable image"):
        predictor.predict(broken)


@pytest.mark.parametrize("name", [name for name in TASKS if get_task(name).processor_files])
def test_a_base_without_its_processor_files_names_them(name, bases, tmp_path):
    import shutil

    task = get_task(name)
    folder = tmp_path / "base"
    shutil.copytree(bases[name], folder)
    for group in task.processor_files:
        for file in group:
            (folder / file).unlink(missing_ok=True)
    with pytest.raises(MissingModelFileError) as err:
        hubkit.load(name, folder)
    assert (err.value.folder, err.value.task, err.value.names) == (folder, name, task.processor_files[0])
    assert str(folder) in str(err.value) and task.processor_files[0][0] in str(err.value) and name in str(err.value)
