"""Make `spaces/<name>/thumbnail.png`, the picture on each Space's tile of the `hubkit serve` landing page.

Each thumbnail is what the Space's own flow makes from its first example with the tiny random-weight models of
`hubkit bootstrap` (so the outputs show the layout, not a trained model's quality), or the example input where
the output is not a picture (plant: a list of classes). The caption saying which is written into the PNG
(tEXt "Description"); the landing page shows it under the picture.

    .venv/bin/python scripts/make_space_thumbnails.py [depth segma pixcell plant]

Runs on CPU in a temporary store (a minute or two); the store you use is not touched.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPACES = ROOT / "spaces"
SIZE = (480, 270)  # 16:9, small: a PNG of a few tens of kB per Space


def _fit(image, size):
    """`image` scaled to fit `size` and centred on a white canvas."""
    from PIL import Image

    image = image.convert("RGB")
    scale = min(size[0] / image.width, size[1] / image.height)  # up too: tiny models sample tiny images
    resample = Image.Resampling.NEAREST if scale > 2 else Image.Resampling.LANCZOS
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    canvas = Image.new("RGB", size, "white")
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return canvas


def _side_by_side(images):
    from PIL import Image

    width = SIZE[0] // len(images)
    canvas = Image.new("RGB", SIZE, "white")
    for i, image in enumerate(images):
        canvas.paste(_fit(image, (width - 4, SIZE[1])), (i * width + 2, 0))
    return canvas


def _as_pil(value):
    import numpy as np
    from PIL import Image

    return value if isinstance(value, Image.Image) else Image.fromarray(np.asarray(value))


def _example(space: str) -> Path:
    return sorted((SPACES / space / "examples").glob("*.png"))[0]


def depth():
    from hubkit.spaces_support import DepthDemo

    demo = DepthDemo(device="cpu")
    example = _example("depth")
    base = demo.available_bases()[0]
    result = demo.run(str(example), base, demo.available_adapters(base)[:1])
    maps = [result["base"]] + ([result["adapted"]] if result["adapted"] is not None else [])
    picture = _side_by_side([_as_pil(Image_open(example)), *(_as_pil(m) for m in maps)])
    return picture, (
        f"Example output: {example.name} and its depth maps (base, adapted) from the tiny random-weight "
        "models of `hubkit bootstrap`, made by the Space's own flow"
    )


def segma():
    from hubkit.segma.demo import SegmaDemo

    demo = SegmaDemo(device="cpu")
    example = _example("segma")
    run = demo.run(str(example), classes="object")
    adapted, _ = demo.overlays(run)
    return _side_by_side([_as_pil(Image_open(example)), _as_pil(adapted)]), (
        f"Example output: {example.name} and its labelled regions from the tiny random-weight models of "
        "`hubkit bootstrap`, made by the Space's own flow"
    )


def pixcell():
    from hubkit.pixcell.demo import PixCellDemo

    demo = PixCellDemo(device="cpu")
    example = _example("pixcell")
    base = demo.available_bases()[0]
    adapters = demo.available_adapters(base)
    run = demo.run(str(example), base=base, adapter=adapters[0] if adapters else None, num_inference_steps=4,
                   num_images=2, seed=0)  # fmt: skip
    samples = list(run.base_images[:1]) + list((run.adapted_images or [])[:1])
    return _side_by_side([_as_pil(Image_open(example)), *(_as_pil(s) for s in samples)]), (
        f"Example output: {example.name} and samples (base, adapted) from the tiny random-weight models of "
        "`hubkit bootstrap` (noise-like), made by the Space's own flow"
    )


def plant():
    example = _example("plant")
    return _fit(Image_open(example), SIZE), (
        f"Example input ({example.name}): the Space answers with disease classes and text, not a picture"
    )


def Image_open(path):  # noqa: N802 (reads like PIL's)
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


MAKERS = {"depth": depth, "segma": segma, "pixcell": pixcell, "plant": plant}


def main(names: list[str]) -> int:
    from PIL.PngImagePlugin import PngInfo

    os.environ["HUBKIT_HOME"] = tempfile.mkdtemp(prefix="hubkit-thumbs-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hubkit import hub
    from hubkit.bootstrap import bootstrap

    bootstrap(hub.LocalStore(os.environ["HUBKIT_HOME"]))
    failed = 0
    for name in names or list(MAKERS):
        try:
            picture, caption = MAKERS[name]()
        except Exception as err:  # one Space failing leaves its old thumbnail and the others go on
            print(f"{name}: failed: {type(err).__name__}: {err}", file=sys.stderr)
            failed += 1
            continue
        info = PngInfo()
        info.add_text("Description", caption)
        target = SPACES / name / "thumbnail.png"
        picture.save(target, optimize=True, pnginfo=info)
        print(f"{target.relative_to(ROOT)}: {target.stat().st_size // 1024} kB: {caption}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
