"""`hubkit label`: the Segma pipeline over a folder, resumable, with COCO / label.json / features outputs."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from ..errors import ConfigError, HubkitError, StageError
from ..segma.regions import UNLABELLED
from ._models import _images, _parse_args, quiet_model_loading
from ._registry import arg, command, group

STAGE_FLAGS = ("sam", "captioner", "labeler", "detector")


@command(
    "label",
    arg("folder", help="a folder of images (searched recursively) or one image"),
    arg("--out", required=True, metavar="DIR", help="where the per-image files and coco.json / features.csv go"),
    arg("--preset", default="general", choices=("general", "medical", "satellite"), help="SAM preset (the seed's)"),
    arg("--domain", default=None, help="caption / LLM domain: medical, automotive, industrial, nature"),
    arg("--classes", default=None, metavar="A,B,C", help="look for these classes (skips the LLM)"),
    arg("--limit", type=int, default=None, metavar="N", help="label at most N images (done ones included)"),
    *[arg(f"--{s}", default=None, metavar="BASE", help=f"{s} base: repo id or folder") for s in STAGE_FLAGS],
    *[arg(f"--{s}-adapter", action="append", default=[], metavar="ADAPTER") for s in STAGE_FLAGS],
    arg("--tiny", action="store_true", help="use `hubkit bootstrap`'s random-weight models (offline demo)"),
    arg("--no-llm", action="store_true", help="classes from the caption's nouns instead of an LLM"),
    arg("--no-automatic", action="store_true", help="skip SAM's automatic masks (detector boxes only)"),
    arg("--quantize", default=None, choices=("nf4", "int8"), help="load the LLM quantized (nf4 needs CUDA)"),
    arg("--box-threshold", type=float, default=0.25),
    arg("--text-threshold", type=float, default=0.2),
    arg("--sam-option", action="append", default=[], metavar="KEY=VALUE", help="SAM automatic-mask knob override"),
    arg("--classifier", default=None, metavar="REPO", help="region classifier naming the automatic masks"),
    arg("--device", default="cpu"),
    arg("--dtype", default=None),
    arg("--allow-pickle", action="store_true", help="load .bin/.pth weights (Meta's SAM) with weights_only=True"),
    help="label a folder with the Segma pipeline (SAM + BLIP + LLM + Grounding DINO); resumes where it stopped",
    options=("hub", "offline"),
)
def _label(args) -> int:
    quiet_model_loading()
    from tqdm import tqdm

    from ..pipelines.segma import SegmaConfig, SegmaPipeline
    from ..segma.outputs import load_result, save_result, write_folder_outputs
    from ..tasks import to_pil

    if args.limit is not None and args.limit < 1:
        raise HubkitError(f"--limit must be >= 1, got {args.limit}")
    fields = {
        "preset": args.preset,
        "domain": args.domain,
        "classes": [c for c in args.classes.split(",") if c.strip()] if args.classes is not None else None,
        "llm": not args.no_llm,
        "automatic": not args.no_automatic,
        "llm_quantize": args.quantize,
        "box_threshold": args.box_threshold,
        "text_threshold": args.text_threshold,
        "classifier": args.classifier,
        "adapters": {s: getattr(args, f"{s}_adapter") for s in STAGE_FLAGS if getattr(args, f"{s}_adapter")},
        "load_options": {
            "device": args.device,
            "dtype": args.dtype,
            "hub_name": args.hub,
            "allow_pickle": args.allow_pickle,
        },
        **{s: getattr(args, s) for s in STAGE_FLAGS if getattr(args, s)},
    }
    sam_options = _parse_args(args.sam_option)
    config = (
        SegmaConfig.tiny(**fields, sam_options=sam_options)
        if args.tiny
        else SegmaConfig(**fields, sam_options=sam_options)
    )
    pipeline = SegmaPipeline(config)
    images = _images([args.folder])[: args.limit]
    try:
        pipeline.load()  # a base that cannot load stops the run here, not once per image
    except StageError as err:
        hint = (
            ""
            if args.tiny
            else (
                " Offline, `hubkit bootstrap` then --tiny uses random-weight demo models; or pass --sam / "
                "--captioner / --labeler / --detector folders."
            )
        )
        raise HubkitError(f"{err}{hint}") from err
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entries, failed, resumed, sources = [], 0, 0, {}
    for image, stem in tqdm(images, desc="hubkit label", unit="image", file=sys.stderr):
        record = out / f"{stem}.regions.json"
        file_name = f"{stem}{image.suffix.lower()}"
        try:
            result = None
            if record.is_file():
                try:
                    result = load_result(record, to_pil(str(image)))
                    resumed += 1
                except ConfigError as err:  # a record from an older run or a damaged file: label again
                    tqdm.write(f"hubkit label: labelling {image} again: {err}", file=sys.stderr)
            if result is None:
                result = pipeline.run(str(image))
                save_result(result, out, stem)
        except HubkitError as err:
            failed += 1
            tqdm.write(f"hubkit label: skipped {image}: {err}", file=sys.stderr)
            continue
        entries.append((file_name, result))
        sources[stem] = {"image": str(image.resolve()), "file_name": file_name}
    if entries:
        write_folder_outputs(out, entries)
    counts = Counter(r.label for _, result in entries for r in result.labelled())
    _report(counts, entries, resumed, failed)
    (out / "summary.json").write_text(
        json.dumps(
            {
                "images": len(entries),
                "failed": failed,
                "resumed": resumed,
                "classes": dict(counts.most_common()),
                "sources": sources,  # what `hubkit segma export` reads the images from
            },
            indent=2,
        )
        + "\n"
    )
    if not entries:
        raise HubkitError(f"every one of the {failed} image(s) failed; see the messages above")
    if not sum(counts.values()):
        raise HubkitError(
            f"no label found in {len(entries)} image(s): no detection passed box_threshold={config.box_threshold} "
            "and no classifier named a mask. Try --classes, a lower --box-threshold, or another --preset."
        )
    print(out)
    return 1 if failed else 0


def _report(counts: Counter, entries: list, resumed: int, failed: int) -> None:
    note = f", {resumed} already done" if resumed else ""
    note += f", {failed} failed" if failed else ""
    print(f"hubkit label: {len(entries)} image(s){note}; regions per class:", file=sys.stderr)
    width = max((len(name) for name in counts), default=5)
    for name, count in counts.most_common():
        print(f"  {name:<{width}}  {count}", file=sys.stderr)
    unlabelled = sum(r.label == UNLABELLED and r.status != "rejected" for _, res in entries for r in res.regions)
    if unlabelled:
        print(f"  ({unlabelled} automatic masks without a class, kept for review)", file=sys.stderr)


group("segma", help="Segma tools on a `hubkit label` folder: export a data set, train the region classifier, analyse")


def _label_dir(folder: str) -> list[tuple[Path, str, object]]:
    """(image path, file name, SegmaResult) of every image `hubkit label` recorded in `folder`."""
    from ..segma.outputs import load_result

    root = Path(folder)
    summary = root / "summary.json"
    if not summary.is_file():
        raise HubkitError(f"{root} has no summary.json: give the --out folder of a finished `hubkit label` run")
    try:
        sources = json.loads(summary.read_text())["sources"]
    except (ValueError, KeyError, TypeError) as err:
        raise HubkitError(f"{summary} is not a `hubkit label` summary ({err}); run `hubkit label` again") from None
    entries = []
    for stem, source in sorted(sources.items()):
        image = Path(source["image"])
        if not image.is_file():
            raise HubkitError(f"{image} (labelled as {stem}) is gone; put it back or label the folder again")
        entries.append((image, source["file_name"], load_result(root / f"{stem}.regions.json", image)))
    if not entries:
        raise HubkitError(f"{root} lists no labelled image")
    return entries


@command(
    "segma export",
    arg("folder", help="the --out folder of `hubkit label`"),
    arg("repo", help="data set repo id, e.g. me/coins-labels"),
    arg("--reviewed", action="store_true", help="the labels were checked by a person (said in the card)"),
    arg("--accepted-only", action="store_true", help="leave out regions nobody accepted"),
    arg("--name", default=None, help="the data set's pretty name"),
    arg("--message", "-m", default=None),
    help="export the labels as a Hub data set (ImageFolder + metadata.jsonl + COCO + card) and push it",
    options=("hub", "offline"),
)
def _segma_export(args) -> None:
    import tempfile

    from ..segma.export import export_dataset, push_dataset

    entries = _label_dir(args.folder)
    with tempfile.TemporaryDirectory(prefix="hubkit-segma-export-") as tmp:
        out = export_dataset(
            [(image, name, result) for image, name, result in entries],
            Path(tmp) / "dataset",
            reviewed=args.reviewed,
            include_pending=not args.accepted_only,
            name=args.name,
        )
        revision = push_dataset(out, args.repo, hub=args.hub, message=args.message or "hubkit segma export")
    print(f"hubkit segma export: {len(entries)} image(s) -> {args.repo} (dataset)", file=sys.stderr)
    print(revision.id)


def _training_regions(entries) -> tuple[list, list[str]]:
    features, labels = [], []
    for _, _, result in entries:
        for region in result.labelled():
            if region.features is not None:
                features.append(region.features)
                labels.append(region.label)
    if not features:
        raise HubkitError("no labelled region with features in this folder: label with features on, then review")
    return features, labels


@command(
    "segma classifier",
    arg("folder", help="the --out folder of `hubkit label` (labelled regions, reviewed or not)"),
    arg("repo", help="model repo id for the classifier, e.g. me/coins-region-classifier"),
    arg("--trees", type=int, default=100, help="random-forest trees (the seed's 100)"),
    arg("--message", "-m", default=None),
    help="train the HLBB random-forest region classifier on the labelled regions and push it (skops, no pickle)",
    options=("hub", "offline"),
)
def _segma_classifier(args) -> None:
    from ..segma.classifier import RegionClassifier

    features, labels = _training_regions(_label_dir(args.folder))
    classifier = RegionClassifier(n_estimators=args.trees).fit(features, labels)
    revision = classifier.push(args.repo, message=args.message or "hubkit segma classifier", hub=args.hub)
    counts = Counter(labels)
    print(
        f"hubkit segma classifier: {len(labels)} regions, {len(counts)} classes "
        f"({', '.join(f'{k} {v}' for k, v in counts.most_common())}) -> {args.repo}",
        file=sys.stderr,
    )
    print(revision.id)


@command(
    "segma analyze",
    arg("folder", help="the --out folder of `hubkit label`"),
    arg("--out", required=True, metavar="DIR", help="where the figures and analysis.json go"),
    help="HLBB feature analysis (correlation, mutual information, importance) as figures and JSON",
)
def _segma_analyze(args) -> None:
    from ..segma.analysis import analyze_features

    features, labels = _training_regions(_label_dir(args.folder))
    result = analyze_features(features, labels, args.out)
    for category, values in result["categories"].items():
        print(f"  {category}: top features {values['top_features']}", file=sys.stderr)
    print(Path(args.out) / "analysis.json")
