"""Class texts for Plantset: the diseases JSON, joining it with a cleaned image list, and reading the result.

The diseases JSON maps each class to its names, description, symptoms and treatments in French and English::

    {"Tomato___Early_blight": {
        "name": {"fr": "Alternariose de la tomate", "en": "Tomato early blight"},
        "description": {"fr": "...", "en": "..."},
        "symptoms": {"fr": ["taches brunes", ...], "en": ["brown spots", ...]},
        "treatments": {"fr": [...], "en": [...]}}}

`load_diseases` also takes the obvious variants: a list of objects naming their class under "class" / "label" /
"classe" (or "name" when it is a plain string), the list or mapping wrapped under "diseases" / "maladies" /
"classes", flat keys ("description_fr", "name_en", ...), a plain string or list where a {fr, en} mapping is expected
(then it serves every language), and the French keys ("nom", "symptomes" / "symptômes", "traitements"). Anything
else stops with a DataError naming the class and the key.

`map_text` writes `multimodal_dataset.jsonl` (one line per image: path, label, label_id, text, description,
language) and `classes.json` (the sorted class list; label_id indexes it) beside it. `text` is the symptom text the
model reads: 1 to 3 of the class's symptom phrases, picked per image (deterministic in `seed` and the path), or the
description when the class lists no symptom; `description` is the class's description, the reference the
description head learns to write. Classes without any text are kept with "" and listed in the report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError, DataError

logger = logging.getLogger(__name__)

LANGUAGES = ("fr", "en")
TEXT_MODES = ("symptoms", "description")
_FIELDS = {  # canonical field -> accepted keys (after lower-casing and accent stripping)
    "name": ("name", "nom", "names", "noms", "title", "titre"),
    "description": ("description", "descriptions", "desc"),
    "symptoms": ("symptoms", "symptom", "symptomes", "symptome"),
    "treatments": ("treatments", "treatment", "traitements", "traitement"),
}
_KEY_TO_FIELD = {key: name for name, keys in _FIELDS.items() for key in keys}
_LIST_FIELDS = ("symptoms", "treatments")
_LANGUAGE_KEYS = {"fr": "fr", "francais": "fr", "french": "fr", "en": "en", "anglais": "en", "english": "en"}
_CLASS_KEYS = ("class", "label", "classe", "class_name", "id")
_WRAPPERS = ("diseases", "maladies", "classes", "data")
NEUTRAL = "*"  # language key of a text given as a plain string: it serves every language


@dataclass(frozen=True)
class DiseaseInfo:
    """One class's texts. Each field maps a language ("fr", "en", or "*" for a text given without language) to a
    string (name, description) or a list of strings (symptoms, treatments)."""

    name: dict[str, str] = field(default_factory=dict)
    description: dict[str, str] = field(default_factory=dict)
    symptoms: dict[str, list[str]] = field(default_factory=dict)
    treatments: dict[str, list[str]] = field(default_factory=dict)

    def get(self, what: str, language: str):
        """The text of field `what` in `language`, else the language-neutral one, else "" / []."""
        values = getattr(self, what)
        empty = [] if what in _LIST_FIELDS else ""
        return values.get(language) or values.get(NEUTRAL) or empty

    def has_text(self, language: str) -> bool:
        return bool(self.get("description", language) or self.get("symptoms", language))

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}


@dataclass(frozen=True)
class PlantSample:
    path: Path
    label: str
    label_id: int
    text: str
    description: str


@dataclass
class MappingReport:
    output_file: Path
    classes_file: Path
    language: str
    samples: int
    classes: list[str]
    per_class: dict[str, int]
    missing_text: list[str]  # classes with no description or symptom in the JSON: kept, with text ""
    other_language: list[str]  # classes whose text exists only in another language: that text is used
    unused_diseases: list[str]  # diseases JSON entries no image label matched
    matched: dict[str, str]  # image label -> diseases JSON key, where they are not spelt the same

    def to_json(self) -> dict:
        data = asdict(self)
        data["output_file"], data["classes_file"] = str(self.output_file), str(self.classes_file)
        return data


# -- the diseases JSON -------------------------------------------------------------------------------------------


def normalise_class(name: str) -> str:
    """The key class names are matched on: case, accents, spaces, underscores, dashes and punctuation ignored, so
    "Tomato___Early_blight", "tomato early blight" and "Tomato - Early Blight" are one class."""
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode().casefold()
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text).split())


def load_diseases(path: str | Path) -> dict[str, DiseaseInfo]:
    """Read a diseases JSON (the schema in this module's docstring, or its obvious variants): class -> DiseaseInfo."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Diseases JSON {str(path)!r} does not exist; give the file of class texts (--diseases-json).")
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"Diseases JSON {str(path)!r} is not valid JSON ({err}); fix the file.") from None
    return parse_diseases(document, source=str(path))


