"""Plantset data tools: the synthetic leaf set, the cleaner, the text mapping, the Hub export and `hubkit data`."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hubkit import cli, hub
from hubkit.data.leaves import LeafSet, leaf_classes, make_leaf_dataset, render_leaf
from hubkit.errors import ConfigError, DataError
from hubkit.plant.clean import clean_dataset, hamming, phash, resize_image
from hubkit.plant.export import export_plant_dataset
from hubkit.plant.texts import load_diseases, map_text, normalise_class, parse_diseases, read_multimodal


@pytest.fixture(scope="module")
def leaves(tmp_path_factory) -> LeafSet:
    return make_leaf_dataset(tmp_path_factory.mktemp("leaves") / "set", per_class=12, size=64, seed=0, corrupt=True)


@pytest.fixture(scope="module")
def cleaned(leaves, tmp_path_factory):
    """The corrupt leaf set cleaned into 48 px letterboxed copies, then mapped to English texts."""
    out = tmp_path_factory.mktemp("clean")
    report = clean_dataset(leaves.image_dir, min_size=32, target_size=48, output_dir=out / "images")
    mapping = map_text(report.output_file, leaves.diseases_json, language="en", output_file=out / "mm.jsonl")
    return report, mapping


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- the synthetic leaf set -----------------------------------------------------------------------------------


def test_leaf_set_is_deterministic_and_shaped(leaves, tmp_path):
    again = make_leaf_dataset(tmp_path / "again", per_class=12, size=64, seed=0, corrupt=True)
    assert files_of(again.root) == files_of(leaves.root)  # same bytes, diseases.json included
    other = make_leaf_dataset(tmp_path / "other", per_class=2, size=64, seed=1)
    first = leaves.classes[0]
    assert (other.image_dir / first / "000.png").read_bytes() != (leaves.image_dir / first / "000.png").read_bytes()

    assert len(leaves.classes) == 8 and leaves.classes == sorted(leaves.classes)
    assert sorted(p.name for p in leaves.image_dir.iterdir()) == leaves.classes
    good = leaves.images()
    assert len(good) == 8 * 12
    for path, _ in good[::7]:
        with Image.open(path) as image:
            assert image.size == (64, 64) and image.mode == "RGB"
    assert leaves.text_only_pairs == [("Tomato___Early_blight", "Tomato___Septoria_leaf_spot")]
    assert sorted(leaves.planted.values()) == sorted(
        ["truncated", "unreadable", "too_small", "duplicate", "near_duplicate"]
    )


def test_leaf_texts_cover_both_languages_and_the_pair_differs_only_in_text(leaves):
    diseases = load_diseases(leaves.diseases_json)
    assert sorted(diseases) == leaves.classes
    for info in diseases.values():
        for language in ("fr", "en"):
            assert info.get("name", language) and info.get("description", language)
    (a, b), = leaves.text_only_pairs  # fmt: skip
    for language in ("fr", "en"):
        assert diseases[a].get("description", language) != diseases[b].get("description", language)
        assert set(diseases[a].get("symptoms", language)).isdisjoint(diseases[b].get("symptoms", language))
    # drawn identically: same species and pattern
    table = {name: (species, pattern) for name, species, pattern in leaf_classes(8)}
    assert table[a] == table[b]


def test_leaf_images_are_learnable_except_the_text_only_pair(tmp_path):
    """A colour-histogram linear model tells the classes apart far above chance (the text-only pair as one)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    leaves = make_leaf_dataset(tmp_path / "set", per_class=20, seed=3)
    features, labels = [], []
    for path, label in leaves.images():
        hsv = np.asarray(Image.open(path).convert("HSV"), np.float32).reshape(-1, 3)
        features.append(np.sqrt(np.histogramdd(hsv, bins=(12, 4, 4), range=((0, 256),) * 3)[0].ravel()))
        labels.append(leaves.classes.index(label))
    x, y = np.array(features), np.array(labels)
    held_out = np.arange(len(y)) % 4 == 0
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)).fit(x[~held_out], y[~held_out])
    predicted = model.predict(x[held_out])
    pair = [leaves.classes.index(name) for name in leaves.text_only_pairs[0]]

    def merge(ids):
        return np.where(np.isin(ids, pair), pair[0], ids)

    merged = merge(predicted) == merge(y[held_out])
    assert merged.mean() >= 0.6  # chance: 1/7 once the pair is one class


