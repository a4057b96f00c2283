"""The Hugging Face Hub as a store, through huggingface_hub, with bounded timeouts and typed errors."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from urllib.parse import urlparse

from ..errors import AuthError, HubkitError, HubUnreachableError, RepoNotFoundError, RevisionNotFoundError
from ._files import scan_folder
from ._ids import RepoRef, check_repo_type, parse_repo_id
from ._types import RevisionInfo

logger = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = float(os.environ.get("HUBKIT_HUB_CONNECT_TIMEOUT", "5"))
READ_TIMEOUT_S = float(os.environ.get("HUBKIT_HUB_READ_TIMEOUT", "60"))
# huggingface_hub retries timed-out metadata calls with back-off; this caps the whole call.
METADATA_DEADLINE_S = float(os.environ.get("HUBKIT_HUB_DEADLINE", "30"))
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hubkit-hf")
_timeouts_set = False


def _bounded_timeouts() -> None:
    """huggingface_hub's shared client waits forever by default; a hub user must never hang."""
    global _timeouts_set
    if _timeouts_set:
        return
    import httpx2
    from huggingface_hub.utils import _http

    def factory():
        return httpx2.Client(
            event_hooks={"request": [_http.hf_request_event_hook]},
            follow_redirects=True,
            timeout=httpx2.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )

    _http.set_client_factory(factory)
    _timeouts_set = True


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


