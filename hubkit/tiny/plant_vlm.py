"""Tiny PlantVLM (hubkit.plant): a tiny ResNet (microsoft/resnet-50's classes and ConvNext-style preprocessing, at
64 px) + a tiny GPT-2 body (microsoft/DialoGPT-medium's architecture) with a byte-level BPE tokenizer trained here on
plant-disease words, eight leaf classes."""

from __future__ import annotations

from pathlib import Path

from ._common import BILINEAR, IMAGENET_MEAN, IMAGENET_STD

# Training text for the tiny BPE tokenizer (byte-level: any other text still encodes, in shorter pieces).
_CORPUS = """\
Healthy leaf: an even green blade with no spots or deformation. Feuille saine : limbe vert uniforme, sans tache.
Fungus Alternaria solani: brown spots with concentric rings on older leaves, which turn yellow and drop.
Champignon Alternaria solani : taches brunes à anneaux concentriques sur les feuilles âgées, qui jaunissent.
Fungus Septoria lycopersici: many small circular spots with grey centres, dark margins and black pycnidia.
Champignon Septoria : nombreuses petites taches circulaires à centre gris et bord sombre, pycnides noires.
Long greyish cigar-shaped lesions running along the veins; streaks. Lésions allongées grisâtres, stries, nervures.
Powdery mildew: white powdery coating on the upper side of the leaf. Oïdium : feutrage blanc poudreux.
Yellowing between the veins, mosaic, chlorosis, wilting, rust pustules, blight, scab, rot, virus, bacteria.
Jaunissement, mosaïque, chlorose, flétrissement, rouille, pustules, mildiou, tavelure, pourriture, bactérie.
Apple, corn, maize, grape, potato, tomato, squash, pepper, peach, cherry, strawberry, soybean, orange.
Pommier, maïs, vigne, pomme de terre, tomate, courge, poivron, pêcher, cerisier, fraisier, soja, oranger.
Treatment: remove infected leaves, copper-based fungicide, crop rotation, resistant varieties, mulch the soil.
"""


def tokenizer(vocab_size: int = 768):
    """A GPT-2-style byte-level BPE tokenizer (<|endoftext|> is bos, eos and unk; no pad token, as GPT-2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    special = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special, eos_token=special, unk_token=special, model_max_length=1024
    )


def build(out: Path) -> None:
    from transformers import GPT2Config, GPT2Model, ResNetConfig, ResNetModel
    from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil

    from ..data.leaves import leaf_classes
    from ..plant._encoders import drop_pooler
    from ..plant.model import PlantVLM, PlantVLMConfig

    tok = tokenizer()
    vision = ResNetModel(ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="bottleneck"))
    text = drop_pooler(
        GPT2Model(
            GPT2Config(
                vocab_size=len(tok),
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=128,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
            )
        )
    )
    tok.pad_token = tok.eos_token  # as PlantVLM sets it for GPT-2 tokenizers
    classes = sorted(name for name, _, _ in leaf_classes(8))
    config = PlantVLMConfig(
        num_classes=len(classes),
        class_names=classes,
        vision_backbone="microsoft/resnet-50",
        text_model="microsoft/DialoGPT-medium",
        vision_dim=32,
        text_dim=32,
        fusion_dim=32,
        num_attention_heads=4,
        num_attention_layers=2,
        dropout=0.0,
        text_max_length=64,
        description_layers=1,
        description_max_length=48,
        vision_config=vision.config.to_dict(),
        text_config=text.config.to_dict(),
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    # microsoft/resnet-50 preprocessing (shortest edge 224 there, crop_pct 0.875): at 64 px, no crop
    processor = ConvNextImageProcessorPil(
        size={"shortest_edge": 64}, crop_pct=1.0, resample=BILINEAR, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )
    model = PlantVLM(config, vision_encoder=vision, text_encoder=text, tokenizer=tok, image_processor=processor)
    model.save_pretrained(out)
