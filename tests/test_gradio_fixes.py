"""hubkit.gradio_fixes: gradio's image cache writes a returned image whole, never truncated under a reader."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def original_and_fixed():
    from gradio import processing_utils

    from hubkit.gradio_fixes import atomic_cache_writes

    before = processing_utils.save_pil_to_cache
    atomic_cache_writes()
    atomic_cache_writes()  # a second call (another Space of the process) keeps the first fix
    fixed = processing_utils.save_pil_to_cache
    assert fixed.hubkit_atomic and not getattr(fixed.gradio_original, "hubkit_atomic", False)
    yield fixed.gradio_original, fixed
    processing_utils.save_pil_to_cache = before


def _noise(size: int = 96) -> Image.Image:  # incompressible: a 28 KB PNG, encoded fast enough for writes to race
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_same_path_and_bytes_as_gradio(original_and_fixed, tmp_path):
    original, fixed = original_and_fixed
    image = _noise(64)
    theirs = original(image, str(tmp_path / "a"), format="png")
    ours = fixed(image, str(tmp_path / "b"), format="png")
    assert ours.replace(str(tmp_path / "b"), "") == theirs.replace(str(tmp_path / "a"), "")
    with open(theirs, "rb") as a, open(ours, "rb") as b:
        assert a.read() == b.read()
    assert fixed(image, str(tmp_path / "b"), format="png") == ours  # again: the file is left as it is
    assert sorted(p.name for p in (tmp_path / "b").rglob("*")) == sorted([Path(ours).parent.name, "image.png"])


def test_readers_never_see_a_partial_file(original_and_fixed, tmp_path):
    """Four threads save the same image over and over (concurrent requests with one answer) while a reader reads
    the cached file: every read is the whole file (with gradio's own function most reads here were short)."""
    _, fixed = original_and_fixed
    from gradio import processing_utils

    image = _noise()
    expected = processing_utils.encode_pil_to_bytes(image, "png")
    path = fixed(image, str(tmp_path), format="png")
    stop = threading.Event()
    sizes: list[int] = []

    def write():
        while not stop.is_set():
            fixed(image, str(tmp_path), format="png")

    def read():
        for _ in range(20_000):
            with open(path, "rb") as f:
                sizes.append(len(f.read()))
        stop.set()

    threads = [threading.Thread(target=write) for _ in range(4)] + [threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sizes and set(sizes) == {len(expected)}
    assert not [p for p in tmp_path.rglob("*.part")]  # no half-written files left behind
