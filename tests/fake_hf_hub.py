"""In-memory fake of the Hugging Face Hub HTTP API, for offline tests.

Speaks enough of the Hub API for huggingface_hub 2.4 clients pointed at it with ``endpoint=hub.endpoint``:
create/delete repo, repo/model/dataset/space info, preupload + NDJSON commit (so ``upload_folder``,
``upload_file`` and ``create_commit`` work), refs, tags, branches, commit history, tree listing, paths-info,
``/resolve`` downloads (``hf_hub_download`` / ``snapshot_download``) and ``whoami-v2``.

Every file is answered as upload mode "regular" (content inline, base64, in the commit payload): no LFS/Xet.
Repo ids must be ``namespace/name``. Nothing is logged: Authorization headers carry tokens.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha(data: bytes) -> str:
    """Git blob id of ``data``: what the Hub uses as ETag / oid for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An HTTP error answer; ``code`` goes to ``X-Error-Code`` (e.g. RepoNotFound, RevisionNotFound)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra
        self.headers = dict(headers or {})
        self.headers["X-Error-Message"] = message
        if code:
            self.headers["X-Error-Code"] = code


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, bytes]
    title: str
    message: str
    date: str
    author: str

    def as_json(self) -> dict:
        authors = [{"user": self.author}]
        return {"id": self.oid, "title": self.title, "message": self.message, "date": self.date, "authors": authors}


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    sdk: str | None = None
    created_at: str = field(default_factory=_now)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit:
        """Branch, tag, full commit sha, ``refs/heads/x`` or ``refs/tags/x`` -> commit (404 RevisionNotFound)."""
        if rev.startswith("refs/heads/"):
            oid = self.branches.get(rev[len("refs/heads/") :])
        elif rev.startswith("refs/tags/"):
            oid = self.tags.get(rev[len("refs/tags/") :])
        else:
            oid = self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return self.commits[oid]

    def history(self, rev: str) -> list[Commit]:
        out, commit = [], self.resolve(rev)
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: FakeHub


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub (every answer carries Content-Length)
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - silence: never log requests (tokens live in headers)
        pass

    def setup(self):
        super().setup()
        with self.server.hub._lock:
            self.server.hub._connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.hub._lock:
                self.server.hub._connections.discard(self.connection)

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        auth = self.headers.get("Authorization")
        with hub._lock:
            hub.requests.append((method, url.path))
            if auth is not None:
                hub.authorization_headers.append(auth)
            failure = hub._failures.pop(0) if hub._failures else None
        if hub.delay_seconds:
            time.sleep(hub.delay_seconds)
        try:
            if failure is not None:
                raise HubError(failure, f"Injected failure {failure}")
            with hub._lock:
                status, payload, headers = hub._route(method, url.path, parse_qs(url.query), body, auth, self.headers)
        except HubError as err:
            status, payload, headers = err.status, {"error": err.message, **err.extra}, err.headers
        except Exception as err:  # noqa: BLE001 - a fake server answers 500 instead of dying
            status, payload, headers = 500, {"error": f"{type(err).__name__}: {err}"}, {}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            if not isinstance(payload, bytes):
                self.send_header("Content-Type", "application/json; charset=utf-8")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)
        except OSError:  # client went away (e.g. it timed out during delay_seconds)
            self.close_connection = True


for _verb in ("GET", "HEAD", "POST", "DELETE"):  # do_GET = _dispatch("GET"), ...
    setattr(_Handler, f"do_{_verb}", functools.partialmethod(_Handler._dispatch, _verb))


