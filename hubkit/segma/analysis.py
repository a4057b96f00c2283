"""Which HLBB features separate the classes: the seed's ``analyze_hlbb_feature_importance``, with figures and JSON.

    from hubkit.segma.analysis import analyze_features

    report = analyze_features(features, labels, out_dir="out/analysis")  # features (N, 61), labels: N class names
    report["categories"]["texture_lbp"]["top_features"]  # -> [52, 49, ...]

Computed as the seed does: the correlation matrix (``np.corrcoef``), mutual information with the labels
(``mutual_info_classif``, random_state=42) and random-forest importance (100 trees, random_state=42); then per feature
group (colour histogram 0-47, LBP texture 48-57, geometric 58-60) the mean off-diagonal correlation, mean mutual
information, mean importance and the group's top-5 features by mutual information; plus each class's mean of every
feature. A constant feature has no correlation (``np.corrcoef`` gives NaN): it is counted as 0, its mutual information
is set to 0 (sklearn's k-NN estimate returns noise there), and it is listed in ``constant_features``.
With `out_dir`, writes correlation.png, mutual_information.png, rf_importance.png and analysis.json (the returned
dict).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .features import FEATURE_GROUPS, FEATURE_NAMES, N_FEATURES, check_training_data

__all__ = ["TOP_K", "analyze_features"]

TOP_K = 5  # the seed's top features per group
RANDOM_STATE = 42  # the seed's; also makes mutual information (k-NN estimate with noise) reproducible
GROUP_COLORS = {"color_histogram": "tab:red", "texture_lbp": "tab:blue", "geometric": "tab:green"}


def analyze_features(features: Any, labels: list[str], out_dir: str | Path | None = None) -> dict[str, Any]:
    """Correlation, mutual information and RF importance of the 61 HLBB features, overall and per group.

    Returns a JSON-ready dict: ``n_regions``, ``classes``, ``class_counts``, ``feature_names``, ``correlation``
    (61 x 61), ``mutual_info`` and ``rf_importance`` (61 each), ``categories`` (per group: ``indices``,
    ``avg_correlation``, ``avg_abs_correlation``, ``avg_mutual_info``, ``avg_rf_importance``, ``top_features``,
    ``top_feature_names``), ``class_means`` (class -> 61 means), ``constant_features``, ``notes`` and ``files``
    (name -> path; empty without `out_dir`).
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.feature_selection import mutual_info_classif

    matrix, labels = check_training_data(features, labels)
    if matrix.shape[0] < 3:
        raise ConfigError(f"Got {matrix.shape[0]} regions; the analysis needs at least 3 (correlations, k-NN MI).")
    out = _out_dir(out_dir)
    y = np.asarray(labels, dtype=object)

    constant = [int(i) for i in np.flatnonzero(np.ptp(matrix, axis=0) == 0)]
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # corrcoef warns on constant columns; handled just below
        correlation = np.corrcoef(matrix.T)
    correlation = np.nan_to_num(correlation, nan=0.0)
    mutual_info = mutual_info_classif(matrix, y, random_state=RANDOM_STATE)
    mutual_info[constant] = 0.0  # the k-NN estimate on a constant column (plus sklearn's tie-breaking noise) is not 0
    forest = RandomForestClassifier(n_estimators=100, random_state=RANDOM_STATE).fit(matrix, y)
    importance = forest.feature_importances_

    categories = {}
    for name, group in FEATURE_GROUPS.items():
        idx = np.asarray(group)
        block = correlation[np.ix_(idx, idx)]
        off_diagonal = block[~np.eye(len(idx), dtype=bool)]
        order = np.argsort(-mutual_info[idx], kind="stable")[:TOP_K]  # ties: the lower index first
        top = [int(idx[i]) for i in order]
        categories[name] = {
            "indices": [int(idx[0]), int(idx[-1])],
            "avg_correlation": float(off_diagonal.mean()),
            "avg_abs_correlation": float(np.abs(off_diagonal).mean()),
            "avg_mutual_info": float(mutual_info[idx].mean()),
            "avg_rf_importance": float(importance[idx].mean()),
            "top_features": top,
            "top_feature_names": [FEATURE_NAMES[i] for i in top],
        }

    classes = sorted(set(labels))
    notes = [
        "avg_correlation is the signed mean of the group's off-diagonal correlations (the seed's); "
        "avg_abs_correlation is the mean of their absolute values.",
    ]
    if constant:
        listed = ", ".join(FEATURE_NAMES[i] for i in constant)
        notes.append(
            f"{len(constant)} feature(s) are constant over these regions ({listed}): their correlation is undefined "
            "(NaN) and counted as 0, their self-correlation included; their mutual information is set to 0 (the "
            "k-NN estimate on a constant column is noise)."
        )
    report: dict[str, Any] = {
        "n_regions": int(matrix.shape[0]),
        "n_features": N_FEATURES,
        "classes": classes,
        "class_counts": {c: int((y == c).sum()) for c in classes},
        "feature_names": list(FEATURE_NAMES),
        "random_state": RANDOM_STATE,
        "categories": categories,
        "mutual_info": [float(v) for v in mutual_info],
        "rf_importance": [float(v) for v in importance],
        "class_means": {c: [float(v) for v in matrix[y == c].mean(axis=0)] for c in classes},
        "constant_features": constant,
        "notes": notes,
        "correlation": [[float(v) for v in row] for row in correlation],
        "files": {},
    }
    if out is not None:
        report["files"] = _write(out, report, correlation, mutual_info, importance)
    return report


