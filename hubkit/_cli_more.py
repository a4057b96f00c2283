"""Commands above the hub layer: serve (more arrive with the model layer)."""

from __future__ import annotations

from .cli import _EXTENSIONS, COMMANDS


def _register(sub) -> None:
    p = sub.add_parser("serve", help="serve the landing page and the Spaces on 127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--hub", default=None)
    p.add_argument("--offline", action="store_true")


def _serve(args) -> None:
    from .serve import serve

    serve(host=args.host, port=args.port, hub=args.hub)


_EXTENSIONS.append(_register)
COMMANDS["serve"] = _serve
