"""The task registry: one module per model family, each the one record of its facts. `get_task(name)` or
`list_tasks()`."""

from __future__ import annotations

from ._base import (
    TASKS,
    TINY_NAMESPACE,
    LoadOptions,
    LoraPreset,
    Task,
    TinyModel,
    check_safe_folder,
    get_task,
    pretrained_kwargs,
    register_task,
    task_for_architecture,
    to_pil,
)


def list_tasks() -> list[str]:
    from . import _all  # noqa: F401

    return sorted(TASKS)


__all__ = [
    "TASKS",
    "TINY_NAMESPACE",
    "LoadOptions",
    "LoraPreset",
    "Task",
    "TinyModel",
    "check_safe_folder",
    "get_task",
    "list_tasks",
    "pretrained_kwargs",
    "register_task",
    "task_for_architecture",
    "to_pil",
]