def test_leaf_set_options_are_checked(tmp_path):
    assert len(make_leaf_dataset(tmp_path / "many", per_class=1, num_classes=12).classes) == 12
    with pytest.raises(ConfigError, match="num_classes=99"):
        make_leaf_dataset(tmp_path / "x", num_classes=99)
    with pytest.raises(ConfigError, match="Unknown leaf"):
        render_leaf("Oak", "spots", rng=np.random.default_rng(0))


# -- the cleaner ---------------------------------------------------------------------------------------------


def test_cleaner_drops_every_planted_file_for_its_reason_and_keeps_the_rest(leaves, cleaned):
    report, _ = cleaned
    dropped = {d["path"]: d["reason"] for d in report.dropped}
    planted_bad = {p: r for p, r in leaves.planted.items() if r != "near_duplicate"}
    assert dropped == planted_bad
    assert report.kept == 8 * 12 + 1  # the good images and the near duplicate
    assert report.total == report.kept + len(planted_bad)
    assert sum(report.per_class.values()) == report.kept and len(report.per_class) == 8
    assert {k: v for k, v in report.dropped_per_reason.items() if v} == {r: 1 for r in planted_bad.values()}
    (duplicate,) = [d for d in report.dropped if d["reason"] == "duplicate"]
    assert duplicate["detail"].endswith("/001.png")  # the first in path order is kept

    near = [p for p, r in leaves.planted.items() if r == "near_duplicate"][0]
    assert [(n["a"], n["b"]) for n in report.near_duplicates] == [(near.rsplit("/", 1)[0] + "/002.png", near)]

    rows = [json.loads(line) for line in report.output_file.read_text().splitlines()]
    assert len(rows) == report.kept and report.root == report.output_file.parent
    for row in rows[::9]:
        assert set(row) == {"path", "label", "width", "height", "sha256", "phash", "source"}
        data = (report.root / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert row["path"].split("/")[0] == row["label"] and (row["width"], row["height"]) == (48, 48)
    saved = json.loads(report.report_file.read_text())
    assert saved["kept"] == report.kept and saved["dropped_per_reason"]["truncated"] == 1
    assert saved["near_duplicates"] == report.near_duplicates and saved["resize"] == "pad"
    assert not [p for p in report.root.rglob("*") if p.name.endswith(".tmp")]


def test_resize_modes_give_target_squares_keeping_aspect(tmp_path):
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :40] = (255, 0, 0)
    wide[:, 40:] = (0, 0, 255)
    padded = np.asarray(resize_image(Image.fromarray(wide), 32, "pad"))
    cropped = np.asarray(resize_image(Image.fromarray(wide), 32, "crop"))
    assert padded.shape == cropped.shape == (32, 32, 3)
    assert padded[:6].max() == 0 and padded[-6:].max() == 0  # letterboxed: black bands above and below
    assert padded[16, 2, 0] > 200 and padded[16, 29, 2] > 200  # the whole width kept
    assert cropped[0, 2, 0] > 200 and cropped[31, 29, 2] > 200  # filled: no band

    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    Image.fromarray(wide).save(tree / "a" / "wide.png")
    Image.fromarray(wide.transpose(1, 0, 2).copy()).save(tree / "a" / "tall.jpg")
    for mode in ("pad", "crop"):
        report = clean_dataset(tree, min_size=16, target_size=24, resize=mode, output_dir=tmp_path / mode)
        for row in map(json.loads, report.output_file.read_text().splitlines()):
            assert Image.open(report.root / row["path"]).size == (24, 24) == (row["width"], row["height"])
    copied = clean_dataset(tree, min_size=16, resize="none", output_dir=tmp_path / "none")
    assert (tmp_path / "none" / "a" / "wide.png").read_bytes() == (tree / "a" / "wide.png").read_bytes()
    assert not copied.resized
    in_place = clean_dataset(tree, min_size=16, output_file=tmp_path / "list.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "list.jsonl").read_text().splitlines()]
    assert in_place.root == tree and {(r["path"], r["width"]) for r in rows} == {("a/tall.jpg", 40), ("a/wide.png", 80)}
    assert not list(tree.glob("*.jsonl"))  # nothing written into the data folder


def test_phash_sees_near_duplicates_and_tells_different_images_apart(leaves):
    paths = [p for p, _ in leaves.images()]
    hashes = [phash(Image.open(p)) for p in paths[:24]]
    base = Image.open(paths[0]).convert("RGB")
    brighter = Image.fromarray(np.clip(np.asarray(base, np.int16) + 6, 0, 255).astype(np.uint8))
    assert hamming(phash(base), phash(brighter)) <= 2
    assert hamming(phash(base), phash(base.resize((128, 128)))) <= 4
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(distances) > 6


def test_cleaner_reads_manifests_and_refuses_bad_input(leaves, tmp_path):
    rows = [(p.relative_to(leaves.image_dir).as_posix(), p.parent.name) for p in sorted(leaves.image_dir.glob("*/*"))]
    shutil.copytree(leaves.image_dir, tmp_path / "imgs")
    manifest = tmp_path / "imgs" / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(rows + [("gone/missing.png", "Apple___healthy")])
    report = clean_dataset(manifest, min_size=32)
    reasons = {d["path"]: d["reason"] for d in report.dropped}
    assert reasons == {
        **{p: r for p, r in leaves.planted.items() if r != "near_duplicate"},
        "gone/missing.png": "missing",
    }
    assert report.kept == 8 * 12 + 1 and report.root == manifest.parent

    jsonl = tmp_path / "imgs" / "manifest.jsonl"
    jsonl.write_text("".join(json.dumps({"file_name": p, "class": c}) + "\n" for p, c in rows[:5]))
    assert clean_dataset(jsonl, min_size=32, output_file=tmp_path / "m.jsonl").kept == 5

    bad = tmp_path / "bad.csv"
    bad.write_text("picture,species\na.png,x\n")
    with pytest.raises(DataError, match=r"no path / label column \(columns: picture, species\)"):
        clean_dataset(bad)
    with pytest.raises(DataError, match="does not exist"):
        clean_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no class folder"):
        clean_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="survived cleaning"):
        clean_dataset(leaves.image_dir, min_size=1000, output_file=tmp_path / "none.jsonl")
    assert json.loads((tmp_path / "clean_report.json").read_text())["dropped_per_reason"]["too_small"] > 90
    with pytest.raises(ConfigError, match="resize='square'"):
        clean_dataset(leaves.image_dir, resize="square")