def parse_diseases(document, *, source: str = "diseases JSON") -> dict[str, DiseaseInfo]:
    """`load_diseases` on an already parsed document."""
    if isinstance(document, Mapping) and len(document) == 1:
        ((key, inner),) = document.items()
        if _plain(key) in _WRAPPERS and isinstance(inner, (list, Mapping)):
            document = inner
    if isinstance(document, list):
        entries = [(*_class_of(item, index, source), item) for index, item in enumerate(document)]
    elif isinstance(document, Mapping):
        entries = [(name, False, item) for name, item in document.items()]
    else:
        raise DataError(
            f"{source} holds a {type(document).__name__}; expected an object mapping each class to its texts, or a "
            'list of objects with a "class" key.'
        )
    if not entries:
        raise DataError(f"{source} lists no class.")
    diseases: dict[str, DiseaseInfo] = {}
    seen: dict[str, str] = {}
    for name, name_is_class, item in entries:
        name = str(name).strip()
        key = normalise_class(name)
        if not key:
            raise DataError(f"{source}: the class name {name!r} is empty; name every class.")
        if key in seen:
            raise DataError(
                f"{source}: classes {seen[key]!r} and {name!r} are the same class once case, spaces and "
                "underscores are ignored; merge them."
            )
        seen[key] = name
        diseases[name] = _parse_entry(name, item, source, name_is_class=name_is_class)
    return diseases


def _plain(key: str) -> str:
    return unicodedata.normalize("NFKD", str(key)).encode("ascii", "ignore").decode().casefold().strip()


def _class_of(item, index: int, source: str) -> tuple[str, bool]:
    """A list item's class name, and whether it came from its "name" key (then not a display name)."""
    if not isinstance(item, Mapping):
        raise DataError(
            f"{source}: item {index} is a {type(item).__name__}; each item must be an object with a "
            '"class" key and its texts.'
        )
    plain = {_plain(k): v for k, v in item.items()}
    for key in _CLASS_KEYS:
        if isinstance(plain.get(key), (str, int)) and str(plain[key]).strip():
            return str(plain[key]), False
    if isinstance(plain.get("name"), str) and plain["name"].strip():
        return plain["name"], True
    raise DataError(
        f'{source}: item {index} has no class name; give it a "class" (or "label") key. Keys: {", ".join(item)}.'
    )


def _parse_entry(name: str, item, source: str, *, name_is_class: bool = False) -> DiseaseInfo:
    where = f"{source}: class {name!r}"
    if isinstance(item, str):  # "class": "description"
        return DiseaseInfo(description={NEUTRAL: item.strip()})
    if not isinstance(item, Mapping):
        raise DataError(
            f"{where} maps to a {type(item).__name__}; give an object with name / description / symptoms / treatments."
        )
    fields: dict[str, dict] = {f: {} for f in _FIELDS}
    unknown = []
    for raw_key, value in item.items():
        key = _plain(raw_key)
        language = None
        match = re.fullmatch(r"(.+?)[_\- ]([a-z]+)", key)
        if key not in _KEY_TO_FIELD and match and match.group(2) in _LANGUAGE_KEYS:  # flat "description_fr"
            key, language = match.group(1), _LANGUAGE_KEYS[match.group(2)]
        what = _KEY_TO_FIELD.get(key)
        if what is None:
            if key in _CLASS_KEYS:
                continue
            unknown.append(str(raw_key))
            continue
        if what == "name" and language is None and name_is_class:
            continue  # a list item's "name" that is its class name
        for lang, text in _values(value, what, where, str(raw_key), language).items():
            fields[what][lang] = text
    if unknown:
        logger.warning("%s: ignored key(s) %s (known: %s)", where, ", ".join(unknown), ", ".join(_FIELDS))
    if not any(fields.values()):
        raise DataError(
            f"{where} has none of the keys name / description / symptoms / treatments (nor their French "
            f"or _fr / _en forms); its keys: {', '.join(map(str, item)) or 'none'}."
        )
    return DiseaseInfo(**fields)


