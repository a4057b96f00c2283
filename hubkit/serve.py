"""`hubkit serve`: one local server with a landing page and every Space under /spaces/<name>/.

A Space folder's `app.py` exposes `demo` (a Gradio Blocks, mounted with `gr.mount_gradio_app`) or `app` (a
FastAPI / Starlette ASGI app, mounted with `app.mount`). A Streamlit Space cannot run in-process: it is listed
with the command that runs it. A Space that fails to load gets an error page at its path (HTTP 500, the reason
in one line, the traceback in the server log) and the others keep working.
"""

from __future__ import annotations

import contextlib
import functools
import html
import importlib.util
import inspect
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import hub
from .gradio_fixes import atomic_cache_writes, upload_check_without_server_paths

logger = logging.getLogger(__name__)

GRADIO, FASTAPI, ASGI, STREAMLIT, UNKNOWN = "gradio", "fastapi", "asgi", "streamlit", "unknown"
KIND_LABELS = {GRADIO: "Gradio", FASTAPI: "FastAPI", ASGI: "ASGI", STREAMLIT: "Streamlit", UNKNOWN: "unknown kind"}
# README YAML `sdk:` -> the kind of app it declares (HF Spaces run FastAPI apps under `sdk: docker`).
SDK_KINDS = {"gradio": GRADIO, "docker": FASTAPI, "fastapi": FASTAPI, "streamlit": STREAMLIT}
_IMPORTS = re.compile(r"^\s*(?:import|from)\s+(streamlit|gradio|fastapi|starlette)\b", re.MULTILINE)
MAX_REASON_CHARS = 300
# Hugging Face task names a Space's tags may carry; the first one found is the Space's task on its tile.
HF_TASKS = {
    "depth-estimation", "image-classification", "image-segmentation", "mask-generation", "object-detection",
    "zero-shot-object-detection", "image-to-image", "text-to-image", "image-to-text", "image-feature-extraction",
    "zero-shot-image-classification", "visual-question-answering",
}  # fmt: skip


@dataclass(frozen=True)
class SpaceApp:
    name: str
    folder: Path
    title: str
    sdk: str | None = None  # the README YAML's `sdk:` (gradio, docker, streamlit, ...), None without one
    description: str = ""  # the README YAML's `short_description:`
    models: tuple[str, ...] = ()  # the README YAML's `models:`
    datasets: tuple[str, ...] = ()  # the README YAML's `datasets:`
    tags: tuple[str, ...] = ()  # the README YAML's `tags:`

    @property
    def task(self) -> str | None:
        """The first tag that names a Hugging Face task (depth-estimation, ...), else the first tag."""
        known = [t for t in self.tags if t in HF_TASKS]
        return (known or list(self.tags) or [None])[0]


