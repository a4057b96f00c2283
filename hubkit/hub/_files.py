"""Folder scanning, hashing and copying shared by both stores."""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EmptyFolderError, FileTooLargeError, HubkitError

logger = logging.getLogger(__name__)

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
    """Every file to push, sorted by path; raise before anything is written if the folder is unusable.

    Links (both stores push exactly what this returns, so they behave the same):

    - a link to a file inside the folder is pushed as a regular file with the target's bytes;
    - a link to a folder inside the folder is followed, its files pushed under the link's path;
    - a link that leaves the folder, is broken, loops back into a folder that holds it, or points at
      something an exclude pattern (or ``ALWAYS_IGNORED``) keeps out is refused.

    A folder that cannot be listed or a file that cannot be opened is refused too. Refused paths fail
    the push with one EmptyFolderError naming each of them. Excluded paths are neither read nor checked;
    sockets, FIFOs and devices are skipped with a warning.
    """
    root = Path(folder)
    if not root.exists():
        raise EmptyFolderError(folder, reason="does not exist")
    if not root.is_dir():
        raise EmptyFolderError(folder, reason="is a file, not a folder")
    real_root = root.resolve()
    scan = _Scan(real_root, as_patterns(include), as_patterns(exclude) + list(ALWAYS_IGNORED), max_file_size(limit))
    scan.walk(real_root, "", (real_root,))
    if scan.problems:
        raise EmptyFolderError(
            folder,
            reason=f"has {len(scan.problems)} path(s) that cannot be pushed: {'; '.join(scan.problems)}. "
            "Nothing was stored: fix or --exclude them (copy a link's target into the folder to push it)",
        )
    if not scan.files:
        raise EmptyFolderError(folder)
    return sorted(scan.files, key=lambda f: f.path)


def _pruned(rel_dir: str, exclude: list[str]) -> bool:
    """Whether an exclude pattern drops every path under the folder `rel_dir` (so it is never read).

    Only patterns ending in ``*`` qualify: if one matches ``rel_dir/`` it matches ``rel_dir/`` + anything.
    """
    return any(p.endswith("*") and fnmatch.fnmatch(rel_dir + "/", p) for p in exclude)


@dataclass
class _Scan:
    root: Path  # resolved
    include: list[str]
    exclude: list[str]  # the caller's and ALWAYS_IGNORED
    limit: int
    files: list[LocalFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def _refuse(self, rel: str, why: str | OSError) -> None:
        if isinstance(why, OSError):
            why = f"cannot be read: {why.strerror or why}"
        self.problems.append(f"{rel} ({why})")

    def _inside(self, real: Path) -> str | None:
        return real.relative_to(self.root).as_posix() if real.is_relative_to(self.root) else None

    def walk(self, real_dir: Path, prefix: str, stack: tuple[Path, ...]) -> None:
        """Scan one folder; `prefix` is its path in the repo, `stack` the real folders being scanned."""
        try:  # os.scandir, not os.walk: os.walk drops folders it cannot list without a word
            with os.scandir(real_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            self._refuse(prefix or "./", err)
            return
        for entry in entries:
            rel = prefix + entry.name
            try:
                if entry.is_symlink():
                    self._link(entry, rel, stack)
                elif entry.is_dir(follow_symlinks=False):
                    self._dir(Path(entry.path), rel, stack)
                elif entry.is_file(follow_symlinks=False):
                    self._file(Path(entry.path), rel)
                elif matches(rel, self.include, self.exclude):
                    logger.warning("not pushing %s: not a regular file (socket, FIFO or device)", rel)
            except OSError as err:  # a stat that failed
                self._refuse(rel, err)

    def _dir(self, real: Path, rel: str, stack: tuple[Path, ...]) -> None:
        if _pruned(rel, self.exclude):
            return
        real_rel = self._inside(real)
        if real_rel != rel and _pruned(real_rel, self.exclude):  # reached through a folder link
            self._refuse(rel + "/", f"a link into the excluded folder {real_rel}/")
            return
        self.walk(real, rel + "/", stack + (real,))

    def _file(self, real: Path, rel: str) -> None:
        if not matches(rel, self.include, self.exclude):
            return
        real_rel = self._inside(real)
        if real_rel != rel and not matches(real_rel, [], self.exclude):
            self._refuse(rel, f"a link to the excluded path {real_rel}")
            return
        size = real.stat().st_size
        try:
            with open(real, "rb"):  # refuse now what the store could not read later, before anything is stored
                pass
        except OSError as err:
            self._refuse(rel, err)
            return
        if size > self.limit:
            raise FileTooLargeError(rel, size, self.limit)
        self.files.append(LocalFile(rel, real, size))

    def _link(self, entry: os.DirEntry, rel: str, stack: tuple[Path, ...]) -> None:
        shown = f"{rel} -> {os.readlink(entry.path)}"
        try:
            real = Path(os.path.realpath(entry.path, strict=True))
        except OSError as err:
            excluded = _pruned(rel, self.exclude) or not matches(rel, [], self.exclude)
            if not excluded:
                self._refuse(shown, _unresolved(entry.path, err))
            return
        is_dir = real.is_dir()
        if _pruned(rel, self.exclude) if is_dir else not matches(rel, self.include, self.exclude):
            return  # left out by the caller's patterns: never followed, so never refused
        real_rel = self._inside(real)
        if real_rel is None:
            self._refuse(shown, "outside the folder: pushing it would publish what it points to")
        elif is_dir and any(real == s or s.is_relative_to(real) for s in stack):
            self._refuse(shown, "a link loop: it points at a folder that holds it")
        elif _pruned(real_rel, self.exclude) if is_dir else not matches(real_rel, [], self.exclude):
            self._refuse(shown, "points at an excluded path")
        elif is_dir:
            self.walk(real, rel + "/", stack + (real,))
        elif real.is_file():
            self._file(real, rel)
        else:
            logger.warning("not pushing %s: not a regular file (socket, FIFO or device)", shown)


def _unresolved(link: str, err: OSError) -> str | OSError:
    """Why a link does not resolve: broken, a loop, or the OSError itself."""
    try:
        os.stat(link)  # realpath reports some loops as missing files; stat tells them apart
    except OSError as stat_err:
        err = stat_err
    return {errno.ELOOP: "a link loop", errno.ENOENT: "broken: the target does not exist"}.get(err.errno, err)


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
