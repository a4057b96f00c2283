"""`hubkit serve`: one local server with a landing page and every Space under /spaces/<name>/."""

from __future__ import annotations

import html
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from . import hub

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpaceApp:
    name: str
    folder: Path
    title: str


def default_spaces_dir() -> Path:
    """The `spaces/` folder of a source checkout (the package sits beside it)."""
    return Path(__file__).resolve().parent.parent / "spaces"


def discover_spaces(spaces_dir: str | Path | None = None) -> list[SpaceApp]:
    root = Path(spaces_dir) if spaces_dir else default_spaces_dir()
    found = []
    for folder in sorted(p for p in root.glob("*") if (p / "app.py").is_file()):
        title = folder.name
        readme = folder / "README.md"
        if readme.is_file():
            from huggingface_hub import RepoCard

            title = getattr(RepoCard.load(readme).data, "title", None) or title
        found.append(SpaceApp(folder.name, folder, title))
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


def load_space_demo(space: SpaceApp):
    """Import a Space's app.py by path (Spaces are not part of the package) and return its `demo`."""
    spec = importlib.util.spec_from_file_location(f"hubkit_space_{space.name}", space.folder / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(space.folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(space.folder))
    return module.demo


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


def landing_page(*, hub_name: str | None, spaces: list[SpaceApp]):
    import gradio as gr

    store = hub.get_store(hub_name)
    headers = ["kind", "repo", "revisions", "main", "updated"]
    with gr.Blocks(title="hubkit") as demo:
        gr.Markdown(
            "# hubkit\nFine-tune vision foundation models with LoRA, share the adapters, demo them here.\n\n"
            f"Store: `{store.name}`"
        )
        gr.Markdown("## Spaces")
        if spaces:  # plain links (Markdown ones open a new tab): a Space opens in place, Back returns here
            items = "".join(f'<li><a href="/spaces/{s.name}/">{html.escape(s.title)}</a></li>' for s in spaces)
            gr.HTML(f"<ul>{items}</ul>")
        else:
            gr.Markdown("No Spaces found.")
        gr.Markdown("## Models, adapters and data sets in the store")
        table = gr.Dataframe(value=store_table(store) or None, headers=headers, interactive=False)
        refresh = gr.Button("Refresh")
        refresh.click(lambda: store_table(store) or None, outputs=table, api_name="list_store")
    return demo


def build_app(*, hub_name: str | None = None, spaces_dir: str | Path | None = None):
    """A FastAPI app: the landing page at / and each Space's `demo` at /spaces/<name>/."""
    import gradio as gr
    from fastapi import FastAPI

    app = FastAPI(title="hubkit")
    spaces = discover_spaces(spaces_dir)
    mounted = []
    for space in spaces:
        try:
            demo = load_space_demo(space)
        except Exception:  # one broken Space must not take the others down
            logger.exception("Space %s failed to load; skipped", space.name)
            continue
        app = gr.mount_gradio_app(app, demo, path=f"/spaces/{space.name}")
        mounted.append(space)
    return gr.mount_gradio_app(app, landing_page(hub_name=hub_name, spaces=mounted), path="/")


def serve(*, host: str = "127.0.0.1", port: int = 7860, hub: str | None = None, spaces_dir=None) -> None:
    import uvicorn

    app = build_app(hub_name=hub, spaces_dir=spaces_dir)
    logger.info("serving on http://%s:%d/", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