def _values(value, what: str, where: str, key: str, language: str | None) -> dict:
    """{language: text} for one key's value: a string, a list of strings, or a {language: those} mapping."""
    is_list = what in _LIST_FIELDS
    expected = "a list of strings, a string, or a {fr, en} object of those" if is_list else "a string or {fr, en}"

    def one(v, lang_key: str):
        if isinstance(v, str):
            v = v.strip()
            return ([v] if v else []) if is_list else v
        if is_list and isinstance(v, list) and all(isinstance(x, str) for x in v):
            return [x.strip() for x in v if x.strip()]
        raise DataError(f"{where}, key {lang_key!r}: got {type(v).__name__} {_short(v)}; expected {expected}.")

    if isinstance(value, Mapping) and language is None:
        out = {}
        for lang, v in value.items():
            code = _LANGUAGE_KEYS.get(_plain(lang), _plain(lang))
            if not re.fullmatch(r"[a-z]{2,3}([_-][a-z]{2})?", code):
                raise DataError(f"{where}, key {key!r}: {lang!r} is not a language code; use fr / en keys.")
            out[code] = one(v, f"{key}.{lang}")
        return out
    return {language or NEUTRAL: one(value, key)}


def _short(value, limit: int = 50) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- joining texts with the cleaned images ----------------------------------------------------------------------


def read_jsonl(
    path: str | Path,
    *,
    required: tuple[str, ...] = ("path", "label"),
    empty_hint: str = "run `hubkit data clean` on a folder of images first",
) -> list[dict]:
    """The objects of a JSONL file, each checked for the `required` keys (DataError naming the line otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{str(path)!r} does not exist; give a JSONL file (one JSON object per line).")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number} is not JSON ({err.msg}); fix or remove that line.") from None
            missing = [k for k in required if not isinstance(row, dict) or k not in row]
            if missing:
                raise DataError(
                    f"{path}:{number} lacks {', '.join(repr(k) for k in missing)}; every line needs "
                    f"{', '.join(required)}."
                )
            rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no sample; {empty_hint}.")
    return rows


def match_classes(labels, diseases: Mapping[str, DiseaseInfo]) -> dict[str, str | None]:
    """label -> diseases key (or None): exact, then normalised (`normalise_class`), then a disease's fr / en name."""
    by_key = {normalise_class(k): k for k in diseases}
    by_name: dict[str, str] = {}
    for key, info in diseases.items():
        for name in info.name.values():
            by_name.setdefault(normalise_class(name), key)
    out = {}
    for label in labels:
        norm = normalise_class(label)
        out[label] = label if label in diseases else by_key.get(norm) or by_name.get(norm)
    return out


def sample_text(info: DiseaseInfo | None, language: str, key: str, *, mode: str = "symptoms", seed: int = 0) -> str:
    """The symptom text of one image: 1 to 3 of the class's symptom phrases, picked by a hash of (`seed`, `key`),
    or the description if there is no symptom (mode "description": always the description)."""
    if info is None:
        return ""
    symptoms = info.get("symptoms", language)
    if mode == "description" or not symptoms:
        return info.get("description", language)
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    count = 1 + digest[0] % min(3, len(symptoms))
    order = sorted(range(len(symptoms)), key=lambda i: digest[1 + i % 31] ^ i * 37)
    return ", ".join(symptoms[i] for i in sorted(order[:count]))


