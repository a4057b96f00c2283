"""`hubkit bootstrap`: tiny random-weight models of every family (and demo adapters) in the local store."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from . import cards, hub, tiny
from .data.synthetic import make_motorcycle_zivid
from .tasks import get_task, list_tasks

logger = logging.getLogger(__name__)
NOTICE = (
    "**Random weights.** This is a tiny, randomly initialised {what} with the same classes and file layout as "
    "[{real}](https://huggingface.co/{real}). It exists so hubkit's tests and offline demos run without "
    "downloads. Its predictions are meaningless."
)


SAMPLE_DEPTH_DATA = "hubkit-tiny/motorcycle-zivid"
SAMPLE_DATA_NOTE = (
    "Real stereo data, small: random crops of the Middlebury 2014 Motorcycle scene as shipped by scikit-image "
    "(`skimage.data.stereo_motorcycle`), with the disparity converted to metric depth (Z = f * B / (d + doffs), "
    "f = 994.978 px, B = 193.001 mm, doffs = 31.086 px at scikit-image's resolution) and written in the Zivid "
    "layout: `images/*.png` and `depth/*.npy` (H x W x 3 XYZ in mm, NaN where invalid). For trying the depth "
    "recipe offline."
)


SAMPLE_SEGMA_DATA = "hubkit-tiny/segma-shapes"


def demo_adapter_repo(task: str, index: int) -> str:
    return f"hubkit-tiny/{get_task(task).tiny_family}-demo-lora-{index}"


def bootstrap(store: hub.LocalStore | None = None, *, force: bool = False, adapters_per_task: int = 2) -> dict:
    """Push every tiny family as `hubkit-tiny/<family>` plus random demo adapters; return {repo: revision}."""
    store = store or hub.LocalStore(hub.local_home())
    pushed = {}
    with tempfile.TemporaryDirectory(prefix="hubkit-bootstrap-") as tmp:
        folders = {}
        for family, spec in tiny.families().items():
            if store.exists(spec.repo_name) and not force:
                folders[family] = store.pull(spec.repo_name)
                continue
            folder = tiny.build(family, Path(tmp) / family)
            card = cards.model_card(
                model_name=spec.repo_name.split("/")[1],
                pipeline_tag=spec.pipeline_tag,
                library_name=spec.library_name,
                tags=["hubkit-tiny", "random-weights", "tests"],
                description=NOTICE.format(what="model", real=spec.real_repo_id),
            )
            card.save(folder / "README.md")
            pushed[spec.repo_name] = store.push(folder, spec.repo_name, message="Tiny random-weight model").id
            folders[family] = store.pull(spec.repo_name)
        for task in list_tasks():
            spec = get_task(task)
            base_repo = spec.tiny_models[0].repo_name
            for index in range(adapters_per_task):
                repo = demo_adapter_repo(task, index)
                if store.exists(repo) and not force:
                    continue
                out = tiny.random_adapter(
                    task, folders[spec.tiny_family], Path(tmp) / repo, seed=index, base_id=base_repo
                )
                card = cards.adapter_card(
                    model_name=repo.split("/")[1],
                    base_model=base_repo,
                    **spec.card_fields(),
                    tags=["hubkit-tiny", "random-weights", task],
                    repo_id=repo,
                    task=task,
                    notes=NOTICE.format(what="LoRA adapter", real=spec.default_base),
                )
                card.save(out / "README.md")
                pushed[repo] = store.push(out, repo, message="Random demo adapter").id
        if force or not store.exists(SAMPLE_DEPTH_DATA, repo_type="dataset"):
            folder = make_motorcycle_zivid(Path(tmp) / "motorcycle-zivid", crops=16, seed=0)
            cards.dataset_card(
                pretty_name="Motorcycle stereo depth in Zivid format",
                license="other",
                task_categories=["depth-estimation"],
                tags=["zivid", "depth", "hubkit-tiny"],
                description=SAMPLE_DATA_NOTE,
                num_samples=len(list((folder / "images").glob("*.png"))),
                source="scikit-image data.stereo_motorcycle (Middlebury 2014 Motorcycle)",
            ).save(folder / "README.md")
            pushed[SAMPLE_DEPTH_DATA] = store.push(
                folder, SAMPLE_DEPTH_DATA, repo_type="dataset", message="Sample Zivid-format depth data"
            ).id
        if force or not store.exists(SAMPLE_SEGMA_DATA, repo_type="dataset"):
            from .data.segma import make_shapes_dataset

            folder = make_shapes_dataset(Path(tmp) / "segma-shapes", images=16, seed=0)
            pushed[SAMPLE_SEGMA_DATA] = store.push(
                folder, SAMPLE_SEGMA_DATA, repo_type="dataset", message="Synthetic shapes for the Segma recipes"
            ).id
    logger.info("bootstrap pushed %d repos into %s", len(pushed), store.root)
    return pushed
