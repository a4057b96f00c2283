"""`hubkit search`: build a visual-search index (a data set repo) from a catalogue folder; a demo catalogue."""

from __future__ import annotations

import json
import sys

from ._models import quiet_model_loading
from ._registry import arg, command, group

group("search", help="visual search: index a catalogue folder for the search Space (spaces/search)")


@command(
    "search index",
    arg("folder", help="a catalogue folder: metadata.jsonl (id, file, category, ...) + the images it names"),
    arg("--model", required=True, metavar="REPO", help="an image-embedding model: repo id or folder"),
    arg("--to", required=True, metavar="REPO", help="the data set repo to push the index to"),
    arg("--probe-views", type=int, default=2, metavar="N", help="camera-like views per item for the category probe"),
    arg("--batch-size", type=int, default=32),
    help="embed a catalogue with a model and push the index (vectors, metadata, thumbnails) as a data set repo",
    options=("hub", "offline"),
)
def _index(args) -> int:
    quiet_model_loading()
    from ..search import build_catalogue_index

    info = build_catalogue_index(
        args.folder,
        model=args.model,
        to=args.to,
        hub_name=args.hub,
        probe_views=args.probe_views,
        batch_size=args.batch_size,
    )
    print(json.dumps({"repo": args.to, "repo_type": "dataset", "revision": info.id}), file=sys.stdout)
    return 0


@command(
    "search demo",
    arg("--to", default="hubkit-demo/garment-index", metavar="REPO", help="the index repo (the Space's default)"),
    arg("--model-to", default="hubkit-demo/garment-embedder", metavar="REPO", help="where the trained model goes"),
    arg("--per-category", type=int, default=12, metavar="N", help="generated items per category"),
    arg("--steps", type=int, default=150, help="contrastive fine-tune steps of the small model"),
    arg("--seed", type=int, default=0),
    help="generate a garment catalogue, train a small embedding model on it briefly, index it (offline demo)",
    options=("hub",),
)
def _demo(args) -> int:
    quiet_model_loading()
    import tempfile
    from pathlib import Path

    from .. import hub
    from ..data.garments import make_catalogue
    from ..search import build_catalogue_index, build_search_model, finetune_embedding

    with tempfile.TemporaryDirectory(prefix="hubkit-search-demo-") as tmp:
        tmp = Path(tmp)
        catalogue = make_catalogue(tmp / "catalogue", args.per_category, args.seed, size=96)
        model = finetune_embedding(
            build_search_model(tmp / "base", seed=args.seed), catalogue, tmp / "model", steps=args.steps, seed=args.seed
        )
        model_rev = hub.push(model, args.model_to, hub=args.hub, message="garment embedder (hubkit search demo)")
        info = build_catalogue_index(catalogue, model=args.model_to, to=args.to, hub_name=args.hub)
    print(
        json.dumps(
            {"model": args.model_to, "model_revision": model_rev.id, "index": args.to, "index_revision": info.id}
        )
    )
    return 0
