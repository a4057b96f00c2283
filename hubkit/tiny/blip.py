"""Tiny BLIP captioner (transformers' BlipForConditionalGeneration + BlipProcessor, the real WordPiece vocab)."""

from __future__ import annotations

from pathlib import Path

from ._common import BICUBIC, bert_tokenizer


def build(out: Path) -> None:
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.configuration_blip import BlipTextConfig, BlipVisionConfig
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    # As in Salesforce/blip-image-captioning-*: [DEC] starts a caption, [ENC] is extra, [SEP] ends it
    tokenizer = bert_tokenizer(bos_token="[DEC]", extra_special_tokens=["[ENC]"])
    hidden = 32
    text = BlipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        encoder_hidden_size=hidden,
        intermediate_size=64,
        projection_dim=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=tokenizer.sep_token_id,
    )
    vision = BlipVisionConfig(
        hidden_size=hidden,
        intermediate_size=64,
        projection_dim=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=hidden, image_text_hidden_size=hidden)
    BlipForConditionalGeneration(config).save_pretrained(out)
    image_processor = BlipImageProcessorPil(
        size={"height": 32, "width": 32},
        resample=BICUBIC,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
