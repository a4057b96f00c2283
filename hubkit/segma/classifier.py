"""The region classifier: a random forest over the 61 HLBB features, saved with skops (never pickle).

    from hubkit.segma.classifier import RegionClassifier
    from hubkit.segma.features import hlbb_features_batch

    clf = RegionClassifier().fit(features, labels)  # features (N, 61), labels: N class names
    clf.save("out/regions")  # region_classifier.skops, config.json, README.md
    clf.push("me/segma-regions")  # the same folder as one revision of a hub repo
    clf = RegionClassifier.load("me/segma-regions")  # a folder or a repo id
    clf.predict(hlbb_features_batch(image, masks))  # -> ["cat", "background", ...]

Loading trusts only the types a scikit-learn random forest is made of (see `TRUSTED_TYPES`); a file asking for anything
else, a pickle, or a forest trained on other features is refused with an error saying so.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InvalidRepoIdError, MissingModelFileError, UnsafeWeightsError
from .features import FEATURE_NAMES, N_FEATURES, as_feature_matrix, check_training_data

__all__ = ["CONFIG_FILE", "MODEL_FILE", "TRUSTED_TYPES", "RegionClassifier"]

logger = logging.getLogger(__name__)
MODEL_FILE = "region_classifier.skops"
CONFIG_FILE = "config.json"
MODEL_TYPE = "hubkit-segma-region-classifier"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".sav")
# What skops does not trust by default in a fitted RandomForestClassifier (its trees' arrays); the forest, its decision
# trees, numpy arrays and builtins are already trusted by skops. Anything else in the file is refused.
TRUSTED_TYPES = frozenset({"sklearn.tree._tree.Tree"})


class RegionClassifier:
    """Random forest over HLBB features; defaults are the seed's (100 trees, random_state=42)."""

    def __init__(self, *, n_estimators: int = 100, random_state: int | None = 42):
        if isinstance(n_estimators, bool) or not isinstance(n_estimators, int) or n_estimators < 1:
            raise ConfigError(f"n_estimators={n_estimators!r}: the forest needs a positive whole number of trees.")
        if random_state is not None and (isinstance(random_state, bool) or not isinstance(random_state, int)):
            raise ConfigError(f"random_state={random_state!r}: pass an int (reproducible forests) or None.")
        self.n_estimators, self.random_state = n_estimators, random_state
        self.n_training_regions = 0
        self.class_counts: dict[str, int] = {}
        self._forest: Any = None

    def __repr__(self) -> str:
        fitted = f"classes={self.classes}" if self.is_fitted else "not fitted"
        return f"RegionClassifier(n_estimators={self.n_estimators}, random_state={self.random_state}, {fitted})"

    @property
    def is_fitted(self) -> bool:
        return self._forest is not None

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of `predict_proba`'s columns; empty before `fit`."""
        return [str(c) for c in self._forest.classes_] if self.is_fitted else []

    @property
    def forest(self):
        """The fitted sklearn RandomForestClassifier."""
        return self._require_fitted("forest")

    def fit(self, features: Any, labels: list[str]) -> RegionClassifier:
        """Train on `features` (N, 61) and `labels` (N class names, at least two classes); returns self."""
        from sklearn.ensemble import RandomForestClassifier

        matrix, labels = check_training_data(features, labels)
        forest = RandomForestClassifier(n_estimators=self.n_estimators, random_state=self.random_state)
        forest.fit(matrix, np.asarray(labels, dtype=object))
        self._forest = forest
        self.n_training_regions = len(labels)
        self.class_counts = dict(sorted(Counter(labels).items()))
        return self

    def predict(self, features: Any) -> list[str]:
        """The class name of each row of `features` ((N, 61), or one (61,) vector)."""
        forest = self._require_fitted("predict")
        return [str(c) for c in forest.predict(as_feature_matrix(features))]

    def predict_proba(self, features: Any) -> np.ndarray:
        """(N, n_classes) probabilities, columns in `classes` order."""
        return self._require_fitted("predict_proba").predict_proba(as_feature_matrix(features))

    def save(self, folder: str | Path, *, model_name: str = "segma-region-classifier") -> Path:
        """Write region_classifier.skops, config.json and README.md (a model card) into `folder`; returns it."""
        import skops.io as sio

        forest = self._require_fitted("save")
        folder = Path(folder).expanduser()
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"Cannot save the region classifier into {str(folder)!r}: it is a file, not a folder.")
        folder.mkdir(parents=True, exist_ok=True)
        sio.dump(forest, folder / MODEL_FILE)
        config = self.config()
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        _model_card(config, model_name).save(folder / "README.md")
        return folder

    def push(self, repo_id: str, *, message: str | None = None, hub=None):
        """Save into a temporary folder and push it as one new revision of `repo_id`; returns the RevisionInfo."""
        from .. import hub as hubkit_hub

        self._require_fitted("push")
        message = message or (
            f"Region classifier: {len(self.classes)} classes, {self.n_training_regions} training regions"
        )
        with tempfile.TemporaryDirectory(prefix="hubkit-segma-") as tmp:
            folder = self.save(Path(tmp) / "model", model_name=repo_id)
            return hubkit_hub.push(folder, repo_id, hub=hub, message=message)

    def config(self) -> dict[str, Any]:
        """What config.json holds: the features, classes and forest settings, for people and for `load`."""
        import sklearn
        import skops

        forest = self._require_fitted("config")
        return {
            "model_type": MODEL_TYPE,
            "model_file": MODEL_FILE,
            "n_features": N_FEATURES,
            "feature_names": list(FEATURE_NAMES),
            "classes": self.classes,
            "class_counts": self.class_counts,
            "n_training_regions": self.n_training_regions,
            "n_estimators": int(forest.n_estimators),
            "random_state": self.random_state,
            "sklearn_version": sklearn.__version__,
            "skops_version": skops.__version__,
        }

    @classmethod
    def load(cls, source: str | Path, *, revision: str | None = None, hub=None) -> RegionClassifier:
        """Load from a folder `save` wrote, or from a repo id (pulled with `hubkit.pull`, at `revision`)."""
        folder = _resolve(source, revision=revision, hub=hub)
        path = folder / MODEL_FILE
        if not path.is_file():
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise UnsafeWeightsError(
                    f"{str(folder)!r} holds {', '.join(pickles)} but no {MODEL_FILE}; hubkit does not load pickles "
                    "(they can run code): save the classifier with RegionClassifier.save, which writes skops."
                )
            raise MissingModelFileError(
                folder,
                (MODEL_FILE,),
                task="segma region classifier",
                needed_for="random forest",
                hint="Write it with RegionClassifier(...).fit(features, labels).save(folder).",
            )
        forest = _load_forest(path)
        config = _read_config(folder)
        clf = cls(n_estimators=int(forest.n_estimators), random_state=_int_or_none(config.get("random_state")))
        clf._forest = forest
        clf.n_training_regions = int(config.get("n_training_regions") or 0)
        clf.class_counts = {str(k): int(v) for k, v in (config.get("class_counts") or {}).items()}
        return clf

    def _require_fitted(self, action: str):
        if self._forest is None:
            raise ConfigError(
                f"Cannot {action}: this RegionClassifier is not trained; call fit(features, labels) or "
                "RegionClassifier.load(folder_or_repo) first."
            )
        return self._forest


