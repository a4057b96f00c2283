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
from ..adapters import TRAINED_MODULES_FILE, attach_adapter, count_parameters, parameter_line
from ..errors import ConfigError, HubkitError, PushAfterTrainingError
from ..tasks import get_task
from .config import config_dict, dump_yaml
from .trainable import (
    Trainable,
    build_trainable_model,
    optimizer_groups,
    trained_module_state,
)

logger = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FULL_MODEL_WEIGHTS = "model.safetensors"


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
    # name -> text or bytes, written beside the adapter (label maps, a processor config, extra safetensors)
    extra_files: dict[str, str | bytes] = field(default_factory=dict)
    trainable: Trainable = field(default_factory=Trainable)  # what trains; default: LoRA on the task preset
    # Called on the main process after the adapter, its reload check and its card are written, before the push:
    # export_fn(model, folder, result) may add files to `folder` (parts that load alone, a merged model) so that
    # one push carries them. `model` is the trained model, unwrapped.
    export_fn: Callable[[torch.nn.Module, Path, TrainResult], None] | None = None


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
    metrics_before: dict[str, float] = field(default_factory=dict)  # the base's, before training (eval_before)


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
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from .._logging import install_redaction

    install_redaction()
    # A second train() in one process (a notebook, the tests) may ask for another precision; accelerate keeps
    # its state process-wide and would refuse. The process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    output = Path(config.output_dir)
    ckpt_root = output / "checkpoints"
    accelerator = Accelerator(
        cpu=_cpu_only(),
        mixed_precision=_mixed_precision(config.mixed_precision),
        gradient_accumulation_steps=config.grad_accum,
        log_with=_trackers(config.report_to) or None,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        dynamo_backend="inductor" if config.compile else None,  # None: accelerate's launch config decides
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
    model = build_trainable_model(setup.load_base(), setup.trainable, config, spec.preset)
    if config.gradient_checkpointing:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise ConfigError(f"{type(base).__name__} does not support gradient_checkpointing")
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    if accelerator.is_main_process:
        logger.info(parameter_line(trainable, total))

    loader = torch.utils.data.DataLoader(
        setup.train_dataset,
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=setup.collate_fn,
        num_workers=config.num_workers,
        # not persistent: workers are re-created each epoch so they see the dataset's set_epoch (augmentation)
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    if len(loader) == 0:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the training split ({len(setup.train_dataset)})"
        )
    groups = optimizer_groups(model, setup.trainable.groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    params = [p for g in groups for p in g["params"]]
    # The fused kernel (CPU and CUDA) is what transformers' Trainer defaults to; XLA has none.
    fused = accelerator.device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused)
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

    if config.eval_before and state["global_step"] == 0 and "metrics_before" not in state:
        state["metrics_before"] = evaluate()  # LoRA starts as the identity: these are the base's own metrics

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
        adapter_dir=output / ("adapter" if setup.trainable.saves_adapter else "model"),
        metrics=state["metrics"],
        metrics_before=state.get("metrics_before") or {},
        global_step=state["global_step"],
        losses=[tuple(x) for x in state["losses"]],
        trainable_params=trainable,
        total_params=total,
        is_main_process=accelerator.is_main_process,
    )
    # Every process takes part (FSDP gathers shards here); only the main process writes.
    full_state = accelerator.get_state_dict(model)
    full_state = {k.replace("_orig_mod.", ""): v for k, v in full_state.items()}  # torch.compile's wrapper
    if accelerator.is_main_process:
        # keep_fp32_wrapper=False: the saved adapter and its reload check see the plain model, not the
        # autocast forward accelerate wraps it in under fp16 / bf16.
        _write_adapter(
            config,
            setup,
            accelerator.unwrap_model(model, keep_fp32_wrapper=False, keep_torch_compile=False),
            full_state,
            result,
        )
        if setup.export_fn is not None:
            setup.export_fn(accelerator.unwrap_model(model, keep_fp32_wrapper=False, keep_torch_compile=False),
                            result.adapter_dir, result)  # fmt: skip
        if config.push_to_hub:
            result.pushed_revision = _push(config, setup, result)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _push(config, setup: TrainingSetup, result: TrainResult) -> str:
    try:
        info = hub.push(
            result.adapter_dir,
            config.push_to_hub,
            hub=config.hub,
            message=f"{setup.task} LoRA, step {result.global_step}",
        )
    except HubkitError as err:
        where = f" --hub {config.hub}" if config.hub else ""
        raise PushAfterTrainingError(
            f"Training finished and the adapter is saved in {result.adapter_dir}, but pushing it to "
            f"{config.push_to_hub!r} failed: {err} Push it later with: "
            f"hubkit push {result.adapter_dir} {config.push_to_hub}{where}"
        ) from None
    logger.info("pushed %s revision %s", config.push_to_hub, info.id)
    return info.id


