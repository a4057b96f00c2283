"""The shared accelerate training loop: LoRA on a base, resumable checkpoints, eval, tracking, card, push.

Runs unchanged single-process, under `accelerate launch --num_processes N` (DDP; gloo on CPU), and
on TPU through accelerate + torch_xla. Only the main process writes the adapter, the card and pushes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import cards, hub
from ..adapters import attach_adapter, count_parameters, lora_config, parameter_line
from ..errors import ConfigError, HubkitError
from ..tasks import get_task
from .config import config_dict, dump_yaml

logger = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"


@dataclass
class TrainingSetup:
    """What a recipe hands the loop: the model, data and the task-specific pieces."""

    task: str
    load_base: Callable[[], torch.nn.Module]  # a fresh base model (also used for the final reload check)
    train_dataset: torch.utils.data.Dataset
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor]
    eval_dataset: torch.utils.data.Dataset | None = None
    evaluate_fn: Callable[[torch.nn.Module, torch.utils.data.DataLoader], dict[str, float]] | None = None
    eval_images_fn: Callable[[torch.nn.Module, torch.utils.data.DataLoader], dict[str, Any]] | None = None
    collate_fn: Callable | None = None
    dataset_name: str = "custom"
    dataset_type: str = "custom"
    dataset_revision: str | None = None
    card_notes: str | None = None
    extra_files: dict[str, str] = field(default_factory=dict)  # name -> text, written beside the adapter


@dataclass
class TrainResult:
    adapter_dir: Path
    metrics: dict[str, float]
    global_step: int
    losses: list[tuple[int, float]]
    trainable_params: int
    total_params: int
    pushed_revision: str | None = None
    is_main_process: bool = True  # under DDP only the main process holds the metrics and the pushed revision


def _mixed_precision(value: str) -> str:
    if value != "auto":
        return value
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _cpu_only() -> bool:
    """Without CUDA or XLA, ask accelerate for CPU so multi-process launches use DDP over gloo."""
    import importlib.util

    return not torch.cuda.is_available() and importlib.util.find_spec("torch_xla") is None


def _trackers(report_to: str) -> list[str]:
    if report_to == "none":
        return []
    if report_to == "trackio":
        import importlib.util

        if importlib.util.find_spec("trackio") is None:
            raise ConfigError("report_to=trackio needs the trackio package (pip install trackio)")
    return [report_to]


def _checkpoints(root: Path) -> list[Path]:
    found = [p for p in root.glob("checkpoint-*") if (p / STATE_FILE).is_file() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _resume_dir(config, root: Path) -> Path | None:
    if not config.resume:
        return None
    if config.resume == "latest":
        found = _checkpoints(root)
        if not found:
            logger.warning("resume=latest but no checkpoint in %s; starting fresh", root)
            return None
        return found[-1]
    path = Path(config.resume)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"resume={config.resume!r} is not a checkpoint folder (no {STATE_FILE})")
    return path


@contextlib.contextmanager
def _loader_state_guard(accelerator):
    """On XLA, accelerate cannot save its wrapped data loaders' state (MpDeviceLoaderWrapper has no
    `.dataset`). The loop restores the data position itself (epoch + batches seen), so skip them there."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.XLA:
        yield
        return
    loaders, accelerator._dataloaders = accelerator._dataloaders, []
    try:
        yield
    finally:
        accelerator._dataloaders = loaders


def _flat(values: dict) -> dict:
    values = cards.redact_secrets(values)
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in values.items()}


