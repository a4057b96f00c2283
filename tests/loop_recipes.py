"""Three small recipes that drive the shared loop the way the domain recipes will: a classifier with a new head
(modules_to_save), a conditional diffusion model (LoRA + a conditioning MLP trained in place, two LR groups) and
int8 LoRA of a causal LM (k-bit preparation). Imported by the tests; run as a script under `accelerate launch`
for the DDP test:

    accelerate launch --num_processes 2 tests/loop_recipes.py classifier BASE_DIR OUT_DIR
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hubkit.tasks import LoadOptions, get_task
from hubkit.training import TrainConfig, TrainingSetup, build_config, train
from hubkit.training.trainable import ParamGroup, Trainable, kbit_preparation

CLASS_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")


@dataclass(frozen=True)
class LoopConfig(TrainConfig):
    pass


def config(out: Path, base: Path, **overrides) -> LoopConfig:
    values = dict(
        base=str(base),
        output_dir=str(out),
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        learning_rate=5e-3,
        lr_schedule="constant",
        report_to="none",
        mixed_precision="no",
        log_every=1,
        epochs=100,
    )
    values.update(overrides)
    return build_config(LoopConfig, values)


class _Crops(torch.utils.data.Dataset):
    """Random crops of 5 real photos (scikit-image), one class each: learnable from colour and texture."""

    def __init__(self, processor, n_per_class: int, seed: int, size: int = 64):
        import skimage.data

        rng = np.random.default_rng(seed)
        self.items = []
        for label, name in enumerate(CLASS_IMAGES):
            image = np.asarray(getattr(skimage.data, name)())
            image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
            for _ in range(n_per_class):
                y = rng.integers(0, image.shape[0] - size)
                x = rng.integers(0, image.shape[1] - size)
                self.items.append((Image.fromarray(image[y : y + size, x : x + size]), label))
        pixels = processor(images=[img for img, _ in self.items], return_tensors="pt")["pixel_values"]
        self.pixels, self.labels = pixels, torch.tensor([label for _, label in self.items])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


def classifier_setup(base: Path) -> TrainingSetup:
    task = get_task("image-classification")
    _, processor = task.load(base, LoadOptions())

    def load_base():
        model, _ = task.load(base, LoadOptions())
        with torch.random.fork_rng(devices=[]):  # a new 5-class head, the same one at every load
            torch.manual_seed(0)
            model.classifier = torch.nn.Linear(model.config.hidden_size, 5)
        return model

    def loss_fn(model, batch):
        device = next(model.parameters()).device
        logits = model(pixel_values=batch["pixel_values"].to(device)).logits
        return torch.nn.functional.cross_entropy(logits.float(), batch["labels"].to(device))

    @torch.no_grad()
    def evaluate(model, loader):
        device = next(model.parameters()).device
        right = total = 0
        for batch in loader:
            pred = model(pixel_values=batch["pixel_values"].to(device)).logits.argmax(-1).cpu()
            right += int((pred == batch["labels"]).sum())
            total += len(pred)
        return {"accuracy": right / total}

    return TrainingSetup(
        task="image-classification",
        load_base=load_base,
        train_dataset=_Crops(processor, 24, seed=0),
        eval_dataset=_Crops(processor, 10, seed=1),
        loss_fn=loss_fn,
        evaluate_fn=evaluate,
        trainable=Trainable(modules_to_save=("classifier",), groups=(ParamGroup(r"classifier", lr=1e-2),)),
    )


class _Patches(torch.utils.data.Dataset):
    """16x16 patches of the immunohistochemistry slide (scikit-image), in [-1, 1]."""

    def __init__(self, n: int, seed: int):
        import skimage.data

        image = np.asarray(skimage.data.immunohistochemistry(), dtype=np.float32) / 127.5 - 1
        rng = np.random.default_rng(seed)
        ys, xs = rng.integers(0, image.shape[0] - 64, n), rng.integers(0, image.shape[1] - 64, n)
        patches = [image[y : y + 64 : 4, x : x + 64 : 4] for y, x in zip(ys, xs, strict=True)]
        self.pixels = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).contiguous()

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixels[i]}


def diffusion_setup(base: Path) -> TrainingSetup:
    task = get_task("conditional-image-generation")

    def load_base():
        return task.load(base, LoadOptions())[0]

    def loss_fn(model, batch):  # the epsilon-prediction loss: noise and timesteps drawn from torch's RNG
        net = model.get_base_model() if hasattr(model, "get_base_model") else model
        pixels = batch["pixel_values"].to(next(model.parameters()).device)
        with torch.no_grad():
            latents = net.vae.encode(pixels).latent_dist.mean * net.vae.config.scaling_factor
            embedding = net.encode_condition(pixels)
        noise = torch.randn_like(latents)
        steps = torch.randint(0, net.scheduler.config.num_train_timesteps, (len(latents),), device=latents.device)
        noisy = net.scheduler.add_noise(latents, noise, steps)
        return torch.nn.functional.mse_loss(model(noisy, steps, embedding).float(), noise)

    return TrainingSetup(
        task="conditional-image-generation",
        load_base=load_base,
        train_dataset=_Patches(64, seed=0),
        eval_dataset=_Patches(8, seed=1),
        loss_fn=loss_fn,
        trainable=Trainable(
            full_modules=("condition_adapter",), groups=(ParamGroup(r"condition_adapter", lr=2e-3, weight_decay=0.0),)
        ),
    )


class _Captions(torch.utils.data.Dataset):
    PAIRS = (
        ("a red car parked next to a tree", "car, tree"),
        ("a cat sleeping on a sofa", "cat, sofa"),
        ("two dogs playing with a ball", "dog, ball"),
        ("a bird on a fence", "bird, fence"),
    )

    def __init__(self, tokenizer):
        texts = [f"[INST] {caption} [/INST] {labels}" for caption, labels in self.PAIRS] * 4
        batch = tokenizer(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
        self.ids, self.mask = batch["input_ids"], batch["attention_mask"]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}


def int8_lm_setup(base: Path) -> TrainingSetup:
    task = get_task("label-extraction")
    _, tokenizer = task.load(base, LoadOptions())

    def load_base():
        return task.load(base, LoadOptions(quantize="int8"))[0]

    def loss_fn(model, batch):
        device = next(model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        labels = ids.masked_fill(mask == 0, -100)
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss.float()

    return TrainingSetup(
        task="label-extraction",
        load_base=load_base,
        train_dataset=_Captions(tokenizer),
        loss_fn=loss_fn,
        trainable=Trainable(prepare=kbit_preparation(gradient_checkpointing=False)),
    )


SETUPS = {"classifier": classifier_setup, "diffusion": diffusion_setup, "int8-lm": int8_lm_setup}

if __name__ == "__main__":  # accelerate launch tests/loop_recipes.py NAME BASE OUT [key=value ...]
    name, base, out, *rest = sys.argv[1:]
    overrides = dict(item.split("=", 1) for item in rest)
    result = train(config(Path(out), Path(base), **overrides), SETUPS[name](Path(base)))
    if result.is_main_process:
        print(json.dumps({"metrics": result.metrics, "losses": result.losses, "adapter": str(result.adapter_dir)}))
