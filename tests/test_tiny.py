"""Every tiny family builds, reloads with the stock classes, and runs one real forward on a real image.

The families come from the task registry (each task's `tiny_models`), so a new family is tested as soon as its task
registers; the `check_<family>` functions below add family-specific checks on top of the generic ones.
"""

from __future__ import annotations

import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hubkit import tiny
from hubkit.errors import UnknownTaskError
from hubkit.plan import build_on_meta, find_config
from hubkit.tasks import LoadOptions, get_task, list_tasks, task_for_architecture

MAX_BYTES = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def image() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((160, 120))  # non-square, to exercise resize rules


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return tiny.build_all(tmp_path_factory.mktemp("tiny"), seed=0)


def _module_names(model: torch.nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}


def _check_depth(folder: Path, image: Image.Image, multiple: int) -> torch.nn.Module:
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    inputs = processor(images=image, return_tensors="pt")
    assert all(n % multiple == 0 for n in inputs["pixel_values"].shape[-2:])
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.predicted_depth.shape == (1, *inputs["pixel_values"].shape[-2:])
    depth = processor.post_process_depth_estimation(outputs, target_sizes=[image.size[::-1]])[0]["predicted_depth"]
    assert depth.shape == image.size[::-1]
    assert torch.isfinite(depth).all()
    return model


def check_depth_anything(folder: Path, image: Image.Image) -> None:
    from transformers import DepthAnythingForDepthEstimation

    model = _check_depth(folder, image, multiple=14)
    assert isinstance(model, DepthAnythingForDepthEstimation)
    assert {"q_proj", "k_proj", "v_proj"} <= _module_names(model)
    assert model.config.depth_estimation_type == "relative"


def check_dpt(folder: Path, image: Image.Image) -> None:
    from transformers import DPTForDepthEstimation

    model = _check_depth(folder, image, multiple=1)
    assert isinstance(model, DPTForDepthEstimation)
    assert {"query", "key", "value"} <= _module_names(model)  # DPT keeps the BERT-style names in transformers 5


def check_sam(folder: Path, image: Image.Image) -> None:
    from transformers import SamModel, SamProcessor

    processor = SamProcessor.from_pretrained(folder)
    model = SamModel.from_pretrained(folder).eval()
    inputs = processor(images=image, input_points=[[[80, 60]]], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    masks = processor.image_processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )
    assert masks[0].shape == (1, 3, image.height, image.width) and masks[0].dtype == torch.bool
    assert outputs.iou_scores.shape == (1, 1, 3)
    assert {"qkv", "proj", "lin1", "lin2"} <= _module_names(model)


def check_blip(folder: Path, image: Image.Image) -> None:
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = BlipProcessor.from_pretrained(folder)
    model = BlipForConditionalGeneration.from_pretrained(folder).eval()
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    caption = processor.decode(ids[0], skip_special_tokens=True)
    assert isinstance(caption, str) and caption.strip()
    assert len(processor.tokenizer) == model.config.text_config.vocab_size == 30524


def check_grounding_dino(folder: Path, image: Image.Image) -> None:
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
    inputs = processor(images=image, text="a cat. a dog.", return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    results = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[image.size[::-1]]
    )
    result = results[0]
    assert {"boxes", "scores", "labels"} <= set(result)
    assert result["boxes"].shape == (len(result["scores"]), 4)
    assert all(isinstance(label, str) for label in result["text_labels"])


