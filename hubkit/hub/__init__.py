"""One interface, two stores: the local store (default) and the Hugging Face Hub.

Reads look in the local store first, then in the Hub when it is reachable and not switched off;
writes go to the store named by `hub=` / ``HUBKIT_HUB`` (default local, the Hub on HF Spaces).
Pushes refuse links that leave the folder and anything they cannot read (see `scan_folder`);
`gc` frees what killed pushes left in a local store.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import platformdirs

from ..errors import HubkitError, HubUnreachableError, RepoNotFoundError, RevisionNotFoundError
from ._files import DEFAULT_MAX_FILE_SIZE, scan_folder, sha256_file
from ._hf import HfStore, hub_offline
from ._ids import REPO_TYPES, RepoRef, parse_repo_id
from ._local import GcReport, LocalStore
from ._types import RevisionInfo

__all__ = [
    "DEFAULT_MAX_FILE_SIZE",
    "GcReport",
    "HfStore",
    "LocalStore",
    "REPO_TYPES",
    "RepoRef",
    "RevisionInfo",
    "gc",
    "get_store",
    "list_repos",
    "list_revisions",
    "local_home",
    "parse_repo_id",
    "pull",
    "push",
    "resolve",
    "scan_folder",
    "sha256_file",
    "sync",
    "tag",
]

logger = logging.getLogger(__name__)
Store = LocalStore | HfStore


def local_home() -> Path:
    """Where the local store lives: ``HUBKIT_HOME``, else the user cache dir."""
    return Path(os.environ.get("HUBKIT_HOME") or platformdirs.user_cache_dir("hubkit")).expanduser()


def default_hub() -> str:
    return os.environ.get("HUBKIT_HUB") or ("hf" if os.environ.get("SPACE_ID") else "local")


def get_store(hub: str | Store | None = None) -> Store:
    """`local` (``HUBKIT_HOME``), `hf` (the Hugging Face Hub), or a folder path (a local store there)."""
    if isinstance(hub, (LocalStore, HfStore)):
        return hub
    hub = hub or default_hub()
    if hub == "local":
        return LocalStore(local_home())
    if hub == "hf":
        return HfStore()
    if hub.startswith(("http://", "https://")):
        return HfStore(endpoint=hub)
    if os.sep in hub or hub.startswith((".", "~")) or Path(hub).is_dir():
        return LocalStore(hub)
    raise HubkitError(f"Unknown hub {hub!r}: use 'local', 'hf', an http(s) endpoint, or a folder path.")


def push(folder: str | Path, repo_id: str, *, hub: str | Store | None = None, **kwargs) -> RevisionInfo:
    """Push a folder as one new revision; see LocalStore.push / HfStore.push for options."""
    return get_store(hub).push(folder, repo_id, **kwargs)


def pull(
    repo_id: str,
    *,
    hub: str | Store | None = None,
    repo_type: str = "model",
    revision: str | None = None,
    to: str | Path | None = None,
    include=None,
    exclude=None,
    offline: bool | None = None,
) -> Path:
    """Return a local folder holding the repo at `revision`.

    With `hub` named, only that store is asked. Otherwise the local store first, then the Hugging
    Face Hub unless offline (`offline=True`, ``HF_HUB_OFFLINE=1``) or unreachable.
    """
    kwargs = dict(repo_type=repo_type, revision=revision, to=to, include=include, exclude=exclude)
    if hub is not None:
        return get_store(hub).pull(repo_id, **kwargs)
    parse_repo_id(repo_id, repo_type)
    try:
        return LocalStore(local_home()).pull(repo_id, **kwargs)
    except (RepoNotFoundError, RevisionNotFoundError) as local_miss:
        if offline or (offline is None and hub_offline()):
            raise
        try:
            return HfStore().pull(repo_id, **kwargs)
        except HubUnreachableError as err:
            local_miss.add_note(f"Also tried the Hugging Face Hub: {err}")
            raise local_miss from None
        except RepoNotFoundError:
            raise local_miss from None


def resolve(repo_or_path: str | Path, **kwargs) -> Path:
    """A local folder for a repo id or an existing path (paths are allowed wherever a repo id is)."""
    path = Path(repo_or_path).expanduser()
    if path.is_dir():
        return path
    return pull(str(repo_or_path), **kwargs)


def list_repos(*, hub: str | Store | None = None, repo_type: str | None = None) -> list[RepoRef]:
    return get_store(hub).list_repos(repo_type)


def list_revisions(repo_id: str, *, hub: str | Store | None = None, repo_type: str = "model") -> list[RevisionInfo]:
    return get_store(hub).list_revisions(repo_id, repo_type=repo_type)


def gc(
    repo_id: str | None = None, *, hub: str | Store | None = None, repo_type: str | None = None, dry_run: bool = False
) -> list[GcReport]:
    """Free what no branch or tag reaches in a local store (`repo_id`, else every repo); see LocalStore.gc."""
    store = get_store(hub)
    if not isinstance(store, LocalStore):
        # The Hub keeps its own storage; there is nothing of ours to collect there.
        raise HubkitError(f"gc works on a local store, not {store.name}: use --hub local or a folder path.")
    return store.gc(repo_id, repo_type=repo_type, dry_run=dry_run)


def tag(
    repo_id: str, name: str, *, hub=None, revision: str | None = None, repo_type: str = "model", force: bool = False
) -> RevisionInfo:
    store = get_store(hub)
    if isinstance(store, LocalStore):
        return store.tag(repo_id, name, revision=revision, repo_type=repo_type, force=force)
    return store.tag(repo_id, name, revision=revision, repo_type=repo_type)


def sync(
    repo_id: str,
    *,
    src: str | Store,
    dst: str | Store,
    repo_type: str = "model",
    revision: str | None = None,
    all_revisions: bool = False,
    dst_repo_id: str | None = None,
) -> list[RevisionInfo]:
    """Copy a repo between stores: its newest revision, one `revision`, or (`all_revisions`) its history.

    Messages and times travel with the revisions, so syncing again adds nothing new to a local store.
    """
    source, target = get_store(src), get_store(dst)
    parse_repo_id(repo_id, repo_type)
    dst_repo_id = dst_repo_id or repo_id
    if all_revisions:
        revisions = list(reversed(source.list_revisions(repo_id, repo_type=repo_type)))
    else:
        revisions = [source.resolve_revision(repo_id, revision, repo_type=repo_type)]
    pushed = []
    for info in revisions:
        if isinstance(target, LocalStore) and (
            known := target.find_revision(dst_repo_id, info.id, repo_type=repo_type)
        ):
            pushed.append(known)  # already copied: syncing again adds nothing
            continue
        with tempfile.TemporaryDirectory(prefix="hubkit-sync-") as tmp:
            folder = source.pull(repo_id, repo_type=repo_type, revision=info.id, to=Path(tmp) / "files")
            message = info.message or f"Sync of {repo_id}@{info.id[:12]}"
            kwargs = {"timestamp": info.time or None, "origin": info.id} if isinstance(target, LocalStore) else {}
            pushed.append(target.push(folder, dst_repo_id, repo_type=repo_type, message=message, **kwargs))
            logger.info("synced %s@%s -> %s@%s", repo_id, info.id[:12], target.name, pushed[-1].id[:12])
    return pushed
