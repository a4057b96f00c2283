"""The local store: a directory of repos with immutable, content-addressed revisions.

Layout of one repo (``<home>/<type>s/<namespace>/<name>/``)::

    objects/ab/cdef...        file contents by sha256, read-only
    snapshots/<tree>/...      one folder per distinct content, files hard-linked to objects
    revisions/<id>.json       id, parent, message, time, tree, files
    refs/heads/main           id of the newest revision on main (other branches beside it)
    refs/tags/<tag>           id of a tagged revision
    README.md                 the card of the newest main revision

A push writes objects and the snapshot first, then the revision file, then moves the ref, each step
by rename: a process killed at any point leaves the previous revision as it was and no partial one
visible. Pushes to one repo are serialised by a file lock, so concurrent pushes become consecutive
revisions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
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
_STALE_TMP_S = 3600


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
                self._materialise(path, wanted, target)
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

    def _materialise(self, path: Path, files: dict[str, dict], target: Path) -> None:
        """Build a folder of hard links to objects in a temp dir, then rename it into place."""
        tmp = path / "tmp" / uuid.uuid4().hex
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

    def _store_object(self, path: Path, source: Path) -> tuple[str, int, int]:
        sha = sha256_file(source)
        obj = self._object(path, sha)
        if not obj.exists():
            obj.parent.mkdir(parents=True, exist_ok=True)
            tmp = obj.with_name(f".{obj.name}.{uuid.uuid4().hex}.tmp")
            shutil.copyfile(source, tmp)
            if sha256_file(tmp) != sha:
                tmp.unlink()
                raise PushConflictError(str(path), f"{source} changed while it was being pushed")
            os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(tmp, obj)
        st = obj.stat()
        return sha, st.st_size, st.st_mtime_ns

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

    def _sweep_tmp(self, path: Path) -> None:
        """Remove what killed pushes left behind (never visible to readers)."""
        tmp_root = path / "tmp"
        if not tmp_root.is_dir():
            return
        cutoff = time.time() - _STALE_TMP_S
        for entry in tmp_root.iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)

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
        path.mkdir(parents=True, exist_ok=True)
        self._sweep_tmp(path)
        manifest = {}
        for item in progress(files, desc=f"push {ref.repo_id}", total=len(files)):
            sha, size, mtime_ns = self._store_object(path, item.source)
            manifest[item.path] = {"sha256": sha, "size": size, "mtime_ns": mtime_ns}
        tree = hashlib.sha256("".join(f"{p}\0{f['sha256']}\n" for p, f in sorted(manifest.items())).encode())
        tree_id = tree.hexdigest()
        snapshot = path / "snapshots" / tree_id
        if not snapshot.is_dir():
            self._materialise(path, manifest, snapshot)
        with self._lock(path, ref.repo_id):
            head_file = path / "refs" / "heads" / branch
            parent = head_file.read_text().strip() if head_file.is_file() else None
            if parent is None and branch != "main" and (path / "refs" / "heads" / "main").is_file():
                parent = (path / "refs" / "heads" / "main").read_text().strip()
            meta = {
                "parent": parent,
                "message": message or f"Upload {len(manifest)} file(s)",
                "time": timestamp or _now(),
                "tree": tree_id,
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