def map_text(
    clean_jsonl: str | Path,
    diseases_json: str | Path,
    *,
    language: str = "fr",
    output_file: str | Path = "multimodal_dataset.jsonl",
    text: str = "symptoms",
    seed: int = 0,
) -> MappingReport:
    """Join the cleaned image list with the class texts into `output_file` (+ `classes.json` beside it)."""
    if language not in LANGUAGES:
        raise ConfigError(f"language={language!r}: use one of {', '.join(LANGUAGES)}.")
    if text not in TEXT_MODES:
        raise ConfigError(f"text={text!r}: use one of {', '.join(TEXT_MODES)}.")
    rows = read_jsonl(clean_jsonl)
    diseases = load_diseases(diseases_json)
    labels = [str(row["label"]) for row in rows]
    classes = sorted(set(labels))
    matches = match_classes(classes, diseases)
    missing = [c for c in classes if matches[c] is None or not diseases[matches[c]].has_text(language)]
    other = [
        c for c in missing if matches[c] is not None and any(diseases[matches[c]].has_text(lang) for lang in LANGUAGES)
    ]
    missing = [c for c in missing if c not in other]
    label_ids = {c: i for i, c in enumerate(classes)}

    def texts_for(label: str, key: str) -> tuple[str, str]:
        info = diseases[matches[label]] if matches[label] is not None else None
        lang = language
        if label in other:
            lang = next(lg for lg in LANGUAGES if info.has_text(lg))
        description = (info.get("description", lang) or info.get("name", lang)) if info else ""
        return sample_text(info, lang, key, mode=text, seed=seed), description

    output_file = Path(output_file)
    lines = []
    for row, label in zip(rows, labels, strict=True):
        sample_text_, description = texts_for(label, str(row["path"]))
        lines.append(
            {
                "path": row["path"],
                "label": label,
                "label_id": label_ids[label],
                "text": sample_text_,
                "description": description,
                "language": language,
            }
        )
    write_jsonl_atomic(output_file, lines)
    classes_file = output_file.parent / "classes.json"
    write_text_atomic(classes_file, json.dumps(classes, ensure_ascii=False, indent=1) + "\n")
    used = {m for m in matches.values() if m is not None}
    report = MappingReport(
        output_file=output_file,
        classes_file=classes_file,
        language=language,
        samples=len(lines),
        classes=classes,
        per_class=dict(sorted(Counter(labels).items())),
        missing_text=missing,
        other_language=other,
        unused_diseases=sorted(k for k in diseases if k not in used),
        matched={c: m for c, m in matches.items() if m is not None and m != c},
    )
    if missing:
        logger.warning('%d class(es) without text, kept with text "": %s', len(missing), ", ".join(missing))
    return report


def read_multimodal(jsonl: str | Path, root_dir: str | Path) -> tuple[list[PlantSample], list[str]]:
    """The samples of a `multimodal_dataset.jsonl` (paths resolved under `root_dir`) and the class list (from
    `classes.json` beside it when present, else the sorted labels)."""
    jsonl, root_dir = Path(jsonl), Path(root_dir)
    rows = read_jsonl(jsonl, required=("path", "label"))
    classes_file = jsonl.parent / "classes.json"
    if classes_file.is_file():
        try:
            classes = json.loads(classes_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(
                f"{classes_file} is not valid JSON ({err}); write it with `hubkit data map-text`."
            ) from None
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise DataError(f"{classes_file} must hold a JSON list of class names.")
    else:
        classes = sorted({str(row["label"]) for row in rows})
    index = {c: i for i, c in enumerate(classes)}
    samples, missing = [], []
    for number, row in enumerate(rows, 1):
        label = str(row["label"])
        if label not in index:
            raise DataError(
                f"{jsonl}, sample {number}: label {label!r} is not in {classes_file.name}; run "
                "`hubkit data map-text` again."
            )
        if "label_id" in row and row["label_id"] != index[label]:
            raise DataError(
                f"{jsonl}, sample {number}: label_id {row['label_id']!r} is not the index of {label!r} "
                f"({index[label]}) in {classes_file.name}; run `hubkit data map-text` again."
            )
        path = root_dir / str(row["path"])
        if not path.is_file():
            missing.append(str(row["path"]))
        samples.append(
            PlantSample(path, label, index[label], str(row.get("text") or ""), str(row.get("description") or ""))
        )
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of {jsonl} are not under {str(root_dir)!r} (first: {missing[0]!r}); "
            "give the folder the paths are relative to (--root-dir)."
        )
    return samples, classes


# -- atomic writes -------------------------------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_jsonl_atomic(path: Path, rows) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
