"""Commands above the hub layer: serve, bootstrap, lora plan, predict."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from .cli import _EXTENSIONS, COMMANDS
from .errors import HubkitError

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def _register(sub) -> None:
    p = sub.add_parser("serve", help="serve the landing page and the Spaces on 127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--hub", default=None)
    p.add_argument("--offline", action="store_true")
    p.add_argument("--no-bootstrap", action="store_true", help="do not add the tiny offline models to the store")
    p.add_argument("--spaces-dir", default=None, help="folder of Spaces (default: spaces/ of the source checkout)")

    p = sub.add_parser("bootstrap", help="write tiny random-weight models of every family into the local store")
    p.add_argument("--hub", default=None, help="local store to fill (default: the local store)")
    p.add_argument("--force", action="store_true", help="push new revisions even if the repos exist")
    p.add_argument("--offline", action="store_true")

    p = sub.add_parser("space", help="Space tools")
    space = p.add_subparsers(dest="space_command", required=True, metavar="SUBCOMMAND")
    q = space.add_parser("export", help="a Space folder ready for Hugging Face Spaces, with hubkit vendored")
    q.add_argument("name", help="a folder under spaces/ (e.g. depth) or a path to a Space folder")
    q.add_argument("--to", required=True, metavar="DIR")
    q.add_argument("--spaces-dir", default=None)

    p = sub.add_parser("lora", help="LoRA tools")
    lora = p.add_subparsers(dest="lora_command", required=True, metavar="SUBCOMMAND")
    q = lora.add_parser("plan", help="which modules get LoRA and the trainable / total parameter counts")
    q.add_argument("base", help="Hub id (bundled configs work offline), store repo or folder")
    q.add_argument("--preset", default=None, help="task whose preset to use (default: from the architecture)")
    q.add_argument("--r", type=int, default=None)
    q.add_argument("--alpha", type=int, default=None)
    q.add_argument("--targets", default=None, help="comma-separated module names, overriding the preset")
    q.add_argument("--offline", action="store_true")

    p = sub.add_parser("predict", help="run a task on images or folders of images and write the outputs")
    p.add_argument("task")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--base", default=None, help="base repo or folder (default: the task's Hub model)")
    p.add_argument("--adapter", action="append", default=[], help="adapter repo or folder (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="task option; VALUE may be JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--hub", default=None)
    p.add_argument("--offline", action="store_true")
    p.add_argument("--allow-pickle", action="store_true", help="load .bin/.pth weights with weights_only=True")


def _quiet_model_loading() -> None:
    """Per-file "Loading weights" bars from transformers drown these commands' own output."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _serve(args) -> None:
    _quiet_model_loading()
    from . import hub
    from .serve import serve

    store = hub.get_store(args.hub)
    if isinstance(store, hub.LocalStore) and not args.no_bootstrap:
        from .bootstrap import bootstrap

        added = bootstrap(store)  # idempotent: adds only the tiny models / demo adapters that are missing
        if added:
            print(f"hubkit serve: added {len(added)} tiny offline models / adapters to the store", file=sys.stderr)
    print(f"hubkit: serving on http://{args.host}:{args.port}/ (Ctrl+C to stop)", file=sys.stderr)
    serve(host=args.host, port=args.port, hub=args.hub, spaces_dir=args.spaces_dir)


def _bootstrap(args) -> None:
    _quiet_model_loading()
    from . import hub
    from .bootstrap import bootstrap

    store = hub.get_store(args.hub)
    if not isinstance(store, hub.LocalStore):
        raise HubkitError("bootstrap writes into a local store; use --hub local or a folder")
    for repo, rev in bootstrap(store, force=args.force).items():
        print(f"{repo}  {rev}")


def _space(args) -> None:
    from .serve import export_space

    print(export_space(args.name, args.to, spaces_dir=args.spaces_dir))


def _lora(args) -> None:
    from .plan import plan

    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    result = plan(args.base, preset=args.preset, r=args.r, alpha=args.alpha, targets=targets)
    print(f"base: {result.base} ({result.architecture}, preset {result.task})")
    print(f"targets: {', '.join(result.targets)}  r={result.r} alpha={result.alpha}")
    print(f"modules ({len(result.modules)}):")
    for name in result.modules:
        print(f"  {name}")
    print(result.line)


def _parse_args(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise HubkitError(f"--arg must be KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _images(inputs: list[str]) -> list[tuple[Path, str]]:
    """(image, output stem) pairs; stems keep sub-folders (a/x.png -> a__x) and never collide."""
    found: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for image in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                found.append((image, "__".join(image.relative_to(path).with_suffix("").parts)))
        else:
            found.append((path, path.stem))
    if not found:
        raise HubkitError(f"No images in {', '.join(inputs)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    seen: dict[str, int] = {}
    unique = []
    for image, stem in found:
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        unique.append((image, f"{stem}-{count}" if count else stem))
    return unique


def _predict(args) -> int:
    _quiet_model_loading()
    from .predictor import load

    predictor = load(
        args.task,
        args.base,
        adapters=args.adapter,
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        hub_name=args.hub,
    )
    kwargs = _parse_args(args.arg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with open(out / "results.jsonl", "w") as log:
        for image, stem in _images(args.inputs):
            try:
                output = predictor.predict(str(image), **kwargs)
            except HubkitError as err:
                failed += 1
                print(f"hubkit predict: skipped {image}: {err}", file=sys.stderr)
                log.write(json.dumps({"input": str(image), "error": str(err)}) + "\n")
                continue
            files = predictor.task.save_output(output, out, stem)
            log.write(json.dumps({"input": str(image), "outputs": [str(f) for f in files]}) + "\n")
    print(f"hubkit predict: {failed} of the inputs failed" if failed else "hubkit predict: done", file=sys.stderr)
    print(out)
    return 1 if failed else 0


_EXTENSIONS.append(_register)
COMMANDS.update({"serve": _serve, "bootstrap": _bootstrap, "lora": _lora, "predict": _predict, "space": _space})