# -- class texts -------------------------------------------------------------------------------------------------


def test_map_text_joins_texts_with_ids_in_each_language(leaves, cleaned, tmp_path):
    report, mapping = cleaned
    rows = [json.loads(line) for line in mapping.output_file.read_text().splitlines()]
    classes = json.loads(mapping.classes_file.read_text())
    diseases = load_diseases(leaves.diseases_json)
    assert classes == leaves.classes == mapping.classes and len(rows) == report.kept
    assert mapping.missing_text == [] and mapping.unused_diseases == []
    for row in rows:
        assert set(row) == {"path", "label", "label_id", "text", "description", "language"}
        assert classes[row["label_id"]] == row["label"] and row["language"] == "en"
        info = diseases[row["label"]]
        assert row["description"] == info.get("description", "en")
        assert set(row["text"].split(", ")) <= set(info.get("symptoms", "en")) and row["text"]
    texts_of_one_class = {r["text"] for r in rows if r["label"] == "Tomato___Early_blight"}
    assert len(texts_of_one_class) > 1  # symptom phrases vary per image

    fr = map_text(
        report.output_file, leaves.diseases_json, language="fr", text="description", output_file=tmp_path / "fr.jsonl"
    )
    fr_rows = [json.loads(line) for line in fr.output_file.read_text().splitlines()]
    assert fr_rows[0]["text"] == fr_rows[0]["description"] == diseases[fr_rows[0]["label"]].get("description", "fr")
    assert fr_rows[0]["description"] != rows[0]["description"]
    with pytest.raises(ConfigError, match="language='de'"):
        map_text(report.output_file, leaves.diseases_json, language="de", output_file=tmp_path / "de.jsonl")