def train(config, setup: TrainingSetup) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from peft import get_peft_model
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from .._logging import install_redaction

    install_redaction()
    output = Path(config.output_dir)
    ckpt_root = output / "checkpoints"
    accelerator = Accelerator(
        cpu=_cpu_only(),
        mixed_precision=_mixed_precision(config.mixed_precision),
        gradient_accumulation_steps=config.grad_accum,
        log_with=_trackers(config.report_to) or None,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(config.seed)
    logger.info(
        "accelerate: %s, %d process(es), device %s, mixed precision %s",
        accelerator.distributed_type,
        accelerator.num_processes,
        accelerator.device,
        accelerator.mixed_precision,
    )
    spec = get_task(setup.task)
    base = setup.load_base()
    peft_config = lora_config(
        base,
        config.lora_targets or spec.preset.targets,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        exclude=None if config.lora_targets else spec.preset.exclude,
    )
    model = get_peft_model(base, peft_config)
    if config.gradient_checkpointing:
        if not getattr(model.get_base_model(), "supports_gradient_checkpointing", False):
            raise ConfigError(f"{type(base).__name__} does not support gradient_checkpointing")
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    if accelerator.is_main_process:
        logger.info(parameter_line(trainable, total))

    loader = torch.utils.data.DataLoader(
        setup.train_dataset,
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=setup.collate_fn,
        num_workers=config.num_workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    if len(loader) == 0:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the training split ({len(setup.train_dataset)})"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel (CPU and CUDA) is what transformers' Trainer defaults to; XLA has none.
    fused = accelerator.device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    scheduler = get_scheduler(
        config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=total_steps
    )
    accelerator.register_for_checkpointing(scheduler)
    eval_loader = None
    if setup.eval_dataset is not None and len(setup.eval_dataset):
        eval_loader = torch.utils.data.DataLoader(
            setup.eval_dataset, batch_size=config.batch_size, shuffle=False, collate_fn=setup.collate_fn
        )

    state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0, "losses": [], "metrics": {}}
    resume_from = _resume_dir(config, ckpt_root)
    if resume_from is not None:
        with _loader_state_guard(accelerator):
            accelerator.load_state(str(resume_from))
        state = json.loads((resume_from / STATE_FILE).read_text())
        logger.info("resumed from %s at step %d", resume_from, state["global_step"])
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        dump_yaml(config, output / "training_config.yaml")
    accelerator.init_trackers("hubkit", config=_flat(config_dict(config)))

    def evaluate() -> dict[str, float]:
        metrics: dict[str, float] = {}
        if eval_loader is None or setup.evaluate_fn is None:
            return metrics
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            unwrapped.eval()
            with torch.no_grad(), accelerator.autocast():
                metrics = setup.evaluate_fn(unwrapped, eval_loader)
                images = setup.eval_images_fn(unwrapped, eval_loader) if setup.eval_images_fn else {}
            unwrapped.train()
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=state["global_step"])
            if images and "tensorboard" in _trackers(config.report_to):
                accelerator.get_tracker("tensorboard").log_images(images, step=state["global_step"], dataformats="NHWC")
            logger.info("step %d eval %s", state["global_step"], metrics)
        accelerator.wait_for_everyone()
        return metrics

    def save_checkpoint() -> None:
        target = ckpt_root / f"checkpoint-{state['global_step']}"
        tmp = ckpt_root / f".tmp-checkpoint-{state['global_step']}"
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        with _loader_state_guard(accelerator):
            accelerator.save_state(str(tmp))  # every process writes its own RNG state
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(state))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)  # a kill before this leaves only a .tmp folder, never a half checkpoint
            for old in _checkpoints(ckpt_root)[: -config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    model.train()
    progress = tqdm(
        total=total_steps, initial=state["global_step"], disable=not accelerator.is_local_main_process, desc="train"
    )
    done = state["global_step"] >= total_steps
    while not done:
        epoch = state["epoch"]
        if hasattr(setup.train_dataset, "set_epoch"):
            setup.train_dataset.set_epoch(epoch)
        loader.set_epoch(epoch)
        batches = (
            accelerator.skip_first_batches(loader, state["batches_in_epoch"]) if state["batches_in_epoch"] else loader
        )
        for batch in batches:
            with accelerator.accumulate(model):
                loss = setup.loss_fn(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step() if accelerator.sync_gradients else None
                optimizer.zero_grad()
            state["batches_in_epoch"] += 1
            if not accelerator.sync_gradients:
                continue
            state["global_step"] += 1
            step = state["global_step"]
            mean_loss = accelerator.reduce(loss.detach().float(), reduction="mean").item()
            state["losses"].append([step, mean_loss])
            progress.update(1)
            progress.set_postfix(loss=f"{mean_loss:.4g}")
            if step % config.log_every == 0 or step == 1:
                accelerator.log({"train/loss": mean_loss, "train/lr": scheduler.get_last_lr()[0]}, step=step)
            if config.eval_every and step % config.eval_every == 0:
                state["metrics"], state["eval_step"] = evaluate(), step
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps:
                save_checkpoint()
            if step >= total_steps:
                done = True
                break
        else:
            state["epoch"] += 1
            state["batches_in_epoch"] = 0
            if not config.eval_every:
                state["metrics"], state["eval_step"] = evaluate(), state["global_step"]
    progress.close()
    if state.get("eval_step") != state["global_step"]:  # the card reports the final adapter, not an earlier one
        state["metrics"], state["eval_step"] = evaluate(), state["global_step"]
    save_checkpoint()

    result = TrainResult(
        adapter_dir=output / "adapter",
        metrics=state["metrics"],
        global_step=state["global_step"],
        losses=[tuple(x) for x in state["losses"]],
        trainable_params=trainable,
        total_params=total,
        is_main_process=accelerator.is_main_process,
    )
    if accelerator.is_main_process:
        _write_adapter(config, setup, accelerator.unwrap_model(model), result, eval_loader)
        if config.push_to_hub:
            info = hub.push(
                result.adapter_dir,
                config.push_to_hub,
                hub=config.hub,
                message=f"{setup.task} LoRA, step {result.global_step}",
            )
            result.pushed_revision = info.id
            logger.info("pushed %s revision %s", config.push_to_hub, info.id)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _write_adapter(config, setup: TrainingSetup, model, result: TrainResult, eval_loader) -> None:
    """Save the adapter, reload it onto a fresh base as a last check, then write its card."""
    folder = result.adapter_dir
    if folder.exists():
        shutil.rmtree(folder)
    model = model.to("cpu")  # safetensors needs host tensors (XLA / GPU); training is over
    model.save_pretrained(folder, save_embedding_layers=False)  # "auto" would ask the Hub about the base
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = config.base  # the id users load it on, not a local path
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    for name, text in setup.extra_files.items():
        (folder / name).write_text(text)
    dump_yaml(config, folder / "training_config.yaml")
    _reload_check(setup, model, folder, eval_loader)
    spec = get_task(setup.task)
    metrics = [
        cards.Metric(name=k, value=float(v), dataset_name=setup.dataset_name, dataset_type=setup.dataset_type)
        for k, v in result.metrics.items()
    ]
    card = cards.adapter_card(
        model_name=(config.push_to_hub or folder.parent.name).split("/")[-1],
        base_model=config.base,
        pipeline_tag=spec.pipeline_tag,
        tags=[setup.task],
        datasets=[setup.dataset_name] if "/" in setup.dataset_name else [],
        training_config=config_dict(config),
        trainable_params=result.trainable_params,
        total_params=result.total_params,
        metrics=metrics,
        dataset_revision=setup.dataset_revision,
        repo_id=config.push_to_hub,
        task=setup.task,
        notes=setup.card_notes,
    )
    card.save(folder / "README.md")


@torch.no_grad()
def _reload_check(setup: TrainingSetup, model, folder: Path, eval_loader) -> None:
    loader = eval_loader or torch.utils.data.DataLoader(setup.train_dataset, batch_size=1, collate_fn=setup.collate_fn)
    batch = next(iter(loader))
    device = next(model.parameters()).device
    reloaded = attach_adapter(setup.load_base(), folder, name="reload-check", check_base_model=False).to(device)
    model.eval()
    reloaded.eval()
    expected = setup.loss_fn(model, batch).float()
    got = setup.loss_fn(reloaded, batch).float()
    model.train()
    if not torch.allclose(expected, got, rtol=1e-3, atol=1e-6):
        raise HubkitError(f"The saved adapter in {folder} does not reproduce the trained model ({got} vs {expected})")
