"""Pipelines: several tiny models from the local store chained on a real photo, sharing one model pool."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.errors import ConfigError, InvalidImageError, UnknownTaskError
from hubkit.pipelines import IMAGE, Pipeline, PipelineResult, Stage, StageError, caption_to_detections
from hubkit.pool import ModelPool, adapter_name
from hubkit.spaces_support import DepthDemo
from hubkit.tasks.captioning import Caption
from hubkit.tasks.depth import DepthPrediction
from hubkit.tasks.detection import Detections
from hubkit.tasks.labels import Labels

BLIP, MISTRAL, DINO, DEPTH = (f"hubkit-tiny/{f}" for f in ("blip", "mistral", "grounding-dino", "depth-anything"))
FAMILIES = {BLIP: "blip", MISTRAL: "mistral", DINO: "grounding-dino", DEPTH: "depth-anything"}
PHOTO = data.astronaut()[::4, ::4]  # 128 x 128 RGB
STAGES = ["caption", "labels", "detections"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny model folders, built once for the module, and a LoRA adapter for the captioner."""
    root = tmp_path_factory.mktemp("tiny")
    built = {repo: tiny.build(family, root / family) for repo, family in FAMILIES.items()}
    built["blip-lora"] = tiny.random_adapter(
        "image-to-text", built[BLIP], root / "blip-lora", seed=3, strength=3.0, base_id=BLIP
    )
    return built


@pytest.fixture
def store(folders, isolated_home):
    """This test's local store, holding the tiny models under their repo ids."""
    for repo, folder in folders.items():
        hubkit.push(folder, repo if "/" in repo else f"me/{repo}")
    return isolated_home


class Counting(ModelPool):
    """A pool whose default loader counts loads per base."""

    def __init__(self, *args, **kwargs):
        self.calls: list[str] = []
        super().__init__(*args, loader=self._count, **kwargs)

    def _count(self, task, base, **options):
        self.calls.append(str(base))
        return hubkit.load(task, base, **options)


def loads(pool: ModelPool) -> dict[str, int]:
    return {m["base"]: m["loads"] for m in pool.snapshot()}


def test_three_model_pipeline_on_a_real_photo(store):
    pool = ModelPool()
    pipeline = caption_to_detections(
        captioner=BLIP, labeler=MISTRAL, detector=DINO, default_labels=["a person", "a rocket"], pool=pool,
        device="cpu",
    )  # fmt: skip
    result = pipeline.run(PHOTO)

    assert isinstance(result, PipelineResult) and result.skipped == []
    assert list(result.outputs) == STAGES and list(result.timings) == STAGES
    caption, labels, detections = (result[name] for name in STAGES)
    assert isinstance(caption, Caption) and caption.text.strip()
    assert isinstance(labels, Labels) and isinstance(labels.raw, str)  # a random LLM may name nothing...
    asked = labels.names or ["a person", "a rocket"]  # ... then the default labels are looked for
    assert isinstance(detections, Detections) and detections.boxes.shape == (len(detections.labels), 4)
    assert set(detections.labels) <= set(asked) and np.all(detections.boxes[:, 2:] <= 128)
    assert all(isinstance(t, float) and t > 0 for t in result.timings.values())
    assert result.seconds >= sum(result.timings.values())
    assert sorted(m["base"] for m in pool.snapshot()) == sorted([BLIP, MISTRAL, DINO])

    again = pipeline.run(Image.fromarray(PHOTO))  # models stay loaded: same answers, no reload
    assert again["caption"] == caption and again["labels"] == labels
    assert np.array_equal(again["detections"].boxes, detections.boxes)
    assert set(loads(pool).values()) == {1}


def test_two_spaces_share_one_pool_and_load_each_base_once(store, tmp_path):
    pool = Counting()
    # "Space" one: the depth Space's handler; "Space" two: a pipeline with the same depth base and a captioner,
    # the captioner once plain and once with an adapter; and a third caller, the caption -> detections chain.
    depth_space = DepthDemo(device="cpu", pool=pool)
    lora = "me/blip-lora"
    survey = Pipeline(
        [
            Stage("depth", "depth-estimation", DEPTH, load_options={"device": "cpu"}),
            Stage("caption", "image-to-text", BLIP, load_options={"device": "cpu"}),
            Stage("styled", "image-to-text", BLIP, adapters=[lora], load_options={"device": "cpu"}),
        ],
        pool=pool,
    )
    chain = caption_to_detections(
        captioner=BLIP, labeler=MISTRAL, detector=DINO, default_labels=["a person"], pool=pool, device="cpu"
    )

    space_result = depth_space.run(PHOTO, DEPTH, [])
    surveyed = survey.run(PHOTO)
    chained = chain.run(PHOTO)
    space_again = depth_space.run(PHOTO, DEPTH, [])

    assert loads(pool) == {DEPTH: 1, BLIP: 1, MISTRAL: 1, DINO: 1}  # each base loaded once, whoever asked first
    assert pool.calls.count(BLIP) == 1 and DEPTH not in pool.calls  # the depth Space loaded DEPTH, its own way
    assert isinstance(surveyed["depth"], DepthPrediction)
    assert np.allclose(surveyed["depth"].depth, np.load(space_result["npy"]))  # the same model, the same map
    assert np.array_equal(np.load(space_again["npy"]), np.load(space_result["npy"]))
    assert surveyed["caption"] == chained["caption"]  # the adapter-free stages used the base...
    blip = next(m for m in pool.snapshot() if m["base"] == BLIP)
    assert blip["adapters"] == [adapter_name(lora)]  # ... which carries the adapter, attached once


