"""Commands on models: bootstrap, lora plan, predict."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import HubkitError
from ._registry import arg, command, group

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def quiet_model_loading() -> None:
    """Per-file "Loading weights" bars from transformers drown these commands' own output."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@command(
    "bootstrap",
    arg("--force", action="store_true", help="push new revisions even if the repos exist"),
    help="write tiny random-weight models of every family into the local store",
    options=("hub", "offline"),
)
def _bootstrap(args) -> None:
    quiet_model_loading()
    from .. import hub
    from ..bootstrap import bootstrap

    store = hub.get_store(args.hub)
    if not isinstance(store, hub.LocalStore):
        raise HubkitError("bootstrap writes into a local store; use --hub local or a folder")
    for repo, rev in bootstrap(store, force=args.force).items():
        print(f"{repo}  {rev}")


group("lora", help="LoRA tools")


@command(
    "lora plan",
    arg("base", help="Hub id (bundled configs work offline), store repo or folder"),
    arg("--preset", default=None, help="task whose preset to use (default: from the architecture)"),
    arg("--r", type=int, default=None),
    arg("--alpha", type=int, default=None),
    arg("--targets", default=None, help="comma-separated module names, overriding the preset"),
    help="which modules get LoRA and the trainable / total parameter counts",
    options=("offline",),
)
def _lora_plan(args) -> None:
    from ..plan import plan

    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    result = plan(args.base, preset=args.preset, r=args.r, alpha=args.alpha, targets=targets)
    print(f"base: {result.base} ({result.architecture}, preset {result.task})")
    print(f"targets: {', '.join(result.targets)}  r={result.r} alpha={result.alpha}")
    print(f"modules ({len(result.modules)}):")
    for name in result.modules:
        print(f"  {name}")
    print(result.line)


@command(
    "predict",
    arg("task"),
    arg("inputs", nargs="+", metavar="INPUT"),
    arg("--base", default=None, help="base repo or folder (default: the task's Hub model)"),
    arg("--adapter", action="append", default=[], help="adapter repo or folder (repeatable)"),
    arg("--out", required=True, metavar="DIR"),
    arg("--arg", action="append", default=[], metavar="KEY=VALUE", help="task option; VALUE may be JSON"),
    arg("--device", default="cpu"),
    arg("--dtype", default=None),
    arg("--allow-pickle", action="store_true", help="load .bin/.pth weights with weights_only=True"),
    help="run a task on images or folders of images and write the outputs",
    options=("hub", "offline"),
)
def _predict(args) -> int:
    quiet_model_loading()
    from ..predictor import load

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