def test_map_text_matches_names_loosely_and_keeps_classes_without_text(tmp_path):
    clean = tmp_path / "clean.jsonl"
    clean.write_text(
        "".join(
            json.dumps({"path": f"{c}/{i}.png", "label": c}) + "\n"
            for c in ("Tomato___Early_blight", "Zucchini")
            for i in range(2)
        )
    )
    diseases = tmp_path / "d.json"
    diseases.write_text(
        json.dumps(
            {"tomato early blight": {"description": {"fr": "Alternariose", "en": "Early blight"}}, "Rose": "roses"}
        )
    )
    report = map_text(clean, diseases, language="fr", output_file=tmp_path / "out" / "mm.jsonl")
    rows = [json.loads(line) for line in report.output_file.read_text().splitlines()]
    assert report.matched == {"Tomato___Early_blight": "tomato early blight"}
    assert report.missing_text == ["Zucchini"] and report.unused_diseases == ["Rose"]
    assert [r["text"] for r in rows] == ["Alternariose", "Alternariose", "", ""]
    assert (
        normalise_class("Tomato___Early_blight") == normalise_class(" tomato-early  BLIGHT ") == "tomato early blight"
    )


def test_diseases_json_variants_are_accepted():
    listed = parse_diseases(
        {
            "maladies": [
                {
                    "class": "Apple___scab",
                    "nom": "Tavelure",
                    "description_fr": "Taches olive",
                    "description_en": "Olive spots",
                    "symptomes": ["taches olive", "feuilles tordues"],
                    "traitements": "soufre",
                },
                {
                    "name": "Corn___rust",
                    "description": "Pustules brunes",
                    "symptoms": {"francais": "pustules", "en": ["pustules"]},
                },
            ]
        }
    )
    scab, rust = listed["Apple___scab"], listed["Corn___rust"]
    assert scab.get("name", "fr") == "Tavelure" == scab.get("name", "en")  # a plain string serves both languages
    assert scab.get("description", "fr") == "Taches olive" and scab.get("description", "en") == "Olive spots"
    assert scab.get("symptoms", "fr") == ["taches olive", "feuilles tordues"] and scab.get("treatments", "en") == [
        "soufre"
    ]
    assert rust.get("description", "en") == "Pustules brunes" and rust.get("name", "fr") == ""  # "name" was the class
    assert rust.get("symptoms", "fr") == ["pustules"] == rust.get("symptoms", "en")
    assert parse_diseases({"A": "just a description"})["A"].get("description", "en") == "just a description"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"Apple___scab": {"description": {"fr": 3}}}, r"class 'Apple___scab', key 'description\.fr': got int 3"),
        ({"Apple___scab": {"symptoms": [1, 2]}}, r"class 'Apple___scab', key 'symptoms': got list"),
        ({"Apple___scab": {"couleur": "vert"}}, r"class 'Apple___scab' has none of the keys .* its keys: couleur"),
        ({"Apple___scab": {"description": {"klingon!": "x"}}}, "'klingon!' is not a language code"),
        ([{"description": "x"}], 'item 0 has no class name; give it a "class"'),
        ({"A b": "x", "a_B": "y"}, "are the same class"),
        (["x"], "item 0 is a str"),
        (3, "holds a int"),
    ],
)
def test_bad_diseases_json_is_refused_naming_class_and_key(document, message):
    with pytest.raises(DataError, match=message):
        parse_diseases(document)


