"""The PixCell Space: PixCellDemo with `hubkit bootstrap`'s tiny PixCell and an adapter carrying target colour
statistics, its refusals, and the Gradio app's handlers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_space_depth import handler, store_template

from hubkit import hub
from hubkit.errors import ConfigError, HubkitError, InvalidImageError
from hubkit.pixcell.demo import TARGET_COLOUR_FILE, PixCellDemo
from hubkit.pool import ModelPool
from hubkit.spaces_support import ADAPTER_NOT_AVAILABLE

EXAMPLES = Path(__file__).resolve().parent.parent / "spaces" / "pixcell" / "examples"
TINY = "hubkit-tiny/pixcell"


@pytest.fixture
def store(tmp_path_factory, isolated_home):
    template = store_template(tmp_path_factory)
    shutil.copytree(template, isolated_home, ignore=shutil.ignore_patterns(".complete"), copy_function=os.link)
    return isolated_home


@pytest.fixture(scope="module")
def pool():
    return ModelPool()


def push_adapter(tmp_path: Path) -> str:
    """A real PixCell adapter (LoRA + condition MLP, nudged off zero) with the examples' colour statistics."""
    import torch
    from PIL import Image

    from hubkit.metrics.generation import colour_statistics
    from hubkit.pixcell.adapter import AdapterSpec, add_adapter, save_adapter
    from hubkit.pixcell.model import load_pixcell

    model = add_adapter(load_pixcell(hub.pull(TINY)), AdapterSpec())
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    folder = tmp_path / "adapter"
    save_adapter(model, folder, spec=AdapterSpec(), base_id=TINY)
    target = colour_statistics([np.asarray(Image.open(p).convert("RGB")) for p in sorted(EXAMPLES.glob("ihc_target*"))])
    (folder / TARGET_COLOUR_FILE).write_text(json.dumps(target.to_dict()))
    hub.push(folder, "me/pixcell-ihc")
    return "me/pixcell-ihc"


def test_examples_are_histology_patches():
    from PIL import Image

    paths = sorted(EXAMPLES.glob("*.png"))
    assert [p.name for p in paths] == ["ihc_target.png", "ihc_target_2.png", "stain_shifted.png"]
    for path in paths:
        with Image.open(path) as img:
            assert img.size == (128, 128) and np.asarray(img).std() > 10


def test_base_and_adapted_samples_with_colour_distances(store, pool, tmp_path):
    adapter = push_adapter(tmp_path)
    demo = PixCellDemo(pool=pool)
    assert demo.available_bases()[0] == TINY and adapter in demo.available_adapters(TINY)
    seen = []
    run = demo.run(str(EXAMPLES / "stain_shifted.png"), adapter=adapter, num_images=2, num_inference_steps=3,
                   sampler="ddim", seed=5, progress=lambda share, what: seen.append((share, what)))  # fmt: skip
    assert len(run.base_images) == len(run.adapted_images) == 2
    base, adapted = (np.stack([np.asarray(i) for i in imgs]) for imgs in (run.base_images, run.adapted_images))
    assert base.shape == adapted.shape and not np.array_equal(base, adapted)  # the adapter changes the samples
    assert set(run.distances) == {"base", "adapted"} and all(v >= 0 for v in run.distances.values())
    assert seen and seen[-1][0] == pytest.approx(1.0) and "adapted samples" in seen[-1][1]
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)  # progress only goes forward
    assert "Colour distance" in demo.summary(run) and len(run.files) == 4
    again = demo.run(str(EXAMPLES / "stain_shifted.png"), num_images=2, num_inference_steps=3, sampler="ddim", seed=5)
    assert again.adapted_images == [] and again.distances == {}
    assert np.array_equal(np.stack([np.asarray(i) for i in again.base_images]), base)  # same seed, same samples


def test_bad_requests_are_refused_before_any_model_loads(store, tmp_path):
    class Pool:
        def lease(self, *args, **kwargs):
            raise AssertionError("no model should load")

    demo = PixCellDemo(pool=Pool())
    example = str(EXAMPLES / "ihc_target.png")
    broken = tmp_path / "patch.png"
    broken.write_bytes(b"\x89PNG broken")
    with pytest.raises(InvalidImageError, match="not an image"):
        demo.run(str(broken))
    with pytest.raises(HubkitError, match="not offered here"):
        demo.run(example, base="/etc")
    with pytest.raises(HubkitError) as err:
        demo.run(example, adapter="../../etc/passwd")
    assert str(err.value) == ADAPTER_NOT_AVAILABLE
    with pytest.raises(ConfigError, match="sampler|Unknown|unknown"):
        demo.run(example, sampler="magic")
    for bad in ({"num_images": 99}, {"num_inference_steps": 0}, {"guidance_scale": -1.0}, {"seed": -3}):
        with pytest.raises(ConfigError, match="must be"):
            demo.run(example, **bad)


def test_app_builds_and_answers_with_gradio_errors(store, monkeypatch):
    import gradio as gr

    from hubkit import serve

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    (space,) = [s for s in serve.discover_spaces() if s.name == "pixcell"]
    app = serve.load_space_demo(space)
    assert isinstance(app, gr.Blocks) and space.sdk == "gradio"
    assert {"generate", "menus", "preview", "refresh", "adapters"} <= {fn.api_name for fn in app.fns.values()}
    base, adapter = handler(app, "menus")()
    assert base.value == TINY and adapter.choices[0][1] == ""
    with pytest.raises(gr.Error, match="No image"):
        handler(app, "generate")(None, TINY, "", "ddim", 2, 1.0, 1, 0, progress=lambda *a, **k: None)
    base_images, adapted, info, files = handler(app, "generate")(
        str(EXAMPLES / "ihc_target.png"), TINY, "", "ddim", 2, 1.0, 2, 0, progress=lambda *a, **k: None
    )
    assert len(base_images) == 2 and adapted is None and "Random-weight" in info and len(files) == 2