class FakeHub:
    """Fake Hugging Face Hub on ``http://127.0.0.1:PORT`` (background thread, state in memory).

    ``tokens``: valid tokens, as an iterable (all belong to ``user``) or a ``{token: username}`` mapping.
    ``initial_commit``: like the real Hub, a new repo gets an "initial commit" holding ``.gitattributes``.
    Test knobs: ``delay_seconds`` (sleep before every answer), ``fail_next(status)``; records: ``requests``
    (list of (method, path)), ``authorization_headers`` (every Authorization value received); state: ``repos``.
    """

    def __init__(
        self,
        tokens: Iterable[str] | Mapping[str, str] = ("hf_fake_write_token",),
        *,
        user: str = "fake-user",
        initial_commit: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.tokens = dict(tokens) if isinstance(tokens, Mapping) else {t: user for t in tokens}
        self.initial_commit = initial_commit
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorization_headers: list[str] = []
        self.delay_seconds: float = 0.0
        self._failures: list[int] = []
        self._counter = 0
        self._lock = threading.RLock()
        self._connections: set[socket.socket] = set()
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeHub:
        if self._server is None:
            self._server = _Server(self._address, _Handler)
            self._server.hub = self
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        with self._lock:
            for conn in list(self._connections):  # drop idle keep-alive connections
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fail_next(self, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests (whatever they are) with HTTP ``status``."""
        with self._lock:
            self._failures.extend([status] * times)

    # ------------------------------------------------------------------ direct state access (no HTTP)
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def seed(self, repo_id: str, files: Mapping[str, bytes], *, repo_type: str = "model", message: str = "seed") -> str:
        """Create the repo if needed and commit ``files`` on main without HTTP; returns the commit sha."""
        with self._lock:
            repo = self.repos.get((repo_type, repo_id)) or self._create(repo_type, repo_id, False, None, "seed")
            merged = {**repo.commits[repo.branches["main"]].files, **files}
            return self._new_commit(repo, "main", merged, message, "", "seed").oid

    # ------------------------------------------------------------------ state changes
    def _create(self, repo_type: str, repo_id: str, private: bool, sdk: str | None, user: str) -> Repo:
        repo = self.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private=private, sdk=sdk)
        files = {".gitattributes": GITATTRIBUTES} if self.initial_commit else {}
        self._new_commit(repo, "main", files, "initial commit", "", user)
        return repo

    def _new_commit(self, repo: Repo, branch: str, files: dict, title: str, message: str, user: str) -> Commit:
        parent = repo.branches.get(branch)
        self._counter += 1
        digest = hashlib.sha1(
            f"{parent}\n{repo.repo_type}/{repo.repo_id}\n{title}\n{message}\n{self._counter}".encode()
        )
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_sha(files[path])}\n".encode())
        commit = Commit(digest.hexdigest(), parent, dict(files), title, message, _now(), user)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    # ------------------------------------------------------------------ routing
    def _repo_url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def _user(self, auth: str | None) -> str | None:
        if auth is None:
            return None
        user = self.tokens.get(auth.removeprefix("Bearer ").strip())
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    @staticmethod
    def _require(user: str | None) -> str:
        if user is None:
            raise HubError(401, "You must be authenticated to perform this operation")
        return user

    def _get_repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo.private and user is None:  # the real Hub hides private repos from anonymous users this way
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def _route(self, method, path, query, body, auth, req_headers):
        parts = [unquote(p) for p in path.strip("/").split("/")]
        user = self._user(auth)
        if parts == ["api", "whoami-v2"] and method == "GET":
            user = self._require(user)
            token = {"displayName": "fake-token", "role": "write"}
            return 200, {"type": "user", "name": user, "fullname": user, "orgs": [], "auth": {"accessToken": token}}, {}
        if parts == ["api", "validate-yaml"] and method == "POST":
            return 200, {"errors": [], "warnings": []}, {}
        if parts[:2] == ["api", "repos"] and len(parts) == 3:
            return self._repos_endpoint(method, parts[2], json.loads(body or b"{}"), user)
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in API_TYPES:
            repo = self._get_repo(API_TYPES[parts[1]], f"{parts[2]}/{parts[3]}", user)
            return self._repo_endpoint(method, repo, parts[4:], query, body, user, req_headers)
        repo_type = "model"
        if parts[0] in ("datasets", "spaces"):
            repo_type, parts = API_TYPES[parts[0]], parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo = self._get_repo(repo_type, f"{parts[0]}/{parts[1]}", user)
            return self._resolve(repo, parts[3], "/".join(parts[4:]), req_headers.get("Range"))
        raise HubError(404, f"Not found: {method} {path}")

    def _repos_endpoint(self, method, action, payload, user):
        user = self._require(user)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        if action == "create" and method == "POST":
            url = f"{self.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo", url=url)
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            self._create(repo_type, repo_id, private, payload.get("sdk"), user)
            return 200, {"url": url, "name": repo_id, "id": repo_id}, {}
        if action == "delete" and method == "DELETE":
            if self.repos.pop((repo_type, repo_id), None) is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
            return 200, {}, {}
        raise HubError(404, f"Not found: {method} /api/repos/{action}")

    def _repo_endpoint(self, method, repo: Repo, rest, query, body, user, req_headers):
        op, arg = (rest[0] if rest else ""), "/".join(rest[1:])
        if method == "GET" and op in ("", "revision"):
            blobs = query.get("blobs", [""])[0].lower() in ("1", "true")
            return 200, self._info(repo, repo.resolve(arg or "main"), blobs), {}
        if method == "GET" and op == "refs":

            def ref(kind, name, oid):
                return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}

            branches = [ref("heads", n, o) for n, o in sorted(repo.branches.items())]
            tags = [ref("tags", n, o) for n, o in sorted(repo.tags.items())]
            return 200, {"branches": branches, "converts": [], "tags": tags, "pullRequests": []}, {}
        if method == "GET" and op == "commits":
            return 200, [commit.as_json() for commit in repo.history(arg or "main")], {}
        if method == "GET" and op == "tree":
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            commit = repo.resolve(rest[1] if len(rest) > 1 else "main")
            return 200, self._tree(commit, "/".join(rest[2:]), recursive), {}
        if method == "POST" and op == "paths-info":
            if "json" in (req_headers.get("Content-Type") or ""):
                paths = json.loads(body).get("paths", [])
            else:
                paths = parse_qs(body.decode()).get("paths", [])
            entries = {e["path"]: e for e in self._tree(repo.resolve(arg), "", True)}
            return 200, [entries[p.strip("/")] for p in paths if p.strip("/") in entries], {}
        user = self._require(user)  # everything below writes
        if method == "POST" and op == "preupload":
            current, answers = repo.resolve(arg).files, []
            for path in (f["path"] for f in json.loads(body)["files"]):
                oid = git_blob_sha(current[path]) if path in current else None  # lets the client skip unchanged files
                answers.append({"path": path, "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
            return 200, {"files": answers}, {}
        if method == "POST" and op == "commit":
            return self._commit(repo, arg, body, query, user)
        if op == "tag" and method == "POST":
            payload = json.loads(body or b"{}")
            if payload["tag"] in repo.tags:
                raise HubError(409, f"Tag {payload['tag']} already exists")
            repo.tags[payload["tag"]] = repo.resolve(arg).oid
            return 200, {}, {}
        if op == "branch" and method == "POST":
            start = repo.resolve(json.loads(body or b"{}").get("startingPoint") or "main")
            if arg in repo.branches:
                raise HubError(409, f"Branch {arg} already exists")
            repo.branches[arg] = start.oid
            return 200, {}, {}
        if op in ("tag", "branch") and method == "DELETE":
            refs = repo.tags if op == "tag" else repo.branches
            if refs.pop(arg, None) is None:
                raise HubError(404, f"Invalid rev id: {arg}", "RevisionNotFound")
            return 200, {}, {}
        raise HubError(404, f"Not found: {method} {op}")

    def _info(self, repo: Repo, commit: Commit, blobs: bool) -> dict:
        siblings = []
        for path, data in sorted(commit.files.items()):
            siblings.append({"rfilename": path, **({"size": len(data), "blobId": git_blob_sha(data)} if blobs else {})})
        info = {"_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24], "id": repo.repo_id}
        info.update(author=repo.repo_id.split("/")[0], sha=commit.oid, lastModified=commit.date)
        info.update(createdAt=repo.created_at, private=repo.private, gated=False, disabled=False, downloads=0, likes=0)
        info.update(tags=[], siblings=siblings, usedStorage=sum(len(d) for d in commit.files.values()))
        if repo.repo_type == "space":
            info["sdk"] = repo.sdk
        return info

    @staticmethod
    def _tree(commit: Commit, sub: str, recursive: bool) -> list[dict]:
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        files = {p: d for p, d in sorted(commit.files.items()) if p.startswith(prefix)}
        if prefix and not files:
            raise HubError(404, f"Entry not found: {sub}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        entries: dict[str, dict] = {}
        for path, data in files.items():
            rel = path[len(prefix) :].split("/")
            for depth in range(1, len(rel) if recursive else min(2, len(rel))):
                folder = prefix + "/".join(rel[:depth])
                blobs = "".join(f"{p}{git_blob_sha(d)}" for p, d in files.items() if p.startswith(folder + "/"))
                entries.setdefault(
                    folder,
                    {"type": "directory", "oid": hashlib.sha1(blobs.encode()).hexdigest(), "size": 0, "path": folder},
                )
            if recursive or len(rel) == 1:
                entries[path] = {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}
        return list(entries.values())

    def _commit(self, repo: Repo, branch: str, body: bytes, query: dict, user: str):
        if query.get("create_pr", ["0"])[0] not in ("0", ""):
            raise HubError(400, "create_pr is not supported by FakeHub")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if header is None:
            raise HubError(400, "Missing commit header")
        head = repo.branches[branch]
        if header.get("parentCommit") and header["parentCommit"] != head:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[head].files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                raw = value["content"]
                files[value["path"]] = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
            elif key in ("deletedFile", "deletedFolder"):
                target = value["path"].strip("/")
                doomed = [p for p in files if p == target or (key == "deletedFolder" and p.startswith(target + "/"))]
                if not doomed:
                    raise HubError(404, f"A file with this name doesn't exist: {target}", "EntryNotFound")
                for path in doomed:
                    del files[path]
            elif key != "header":
                raise HubError(400, f"Unsupported commit operation {key!r} (FakeHub only supports regular files)")
        commit = self._new_commit(repo, branch, files, header["summary"], header.get("description") or "", user)
        url = f"{self._repo_url(repo)}/commit/{commit.oid}"
        return 200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": ""}, {}

    @staticmethod
    def _resolve(repo: Repo, rev: str, path: str, range_header: str | None):
        commit = repo.resolve(rev)
        headers = {"X-Repo-Commit": commit.oid}
        if path not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound", headers)
        data = commit.files[path]
        headers.update(
            {"ETag": f'"{git_blob_sha(data)}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        )
        if range_header and range_header.startswith("bytes="):
            first, _, last = range_header[len("bytes=") :].partition("-")
            start, end = int(first or 0), int(last) if last else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, data[start : end + 1], headers
        return 200, data, headers