def _out_dir(out_dir: str | Path | None) -> Path | None:
    if out_dir is None:
        return None
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"out_dir {str(path)!r} is a file; pass a folder for the analysis figures and JSON.")
    return path


def _write(out: Path, report: dict, correlation, mutual_info, importance) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "correlation": out / "correlation.png",
        "mutual_information": out / "mutual_information.png",
        "rf_importance": out / "rf_importance.png",
        "analysis_json": out / "analysis.json",
    }
    _heatmap(correlation, files["correlation"])
    _bars(mutual_info, "Mutual information with the class", "mutual information (nats)", files["mutual_information"])
    _bars(importance, "Random-forest importance", "mean decrease in impurity", files["rf_importance"])
    names = {key: str(path) for key, path in files.items()}
    files["analysis_json"].write_text(json.dumps({**report, "files": names}, indent=1) + "\n", encoding="utf-8")
    return names


def _figure(size: tuple[float, float]):
    """A figure drawn by Agg, outside pyplot: no global backend switch, nothing left open."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _group_ticks(ax, axis: str = "x") -> None:
    centres = [(group[0] + group[-1]) / 2 for group in FEATURE_GROUPS.values()]
    setter = ax.set_xticks if axis == "x" else ax.set_yticks
    setter(centres, [name.replace("_", " ") for name in FEATURE_GROUPS])


def _heatmap(correlation: np.ndarray, path: Path) -> None:
    fig = _figure((11, 9.5))
    ax = fig.subplots()
    image = ax.imshow(correlation, cmap="coolwarm", vmin=-1, vmax=1, interpolation="nearest")
    for group in list(FEATURE_GROUPS.values())[1:]:
        ax.axhline(group[0] - 0.5, color="black", linewidth=1)
        ax.axvline(group[0] - 0.5, color="black", linewidth=1)
    _group_ticks(ax, "x")
    _group_ticks(ax, "y")
    ax.set_title(f"Correlation of the {N_FEATURES} HLBB features")
    fig.colorbar(image, ax=ax, shrink=0.8, label="Pearson correlation")
    fig.savefig(path, dpi=80)


def _bars(values: np.ndarray, title: str, ylabel: str, path: Path) -> None:
    fig = _figure((13, 4.5))
    ax = fig.subplots()
    for name, group in FEATURE_GROUPS.items():
        ax.bar(list(group), values[list(group)], color=GROUP_COLORS[name], label=name.replace("_", " "))
    for group in list(FEATURE_GROUPS.values())[1:]:
        ax.axvline(group[0] - 0.5, color="black", linewidth=1, linestyle="--")
    ax.set_xlim(-1, N_FEATURES)
    ax.set_xticks(range(0, N_FEATURES, 4))
    ax.set_xlabel("feature index")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper right")
    fig.savefig(path, dpi=80)