@dataclass
class SpaceStatus:
    """What `build_app` made of one Space: its kind, the mounted app, or why it is not served."""

    space: SpaceApp
    kind: str
    app: Any = None  # the gr.Blocks or the ASGI app; None when broken or not mountable (Streamlit)
    error: str | None = None  # one line, "ExceptionType: message"; set at import or at the app's startup
    process: StreamlitProcess | None = None  # a Streamlit Space's own server, when `hubkit serve` runs it

    @property
    def name(self) -> str:
        return self.space.name

    @property
    def status(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
        if self.process is not None:
            state, reason = self.process.state
            return {"ok": "ok", "starting": "starting"}.get(state, f"error: {reason}")
        if self.kind == STREAMLIT:
            return f"not mounted: run `{streamlit_command(self.space)}`"
        return "ok"


def default_spaces_dir() -> Path:
    """The `spaces/` folder of a source checkout (the package sits beside it)."""
    return Path(__file__).resolve().parent.parent / "spaces"


def discover_spaces(spaces_dir: str | Path | None = None) -> list[SpaceApp]:
    root = Path(spaces_dir) if spaces_dir else default_spaces_dir()
    found = []
    for folder in sorted(p for p in root.glob("*") if (p / "app.py").is_file()):
        title, sdk, description, lists = folder.name, None, "", {"models": (), "datasets": (), "tags": ()}
        readme = folder / "README.md"
        if readme.is_file():
            from huggingface_hub import RepoCard

            try:
                data = RepoCard.load(readme).data
            except Exception:  # a bad README must not hide the Space (nor stop the server)
                logger.warning("Space %s: unreadable YAML in %s; defaults used", folder.name, readme, exc_info=True)
            else:
                title = getattr(data, "title", None) or title
                sdk = str(getattr(data, "sdk", None) or "").lower() or None
                description = str(getattr(data, "short_description", None) or "")
                for key in lists:
                    value = getattr(data, key, None) or ()
                    lists[key] = tuple(str(v) for v in ([value] if isinstance(value, str) else value))
        found.append(SpaceApp(folder.name, folder, title, sdk, description, **lists))
    return found


def export_space(name: str, to: str | Path, *, spaces_dir: str | Path | None = None) -> Path:
    """`hubkit.space_export.export_space` (validates the Space's YAML and requirements, vendors hubkit)."""
    from .space_export import export_space as _export_space

    return _export_space(name, to, spaces_dir=spaces_dir)


# -- loading a Space ------------------------------------------------------------------------------------
def _import_app_module(space: SpaceApp):
    """Import a Space's app.py by path (Spaces are not part of the package), its folder first on sys.path."""
    name = f"hubkit_space_{space.name}"
    spec = importlib.util.spec_from_file_location(name, space.folder / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as `import` does: dataclasses, pickling and typing look the module up here
    sys.path.insert(0, str(space.folder))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.path.remove(str(space.folder))
    return module


def load_space_demo(space: SpaceApp):
    """Import a Space's app.py and return its `demo`."""
    return _import_app_module(space).demo


def source_kind(space: SpaceApp) -> str | None:
    """The kind the README declares (`sdk:`), else the first UI library app.py imports, else None."""
    if space.sdk in SDK_KINDS:
        return SDK_KINDS[space.sdk]
    try:
        found = _IMPORTS.search((space.folder / "app.py").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return {"starlette": FASTAPI}.get(found.group(1), found.group(1)) if found else None


def _is_asgi(obj) -> bool:
    from starlette.applications import Starlette

    if isinstance(obj, Starlette):
        return True
    call = obj if inspect.isfunction(obj) else getattr(obj, "__call__", None)  # noqa: B004 (the method itself)
    if not inspect.iscoroutinefunction(call):
        return False
    try:
        return len(inspect.signature(call).parameters) == 3  # (scope, receive, send)
    except (TypeError, ValueError):
        return False


def _pick_app(space: SpaceApp, module) -> tuple[str, Any]:
    """`demo` (gr.Blocks) or `app` (ASGI); when app.py has both, the README's `sdk:` decides (gradio: demo)."""
    import gradio as gr
    from fastapi import FastAPI

    from .errors import HubkitError

    demo, app = getattr(module, "demo", None), getattr(module, "app", None)
    has_demo, has_app = isinstance(demo, gr.Blocks), app is not None and _is_asgi(app)
    declared = SDK_KINDS.get(space.sdk or "")
    if has_app and (declared == FASTAPI or not has_demo):
        kind = FASTAPI if isinstance(app, FastAPI) else ASGI
        if declared == GRADIO:
            logger.warning("Space %s: README says sdk: gradio but app.py exposes only an ASGI `app`", space.name)
        return kind, app
    if has_demo:
        if declared == FASTAPI:
            logger.warning("Space %s: README says sdk: %s but app.py has only a Gradio `demo`", space.name, space.sdk)
        return GRADIO, demo
    raise HubkitError("app.py exposes neither `demo` (a gradio Blocks) nor `app` (a FastAPI / Starlette ASGI app)")


def error_reason(err: BaseException) -> str:
    """`ExceptionType: message` on one line, tokens redacted, for a page a stranger may see."""
    from ._logging import redact

    message = " ".join(str(err).split())
    reason = redact(f"{type(err).__name__}: {message}" if message else type(err).__name__)
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


def load_space(space: SpaceApp) -> SpaceStatus:
    """Import one Space and decide its kind; a failure is recorded (traceback to the log), never raised."""
    kind = source_kind(space)
    if kind == STREAMLIT:  # app.py is a script that draws as it runs: importing it here would run it
        return SpaceStatus(space, STREAMLIT)
    try:
        kind, app = _pick_app(space, _import_app_module(space))
    except (Exception, SystemExit) as err:  # one broken Space must not take the others down
        logger.exception("Space %s failed to load; /spaces/%s/ serves its error page", space.name, space.name)
        return SpaceStatus(space, kind or UNKNOWN, error=error_reason(err))
    return SpaceStatus(space, kind, app)


def streamlit_command(space: SpaceApp) -> str:
    app_py = space.folder / "app.py"
    with contextlib.suppress(ValueError):  # another drive on Windows
        rel = os.path.relpath(app_py)
        if not rel.startswith(".."):
            app_py = Path(rel)
    return f"streamlit run {app_py.as_posix()}"


# -- Streamlit Spaces: each one its own server process -------------------------------------------------
STREAMLIT_START_TIMEOUT_S = float(os.environ.get("HUBKIT_STREAMLIT_START_TIMEOUT", "90"))
STARTING, OK, BROKEN = "starting", "ok", "broken"


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host if host not in ("", "0.0.0.0", "::") else "127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover (runs in the child, between fork and exec)
    """Linux: the child gets SIGTERM when `hubkit serve` dies, even by SIGKILL (no orphan servers)."""
    import ctypes
    import signal

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class StreamlitProcess:
    """`python -m streamlit run app.py` for one Space on a free port, watched by a thread: `state` is
    (starting | ok | broken, reason). The process gets HUBKIT_HOME / HUBKIT_HUB from this one and
    HUBKIT_SERVER_URL (the hub server's URL, for its links back); `stop()` ends it (terminate, then kill)."""

    def __init__(self, space: SpaceApp, *, host: str = "127.0.0.1", server_url: str = "http://127.0.0.1:7860",
                 hub_name: str | None = None, start_timeout: float = STREAMLIT_START_TIMEOUT_S):  # fmt: skip
        self.space, self.host, self.server_url, self.hub_name = space, host, server_url, hub_name
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.proc = None
        self._state = (STARTING, "not started")
        self._stop = None
        self._log_path: Path | None = None
        self._thread = None

    # the address a browser on this machine (or behind `host`) uses
    def url(self, hostname: str | None = None) -> str:
        if hostname is None:
            hostname = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return f"http://{hostname}:{self.port}/"

    @property
    def state(self) -> tuple[str, str]:
        return self._state

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        # toolbarMode viewer: visitors get no "Deploy" button (Streamlit Cloud's) or developer menu
        return [sys.executable, "-m", "streamlit", "run", str(self.space.folder / "app.py"),
                "--server.port", str(self.port), "--server.headless", "true", "--server.address", self.host,
                "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = {**os.environ, "HUBKIT_SERVER_URL": self.server_url.rstrip("/")}
        env["HUBKIT_HOME"] = str(hub.local_home())
        if self.hub_name:
            env["HUBKIT_HUB"] = self.hub_name
        package_root = str(Path(__file__).resolve().parent.parent)  # `import hubkit` works from a checkout too
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        return env

    def start(self) -> StreamlitProcess:
        import subprocess
        import tempfile
        import threading

        self.port = _free_port(self.host)
        self._log_path = Path(tempfile.mkdtemp(prefix=f"hubkit-{self.space.name}-")) / "streamlit.log"
        with open(self._log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.space.folder, env=self.environment(),
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )  # fmt: skip
        self._state = (STARTING, f"starting on port {self.port}")
        logger.info("Space %s: streamlit started (pid %d) at %s", self.space.name, self.proc.pid, self.url())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watch-{self.space.name}", daemon=True)
        self._thread.start()
        return self

    def log_tail(self, lines: int = 1) -> str:
        try:
            text = self._log_path.read_text(encoding="utf-8", errors="replace") if self._log_path else ""
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())

    def _answers(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url()}_stcore/health", timeout=2) as response:  # noqa: S310
                return response.status == 200
        except OSError:
            return False

    def _watch(self) -> None:
        import time

        started = time.monotonic()
        while not self._stop.is_set():
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                reason = f"its streamlit process exited with code {code}" + (f": {tail}" if tail else "")
                self._state = (BROKEN, error_reason(RuntimeError(reason)).removeprefix("RuntimeError: "))
                logger.error("Space %s: %s (log: %s)", self.space.name, reason, self._log_path)
                return
            if self._state[0] != OK and self._answers():
                self._state = (OK, f"serving at {self.url()}")
            elif self._state[0] == STARTING and time.monotonic() - started > self.start_timeout:
                self._state = (BROKEN, f"its streamlit server did not answer within {self.start_timeout:.0f} s")
                logger.error("Space %s: %s (log: %s)", self.space.name, self._state[1], self._log_path)
            self._stop.wait(0.5 if self._state[0] != OK else 2.0)

    def stop(self, timeout: float = 10.0) -> None:
        import subprocess

        if self._stop is not None:
            self._stop.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        logger.info("Space %s: streamlit stopped", self.space.name)


def _attach_processes(app, spaces: list[SpaceStatus], **options) -> None:
    """Start each Streamlit Space's server with the app's lifespan and stop it at shutdown (uvicorn runs the
    shutdown on Ctrl-C and SIGTERM; atexit and the child's parent-death signal cover the rest)."""
    import atexit

    entries = [e for e in spaces if e.kind == STREAMLIT and e.error is None]
    if not entries:
        return
    for entry in entries:
        entry.process = StreamlitProcess(entry.space, **options)
    parent_lifespan = app.router.lifespan_context

    def stop_all() -> None:
        for entry in entries:
            with contextlib.suppress(Exception):
                entry.process.stop()

    @contextlib.asynccontextmanager
    async def lifespan(parent):
        atexit.register(stop_all)
        try:
            for entry in entries:
                try:
                    entry.process.start()
                except OSError as err:
                    entry.error = error_reason(err)
            async with parent_lifespan(parent) as state:
                yield state
        finally:
            stop_all()
            atexit.unregister(stop_all)

    app.router.lifespan_context = lifespan


# -- pages ----------------------------------------------------------------------------------------------
def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:46rem;margin:3rem auto;padding:0 1rem;line-height:1.5}"
        "code{background:#f3f4f6;padding:.1rem .3rem;border-radius:4px}</style></head>"
        f"<body>{body}<p><a href='/'>Back to the hubkit landing page</a></p></body></html>"
    )


def error_page(entry: SpaceStatus) -> str:
    name = html.escape(entry.name)
    return _page(
        f"{entry.space.title}: failed to load",
        f"<h1>Space <code>{name}</code> failed to load</h1>"
        f"<p id='hubkit-space-error'><strong>{html.escape(entry.error or '')}</strong></p>"
        "<p>The other Spaces are not affected. The full traceback is in the server's log; fix the Space's "
        f"<code>app.py</code> and restart <code>hubkit serve</code>.</p>",
    )


def process_error_page(entry: SpaceStatus) -> str:
    return _page(
        f"{entry.space.title}: not running",
        f"<h1>Space <code>{html.escape(entry.name)}</code> is not running</h1>"
        f"<p id='hubkit-space-error'><strong>{html.escape(entry.process.state[1])}</strong></p>"
        "<p>It runs as its own Streamlit server beside <code>hubkit serve</code>; its log is in the server's log "
        f"folder. Run it alone to see why: <code>{html.escape(streamlit_command(entry.space))}</code></p>",
    )


def streamlit_page(entry: SpaceStatus) -> str:
    return _page(
        f"{entry.space.title}: a Streamlit Space",
        f"<h1>{html.escape(entry.space.title)}</h1><p>This is a Streamlit Space: it runs as its own server, not "
        f"inside <code>hubkit serve</code>. Run it alone:</p><pre><code>{html.escape(streamlit_command(entry.space))}"
        "</code></pre>",
    )


def _request_hostname(scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"host":
            host = value.decode("latin-1")
            return host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return None


class _SpaceMount:
    """The ASGI app at /spaces/<name>/: the Space's own app, a redirect to its own server (Streamlit), or its
    error page once it is broken."""

    def __init__(self, entry: SpaceStatus):
        self.entry = entry

    async def __call__(self, scope, receive, send) -> None:
        from starlette.responses import HTMLResponse, RedirectResponse

        entry = self.entry
        if entry.error is None and entry.app is not None:
            await entry.app(scope, receive, send)
        elif scope["type"] == "http":
            if entry.error is None and entry.process is not None:
                if entry.process.state[0] == BROKEN:
                    response = HTMLResponse(process_error_page(entry), status_code=502)
                else:
                    response = RedirectResponse(entry.process.url(_request_hostname(scope)), status_code=307)
            elif entry.error is None:
                response = HTMLResponse(streamlit_page(entry), status_code=501)
            else:
                response = HTMLResponse(error_page(entry), status_code=500)
            await response(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1011})


def _run_space_lifespan(app, entry: SpaceStatus) -> None:
    """Starlette does not send lifespan events to mounted apps: enter the Space's lifespan (its startup and
    shutdown, e.g. loading a model) inside the server's. A Space whose startup fails is marked broken."""
    sub = entry.app
    parent_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(parent):
        async with parent_lifespan(parent) as state, contextlib.AsyncExitStack() as stack:
            sub_state = None
            try:
                sub_state = await stack.enter_async_context(sub.router.lifespan_context(sub))
            except Exception as err:
                logger.exception("Space %s failed to start; /spaces/%s/ serves its error page", entry.name, entry.name)
                entry.error = error_reason(err)
            if isinstance(sub_state, dict) and sub_state:  # lifespan state reaches the Space's requests
                state = {**(state or {}), **sub_state}
            yield state

    app.router.lifespan_context = lifespan


# -- what the landing page shows --------------------------------------------------------------------------
def _repo_kind(ref, head) -> str:
    if ref.repo_type == "model" and head and "adapter_config.json" in head.files:
        return "adapter"
    return ref.repo_type


def store_table(store) -> list[list[str]]:
    """One row per repo, for a person: kind, repo, revisions, last update (no hashes)."""
    rows = []
    for ref in store.list_repos():
        revs = store.list_revisions(ref.repo_id, repo_type=ref.repo_type)
        head = revs[0] if revs else None
        updated = head.time[:16].replace("T", " ") if head else ""
        rows.append([_repo_kind(ref, head), ref.repo_id, str(len(revs)), updated])
    return rows


def store_counts(store) -> dict[str, int]:
    counts = {"model": 0, "adapter": 0, "dataset": 0}
    for ref in store.list_repos():
        revs = store.list_revisions(ref.repo_id, repo_type=ref.repo_type)
        kind = _repo_kind(ref, revs[0] if revs else None)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


class HubCheck:
    """Whether the Hugging Face Hub answers: one short request (2 s) in a thread, the answer kept 10 minutes.
    HF_HUB_OFFLINE=1 answers "offline" without a request. `result(wait)` never waits longer than `wait`."""

    URL = "https://huggingface.co/api/whoami-v2"  # any answer (even 401) means the Hub is reachable
    TTL_S = 600.0

    def __init__(self, timeout: float = 2.0):
        import threading

        self.timeout = timeout
        self._lock = threading.Lock()
        self._answer: tuple[float, str] | None = None
        self._running = None

    @staticmethod
    def offline() -> bool:
        return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")

    def _check(self) -> None:
        import time
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(self.URL, timeout=self.timeout).close()  # noqa: S310
            answer = "reachable"
        except urllib.error.HTTPError:
            answer = "reachable"
        except (OSError, ValueError):
            answer = "unreachable"
        with self._lock:
            self._answer = (time.monotonic(), answer)

    def start(self):
        import threading
        import time

        if self.offline():
            return None
        with self._lock:
            fresh = self._answer is not None and time.monotonic() - self._answer[0] < self.TTL_S
            if fresh or (self._running is not None and self._running.is_alive()):
                return self._running
            self._running = threading.Thread(target=self._check, name="hub-check", daemon=True)
            self._running.start()
            return self._running

    def result(self, wait: float = 0.0) -> str:
        """offline | reachable | unreachable | checking."""
        if self.offline():
            return "offline"
        thread = self.start()
        if thread is not None and wait > 0:
            thread.join(wait)
        with self._lock:
            return self._answer[1] if self._answer else "checking"


HUB_LINES = {
    "offline": "offline (HF_HUB_OFFLINE=1): only the local store is used",
    "reachable": "reachable",
    "unreachable": "not reachable (no network?): the local store is used",
    "checking": "checking…",
}


def store_line(store, hub_check: HubCheck, *, wait: float = 0.0) -> str:
    """The store (name, path, counts) and the Hub's state, as one HTML line."""
    try:
        counts = store_counts(store)
        what = ", ".join(
            [_plural(counts.get("model", 0), "model"), _plural(counts.get("adapter", 0), "adapter"),
             _plural(counts.get("dataset", 0), "data set")]
        )  # fmt: skip
    except Exception as err:  # the page must load even when the store cannot be read
        logger.exception("could not list the store")
        what = f"could not be read ({error_reason(err)})"
    root = getattr(store, "root", None)
    name = str(store.name).split(":", 1)[0] if root else str(store.name)  # local:/path -> local (the path follows)
    where = f" at <code>{html.escape(str(root))}</code>" if root else ""
    state = hub_check.result(wait)
    return (
        f'<p class="hubkit-store" data-hub="{state}" style="margin:.2rem 0">Store <strong>'
        f"{html.escape(name)}</strong>{where}: {html.escape(what)} · Hugging Face Hub: "
        f"<strong>{html.escape(HUB_LINES[state])}</strong></p>"
    )


def newest_adapters(store, limit: int = 8) -> list[dict]:
    """The newest adapters: repo_id, updated, metric ((name, value) or None), link (a Space, preselected), base."""
    from .gallery import headline_metric, list_entries, space_link

    rows = [
        {"repo_id": e.repo_id, "updated": str(e.updated or ""), "metric": headline_metric(e), "link": space_link(e),
         "base": e.base}
        for e in list_entries(store)
        if e.kind == "adapter"
    ]  # fmt: skip
    rows.sort(key=lambda r: r["updated"], reverse=True)
    return rows[:limit]


def _format_metric(metric) -> str:
    if not metric:
        return "—"
    name, value = metric[0], metric[1]
    if isinstance(value, float):
        value = f"{value:.4g}"
    return f"{html.escape(str(name))} {html.escape(str(value))}"


def adapters_html(store, limit: int = 8) -> str:
    try:
        rows = newest_adapters(store, limit)
    except Exception as err:
        logger.exception("could not list the adapters")
        return f'<p class="hubkit-adapters">Could not read the adapters: {html.escape(error_reason(err))}</p>'
    if not rows:
        return '<p class="hubkit-adapters">No adapters yet: run <code>hubkit bootstrap</code> or train one.</p>'
    items = []
    for row in rows:
        repo = html.escape(row["repo_id"])
        name = f'<a href="{html.escape(row["link"])}">{repo}</a>' if row["link"] else repo
        base = f' <span style="color:#6b7280">on {html.escape(row["base"])}</span>' if row.get("base") else ""
        when = html.escape(row["updated"][:10])
        items.append(
            f'<tr class="hubkit-adapter" data-repo="{repo}"><td>{name}{base}</td>'
            f'<td>{_format_metric(row["metric"])}</td><td style="color:#6b7280">{when}</td></tr>'
        )
    head = "".join(f"<th align=left>{h}</th>" for h in ("adapter (opens its Space)", "headline metric", "added"))
    head = f"<tr>{head}</tr>"
    note = ""
    if any(not row["metric"] for row in rows):
        note = '<p style="font-size:.8em;color:#6b7280">— : no evaluation result in the adapter\'s card</p>'
    table = f'<table class="hubkit-adapters" style="width:100%;border-collapse:collapse">{head}{"".join(items)}</table>'
    return table + note


THUMBNAIL = "thumbnail.png"


@functools.lru_cache(maxsize=64)
def _thumbnail_caption(path: str, mtime: float) -> str:
    """The caption `scripts/make_space_thumbnails.py` writes into the PNG (tEXt "Description")."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return str(image.info.get("Description", ""))
    except OSError:
        return ""


def thumbnail(space: SpaceApp) -> tuple[Path, str] | None:
    path = space.folder / THUMBNAIL
    if not path.is_file():
        return None
    return path, _thumbnail_caption(str(path), path.stat().st_mtime)


def _tile_state(entry: SpaceStatus) -> tuple[str, str, str | None]:
    """(state, note HTML, link) of a tile."""
    space = entry.space
    link = f"/spaces/{space.name}/"
    if entry.error is not None:
        return BROKEN, f'<span style="color:#b91c1c"><strong>broken</strong>: {html.escape(entry.error)}</span>', link
    if entry.kind == STREAMLIT and entry.process is None:
        note = f"not served here; run it alone: <code>{html.escape(streamlit_command(space))}</code>"
        return "external", note, None
    if entry.process is not None:
        state, reason = entry.process.state
        if state == BROKEN:
            return BROKEN, f'<span style="color:#b91c1c"><strong>broken</strong>: {html.escape(reason)}</span>', link
        own = (
            '<span style="font-size:.8em;color:#4b5563">its own server on port '
            f"{entry.process.port}: <code>{html.escape(streamlit_command(space))}</code></span>"
        )
        return (STARTING, f"<em>starting…</em> {own}", link) if state == STARTING else (OK, own, link)
    return OK, "", link


def space_tiles(spaces: list[SpaceStatus], *, hostname: str | None = None) -> str:
    """One tile per Space: thumbnail, title (a plain link: the Space opens in place, Back returns), kind, state,
    its one line, task and models. A Streamlit Space started by `hubkit serve` links to its own server."""
    tiles = []
    for entry in spaces:
        space, title = entry.space, html.escape(entry.space.title)
        kind = KIND_LABELS.get(entry.kind, entry.kind)
        state, note, link = _tile_state(entry)
        if link is not None and entry.process is not None and state != BROKEN:
            href = entry.process.url(hostname)
        else:
            href = link
        head = (
            f'<a href="{html.escape(href)}" style="font-weight:600">{title}</a>'
            if href
            else f"<strong>{title}</strong>"
        )
        thumb = thumbnail(space)
        if thumb is not None:
            caption = html.escape(thumb[1])
            picture = (
                f'<img class="hubkit-thumb" src="/api/thumbnail/{html.escape(space.name)}" alt="{caption}" '
                'style="display:block;width:100%;height:140px;object-fit:contain;border-radius:6px;margin:0;'
                'border:0;background:#fff">'
            )
            caption = (
                f'<div style="font-size:.72em;color:#6b7280;line-height:1.25;margin:.15rem 0 .3rem">{caption}</div>'
            )
        else:
            picture = (
                '<div class="hubkit-thumb" style="height:140px;border-radius:6px;background:#f3f4f6;display:flex;'
                'align-items:center;justify-content:center;color:#9ca3af">no example image</div>'
            )
            caption = '<div style="margin:.15rem 0 .3rem"></div>'
        if href:
            picture = f'<a href="{html.escape(href)}" tabindex="-1" aria-hidden="true">{picture}</a>'
        picture += caption
        facts = []
        if space.task:
            facts.append(f"task: <code>{html.escape(space.task)}</code>")
        if space.models:
            facts.append("models: " + ", ".join(f"<code>{html.escape(m)}</code>" for m in space.models))
        if space.datasets:
            facts.append("data: " + ", ".join(f"<code>{html.escape(d)}</code>" for d in space.datasets))
        lines = [html.escape(space.description)] if space.description else []
        lines += [note] if note else []
        lines += [f'<span style="font-size:.8em;color:#4b5563">{" · ".join(facts)}</span>'] if facts else []
        tiles.append(
            f'<li class="hubkit-tile" data-space="{html.escape(space.name)}" data-kind="{entry.kind}" '
            f'data-state="{state}" style="list-style:none;border:1px solid #d1d5db;border-radius:8px;'
            f'padding:.6rem .7rem;margin:0;overflow-wrap:anywhere">{picture}{head} <span class="hubkit-kind" '
            'style="font-size:.75em;border:1px solid #9ca3af;border-radius:4px;padding:0 .3rem">'
            f"{kind}</span><br>{'<br>'.join(lines)}</li>"
        )
    return (
        '<ul class="hubkit-tiles" style="padding:0;margin:0;display:grid;gap:.8rem;'
        f'grid-template-columns:repeat(auto-fill,minmax(15rem,1fr))">{"".join(tiles)}</ul>'
    )


def landing_page(*, hub_name: str | None, spaces: list[SpaceStatus | SpaceApp], hub_check: HubCheck | None = None):
    import gradio as gr

    spaces = [s if isinstance(s, SpaceStatus) else SpaceStatus(s, GRADIO) for s in spaces]
    store = hub.get_store(hub_name)
    hub_check = hub_check or HubCheck()
    hub_check.start()  # the answer is usually in before the first visit
    headers = ["kind", "repo", "revisions", "updated (UTC)"]

    def hostname(request) -> str | None:
        host = (request.headers.get("host") if request is not None else None) or ""
        return host.rsplit(":", 1)[0] if host and not host.endswith("]") else (host or None)

    def tiles_now(request: gr.Request = None):
        return space_tiles(spaces, hostname=hostname(request))

    with gr.Blocks(title="hubkit") as demo:
        gr.Markdown(
            "# hubkit\nFine-tune vision foundation models with LoRA, share the adapters, demo them here. "
            "Open a Space below; each one links back here."
        )
        status = gr.HTML(store_line(store, hub_check), elem_id="hubkit-status")
        gr.Markdown("## Spaces")
        if spaces:
            tiles = gr.HTML(space_tiles(spaces), elem_id="hubkit-spaces")
            # A Space may break (or its process start) after this page was built: each visit redraws the tiles.
            demo.load(tiles_now, outputs=tiles, api_name="spaces", show_progress="hidden")
        else:
            gr.Markdown("No Spaces found.")
        gr.Markdown("## Newest adapters")
        adapters = gr.HTML(adapters_html(store), elem_id="hubkit-newest")
        # The page is whole as built; these redraw it quietly (no dimmed "processing" over what is already right).
        demo.load(lambda: adapters_html(store), outputs=adapters, api_name="newest_adapters", show_progress="hidden")
        demo.load(lambda: store_line(store, hub_check, wait=hub_check.timeout + 0.5), outputs=status,
                  api_name="store_status", show_progress="hidden")  # fmt: skip
        with gr.Accordion("Everything in the store", open=False):
            table = gr.Dataframe(value=store_table(store) or None, headers=headers, interactive=False)
            refresh = gr.Button("Refresh", size="sm")
            refresh.click(lambda: store_table(store) or None, outputs=table, api_name="list_store")
        gr.HTML(
            '<p style="font-size:.85em;color:#4b5563">Server: <a href="/api/health">/api/health</a> (each Space\'s '
            'state) · <a href="/api/pool">/api/pool</a> (the shared model pool: memory budget, loaded models)</p>'
        )
    return demo


# -- the server -----------------------------------------------------------------------------------------
def build_app(
    *,
    hub_name: str | None = None,
    spaces_dir: str | Path | None = None,
    start_processes: bool = False,
    host: str = "127.0.0.1",
    port: int = 7860,
):
    """The server as an ASGI app (FastAPI), without starting it: /api/health, /api/pool, /api/thumbnail/<name>,
    each Space at /spaces/<name>/ (its app, or its error page), and the landing page at /. `app.state.spaces`
    holds the `SpaceStatus` of each Space. With `start_processes`, the app's lifespan starts each Streamlit
    Space as its own server (a free port; /spaces/<name>/ redirects there) and stops it at shutdown."""
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

    app = FastAPI(title="hubkit")
    spaces = [load_space(space) for space in discover_spaces(spaces_dir)]
    by_name = {entry.name: entry for entry in spaces}
    app.state.spaces = spaces
    if start_processes:
        link_host = host if host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        _attach_processes(app, spaces, host=host, server_url=f"http://{link_host}:{port}", hub_name=hub_name)

    # Routes first: the landing page is mounted at / and would answer every path registered after it.
    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "spaces": {entry.name: entry.status for entry in spaces}}

    @app.get("/api/pool")
    def pool():
        try:
            from .pool import get_pool  # lazily: the pool module imports the model stack
        except ModuleNotFoundError as err:
            if err.name != f"{__package__}.pool":
                raise
            return JSONResponse({"error": "this hubkit has no model pool (hubkit.pool)"}, status_code=503)
        return get_pool().status()

    @app.get("/api/thumbnail/{name}", include_in_schema=False)
    def space_thumbnail(name: str):
        thumb = thumbnail(by_name[name].space) if name in by_name else None  # a known Space's own file only
        if thumb is None:
            return JSONResponse({"error": f"no thumbnail for {name!r}"}, status_code=404)
        return FileResponse(thumb[0], media_type="image/png", headers={"Cache-Control": "max-age=300"})

    @app.get("/spaces/{name}", include_in_schema=False)
    def space_without_slash(name: str):
        if name not in by_name:
            return JSONResponse({"error": f"no Space {name!r}"}, status_code=404)
        return RedirectResponse(f"{name}/")  # relative: right behind a proxy that adds a prefix too

    upload_check_without_server_paths()
    for entry in spaces:
        if entry.kind == GRADIO and entry.error is None:
            app = gr.mount_gradio_app(app, entry.app, path=f"/spaces/{entry.name}")
            # Gradio checks that a request's file paths were uploaded (not any server path a client names) only
            # for Blocks that have "launched"; mounting never sets it (gradio 6.31). tests/test_spaces_robustness.py
            entry.app.has_launched = True
            continue
        if entry.error is None and hasattr(getattr(entry.app, "router", None), "lifespan_context"):
            _run_space_lifespan(app, entry)
        app.mount(f"/spaces/{entry.name}", _SpaceMount(entry))
    atomic_cache_writes()
    return gr.mount_gradio_app(app, landing_page(hub_name=hub_name, spaces=spaces), path="/")


def serve(
    *, host: str = "127.0.0.1", port: int = 7860, hub: str | None = None, spaces_dir=None, processes: bool = True
) -> None:
    """Run the server (uvicorn) until Ctrl-C / SIGTERM; Streamlit Spaces run as their own servers beside it
    (`processes=False`: only listed) and stop with it."""
    import uvicorn

    app = build_app(hub_name=hub, spaces_dir=spaces_dir, start_processes=processes, host=host, port=port)
    logger.info("serving on http://%s:%d/", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
