"""`hubkit serve`: one local server with a landing page and every Space under /spaces/<name>/.

A Space folder's `app.py` exposes `demo` (a Gradio Blocks, mounted with `gr.mount_gradio_app`) or `app` (a
FastAPI / Starlette ASGI app, mounted with `app.mount`). A Streamlit Space cannot run in-process: it is listed
with the command that runs it. A Space that fails to load gets an error page at its path (HTTP 500, the reason
in one line, the traceback in the server log) and the others keep working.
"""

from __future__ import annotations

import contextlib
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

logger = logging.getLogger(__name__)

GRADIO, FASTAPI, ASGI, STREAMLIT, UNKNOWN = "gradio", "fastapi", "asgi", "streamlit", "unknown"
KIND_LABELS = {GRADIO: "Gradio", FASTAPI: "FastAPI", ASGI: "ASGI", STREAMLIT: "Streamlit", UNKNOWN: "unknown kind"}
# README YAML `sdk:` -> the kind of app it declares (HF Spaces run FastAPI apps under `sdk: docker`).
SDK_KINDS = {"gradio": GRADIO, "docker": FASTAPI, "fastapi": FASTAPI, "streamlit": STREAMLIT}
_IMPORTS = re.compile(r"^\s*(?:import|from)\s+(streamlit|gradio|fastapi|starlette)\b", re.MULTILINE)
MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class SpaceApp:
    name: str
    folder: Path
    title: str
    sdk: str | None = None  # the README YAML's `sdk:` (gradio, docker, streamlit, ...), None without one
    description: str = ""  # the README YAML's `short_description:`


@dataclass
class SpaceStatus:
    """What `build_app` made of one Space: its kind, the mounted app, or why it is not served."""

    space: SpaceApp
    kind: str
    app: Any = None  # the gr.Blocks or the ASGI app; None when broken or not mountable (Streamlit)
    error: str | None = None  # one line, "ExceptionType: message"; set at import or at the app's startup

    @property
    def name(self) -> str:
        return self.space.name

    @property
    def status(self) -> str:
        if self.error is not None:
            return f"error: {self.error}"
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
        title, sdk, description = folder.name, None, ""
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
        found.append(SpaceApp(folder.name, folder, title, sdk, description))
    return found


def export_space(name: str, to: str | Path, *, spaces_dir: str | Path | None = None) -> Path:
    """Copy a Space folder plus the hubkit package into `to`, so the folder runs on Hugging Face Spaces
    as it is (`hubkit push DIR me/my-space --repo-type space --hub hf`)."""
    import shutil

    from .errors import HubkitError

    source = Path(name) if Path(name).is_dir() else (Path(spaces_dir) if spaces_dir else default_spaces_dir()) / name
    if not (source / "app.py").is_file():
        known = ", ".join(s.name for s in discover_spaces(spaces_dir)) or "none"
        raise HubkitError(f"No Space {name!r} (no app.py in {source}). Spaces: {known}")
    target = Path(to)
    if target.exists() and any(target.iterdir()):
        raise HubkitError(f"{target} is not empty; export into a new folder")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(Path(__file__).resolve().parent, target / "hubkit", ignore=ignore)
    return target


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


def streamlit_page(entry: SpaceStatus) -> str:
    return _page(
        f"{entry.space.title}: a Streamlit Space",
        f"<h1>{html.escape(entry.space.title)}</h1><p>This is a Streamlit Space: it runs as its own server, not "
        f"inside <code>hubkit serve</code>. Run it alone:</p><pre><code>{html.escape(streamlit_command(entry.space))}"
        "</code></pre>",
    )


class _SpaceMount:
    """The ASGI app at /spaces/<name>/: the Space's own app, or its error page once it is broken."""

    def __init__(self, entry: SpaceStatus):
        self.entry = entry

    async def __call__(self, scope, receive, send) -> None:
        from starlette.responses import HTMLResponse

        entry = self.entry
        if entry.error is None and entry.app is not None:
            await entry.app(scope, receive, send)
        elif scope["type"] == "http":
            page, code = (streamlit_page(entry), 501) if entry.error is None else (error_page(entry), 500)
            await HTMLResponse(page, status_code=code)(scope, receive, send)
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


def store_table(store) -> list[list[str]]:
    rows = []
    for ref in store.list_repos():
        revs = store.list_revisions(ref.repo_id, repo_type=ref.repo_type)
        head = revs[0] if revs else None
        kind = ref.repo_type
        if ref.repo_type == "model" and head and "adapter_config.json" in head.files:
            kind = "adapter"
        rows.append([kind, ref.repo_id, str(len(revs)), head.id[:12] if head else "", head.time[:19] if head else ""])
    return rows