def test_a_small_pool_evicts_between_stages_and_reloads(store):
    pool = Counting()
    pipeline = caption_to_detections(
        captioner=BLIP, labeler=MISTRAL, detector=DINO, default_labels=["a person"], pool=pool, device="cpu"
    )
    first = pipeline.run(PHOTO)
    sizes = {m["base"]: m["bytes"] for m in pool.snapshot()}
    assert max(sizes, key=sizes.get) == DINO  # the premise of the counts below
    pool.set_budget(sizes[DINO] + 1)  # room for the biggest model alone
    assert len(pool.snapshot()) == 1 and pool.stats()["evictions"] == 2
    second = pipeline.run(PHOTO)
    assert loads(pool) == {DINO: 2}  # the later stages' models pushed out the earlier ones, and DINO came back
    assert pool.calls.count(BLIP) == 2 and pool.calls.count(MISTRAL) == 2  # reloaded after eviction
    assert second["caption"] == first["caption"] and second["labels"] == first["labels"]


def test_stages_are_skipped_when_disabled_or_given_nothing(store):
    pool = Counting()
    pipeline = Pipeline(
        [
            Stage("caption", "image-to-text", BLIP, kwargs={"max_new_tokens": 4}),
            Stage("nothing", "label-extraction", MISTRAL, prepare=lambda ctx: None),  # an upstream found nothing
            Stage(
                "after",
                "zero-shot-object-detection",
                DINO,
                requires=("nothing",),
                prepare=lambda ctx: {"labels": ctx["nothing"].names},
            ),
            Stage("off", "label-extraction", MISTRAL, enabled=False),
            Stage(
                "echo",
                "label-extraction",
                MISTRAL,
                prepare=lambda ctx: {"captions": [ctx["caption"].text]},
                kwargs={"max_new_tokens": 4},
            ),
        ],
        pool=pool,
    )
    result = pipeline.run(PHOTO)
    assert result.skipped == ["nothing", "after", "off"]
    assert list(result.outputs) == list(result.timings) == ["caption", "echo"]
    assert isinstance(result["echo"], Labels) and DINO not in pool.calls  # a skipped stage loads nothing


def test_errors_name_the_stage(store):
    pool = ModelPool()
    pipeline = Pipeline(
        [
            Stage("caption", "image-to-text", BLIP),
            Stage(
                "labels",
                "label-extraction",
                MISTRAL,
                kwargs={"max_new_tokens": 0},
                prepare=lambda ctx: {"captions": [ctx["caption"].text]},
            ),
        ],
        pool=pool,
    )
    with pytest.raises(StageError, match="'labels' \\(label-extraction") as err:
        pipeline.run(PHOTO)
    assert err.value.stage == "labels" and isinstance(err.value.error, ConfigError)
    assert isinstance(err.value.__cause__, ConfigError) and "max_new_tokens" in str(err.value)

    broken = Pipeline([Stage("look", "image-to-text", BLIP, prepare=lambda ctx: {"prompt": ctx["missing"]})], pool=pool)
    with pytest.raises(StageError, match="'look'.*KeyError"):
        broken.run(PHOTO)
    missing = Pipeline([Stage("caption", "image-to-text", "nobody/no-such-model")], pool=pool)
    with pytest.raises(StageError, match="nobody/no-such-model"):
        missing.run(PHOTO)
    with pytest.raises(InvalidImageError):  # a bad input is the caller's, not a stage's
        pipeline.run(np.zeros((0, 4, 3), np.uint8))


def test_stage_adapter_choice(store):
    pool = ModelPool()
    lora = "me/blip-lora"
    plain, styled, explicit = (
        Pipeline([Stage("c", "image-to-text", BLIP, adapters=[lora], adapter=choice)], pool=pool).run(PHOTO)["c"]
        for choice in ("base", None, lora)
    )
    assert styled == explicit and styled != plain  # None: the first adapter listed; "base": none
    with pytest.raises(StageError, match="No adapter 'other'"):
        Pipeline([Stage("c", "image-to-text", BLIP, adapters=[lora], adapter="other")], pool=pool).run(PHOTO)


def test_pipelines_are_checked_when_built():
    with pytest.raises(ConfigError, match="unique"):
        Pipeline([Stage("a", "image-to-text"), Stage("a", "label-extraction")])
    with pytest.raises(ConfigError, match="not an earlier stage"):
        Pipeline([Stage("a", "image-to-text", requires=("b",)), Stage("b", "label-extraction")])
    with pytest.raises(ConfigError, match="stage name"):
        Stage(IMAGE, "image-to-text")
    with pytest.raises(UnknownTaskError, match="Known tasks"):
        Stage("a", "image-to-poem")
    with pytest.raises(ConfigError, match="one or more"):
        Pipeline([])
    assert hubkit.Pipeline is Pipeline and hubkit.Stage is Stage and hubkit.PipelineResult is PipelineResult