def check_mistral(folder: Path, image: Image.Image) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    messages = [{"role": "user", "content": "Describe the depth of this image."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<s>[INST] Describe") and text.endswith("[/INST]")
    prompt = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    assert tokenizer.decode(prompt["input_ids"][0]) == text  # byte-level BPE round-trips
    with torch.no_grad():
        ids = model.generate(**prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert ids.shape[1] > prompt["input_ids"].shape[1]
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= _module_names(model)


def check_diffusion(folder: Path, image: Image.Image) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    pixels = torch.from_numpy(np.asarray(image.resize((16, 16)), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    with torch.no_grad():
        latents = vae.encode(pixels[None]).latent_dist.sample(torch.Generator().manual_seed(0))
        assert latents.shape == (1, 4, unet.config.sample_size, unet.config.sample_size)
        t = torch.tensor([10])
        noisy = scheduler.add_noise(latents, torch.randn_like(latents), t)
        sample = unet(noisy, t, encoder_hidden_states=torch.randn(1, 7, unet.config.cross_attention_dim)).sample
        assert sample.shape == latents.shape
        assert vae.decode(sample).sample.shape == (1, 3, 16, 16)
    assert {"to_q", "to_k", "to_v"} <= _module_names(unet)
    assert any(name.endswith("to_out.0") for name, _ in unet.named_modules())
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder, **tiny.DIFFUSION_ABSENT)
    embeds = torch.randn(1, 7, unet.config.cross_attention_dim)
    out = pipe(image=image, prompt_embeds=embeds, negative_prompt_embeds=embeds, num_inference_steps=2, strength=1.0)
    assert out.images[0].size == (image.width // 8 * 8, image.height // 8 * 8)


def check_image_classification(folder: Path, image: Image.Image) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**processor(images=image, return_tensors="pt")).logits
    assert logits.shape == (1, 5)
    assert model.config.id2label[int(logits.argmax())] in {"cat", "dog", "bird", "car", "tree"}


def check_image_embedding(folder: Path, image: Image.Image) -> None:
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    inputs = processor(images=image, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 28, 28)
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.pooler_output.shape == (1, model.config.hidden_size)
    assert outputs.last_hidden_state.shape == (1, 1 + 2 * 2, model.config.hidden_size)


CHECKS = {name[len("check_") :].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("check_")}


def test_registry_and_tiny_families_agree():
    """Every task names tiny families that exist (a builder in hubkit/tiny/<family>.py); every tiny family module
    belongs to exactly one task; the family views carry the owning task's card facts."""
    tasks = [get_task(name) for name in list_tasks()]
    declared = [(task, model) for task in tasks for model in task.tiny_models]
    families = tiny.families()
    assert len(families) == len(declared)  # no family claimed twice
    for task, model in declared:
        spec = families[model.family]
        assert (spec.task, spec.builder, spec.real_repo_id) == (task.name, model.build, model.mimics)
        # bootstrap cards the tiny base and the task's demo adapters with these
        assert (spec.pipeline_tag, spec.library_name) == (task.pipeline_tag, task.library_name)
        assert spec.repo_name == model.repo_name == f"hubkit-tiny/{model.family}"
        assert model.build.__module__ == f"hubkit.tiny.{model.family.replace('-', '_')}", model.family
    modules = {m.name for m in pkgutil.iter_modules(tiny.__path__) if not m.name.startswith("_")}
    assert modules == {model.family.replace("-", "_") for _, model in declared}  # no builder without a task
    assert set(tiny.FAMILIES) == set(families)
    assert set(CHECKS) <= set(families)  # no check left behind by a removed family


@pytest.mark.parametrize("family", list(tiny.FAMILIES))
def test_family_loads_and_runs(family: str, built: dict[str, Path], image: Image.Image):
    folder = built[family]
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert any(f.suffix == ".safetensors" for f in files)
    assert not [f for f in files if f.suffix in {".bin", ".pt", ".pth", ".ckpt"}]
    assert sum(f.stat().st_size for f in files) < MAX_BYTES
    task = get_task(tiny.FAMILIES[family].task)
    _, architecture = build_on_meta(find_config(str(folder)))  # as `hubkit lora plan` reads it
    assert architecture in task.architectures and task_for_architecture(architecture) is task
    model, _ = task.load(folder, LoadOptions())  # the owning task loads it
    assert type(model).__name__ in (*task.architectures, "ConditionedUNet", "PixCellModel")
    if family in CHECKS:
        CHECKS[family](folder, image)


@pytest.mark.parametrize("family", list(tiny.FAMILIES))
def test_same_seed_same_weights(family: str, built: dict[str, Path], tmp_path: Path):
    again = tiny.build(family, tmp_path / "again", seed=0)
    other = tiny.build(family, tmp_path / "other", seed=1)
    weights = sorted(p.relative_to(built[family]) for p in built[family].rglob("*.safetensors"))
    assert weights
    for rel in weights:
        assert (again / rel).read_bytes() == (built[family] / rel).read_bytes()
    first, reseeded = load_file(built[family] / weights[0]), load_file(other / weights[0])
    assert any(not torch.equal(first[k], reseeded[k]) for k in first)


def test_unknown_family_lists_the_known_ones(tmp_path: Path):
    with pytest.raises(UnknownTaskError, match="depth-anything"):
        tiny.build("no-such-family", tmp_path)
    with pytest.raises(ValueError):
        tiny.build("", tmp_path)
