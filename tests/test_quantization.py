"""bitsandbytes int8 loading (runs on the CPU); 4-bit NF4 is checked where a CUDA GPU is present."""

from __future__ import annotations

import pytest
import torch

import hubkit
from hubkit import tiny

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    return tiny.build("mistral", tmp_path_factory.mktemp("m") / "mistral")


def test_int8_label_extraction_with_an_adapter(mistral, tmp_path):
    adapter = tiny.random_adapter("label-extraction", mistral, tmp_path / "lora")
    p = hubkit.load("label-extraction", mistral, quantize="int8", adapters=[adapter])
    linear_types = {type(m).__name__ for m in p.model.get_base_model().modules()}
    assert "Linear8bitLt" in linear_types  # the base really is int8
    captions = ["a red car next to a tree"]
    with_adapter = p.task.predict(p.model, p.processor, [], captions=captions)[0]
    again = p.task.predict(p.model, p.processor, [], captions=captions)[0]
    assert with_adapter.raw == again.raw and isinstance(with_adapter.names, list)
    with p.using("base"):
        base = p.task.predict(p.model, p.processor, [], captions=captions)[0]
    assert base.raw != with_adapter.raw


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="4-bit NF4 needs a CUDA GPU")
def test_nf4_on_cuda(mistral):
    p = hubkit.load("label-extraction", mistral, quantize="nf4", device="cuda")
    assert "Linear4bit" in {type(m).__name__ for m in p.model.modules()}
    assert p.task.predict(p.model, p.processor, [], captions=["a cat"])[0].raw
