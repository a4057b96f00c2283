"""`hubkit data clean | map-text | push`: the Plantset data tools (the seed's data_cleaner.py and text_mapper.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ConfigError
from ._registry import arg, command, group

group("data", help="data tools: clean an image folder, join class texts, push a data set, generate sample sets")


@command(
    "data clean",
    arg("--data-dir", default=None, metavar="DIR", help="class-per-folder image tree: DIR/<class>/<image>"),
    arg("--manifest", default=None, metavar="FILE", help="instead of --data-dir: a CSV / JSONL with path and label"),
    arg("--min-size", type=int, default=256, help="drop images whose shorter side is under this (pixels)"),
    arg("--target-size", type=int, default=512, help="side of the square copies written to --output-dir"),
    arg(
        "--resize",
        default="pad",
        choices=("pad", "crop", "none"),
        help="pad: keep the whole image, letterboxed on black (default); crop: centre crop; none: copy as is",
    ),
    arg(
        "--output-dir",
        default=None,
        metavar="DIR",
        help="write the kept images here, resized; without it the originals are listed in place, not resized",
    ),
    arg("--output-file", default="dataset_clean.jsonl", help="the list of kept images (clean_report.json beside it)"),
    arg(
        "--near-duplicate-distance",
        type=int,
        default=6,
        metavar="BITS",
        help="report image pairs whose 64-bit perceptual hashes differ in at most this many bits",
    ),
    help="drop unreadable, truncated, too small and duplicate images; report near duplicates; resize copies",
)
def _data_clean(args) -> None:
    from ..plant.clean import clean_dataset

    if (args.data_dir is None) == (args.manifest is None):
        raise ConfigError("give one of --data-dir (a class-per-folder tree) or --manifest (a CSV / JSONL file)")
    report = clean_dataset(
        args.data_dir or args.manifest,
        min_size=args.min_size,
        target_size=args.target_size,
        resize=args.resize,
        output_dir=args.output_dir,
        output_file=args.output_file,
        near_duplicate_distance=args.near_duplicate_distance,
    )
    print(f"hubkit data clean: {report.summary()}", file=sys.stderr)
    for name, count in report.per_class.items():
        print(f"  {name}: {count}", file=sys.stderr)
    if report.resized:
        where = f"resized to {args.target_size}x{args.target_size} ({args.resize}) in {report.root}"
    elif args.output_dir:
        where = f"copied unchanged to {report.root}"
    else:
        where = f"listed in place under {report.root} (not resized: give --output-dir to write resized copies)"
    print(f"  images {where}; report: {report.report_file}", file=sys.stderr)
    print(report.output_file)


@command(
    "data map-text",
    arg("--diseases-json", required=True, metavar="FILE", help="class texts: names, description, symptoms, ..."),
    arg("--dataset-jsonl", required=True, metavar="FILE", help="the list `hubkit data clean` wrote"),
    arg("--output-file", default="multimodal_dataset.jsonl", help="written with classes.json beside it"),
    arg("--language", default="fr", choices=("fr", "en")),
    arg(
        "--text",
        default="symptoms",
        choices=("symptoms", "description"),
        help="per-image text: 1-3 of the class's symptom phrases (default) or its description",
    ),
    arg("--seed", type=int, default=0, help="picks the symptom phrases of each image"),
    help="join the class texts (fr / en) with the cleaned images into multimodal_dataset.jsonl",
)
def _data_map_text(args) -> None:
    from ..plant.texts import map_text

    report = map_text(
        args.dataset_jsonl,
        args.diseases_json,
        language=args.language,
        output_file=args.output_file,
        text=args.text,
        seed=args.seed,
    )
    print(
        f"hubkit data map-text: {report.samples} images in {len(report.classes)} classes ({report.language})",
        file=sys.stderr,
    )
    if report.matched:
        print(f"  matched by name: {', '.join(f'{k} -> {v}' for k, v in report.matched.items())}", file=sys.stderr)
    if report.other_language:
        print(f"  text only in another language (used): {', '.join(report.other_language)}", file=sys.stderr)
    if report.missing_text:
        print(f'  without text (kept, text ""): {", ".join(report.missing_text)}', file=sys.stderr)
    if report.unused_diseases:
        print(f"  diseases JSON classes with no image: {len(report.unused_diseases)}", file=sys.stderr)
    print(report.output_file)


@command(
    "data push",
    arg("jsonl", help="multimodal_dataset.jsonl from `hubkit data map-text`"),
    arg("root_dir", help="the folder its image paths are relative to (--output-dir or --data-dir of the clean)"),
    arg("repo", help="data set repo id, e.g. me/plantset"),
    arg("--test-fraction", type=float, default=0.0, help="hold out this share of each class as a test split"),
    arg("--seed", type=int, default=0),
    arg("--name", default=None, help="the data set's pretty name"),
    arg("--license", default="other"),
    arg("--export-dir", default=None, metavar="DIR", help="also keep the exported folder here (must be new)"),
    arg("--message", "-m", default=None),
    help="push the images and texts as a Hub data set (ImageFolder + metadata.jsonl + card with the classes)",
    options=("hub", "offline"),
)
def _data_push(args) -> None:
    from ..plant.export import export_plant_dataset, push_exported, push_plant_dataset

    options = {"test_fraction": args.test_fraction, "seed": args.seed, "name": args.name, "license": args.license}
    if args.export_dir:
        out = export_plant_dataset(args.jsonl, args.root_dir, args.export_dir, **options)
        revision = push_exported(out, args.repo, hub=args.hub, message=args.message)
    else:
        revision = push_plant_dataset(
            args.jsonl, args.root_dir, args.repo, hub=args.hub, message=args.message, **options
        )
    print(f"hubkit data push: {Path(args.jsonl).name} -> {args.repo} (dataset)", file=sys.stderr)
    print(revision.id)


@command(
    "data leaves",
    arg("out", help="a new folder: OUT/images/<class>/<n>.png and OUT/diseases.json"),
    arg("--per-class", type=int, default=12),
    arg("--size", type=int, default=64, help="image side in pixels"),
    arg("--num-classes", type=int, default=8, help="2 to 25 classes"),
    arg("--seed", type=int, default=0),
    arg("--corrupt", action="store_true", help="also plant files the cleaner must catch (truncated, tiny, duplicates)"),
    help="write the synthetic leaf set (species x disease pattern on real textures) to try the Plantset tools offline",
)
def _data_leaves(args) -> None:
    from ..data.leaves import make_leaf_dataset

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; give a new folder")
    leaf_set = make_leaf_dataset(out, per_class=args.per_class, size=args.size, seed=args.seed,
                                 corrupt=args.corrupt, num_classes=args.num_classes)  # fmt: skip
    print(f"hubkit data leaves: {len(leaf_set.classes)} classes x {args.per_class} images of {args.size} px"
          + (f", {len(leaf_set.planted)} planted bad files" if args.corrupt else ""), file=sys.stderr)  # fmt: skip
    print(leaf_set.image_dir)


@command(
    "data garments",
    arg("out", help="a new folder: OUT/<category>/<id>.png (one sub-folder per class) + OUT/metadata.jsonl"),
    arg("--per-category", type=int, default=24, help="items per category (shirt, trousers, dress, shoe, bag)"),
    arg("--size", type=int, default=64, help="image side in pixels"),
    arg("--seed", type=int, default=0),
    help="write the generated garment set, one folder per category, to try the classifier recipe and "
    "`hubkit optimize` offline",
)
def _data_garments(args) -> None:
    from ..data.garments import make_class_folders

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; give a new folder")
    counts = make_class_folders(out, n_per_category=args.per_category, size=args.size, seed=args.seed)
    print(f"hubkit data garments: {len(counts)} categories x {args.per_category} images of {args.size} px",
          file=sys.stderr)  # fmt: skip
    print(out)


@command(
    "data histology",
    arg("out", help="a new folder of PNG patches + metadata.jsonl"),
    arg(
        "--domain",
        default="target",
        choices=("target", "source"),
        help="target: crops of scikit-image's IHC slide; source: the same crops, stain-shifted",
    ),  # fmt: skip
    arg("--count", type=int, default=64),
    arg("--patch", type=int, default=64, help="patch side in pixels"),
    arg("--crop", type=int, default=None, help="window cut from the slide before resizing to --patch"),
    arg("--split", default="all", choices=("all", "train", "test"), help="train / test crops never overlap"),
    arg("--seed", type=int, default=0),
    help="write histology patches from a real slide (and a stain-shifted copy) to try PixCell training offline",
)
def _data_histology(args) -> None:
    from ..data.histology import make_histology_dataset

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; give a new folder")
    made = make_histology_dataset(out, patch=args.patch, count=args.count, seed=args.seed, domain=args.domain,
                                  split=args.split, crop=args.crop)  # fmt: skip
    print(f"hubkit data histology: {len(made.files)} {args.domain} patches of {args.patch} px", file=sys.stderr)
    print(out)