def _adapter_state(model, full_state: dict) -> dict[str, torch.Tensor]:
    """The adapter's tensors (PEFT key names), copied to host memory without moving the model."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, state_dict=full_state, save_embedding_layers=False)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _save_trained(config, trainable: Trainable, model, full_state: dict, folder: Path) -> dict[str, dict]:
    """Write what trained into `folder`; return {file name: tensors written} for the exact check."""
    from safetensors.torch import save_file

    written: dict[str, dict] = {}
    if trainable.lora:
        written[ADAPTER_WEIGHTS] = _adapter_state(model, full_state)
        model.peft_config["default"].save_pretrained(folder)
        adapter_config = json.loads((folder / "adapter_config.json").read_text())
        adapter_config["base_model_name_or_path"] = config.base  # the id users load it on, not a local path
        (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    if trainable.full_modules:
        written[TRAINED_MODULES_FILE] = trained_module_state(model, trainable.full_modules)
    if not trainable.saves_adapter:  # the whole model trained: save it in full, as its library does
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in full_state.items()}
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(folder, state_dict=state, safe_serialization=True)
            return {}  # the library may shard or rename; the reload check below compares outputs
        written[FULL_MODEL_WEIGHTS] = state
    for name, tensors in written.items():
        save_file(tensors, folder / name, metadata={"format": "pt"})
    return written


def _write_adapter(config, setup: TrainingSetup, model, full_state: dict, result: TrainResult) -> None:
    """Save what trained, reload it onto a fresh base as a last check, then write its card."""
    folder = result.adapter_dir
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    written = _save_trained(config, setup.trainable, model, full_state, folder)
    for name, content in setup.extra_files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    dump_yaml(config, folder / "training_config.yaml")
    _reload_check(setup, model, written, folder, seed=config.seed)
    spec = get_task(setup.task)
    metrics = [
        cards.Metric(name=k, value=float(v), dataset_name=setup.dataset_name, dataset_type=setup.dataset_type)
        for k, v in result.metrics.items()
    ]
    card = cards.adapter_card(
        model_name=(config.push_to_hub or folder.parent.name).split("/")[-1],
        base_model=config.base,
        **spec.card_fields(),
        tags=[setup.task],
        datasets=[setup.dataset_name] if "/" in setup.dataset_name else [],
        training_config=config_dict(config),
        trainable_params=result.trainable_params,
        total_params=result.total_params,
        metrics=metrics,
        dataset_revision=setup.dataset_revision,
        repo_id=config.push_to_hub,
        task=setup.task,
        notes="\n\n".join(t for t in (setup.card_notes, before_after_table(result)) if t) or None,
        weights="lora" if setup.trainable.lora else "modules" if setup.trainable.full_modules else "full",
    )
    card.save(folder / "README.md")


def before_after_table(result: TrainResult) -> str:
    """A markdown table of each eval metric for the base (before training) and the trained model."""
    names = [k for k in result.metrics if k in result.metrics_before]
    if not names:
        return ""
    rows = [f"| {k} | {result.metrics_before[k]:.4g} | {result.metrics[k]:.4g} |" for k in names]
    return "\n".join(["**Before and after training** (held-out split):", "", "| metric | base | trained |",
                      "|---|---|---|", *rows])  # fmt: skip


def reload_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for one forward of the same weights: ~3 significant digits in 16-bit floats."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


def _seeded_loss(setup: TrainingSetup, model, batch, seed: int) -> torch.Tensor:
    """The loss with the global RNG reset, so a stochastic loss (diffusion noise, timesteps) draws the same."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return setup.loss_fn(model, batch).detach().float()


def reload_trained(setup: TrainingSetup, folder: Path) -> torch.nn.Module:
    """A fresh base with what a run saved in `folder` applied: the adapter, modules trained in place, or the
    whole model's weights."""
    from ..adapters import restore_trained_modules

    trainable = setup.trainable
    base = setup.load_base()
    if trainable.lora:
        return attach_adapter(base, folder, name="reload-check", check_base_model=False)
    if trainable.full_modules:
        restore_trained_modules(base, folder)
        return base
    if hasattr(base, "save_pretrained"):  # saved by its library (transformers / diffusers)
        return type(base).from_pretrained(folder)
    from safetensors.torch import load_file

    base.load_state_dict(load_file(folder / FULL_MODEL_WEIGHTS))
    return base


@torch.no_grad()
def _reload_check(setup: TrainingSetup, model, written: dict[str, dict], folder: Path, *, seed: int) -> None:
    """Two checks: the files hold exactly the trained tensors, and a fresh base plus the folder computes the
    same loss as the trained model (same dtype, no autocast, dropout off, same random draws)."""
    from safetensors.torch import load_file

    for name, state in written.items():
        saved = load_file(folder / name)
        bad = sorted(k for k in state if k not in saved or not torch.equal(saved[k], state[k]))
        if bad or saved.keys() != state.keys():
            raise HubkitError(f"{folder / name} differs from the trained tensors in {bad[:5] or 'its keys'}")
    dataset = setup.eval_dataset if setup.eval_dataset is not None and len(setup.eval_dataset) else setup.train_dataset
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=setup.collate_fn)))
    param = next(model.parameters())
    reloaded = reload_trained(setup, folder).to(param.device)
    was_training = model.training
    model.eval()
    reloaded.eval()
    expected = _seeded_loss(setup, model, batch, seed)
    got = _seeded_loss(setup, reloaded, batch, seed)
    model.train(was_training)
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    dtype = min(floats, key=lambda d: torch.finfo(d).bits) if floats else torch.float32
    if not torch.allclose(expected, got, rtol=reload_tolerance(dtype), atol=1e-6):
        raise HubkitError(f"The saved adapter in {folder} does not reproduce the trained model ({got} vs {expected})")