def _resolve(source: str | Path, *, revision: str | None, hub) -> Path:
    from .. import hub as hubkit_hub

    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ConfigError(f"revision={revision!r} applies to a repo id, but {str(source)!r} is a local folder.")
        return path
    if path.exists():
        raise ConfigError(f"{str(source)!r} is a file; pass the folder holding {MODEL_FILE}, or a repo id.")
    try:
        return Path(hubkit_hub.pull(str(source), hub=hub, revision=revision))
    except InvalidRepoIdError as err:
        raise ConfigError(f"{str(source)!r} is neither a folder nor a repo id ({err})") from None


def _load_forest(path: Path):
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    if not zipfile.is_zipfile(path):
        head = path.read_bytes()[:2]
        if head[:1] == b"\x80":  # pickle protocol 2+ opcode
            raise UnsafeWeightsError(
                f"{str(path)!r} is a pickle, not a skops file; hubkit does not load pickles (they can run code): "
                "save the classifier again with RegionClassifier.save."
            )
        raise ConfigError(f"{str(path)!r} is not a skops file (not a zip archive); save it with RegionClassifier.save.")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except (ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        raise ConfigError(f"{str(path)!r} is not a readable skops file ({err}); save it again.") from None
    refused = [t for t in untrusted if t not in TRUSTED_TYPES]
    if refused:
        raise UnsafeWeightsError(
            f"{str(path)!r} asks to build types a random forest does not need ({', '.join(refused)}); refused. "
            "Only load region classifiers written by RegionClassifier.save."
        )
    forest = sio.load(path, trusted=list(untrusted))
    if not isinstance(forest, RandomForestClassifier):
        raise ConfigError(f"{str(path)!r} holds a {type(forest).__name__}, not a RandomForestClassifier.")
    n_in = getattr(forest, "n_features_in_", None)
    if n_in != N_FEATURES:
        raise ConfigError(
            f"{str(path)!r} was trained on {n_in} features, not the {N_FEATURES} HLBB features; retrain it on "
            "hlbb_features_batch output."
        )
    return forest


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        logger.info("%s has no %s; loading the forest without its training notes.", folder, CONFIG_FILE)
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{str(path)!r} does not parse as JSON ({err}); fix or delete it.") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{str(path)!r} must hold a JSON object, got {type(config).__name__}.")
    names = config.get("feature_names")
    if names is not None and list(names) != list(FEATURE_NAMES):
        raise ConfigError(
            f"{str(path)!r} lists other feature names than hubkit's {N_FEATURES} HLBB features; this classifier "
            "was trained on different features: retrain it."
        )
    return config


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _model_card(config: dict[str, Any], model_name: str):
    """A plain model card (``hubkit.cards``' template and ModelCardData), listing the versions that matter here."""
    from huggingface_hub import ModelCardData
    from huggingface_hub.repocard import ModelCard

    from ..cards import TEMPLATES

    counts = ", ".join(f"{name} ({n})" for name, n in config["class_counts"].items()) or ", ".join(config["classes"])
    repo = model_name if "/" in model_name else f"<your-namespace>/{model_name}"
    description = "\n".join(
        [
            "A Segma Vision region classifier: a scikit-learn random forest "
            f"({config['n_estimators']} trees, random_state={config['random_state']}) over the {N_FEATURES} HLBB "
            "features of a region (RGB histograms, uniform LBP texture, area ratio, aspect ratio, compactness), "
            f"saved with skops in `{MODEL_FILE}` (no pickle).",
            "",
            f"- Classes: {counts}",
            f"- Training regions: {config['n_training_regions']}",
            "",
            "```python",
            "from hubkit.segma.classifier import RegionClassifier",
            "from hubkit.segma.features import hlbb_features_batch",
            "",
            f'clf = RegionClassifier.load("{repo}")',
            "labels = clf.predict(hlbb_features_batch(image, masks))",
            "```",
        ]
    )
    data = ModelCardData(
        library_name="sklearn",
        pipeline_tag="tabular-classification",
        license="apache-2.0",
        tags=["hubkit", "segma", "hlbb"],
    )
    versions = [("scikit-learn", config["sklearn_version"]), ("skops", config["skops_version"])]
    versions += [("hubkit", v) for v in [_version("hubkit")] if v]
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "model_card.md"),
        model_name=model_name,
        description=description,
        versions=versions,
    )


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
