"""Values both stores return."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from tqdm.auto import tqdm


@dataclass(frozen=True)
class RevisionInfo:
    """One immutable revision of a repo."""

    id: str
    message: str
    time: str
    parent: str | None = None
    refs: tuple[str, ...] = ()
    files: dict[str, int] = field(default_factory=dict)  # path -> size in bytes


def progress(items: Iterable, *, desc: str, total: int | None = None):
    """A progress bar on stderr, shown only to people at a terminal (or when HUBKIT_PROGRESS=1)."""
    show = os.environ.get("HUBKIT_PROGRESS")
    disable = (show == "0") if show is not None else not sys.stderr.isatty()
    return tqdm(items, desc=desc, total=total, unit="file", disable=disable, leave=False)
