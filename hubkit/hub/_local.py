"""The local store: a directory of repos with immutable, content-addressed revisions.

Layout of one repo (``<home>/<type>s/<namespace>/<name>/``)::

    objects/ab/cdef...        file contents by sha256, read-only
    snapshots/<tree>/...      one folder per distinct content, files hard-linked to objects
    revisions/<id>.json       id, parent, message, time, tree, files
    refs/heads/main           id of the newest revision on main (other branches beside it)
    refs/tags/<tag>           id of a tagged revision
    README.md                 the card of the newest main revision
    tmp/<uuid>/               one running push's (or view's) own files; .owner is flock-ed while it runs
    .lock                     the repo lock (flock)

A push hashes its files and copies new content into its own tmp/<uuid>/ folder with no lock held (the
slow part). Then, under the repo lock, it moves that content into objects/, builds the snapshot, writes
the revision file and moves the ref, each step by rename: a process killed at any point leaves the
previous revision as it was and no partial one visible, and concurrent pushes become consecutive
revisions. `gc` takes the same lock, so it never sees a push between placing objects and moving its
ref; the only files of a live push it can see are in a tmp/ folder whose owner lock is held.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import NoMatchingFilesError, PushConflictError, RepoNotFoundError, RevisionNotFoundError, StoreError
from ._files import as_patterns, copy_if_changed, matches, scan_folder, sha256_file
from ._ids import REPO_TYPES, RepoRef, check_repo_type, parse_repo_id
from ._types import RevisionInfo, progress

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

logger = logging.getLogger(__name__)
LOCK_TIMEOUT_S = float(os.environ.get("HUBKIT_LOCK_TIMEOUT", "60"))
# Temp files whose writer cannot be told (no owner lock: left by older versions) are kept this long,
# in case an older hubkit is still writing them.
_STALE_TMP_S = 3600
_OWNER = ".owner"
_TMP_FILE = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")  # what _atomic_write and older pushes leave when killed
_HEX = re.compile(r"[0-9a-f]+")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class GcReport:
    """What `LocalStore.gc` freed in one repo (or, with `dry_run`, would free)."""

    repo: RepoRef
    objects: int = 0
    snapshots: int = 0  # snapshots and filtered views of trees no reachable revision has
    revisions: int = 0
    temp: int = 0  # files and tmp/ folders of pushes that died
    bytes: int = 0  # bytes the disk gets back: hard links count once, when their last link goes
    dry_run: bool = False

    def __str__(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        return (
            f"{self.repo.repo_type} {self.repo.repo_id}: {verb} {self.objects} object(s), {self.snapshots} "
            f"snapshot(s), {self.revisions} revision(s), {self.temp} temp file(s); {self.bytes:,} bytes"
        )


class LocalStore:
    """A hub store in a directory. Thread- and process-safe for pushes."""

    kind = "local"

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    @property
    def name(self) -> str:
        return f"local:{self.root}"

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------
    def _repo_dir(self, ref: RepoRef) -> Path:
        return self.root / f"{ref.repo_type}s" / ref.namespace / ref.name

    def _existing_repo(self, repo_id: str, repo_type: str) -> tuple[RepoRef, Path]:
        ref = parse_repo_id(repo_id, repo_type)
        path = self._repo_dir(ref)
        if not (path / "refs" / "heads").is_dir():
            available = [r.repo_id for r in self.list_repos(repo_type)]
            raise RepoNotFoundError(ref.repo_id, ref.repo_type, store=self.name, available=available)
        return ref, path

    def exists(self, repo_id: str, *, repo_type: str = "model") -> bool:
        ref = parse_repo_id(repo_id, repo_type)
        return (self._repo_dir(ref) / "refs" / "heads" / "main").is_file()

    # -- reading -----------------------------------------------------------------------------
    def list_repos(self, repo_type: str | None = None) -> list[RepoRef]:
        types = [check_repo_type(repo_type)] if repo_type else list(REPO_TYPES)
        repos = []
        for rtype in types:
            base = self.root / f"{rtype}s"
            if not base.is_dir():
                continue
            for ns in sorted(p for p in base.iterdir() if p.is_dir()):
                for repo in sorted(p for p in ns.iterdir() if p.is_dir()):
                    if (repo / "refs" / "heads" / "main").is_file():
                        repos.append(RepoRef(ns.name, repo.name, rtype))
        return repos

    def _read_revision(self, path: Path, rev_id: str) -> dict:
        try:
            return json.loads((path / "revisions" / f"{rev_id}.json").read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"Revision {rev_id} in {path} is unreadable: {err}") from err

    def _refs(self, path: Path) -> dict[str, str]:
        refs = {}
        for kind in ("heads", "tags"):
            folder = path / "refs" / kind
            if folder.is_dir():
                for ref_file in sorted(folder.iterdir()):
                    if not ref_file.name.startswith("."):
                        refs[ref_file.name] = ref_file.read_text().strip()
        return refs

    def _info(self, meta: dict, refs: dict[str, str]) -> RevisionInfo:
        return RevisionInfo(
            id=meta["id"],
            message=meta["message"],
            time=meta["time"],
            parent=meta.get("parent"),
            refs=tuple(name for name, target in refs.items() if target == meta["id"]),
            files={p: f["size"] for p, f in meta["files"].items()},
        )

    def _reachable(self, path: Path, refs: dict[str, str]) -> dict[str, dict]:
        """Revisions reachable from a branch or tag. A revision file a killed push wrote before moving
        its ref is not reachable, so it is never shown."""
        found: dict[str, dict] = {}
        for rev_id in refs.values():
            while rev_id and rev_id not in found:
                meta = self._read_revision(path, rev_id)
                found[rev_id] = meta
                rev_id = meta.get("parent")
        return found

    def list_revisions(self, repo_id: str, *, repo_type: str = "model") -> list[RevisionInfo]:
        """All revisions, newest first."""
        _, path = self._existing_repo(repo_id, repo_type)
        refs = self._refs(path)
        metas = sorted(self._reachable(path, refs).values(), key=lambda m: (m["time"], m["id"]), reverse=True)
        return [self._info(m, refs) for m in metas]

    def find_revision(self, repo_id: str, rev_id: str, *, repo_type: str = "model") -> RevisionInfo | None:
        """The revision with this id, or copied from this id in another store (sync), if any."""
        if not self.exists(repo_id, repo_type=repo_type):
            return None
        _, path = self._existing_repo(repo_id, repo_type)
        refs = self._refs(path)
        for meta in self._reachable(path, refs).values():
            if rev_id in (meta["id"], meta.get("origin")):
                return self._info(meta, refs)
        return None

    def resolve_revision(self, repo_id: str, revision: str | None = None, *, repo_type: str = "model") -> RevisionInfo:
        ref, path = self._existing_repo(repo_id, repo_type)
        refs = self._refs(path)
        wanted = revision or "main"
        rev_id = refs.get(wanted)
        if rev_id is None and len(wanted) >= 4 and all(c in "0123456789abcdef" for c in wanted):
            hits = [rev for rev in self._reachable(path, refs) if rev.startswith(wanted)]
            if len(hits) == 1:
                rev_id = hits[0]
            elif len(hits) > 1:
                raise RevisionNotFoundError(ref.repo_id, wanted, available=[f"ambiguous prefix: {', '.join(hits)}"])
        if rev_id is None:
            available = list(refs) + [r.id[:12] for r in self.list_revisions(ref.repo_id, repo_type=repo_type)]
            raise RevisionNotFoundError(ref.repo_id, wanted, available=available)
        return self._info(self._read_revision(path, rev_id), refs)

    def pull(
        self,
        repo_id: str,
        *,
        repo_type: str = "model",
        revision: str | None = None,
        to: str | Path | None = None,
        include=None,
        exclude=None,
    ) -> Path:
        """Return a folder with the revision's files. Without `to` it is the store's own read-only snapshot."""
        ref, path = self._existing_repo(repo_id, repo_type)
        info = self.resolve_revision(ref.repo_id, revision, repo_type=repo_type)
        meta = self._read_revision(path, info.id)
        snapshot = path / "snapshots" / meta["tree"]
        include, exclude = as_patterns(include), as_patterns(exclude)
        wanted = {p: f for p, f in meta["files"].items() if matches(p, include, exclude)}
        if not wanted:
            raise NoMatchingFilesError(ref.repo_id, info.id, include, exclude, available=sorted(meta["files"]))
        self._verify(path, wanted, ref.repo_id, info.id)
        if to is None and len(wanted) == len(meta["files"]):
            return snapshot
        if to is None:  # a filtered view, hard-linked, made once per revision and filter
            key = hashlib.sha256(json.dumps([include, exclude]).encode()).hexdigest()[:16]
            target = path / "views" / meta["tree"] / key
            if not target.is_dir():
                with self._claim_tmp(path, ref.repo_id) as work:
                    self._materialise(path, wanted, target, work)
            return target
        target = Path(to)
        copied = 0
        for rel, entry in progress(wanted.items(), desc=f"pull {ref.repo_id}", total=len(wanted)):
            copied += copy_if_changed(self._object(path, entry["sha256"]), target / rel, entry["sha256"])
        logger.info("pulled %s@%s into %s (%d file(s) copied)", ref.repo_id, info.id[:12], target, copied)
        return target

    def _verify(self, path: Path, files: dict[str, dict], repo_id: str, rev_id: str) -> None:
        """Catch store files edited in place through a pulled folder (root ignores read-only bits).

        A stat per file: size and mtime must be as recorded at push; only on a difference is the
        content hashed, so a mere touch passes and a real edit is a clear error, never silent data.
        """
        for rel, entry in files.items():
            obj = self._object(path, entry["sha256"])
            try:
                st = obj.stat()
            except FileNotFoundError:
                raise StoreError(f"{repo_id}@{rev_id[:12]}: {rel} is missing from the store ({obj})") from None
            if st.st_size == entry["size"] and st.st_mtime_ns == entry.get("mtime_ns", st.st_mtime_ns):
                continue
            if st.st_size != entry["size"] or sha256_file(obj) != entry["sha256"]:
                raise StoreError(
                    f"{repo_id}@{rev_id[:12]}: {rel} was modified in place in the store. Pulled folders are the "
                    "store's own files: use `pull --to DIR` for a copy to edit. Restore this revision with "
                    "`hubkit sync` from another store, or push it again."
                )

    # -- writing -----------------------------------------------------------------------------
    @staticmethod
    def _object(path: Path, sha: str) -> Path:
        return path / "objects" / sha[:2] / sha[2:]

    def _materialise(self, path: Path, files: dict[str, dict], target: Path, work: Path) -> None:
        """Build a folder of hard links to objects in `work` (from _claim_tmp), then rename it into place."""
        tmp = work / uuid.uuid4().hex
        for rel, entry in files.items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            obj = self._object(path, entry["sha256"])
            try:
                os.link(obj, dest)
            except OSError:
                shutil.copyfile(obj, dest)
                os.chmod(dest, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process made the same content first

    def _store_object(self, path: Path, source: Path, work: Path) -> tuple[str, Path | None]:
        """Hash `source` and copy it into `work` unless the store has that content. No lock is held."""
        sha = sha256_file(source)
        staged = work / sha
        if not self._object(path, sha).exists() and not staged.exists():
            _copy_checked(path, source, staged, sha)
        return sha, (staged if staged.exists() else None)

    def _place_object(self, path: Path, sha: str, staged: Path | None, source: Path, work: Path) -> dict:
        """Move staged content into objects/. Under the repo lock, where gc also runs."""
        obj = self._object(path, sha)
        if not obj.exists():
            if staged is None or not staged.exists():  # gc removed the object this push was to reuse
                staged = work / sha
                _copy_checked(path, source, staged, sha)
            obj.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, obj)
        st = obj.stat()
        return {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    @contextlib.contextmanager
    def _lock(self, path: Path, repo_id: str) -> Iterator[None]:
        path.mkdir(parents=True, exist_ok=True)
        with open(path / ".lock", "a+") as fh:
            if fcntl is None:  # pragma: no cover
                yield
                return
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise PushConflictError(
                            repo_id, f"another push held the lock for over {LOCK_TIMEOUT_S:.0f} s; try again"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _claim_tmp(self, path: Path, repo_id: str) -> Iterator[Path]:
        """A private folder under tmp/ for one writer, its .owner flock-ed for as long as it is used.

        It is made under the repo lock, where every sweep runs, so no sweep sees it before it is owned;
        a sweep removes it only once that flock is free: its writer is gone (the kernel drops the flock
        of a killed process). Taking the lock anyway, this also drops what dead writers left.
        """
        with self._lock(path, repo_id):
            self._remove(self._garbage(path, full=False), strict=False)
            work = path / "tmp" / uuid.uuid4().hex
            work.mkdir(parents=True)
            owner = os.open(work / _OWNER, os.O_WRONLY | os.O_CREAT)  # not inherited by child processes
            if fcntl is not None:
                fcntl.flock(owner, fcntl.LOCK_EX)
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
            os.close(owner)

    def _garbage(self, path: Path, *, full: bool) -> list[tuple[str, Path]]:
        """(kind, path) of what no ref reaches and no live writer owns; only temp files unless `full`.

        Call with the repo lock held: revisions, refs and the card are only written under it, so their
        temp files are dead, and no push is between placing objects and moving its ref.
        """
        cutoff = time.time() - _STALE_TMP_S
        found = [("temp", p) for p in _children(path / "tmp") if _dead_tmp(p, cutoff)]
        for folder in (path, path / "revisions", path / "refs" / "heads", path / "refs" / "tags"):
            found += [("temp", p) for p in _children(folder) if _TMP_FILE.fullmatch(p.name)]
        if not full:
            return found
        metas = self._reachable(path, self._refs(path))  # StoreError on unreadable metadata: remove nothing
        live_objects = {f["sha256"] for meta in metas.values() for f in meta["files"].values()}
        live_trees = {meta["tree"] for meta in metas.values()}
        for rev in _children(path / "revisions"):
            if rev.suffix == ".json" and _is_hex(rev.stem, 40) and rev.stem not in metas:
                found.append(("revision", rev))
        for kind in ("snapshots", "views"):
            dead = [p for p in _children(path / kind) if _is_hex(p.name, 64) and p.name not in live_trees]
            found += [("snapshot", p) for p in dead]
        for fan in _children(path / "objects"):
            for obj in _children(fan):
                if _TMP_FILE.fullmatch(obj.name) and _mtime(obj) < cutoff:  # older versions wrote objects here
                    found.append(("temp", obj))
                elif _is_hex(fan.name + obj.name, 64) and fan.name + obj.name not in live_objects:
                    found.append(("object", obj))
        # Revision files first: a gc killed midway never leaves one whose objects are gone.
        order = {"revision": 0, "snapshot": 1, "object": 2, "temp": 3}
        return sorted(found, key=lambda item: order[item[0]])

    @staticmethod
    def _remove(garbage: list[tuple[str, Path]], *, strict: bool = True) -> None:
        fans = set()
        for kind, item in garbage:
            try:
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item)
                else:
                    item.unlink(missing_ok=True)
            except OSError:
                if strict:
                    raise
                logger.debug("could not remove %s", item, exc_info=True)
            if kind == "object":
                fans.add(item.parent)
        for fan in fans:
            with contextlib.suppress(OSError):
                fan.rmdir()  # only if empty

    def _repo_refs(self, repo_type: str | None) -> list[RepoRef]:
        """Every repo folder, with refs or not (a first push killed leaves one without)."""
        found = []
        for rtype in [check_repo_type(repo_type)] if repo_type else list(REPO_TYPES):
            for ns in _children(self.root / f"{rtype}s"):
                found += [RepoRef(ns.name, repo.name, rtype) for repo in _children(ns) if repo.is_dir()]
        return found

    def gc(self, repo_id: str | None = None, *, repo_type: str | None = None, dry_run: bool = False) -> list[GcReport]:
        """Remove what no branch or tag reaches and no running push is writing: one report per repo.

        In each repo (`repo_id`, else every repo of `repo_type`, else every repo), under the lock a push
        takes to move its ref: objects, snapshots, filtered views and revision files no ref reaches, and
        the temp files of pushes that died. A running push's tmp/ folder is kept (its owner flock is
        held); temp files with no owner (older versions) are kept until an hour old. A repo whose refs
        or revisions cannot be read raises StoreError and nothing is removed there. `dry_run` reports
        without removing.
        """
        if repo_id is not None:
            ref = parse_repo_id(repo_id, repo_type or "model")
            if not self._repo_dir(ref).is_dir():
                available = [r.repo_id for r in self.list_repos(ref.repo_type)]
                raise RepoNotFoundError(ref.repo_id, ref.repo_type, store=self.name, available=available)
            repos = [ref]
        else:
            repos = self._repo_refs(repo_type)
        reports = []
        for ref in repos:
            path = self._repo_dir(ref)
            with self._lock(path, ref.repo_id):
                garbage = self._garbage(path, full=True)
                kinds = Counter(kind for kind, _ in garbage)
                freed = _freed_bytes(p for _, p in garbage)
                counts = (kinds["object"], kinds["snapshot"], kinds["revision"], kinds["temp"], freed)
                report = GcReport(ref, *counts, dry_run=dry_run)
                if not dry_run:
                    self._remove(garbage)
            logger.info("gc %s", report)
            reports.append(report)
        return reports

    def push(
        self,
        folder: str | Path,
        repo_id: str,
        *,
        repo_type: str = "model",
        message: str | None = None,
        branch: str = "main",
        tag: str | None = None,
        include=None,
        exclude=None,
        max_file_size: int | None = None,
        timestamp: str | None = None,
        origin: str | None = None,
    ) -> RevisionInfo:
        """Store the folder as a new revision on `branch` and return it.

        `timestamp` and `origin` (the revision id in another store) are set by sync.
        """
        ref = parse_repo_id(repo_id, repo_type)
        for name in (branch, tag):
            if name is not None:
                _check_ref_name(ref.repo_id, name)
        files = scan_folder(folder, include=include, exclude=exclude, limit=max_file_size)
        path = self._repo_dir(ref)
        with self._claim_tmp(path, ref.repo_id) as work:
            staged = [self._store_object(path, f.source, work) for f in progress(files, desc=f"push {ref.repo_id}")]
            # Placing is quick (renames, hard links) and done under the lock, so gc never sees objects or
            # a revision file of this push before its ref reaches them.
            with self._lock(path, ref.repo_id):
                manifest = {
                    f.path: self._place_object(path, sha, tmp, f.source, work)
                    for f, (sha, tmp) in zip(files, staged, strict=True)
                }
                tree = hashlib.sha256("".join(f"{p}\0{f['sha256']}\n" for p, f in sorted(manifest.items())).encode())
                snapshot = path / "snapshots" / tree.hexdigest()
                if not snapshot.is_dir():
                    self._materialise(path, manifest, snapshot, work)
                head_file = path / "refs" / "heads" / branch
                parent = head_file.read_text().strip() if head_file.is_file() else None
                if parent is None and branch != "main" and (path / "refs" / "heads" / "main").is_file():
                    parent = (path / "refs" / "heads" / "main").read_text().strip()
                meta = {
                    "parent": parent,
                    "message": message or f"Upload {len(manifest)} file(s)",
                    "time": timestamp or _now(),
                    "tree": snapshot.name,
                }
                meta["id"] = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()
                meta["files"] = manifest
                if origin:
                    meta["origin"] = origin
                rev_file = path / "revisions" / f"{meta['id']}.json"
                if not rev_file.exists():
                    _atomic_write(rev_file, json.dumps(meta, indent=1, sort_keys=True).encode())
                _atomic_write(head_file, meta["id"].encode())
                if tag:
                    _atomic_write(path / "refs" / "tags" / tag, meta["id"].encode())
                if branch == "main":
                    self._write_root_card(path, snapshot)
        logger.info("pushed %s revision %s (%d files)", ref.repo_id, meta["id"], len(manifest))
        return self._info(meta, self._refs(path))

    def _write_root_card(self, path: Path, snapshot: Path) -> None:
        card = snapshot / "README.md"
        root_card = path / "README.md"
        if card.is_file():
            _atomic_write(root_card, card.read_bytes())
        elif root_card.exists():
            root_card.unlink()

    def tag(
        self, repo_id: str, tag: str, *, revision: str | None = None, repo_type: str = "model", force: bool = False
    ) -> RevisionInfo:
        ref, path = self._existing_repo(repo_id, repo_type)
        _check_ref_name(ref.repo_id, tag)
        info = self.resolve_revision(ref.repo_id, revision, repo_type=repo_type)
        with self._lock(path, ref.repo_id):
            if (path / "refs" / "heads" / tag).exists():
                raise PushConflictError(ref.repo_id, f"{tag!r} is already a branch name")
            existing = path / "refs" / "tags" / tag
            if existing.exists() and existing.read_text().strip() != info.id and not force:
                raise PushConflictError(
                    ref.repo_id, f"tag {tag!r} already points at {existing.read_text().strip()[:12]}; use --force"
                )
            _atomic_write(path / "refs" / "tags" / tag, info.id.encode())
        return self.resolve_revision(ref.repo_id, info.id, repo_type=repo_type)


def _check_ref_name(repo_id: str, name: str) -> None:
    if not name or name != name.strip() or "/" in name or name.startswith(".") or ".." in name or len(name) > 100:
        raise PushConflictError(repo_id, f"invalid branch or tag name {name!r}")


def _copy_checked(path: Path, source: Path, target: Path, sha: str) -> None:
    shutil.copyfile(source, target)
    if sha256_file(target) != sha:
        target.unlink()
        raise PushConflictError(str(path), f"{source} changed while it was being pushed")
    os.chmod(target, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_hex(name: str, length: int) -> bool:
    return len(name) == length and bool(_HEX.fullmatch(name))


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return time.time()  # cannot tell: treat as new, so it is kept


def _dead_tmp(entry: Path, cutoff: float) -> bool:
    """Whether a tmp/ entry's writer is gone: its owner flock is free, or it has no owner and is old."""
    owner = entry / _OWNER
    if fcntl is not None and owner.is_file():
        try:
            with open(owner) as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False  # its push is running
        except OSError:
            pass
    return _mtime(entry) < cutoff


def _freed_bytes(paths: Iterable[Path]) -> int:
    """Bytes freed by removing `paths`: a file counts once all its hard links are among them."""
    inodes: dict[tuple[int, int], list[int]] = {}
    for top in paths:
        walked = os.walk(top) if top.is_dir() and not top.is_symlink() else [(top.parent, [], [top.name])]
        for dirpath, _, names in walked:
            for name in names:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, name))
                    seen = inodes.setdefault((st.st_dev, st.st_ino), [st.st_size, st.st_nlink, 0])
                    seen[2] += 1
    return sum(size for size, nlink, seen in inodes.values() if seen >= nlink)
