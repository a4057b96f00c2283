"""Commands on Spaces: serve, space export."""

from __future__ import annotations

import sys

from ._models import quiet_model_loading
from ._registry import arg, command, group


@command(
    "serve",
    arg("--port", type=int, default=7860),
    arg("--host", default="127.0.0.1"),
    arg("--no-bootstrap", action="store_true", help="do not add the tiny offline models to the store"),
    arg("--spaces-dir", default=None, help="folder of Spaces (default: spaces/ of the source checkout)"),
    arg("--no-processes", action="store_true", help="do not start Streamlit Spaces as their own servers"),
    help="serve the landing page and the Spaces (Streamlit ones as their own servers, stopped on exit)",
    options=("hub", "offline"),
)
def _serve(args) -> None:
    quiet_model_loading()
    from .. import hub
    from ..serve import serve

    store = hub.get_store(args.hub)
    if isinstance(store, hub.LocalStore) and not args.no_bootstrap:
        from ..bootstrap import bootstrap

        added = bootstrap(store)  # idempotent: adds only the tiny models / demo adapters that are missing
        if added:
            print(f"hubkit serve: added {len(added)} tiny offline models / adapters to the store", file=sys.stderr)
    print(f"hubkit: serving on http://{args.host}:{args.port}/ (Ctrl+C to stop)", file=sys.stderr)
    serve(host=args.host, port=args.port, hub=args.hub, spaces_dir=args.spaces_dir, processes=not args.no_processes)


group("space", help="Space tools")


@command(
    "space export",
    arg("name", help="a folder under spaces/ (e.g. depth) or a path to a Space folder"),
    arg("--to", required=True, metavar="DIR"),
    arg("--spaces-dir", default=None),
    help="a Space folder ready for Hugging Face Spaces (README YAML and requirements checked), with hubkit vendored",
)
def _space_export(args) -> None:
    from ..space_export import export_space

    print(export_space(args.name, args.to, spaces_dir=args.spaces_dir))
