"""Every registered task, on its tiny model: load, predict on a real image, save, adapters change outputs.

Parametrised over the registry, so a new task module is tested as soon as it registers.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import same
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import (
    ConfigError,
    DuplicateTaskError,
    InvalidImageError,
    MissingModelFileError,
    TaskDefinitionError,
    UnknownArgumentError,
    UnknownTaskError,
)
from hubkit.tasks import TASKS as REGISTRY
from hubkit.tasks import Task, TinyModel, get_task, list_tasks, register_task

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
def test_task_record_names_real_classes(name):
    """The record's facts resolve: the library imports and has the auto classes the cards tell users to load with."""
    task = get_task(name)
    library = importlib.import_module(task.library_name)
    assert hasattr(library, task.auto_model), task.auto_model
    assert task.auto_processor is None or hasattr(library, task.auto_processor), task.auto_processor
    assert task.architectures and all(hasattr(library, arch) for arch in task.architectures)
    assert task.tiny_models and all(isinstance(t, TinyModel) and t.mimics.count("/") == 1 for t in task.tiny_models)
    assert task.tiny_family == task.tiny_models[0].family
    fields = task.card_fields()
    assert (fields["pipeline_tag"], fields["auto_class"], fields["base_library"]) == (
        task.pipeline_tag,
        task.auto_model,
        task.library_name,
    )


def _record(cls: type[Task], **facts) -> type[Task]:
    """A subclass of a registered task with some facts changed (not registered)."""
    return type(f"{cls.__name__}Copy", (cls,), facts)


@pytest.fixture
def restore_registry():
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)


def test_register_task_refuses_a_duplicate_name_family_or_architecture(restore_registry):
    depth = type(get_task("depth-estimation"))
    before = dict(REGISTRY)
    with pytest.raises(DuplicateTaskError, match="depth-estimation") as err:
        register_task(_record(depth))  # same name, another class
    assert (err.value.what, err.value.value) == ("task name", "depth-estimation")
    assert isinstance(err.value, ValueError) and "hubkit.tasks.depth.DepthEstimation" in str(err.value)
    with pytest.raises(DuplicateTaskError) as err:
        register_task(_record(depth, name="depth-copy"))  # a new name, but the tiny families are depth's
    assert err.value.what == "tiny family" and err.value.value in ("depth-anything", "dpt")
    own_tiny = (TinyModel("depth-copy", depth.tiny_models[0].build, mimics="someone/depth"),)
    with pytest.raises(DuplicateTaskError) as err:
        register_task(_record(depth, name="depth-copy", tiny_models=own_tiny))  # same architectures
    assert err.value.what == "architecture" and err.value.value in depth.architectures
    with pytest.raises(TaskDefinitionError, match="auto_model"):
        register_task(_record(depth, name="depth-copy", tiny_models=own_tiny, architectures=("X",), auto_model=""))
    assert before == REGISTRY  # nothing refused was registered
    register_task(depth)  # the same definition again (a module reload) replaces itself
    assert list(REGISTRY) == list(before) and type(REGISTRY["depth-estimation"]) is depth


def test_a_new_record_reaches_every_view_of_the_registry(restore_registry):
    """A new family is one task module + one tiny builder: tiny, lora plan and cards read it from the registry."""
    from hubkit.tasks import task_for_architecture

    depth = type(get_task("depth-estimation"))
    tiny_model = TinyModel("depth-copy", depth.tiny_models[0].build, mimics="someone/depth")
    register_task(_record(depth, name="depth-copy", tiny_models=(tiny_model,), architectures=("DepthCopyModel",)))
    spec = tiny.FAMILIES["depth-copy"]
    assert (spec.task, spec.repo_name, spec.real_repo_id) == ("depth-copy", "hubkit-tiny/depth-copy", "someone/depth")
    assert task_for_architecture("DepthCopyModel") is get_task("depth-copy")
    assert "depth-copy" in list_tasks()


def test_predict_with_var_keywords_is_refused_when_the_class_is_made():
    with pytest.raises(TaskDefinitionError, match=r"\*\*kwargs"):

        class Sloppy(Task):
            def predict(self, model, processor, images, *, strength=1.0, **kwargs):
                return []


@pytest.mark.parametrize("name", TASKS)
def test_an_unknown_predict_argument_is_one_typed_error(name, bases):
    task = get_task(name)
    assert set(task.example_kwargs) <= set(task.predict_arguments())
    with pytest.raises(UnknownArgumentError) as err:
        task.predict(None, None, [], no_such_argument=1)  # refused before the task touches the model
    assert (err.value.task, err.value.unknown, err.value.accepted) == (
        name,
        ["no_such_argument"],
        task.predict_arguments(),
    )
    assert isinstance(err.value, TypeError) and isinstance(err.value, ConfigError)
    assert name in str(err.value) and "no_such_argument" in str(err.value)
    assert all(arg in str(err.value) for arg in task.predict_arguments())
    predictor = hubkit.load(name, bases[name])
    with pytest.raises(UnknownArgumentError, match="'no_such_argument'"):
        predictor.predict(data.astronaut(), **task.example_kwargs, no_such_argument=1)


def test_unknown_predict_arguments_suggest_the_close_ones():
    detection = get_task("zero-shot-object-detection")
    with pytest.raises(UnknownArgumentError, match="did you mean 'labels'"):
        detection.predict(None, None, [], label=["a cat"])
    assert get_task("depth-estimation").predict_arguments() == ()
    assert get_task("image-classification").predict_arguments() == ("top_k",)


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
