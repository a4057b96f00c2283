"""Folder scanning, hashing and copying shared by both stores."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import EmptyFolderError, FileTooLargeError, HubkitError

DEFAULT_MAX_FILE_SIZE = 50 * 1024**3  # the Hub's own per-file limit
# Never part of a repo: VCS data and the metadata huggingface_hub leaves in a local_dir download.
ALWAYS_IGNORED = (".git/*", ".cache/huggingface/*", "*/.git/*", ".hubkit-pull/*")


@dataclass(frozen=True)
class LocalFile:
    path: str  # POSIX path inside the repo
    source: Path
    size: int


def max_file_size(override: int | None = None) -> int:
    if override is not None:
        return override
    raw = os.environ.get("HUBKIT_MAX_FILE_SIZE")
    if not raw:
        return DEFAULT_MAX_FILE_SIZE
    try:
        return int(raw)
    except ValueError:
        raise HubkitError(f"HUBKIT_MAX_FILE_SIZE must be a number of bytes, got {raw!r}") from None


def as_patterns(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def matches(path: str, include: list[str], exclude: list[str]) -> bool:
    if include and not any(fnmatch.fnmatch(path, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(path, p) for p in exclude)


def scan_folder(folder: str | Path, *, include=None, exclude=None, limit: int | None = None) -> list[LocalFile]:
    """Every file to push, sorted; raise before anything is written if the folder is unusable."""
    root = Path(folder)
    if not root.exists():
        raise EmptyFolderError(folder, reason="does not exist")
    if not root.is_dir():
        raise EmptyFolderError(folder, reason="is a file, not a folder")
    include, exclude = as_patterns(include), as_patterns(exclude) + list(ALWAYS_IGNORED)
    limit = max_file_size(limit)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in sorted(filenames):
            source = Path(dirpath) / fname
            rel = source.relative_to(root).as_posix()
            if not source.is_file() or not matches(rel, include, exclude):
                continue
            size = source.stat().st_size
            if size > limit:
                raise FileTooLargeError(rel, size, limit)
            files.append(LocalFile(rel, source, size))
    if not files:
        raise EmptyFolderError(folder)
    return files


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def copy_if_changed(source: Path, target: Path, sha256: str | None = None) -> bool:
    """Copy source to target atomically unless target already has the same bytes. Returns whether it copied."""
    same_size = target.is_file() and target.stat().st_size == source.stat().st_size
    if same_size and sha256_file(target) == (sha256 or sha256_file(source)):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.hubkit-tmp-{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return True