class HfStore:
    """The Hugging Face Hub (or any server speaking its API, via `endpoint`)."""

    kind = "hf"

    def __init__(self, *, endpoint: str | None = None, token: str | None = None, cache_dir: str | Path | None = None):
        from huggingface_hub import constants

        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        self._token = token  # resolved lazily by huggingface_hub when None: HF_TOKEN, then the saved login
        self.cache_dir = cache_dir
        self._reachable_at = 0.0

    name = property(lambda self: f"hf:{self.endpoint}")

    def __repr__(self) -> str:  # never shows the token
        return f"HfStore(endpoint={self.endpoint!r})"

    @property
    def api(self):
        from huggingface_hub import HfApi

        _bounded_timeouts()
        return HfApi(endpoint=self.endpoint, token=self._token, library_name="hubkit")

    def check_reachable(self) -> None:
        """Fail in seconds, with one clear message, when the Hub cannot be reached."""
        if hub_offline():
            raise HubUnreachableError(self.endpoint, "offline mode is on (HF_HUB_OFFLINE=1 or --offline)")
        if time.monotonic() - self._reachable_at < 30:
            return
        url = urlparse(self.endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise HubUnreachableError(self.endpoint, type(err).__name__ + (f": {err}" if str(err) else "")) from None
        self._reachable_at = time.monotonic()

    def _call(
        self, fn, *args, ctx: tuple[str, str, str | None] = ("", "model", None), transfer: bool = False, **kwargs
    ):
        """Run one huggingface_hub call, turning its errors into hubkit's. ctx: (repo_id, repo_type, revision).

        Metadata calls get an overall deadline; transfers (`transfer=True`) only the per-read timeout.
        """
        import httpx2
        from huggingface_hub import errors as hf_errors

        repo_id, repo_type, revision = ctx
        self.check_reachable()
        try:
            if transfer:
                return fn(*args, **kwargs)
            future = _pool.submit(fn, *args, **kwargs)
            try:
                return future.result(timeout=METADATA_DEADLINE_S)
            except FutureTimeout:
                future.cancel()
                raise HubUnreachableError(self.endpoint, f"no answer within {METADATA_DEADLINE_S:.0f} s") from None
        except hf_errors.RevisionNotFoundError:
            known = self._ref_names(repo_id, repo_type)
            raise RevisionNotFoundError(repo_id, revision or "main", available=known) from None
        except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError):
            raise RepoNotFoundError(repo_id, repo_type, store=self.name) from None
        except hf_errors.HfHubHTTPError as err:
            status = getattr(err.response, "status_code", None)
            if status in (401, 403):
                raise AuthError(
                    f"The Hub refused the request for {repo_id!r} ({status}): log in with `hf auth login` "
                    "or set HF_TOKEN to a token with write access."
                ) from None
            raise HubkitError(f"The Hub answered {status} for {repo_id!r}: {err.server_message or err}") from None
        except (httpx2.TimeoutException, httpx2.NetworkError, hf_errors.OfflineModeIsEnabled) as err:
            raise HubUnreachableError(self.endpoint, type(err).__name__) from None

    def _ref_names(self, repo_id: str, repo_type: str) -> list[str]:
        try:
            refs = self.api.list_repo_refs(repo_id, repo_type=repo_type)
        except Exception:  # the listing is only a hint for the error message
            return []
        return [b.name for b in refs.branches] + [t.name for t in refs.tags]

    # -- reading -----------------------------------------------------------------------------
    def exists(self, repo_id: str, *, repo_type: str = "model") -> bool:
        ref = parse_repo_id(repo_id, repo_type)
        try:
            self._call(self.api.repo_info, ref.repo_id, repo_type=repo_type, ctx=(ref.repo_id, repo_type, None))
        except RepoNotFoundError:
            return False
        return True

    def list_repos(self, repo_type: str | None = None, *, author: str | None = None) -> list[RepoRef]:
        api = self.api
        if author is None:
            author = self._call(api.whoami)["name"]
        listers = {"model": api.list_models, "dataset": api.list_datasets, "space": api.list_spaces}
        types = [check_repo_type(repo_type)] if repo_type else list(listers)
        repos = []
        for rtype in types:
            for item in self._call(lambda fn=listers[rtype]: list(fn(author=author))):
                ns, _, name = item.id.partition("/")
                repos.append(RepoRef(ns, name, rtype))
        return repos

    def list_revisions(self, repo_id: str, *, repo_type: str = "model") -> list[RevisionInfo]:
        ref = parse_repo_id(repo_id, repo_type)
        api = self.api
        ctx = (ref.repo_id, repo_type, None)
        commits = self._call(api.list_repo_commits, ref.repo_id, repo_type=repo_type, ctx=ctx)
        refs = self._call(api.list_repo_refs, ref.repo_id, repo_type=repo_type, ctx=ctx)
        names: dict[str, list[str]] = {}
        for r in list(refs.branches) + list(refs.tags):
            names.setdefault(r.target_commit, []).append(r.name)
        return [
            RevisionInfo(
                id=c.commit_id,
                message=c.title,
                time=c.created_at.isoformat() if c.created_at else "",
                refs=tuple(names.get(c.commit_id, ())),
            )
            for c in commits
        ]

    def resolve_revision(self, repo_id: str, revision: str | None = None, *, repo_type: str = "model") -> RevisionInfo:
        ref = parse_repo_id(repo_id, repo_type)
        info = self._call(
            self.api.repo_info,
            ref.repo_id,
            repo_type=repo_type,
            revision=revision,
            files_metadata=True,
            ctx=(ref.repo_id, repo_type, revision),
        )
        files = {s.rfilename: (s.size or 0) for s in (info.siblings or [])}
        when = getattr(info, "last_modified", None)
        return RevisionInfo(id=info.sha, message="", time=when.isoformat() if when else "", files=files)

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
        from huggingface_hub import snapshot_download

        ref = parse_repo_id(repo_id, repo_type)
        _bounded_timeouts()
        path = self._call(
            snapshot_download,
            ref.repo_id,
            repo_type=repo_type,
            revision=revision,
            local_dir=str(to) if to else None,
            cache_dir=self.cache_dir,
            allow_patterns=include,
            ignore_patterns=exclude,
            endpoint=self.endpoint,
            token=self._token,
            ctx=(ref.repo_id, repo_type, revision),
            transfer=True,
        )
        return Path(path)

    # -- writing -----------------------------------------------------------------------------
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
        private: bool | None = None,
    ) -> RevisionInfo:
        """Upload the folder as one commit (checked like a local push first) and return it."""
        ref = parse_repo_id(repo_id, repo_type)
        files = scan_folder(folder, include=include, exclude=exclude, limit=max_file_size)
        api = self.api
        ctx = (ref.repo_id, repo_type, branch)
        self._call(
            api.create_repo, ref.repo_id, repo_type=repo_type, exist_ok=True, private=private, ctx=ctx, **_sdk(ref)
        )
        if branch != "main":
            self._call(api.create_branch, ref.repo_id, branch=branch, repo_type=repo_type, exist_ok=True, ctx=ctx)
        with tempfile.TemporaryDirectory(prefix="hubkit-push-") as staging:
            # Stage exactly the scanned files so filters and size checks hold for what is uploaded.
            for item in files:
                dest = Path(staging) / item.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(item.source, dest)
                except OSError:
                    shutil.copyfile(item.source, dest)
            commit = self._call(
                api.upload_folder,
                folder_path=staging,
                commit_message=message or f"Upload {len(files)} file(s) with hubkit",
                revision=branch,
                repo_id=ref.repo_id,
                repo_type=repo_type,
                ctx=ctx,
                transfer=True,
            )
        rev_id = commit.oid
        if tag:
            self._call(api.create_tag, ref.repo_id, tag=tag, revision=rev_id, repo_type=repo_type, ctx=ctx)
        logger.info("pushed %s revision %s to %s", ref.repo_id, rev_id, self.endpoint)
        return RevisionInfo(
            id=rev_id,
            message=message or "",
            time=timestamp or "",
            refs=(branch,) + ((tag,) if tag else ()),
            files={f.path: f.size for f in files},
        )

    def tag(self, repo_id: str, tag: str, *, revision: str | None = None, repo_type: str = "model") -> RevisionInfo:
        ref = parse_repo_id(repo_id, repo_type)
        info = self.resolve_revision(ref.repo_id, revision, repo_type=repo_type)
        self._call(
            self.api.create_tag,
            ref.repo_id,
            tag=tag,
            revision=info.id,
            repo_type=repo_type,
            ctx=(ref.repo_id, repo_type, None),
        )
        return info


def _sdk(ref: RepoRef) -> dict:
    # The Hub requires an SDK when creating a Space; the card in the pushed folder can override it.
    return {"space_sdk": "gradio"} if ref.repo_type == "space" else {}