def test_read_multimodal_gives_samples_and_classes(cleaned, tmp_path):
    report, mapping = cleaned
    samples, classes = read_multimodal(mapping.output_file, report.root)
    assert classes == mapping.classes and len(samples) == report.kept
    assert all(s.path.is_file() and classes[s.label_id] == s.label and s.description for s in samples)
    with pytest.raises(DataError, match="are not under"):
        read_multimodal(mapping.output_file, tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_multimodal(tmp_path / "none.jsonl", tmp_path)


# -- export and push -----------------------------------------------------------------------------------------


def test_export_reads_back_with_datasets(cleaned, tmp_path):
    from datasets import load_dataset

    report, mapping = cleaned
    out = export_plant_dataset(mapping.output_file, report.root, tmp_path / "export", test_fraction=0.25)
    ds = load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "test"} and len(ds["train"]) + len(ds["test"]) == report.kept
    assert {"image", "label", "text", "description"} <= set(ds["train"].column_names)
    assert set(ds["test"]["label"]) == set(mapping.classes)  # every class held out in part
    first = ds["train"][0]
    assert first["image"].size == (48, 48) and first["label"] in mapping.classes and first["text"]
    card = (out / "README.md").read_text()
    assert "task_categories:\n- image-classification" in card
    for name in mapping.classes:
        assert f"| {name} | " in card
    assert json.loads((out / "classes.json").read_text()) == mapping.classes
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_plant_dataset(mapping.output_file, report.root, out)


# -- the CLI ------------------------------------------------------------------------------------------------------


def test_cli_runs_the_pipeline_and_pushes(leaves, tmp_path, capsys):
    clean_out, mm = tmp_path / "dataset_clean.jsonl", tmp_path / "multimodal_dataset.jsonl"
    code = cli.main(["data", "clean", "--data-dir", str(leaves.image_dir), "--min-size", "32", "--target-size", "40",
                     "--output-dir", str(tmp_path / "images"), "--output-file", str(clean_out)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and out.strip().splitlines()[-1] == str(clean_out)
    assert "97 of 101 images kept" in err and "truncated 1" in err
    code = cli.main(["data", "map-text", "--diseases-json", str(leaves.diseases_json), "--dataset-jsonl",
                     str(clean_out), "--output-file", str(mm), "--language", "fr"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and out.strip() == str(mm) and "97 images in 8 classes (fr)" in err
    code = cli.main(["data", "push", str(mm), str(tmp_path / "images"), "me/leaves", "--test-fraction", "0.2"])
    out, err = capsys.readouterr()
    assert code == 0 and "me/leaves (dataset)" in err
    pulled = hub.pull("me/leaves", repo_type="dataset")
    lines = (pulled / "train" / "metadata.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["text"] and (pulled / "test" / "metadata.jsonl").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "clean", "--data-dir", "{tmp}/missing"], "does not exist"),
        (["data", "clean"], "give one of --data-dir"),
        (["data", "map-text", "--diseases-json", "{tmp}/bad.json", "--dataset-jsonl", "{tmp}/c.jsonl"],
         "class 'A', key 'symptoms'"),
        (["data", "push", "{tmp}/none.jsonl", "{tmp}", "me/x"], "does not exist"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"A": {"symptoms": 5}}))
    (tmp_path / "c.jsonl").write_text(json.dumps({"path": "a.png", "label": "A"}) + "\n")
    code = cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    out, err = capsys.readouterr()
    assert code == 1 and len(err.strip().splitlines()) == 1 and err.startswith(f"hubkit {argv[0]}") and message in err
