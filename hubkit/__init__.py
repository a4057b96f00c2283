"""hubkit: fine-tune vision foundation models with LoRA, share adapters through a hub, demo them in Spaces."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from . import errors
from .errors import HubkitError
from .hub import get_store, list_repos, list_revisions, pull, push, resolve, sync

_LAZY = {  # torch and the model stack load on first use
    "load": "predictor",
    "Predictor": "predictor",
    "ModelPool": "pool",
    "get_pool": "pool",
    "Pipeline": "pipelines",
    "PipelineResult": "pipelines",
    "Stage": "pipelines",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hubkit' has no attribute {name!r}")


# bitsandbytes (imported by peft) warns at import that an optional CPU 4-bit kernel package is missing.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

try:
    __version__ = version("hubkit")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "HubkitError",
    "ModelPool",
    "Pipeline",
    "PipelineResult",
    "Predictor",
    "Stage",
    "__version__",
    "errors",
    "get_pool",
    "get_store",
    "list_repos",
    "list_revisions",
    "load",
    "pull",
    "push",
    "resolve",
    "sync",
]