def space_tiles(spaces: list[SpaceStatus]) -> str:
    """One tile per Space: its title (a plain link: the Space opens in place, Back returns), kind and state."""
    tiles = []
    for entry in spaces:
        space, title = entry.space, html.escape(entry.space.title)
        kind = KIND_LABELS.get(entry.kind, entry.kind)
        if entry.kind == STREAMLIT and entry.error is None:
            head = f"<strong>{title}</strong>"
            note = f"not served here; run it alone: <code>{html.escape(streamlit_command(space))}</code>"
            state = "external"
        else:
            head = f'<a href="/spaces/{html.escape(space.name)}/" style="font-weight:600">{title}</a>'
            note = html.escape(space.description)
            state = "ok"
            if entry.error is not None:
                note = f'<span style="color:#b91c1c"><strong>broken</strong>: {html.escape(entry.error)}</span>'
                state = "broken"
        tiles.append(
            f'<li class="hubkit-tile" data-space="{html.escape(space.name)}" data-kind="{entry.kind}" '
            f'data-state="{state}" style="list-style:none;border:1px solid #d1d5db;border-radius:8px;'
            f'padding:.6rem .8rem;margin:.4rem 0">{head} <span class="hubkit-kind" style="font-size:.8em;'
            f'border:1px solid #9ca3af;border-radius:4px;padding:0 .3rem">{kind}</span>'
            f"{'<br>' + note if note else ''}</li>"
        )
    return f'<ul class="hubkit-tiles" style="padding:0">{"".join(tiles)}</ul>'


def landing_page(*, hub_name: str | None, spaces: list[SpaceStatus | SpaceApp]):
    import gradio as gr

    spaces = [s if isinstance(s, SpaceStatus) else SpaceStatus(s, GRADIO) for s in spaces]
    store = hub.get_store(hub_name)
    headers = ["kind", "repo", "revisions", "main", "updated"]
    with gr.Blocks(title="hubkit") as demo:
        gr.Markdown(
            "# hubkit\nFine-tune vision foundation models with LoRA, share the adapters, demo them here.\n\n"
            f"Store: `{store.name}`"
        )
        gr.Markdown("## Spaces")
        if spaces:
            tiles = gr.HTML(space_tiles(spaces))
            # A FastAPI Space may break at startup, after this page was built: each visit redraws the tiles.
            demo.load(lambda: space_tiles(spaces), outputs=tiles, api_name="spaces")
        else:
            gr.Markdown("No Spaces found.")
        gr.HTML(
            'Server: <a href="/api/health">/api/health</a> (each Space\'s state) · '
            '<a href="/api/pool">/api/pool</a> (the shared model pool: memory budget, loaded models)'
        )
        gr.Markdown("## Models, adapters and data sets in the store")
        table = gr.Dataframe(value=store_table(store) or None, headers=headers, interactive=False)
        refresh = gr.Button("Refresh")
        refresh.click(lambda: store_table(store) or None, outputs=table, api_name="list_store")
    return demo


# -- the server -----------------------------------------------------------------------------------------
def build_app(*, hub_name: str | None = None, spaces_dir: str | Path | None = None):
    """The server as an ASGI app (FastAPI), without starting it: /api/health, /api/pool, each Space at
    /spaces/<name>/ (its app, or its error page), and the landing page at /. `app.state.spaces` holds the
    `SpaceStatus` of each Space."""
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, RedirectResponse

    app = FastAPI(title="hubkit")
    spaces = [load_space(space) for space in discover_spaces(spaces_dir)]
    by_name = {entry.name: entry for entry in spaces}
    app.state.spaces = spaces

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

    @app.get("/spaces/{name}", include_in_schema=False)
    def space_without_slash(name: str):
        if name not in by_name:
            return JSONResponse({"error": f"no Space {name!r}"}, status_code=404)
        return RedirectResponse(f"{name}/")  # relative: right behind a proxy that adds a prefix too

    for entry in spaces:
        if entry.kind == GRADIO and entry.error is None:
            app = gr.mount_gradio_app(app, entry.app, path=f"/spaces/{entry.name}")
            continue
        if entry.error is None and hasattr(getattr(entry.app, "router", None), "lifespan_context"):
            _run_space_lifespan(app, entry)
        app.mount(f"/spaces/{entry.name}", _SpaceMount(entry))
    return gr.mount_gradio_app(app, landing_page(hub_name=hub_name, spaces=spaces), path="/")


def serve(*, host: str = "127.0.0.1", port: int = 7860, hub: str | None = None, spaces_dir=None) -> None:
    import uvicorn

    app = build_app(hub_name=hub, spaces_dir=spaces_dir)
    logger.info("serving on http://%s:%d/", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
