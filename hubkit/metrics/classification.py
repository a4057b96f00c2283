"""Classification and text-generation evaluation, and the evaluation report (JSON, PNGs, Markdown, model-index).

Generic for any single-label classifier over ``C`` classes (Plantset's 133 disease classes by default).
Headline metrics come from torchmetrics' functional API; the per-class report and the top confusions are read
off torchmetrics' confusion matrix. No network: ``evaluate`` is not used, and ROUGE-L runs without nltk.

Conventions:

- ``ClassificationAccumulator.update`` takes scores ``[N, C]`` (probabilities or logits) and integer targets
  ``[N]``. Rows that are already probability distributions are kept; anything else goes through a softmax
  (``from_logits=True`` / ``False`` forces either; pass it when you know, e.g. for half-precision probabilities).
- Macro averages (F1, precision, recall) skip classes that are neither in the targets nor in the predictions,
  as scikit-learn does with its default ``labels`` (the union of both); a class that is predicted but never
  true counts with recall 0. Weighted F1 weights by support, so classes absent from the targets weigh 0.
- ``auc_ovr_macro`` is the one-vs-rest ROC AUC averaged over the classes it is defined for: those with at
  least one positive and one negative in the targets. torchmetrics returns 0 for the others, which would drag
  a plain macro mean down; they are left out, and ``auc_classes`` says how many classes the mean covers
  (``nan`` / JSON ``null`` when none).
- Text metrics normalise both sides the same way (lower case, Unicode words, punctuation dropped) so French
  accents survive; BLEU is corpus BLEU-4 without smoothing (a text shorter than 4 words scores 0), ROUGE-L is
  torchmetrics' ``rougeL`` F-measure (no stemmer, so no nltk).
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from ..errors import DataError

logger = logging.getLogger(__name__)

HEADLINE_METRICS = (
    "accuracy",
    "top5_accuracy",
    "f1_macro",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
    "auc_ovr_macro",
)
TEXT_METRICS = ("bleu", "rougeL_f", "perplexity")
ORDERS = ("recall", "cluster", "index")
_LABELLED_MAX = 60  # above this many classes the confusion matrix has no tick labels (the side panel names pairs)
_ANNOTATED_MAX = 12  # up to this many classes every cell carries its share


# ---- classification ----


def _class_names(num_classes: int | None, class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None:
        names = [str(n) for n in class_names]
        if num_classes is not None and len(names) != num_classes:
            raise DataError(f"class_names has {len(names)} names but num_classes={num_classes}; pass one per class")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(f"class_names must be unique; {dupes} appear more than once")
    elif num_classes is not None:
        names = [f"class_{i}" for i in range(num_classes)]
    else:
        raise DataError("pass num_classes or class_names (got neither)")
    if len(names) < 2:
        raise DataError(f"a classifier needs at least 2 classes, got {len(names)}")
    return names


def _as_tensor(x, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _is_distribution(scores: torch.Tensor) -> bool:
    if scores.numel() == 0:
        return True
    sums = scores.sum(dim=1)
    return bool((scores >= 0).all() and (scores <= 1).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-2))


def per_class_report(confusion, class_names: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """Precision, recall, F1 and support of each class from a ``[C, C]`` confusion matrix (rows = true class,
    columns = predicted), keyed by class name in class order. 0/0 counts 0, as in scikit-learn's
    ``zero_division=0``."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise DataError(f"confusion must be [C, C] with C = {len(class_names)} class names, got shape {cm.shape}")
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }


def top_confusions(confusion, class_names: Sequence[str], k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` largest off-diagonal cells of a ``[C, C]`` confusion matrix as ``{"true", "predicted",
    "count", "share"}`` (share = count / support of the true class), sorted by count, then share, then class
    order. Empty cells are never listed, so fewer than ``k`` may come back."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise DataError(f"confusion must be [C, C] with C = {len(class_names)} class names, got shape {cm.shape}")
    if k < 0:
        raise DataError(f"top_confusions: k must be >= 0, got {k}")
    support = cm.sum(axis=1)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    rows, cols = np.nonzero(off)
    cells = sorted(
        ((int(off[r, c]), off[r, c] / support[r], int(r), int(c)) for r, c in zip(rows, cols, strict=True)),
        key=lambda cell: (-cell[0], -cell[1], cell[2], cell[3]),
    )
    return [
        {"true": class_names[r], "predicted": class_names[c], "count": n, "share": float(share)}
        for n, share, r, c in cells[:k]
    ]


class ClassificationAccumulator:
    """Collects scores and targets batch by batch; ``compute()`` returns every classification metric.

    Scores are kept (as float32 probabilities) because the ROC AUC needs all of them; at 133 classes that is
    about 0.5 kB per sample. Plain tensors, no distributed sync: hubkit evaluates on the main process only
    (gather the scores first under DDP).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        *,
        from_logits: bool | None = None,
    ):
        self.class_names = _class_names(num_classes, class_names)
        self.num_classes = len(self.class_names)
        self.from_logits = from_logits
        self.reset()

    def reset(self) -> None:
        self._probs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def update(self, scores, targets) -> None:
        """Add a batch: ``scores`` ``[N, C]`` probabilities or logits, ``targets`` ``[N]`` class indices."""
        s = _as_tensor(scores, torch.float64)
        t = _as_tensor(targets, torch.int64).reshape(-1)
        if s.ndim != 2 or s.shape[1] != self.num_classes:
            raise DataError(f"scores must be [N, {self.num_classes}] (one column per class), got {tuple(s.shape)}")
        if s.shape[0] != t.shape[0]:
            raise DataError(f"scores has {s.shape[0]} rows but targets has {t.shape[0]}; pass one target per row")
        if not torch.isfinite(s).all():
            raise DataError("scores contain NaN or inf; check the model's outputs before evaluating")
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            bad = int(t.min()) if t.min() < 0 else int(t.max())
            raise DataError(f"target {bad} is not a class index in [0, {self.num_classes - 1}]")
        logits = self.from_logits if self.from_logits is not None else not _is_distribution(s)
        probs = torch.softmax(s, dim=1) if logits else s
        self._probs.append(probs.to(torch.float32))
        self._targets.append(t)

    @property
    def num_samples(self) -> int:
        return sum(len(t) for t in self._targets)

    def _data(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.num_samples:
            raise DataError("ClassificationAccumulator: no samples were added; call update() before compute()")
        return torch.cat(self._probs), torch.cat(self._targets)

    def confusion_matrix(self) -> np.ndarray:
        """``[C, C]`` int64 counts, rows = true class, columns = predicted (argmax) class."""
        probs, targets = self._data()
        cm = multiclass_confusion_matrix(probs, targets, self.num_classes, validate_args=False)
        return cm.numpy().astype(np.int64)

    def top_confusions(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` most frequent (true -> predicted) mistakes; see the module function ``top_confusions``."""
        return top_confusions(self.confusion_matrix(), self.class_names, k)

    def auc_per_class(self) -> dict[str, float]:
        """One-vs-rest ROC AUC of each class; ``nan`` where the targets lack positives or negatives for it."""
        probs, targets = self._data()
        support = torch.bincount(targets, minlength=self.num_classes)
        defined = (support > 0) & (support < len(targets))
        with warnings.catch_warnings():
            # torchmetrics warns, then returns 0, for classes without positives; they are masked out below.
            warnings.filterwarnings("ignore", message=".*(No positive|No negative) samples.*")
            auc = multiclass_auroc(probs, targets, self.num_classes, average=None, thresholds=None)
        return {n: float(auc[i]) if defined[i] else math.nan for i, n in enumerate(self.class_names)}

    def compute(self, *, top_k_confusions: int = 10) -> dict[str, Any]:
        """Every metric as plain Python numbers (JSON-ready, except ``nan`` for an undefined AUC).

        Keys: ``num_samples``, ``num_classes``, the ``HEADLINE_METRICS`` (``top5_accuracy`` only when there
        are at least 5 classes), ``auc_classes`` (how many classes the AUC mean covers), ``classes_absent``
        (names with no sample in the targets), ``confusion_matrix`` (list of rows), ``per_class``
        (name -> precision, recall, f1, support, auc) and ``top_confusions``.
        """
        probs, targets = self._data()
        c = self.num_classes
        common = {"num_classes": c, "validate_args": False}
        out: dict[str, Any] = {"num_samples": int(len(targets)), "num_classes": c}
        out["accuracy"] = float(multiclass_accuracy(probs, targets, average="micro", **common))
        if c >= 5:
            out["top5_accuracy"] = float(multiclass_accuracy(probs, targets, average="micro", top_k=5, **common))
        out["f1_macro"] = float(multiclass_f1_score(probs, targets, average="macro", **common))
        out["f1_weighted"] = float(multiclass_f1_score(probs, targets, average="weighted", **common))
        out["precision_macro"] = float(multiclass_precision(probs, targets, average="macro", **common))
        out["recall_macro"] = float(multiclass_recall(probs, targets, average="macro", **common))
        auc = self.auc_per_class()
        defined = [v for v in auc.values() if not math.isnan(v)]
        out["auc_ovr_macro"] = float(np.mean(defined)) if defined else math.nan
        out["auc_classes"] = len(defined)
        if len(defined) < c:
            logger.info(
                "auc_ovr_macro averages %d of %d classes (the others lack positives or negatives)", len(defined), c
            )
        cm = self.confusion_matrix()
        report = per_class_report(cm, self.class_names)
        for name, row in report.items():
            row["auc"] = auc[name]
        out["classes_absent"] = [n for n, row in report.items() if row["support"] == 0]
        out["confusion_matrix"] = cm.tolist()
        out["per_class"] = report
        out["top_confusions"] = top_confusions(cm, self.class_names, top_k_confusions)
        return out


def classification_metrics(
    scores, targets, *, class_names: Sequence[str] | None = None, from_logits: bool | None = None
) -> dict[str, Any]:
    """One-shot ``ClassificationAccumulator``: all metrics of ``scores`` ``[N, C]`` against ``targets`` ``[N]``."""
    num_classes = int(np.shape(scores)[1]) if np.ndim(scores) == 2 else None
    acc = ClassificationAccumulator(num_classes, class_names, from_logits=from_logits)
    acc.update(scores, targets)
    return acc.compute()


# ---- text generation (the description head) ----


def _words(text: str) -> str:
    """Lower case, Unicode word characters only (keeps é, ç...), single spaces."""
    return " ".join(re.findall(r"\w+", str(text).lower()))


def text_generation_metrics(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    mean_token_nll: float | None = None,
) -> dict[str, float | int]:
    """Corpus BLEU-4, ROUGE-L (F, precision, recall; best over several references) of generated texts against
    references (a string or a list of strings each), and ``perplexity`` when ``mean_token_nll`` (the mean
    per-token negative log-likelihood of the references, in nats) is given.

    Runs offline: ``ROUGEScore(rouge_keys=("rougeL",))`` without stemmer needs no nltk, and both metrics see
    the same normalised words (see ``_words``) because torchmetrics' default ROUGE normaliser drops every
    non-ASCII letter. BLEU is torchmetrics' ``BLEUScore(n_gram=4)`` without smoothing.
    """
    from torchmetrics.text import BLEUScore, ROUGEScore

    if isinstance(predictions, str) or isinstance(references, str):
        raise DataError("predictions and references must be lists of strings, not one string")
    if len(predictions) != len(references):
        raise DataError(
            f"got {len(predictions)} predictions but {len(references)} references; pass one reference (or list) each"
        )
    if not predictions:
        raise DataError("text_generation_metrics needs at least one prediction")
    preds = [_words(p) for p in predictions]
    refs = [[_words(r)] if isinstance(r, str) else [_words(x) for x in r] for r in references]
    if any(not r for r in refs):
        raise DataError("every prediction needs at least one reference text; got an empty reference list")
    bleu = BLEUScore(n_gram=4, smooth=False)(preds, refs)
    rouge = ROUGEScore(rouge_keys=("rougeL",), normalizer=_words, accumulate="best")(preds, refs)
    out: dict[str, float | int] = {
        "bleu": float(bleu),
        "rougeL_f": float(rouge["rougeL_fmeasure"]),
        "rougeL_precision": float(rouge["rougeL_precision"]),
        "rougeL_recall": float(rouge["rougeL_recall"]),
        "num_texts": len(preds),
    }
    if mean_token_nll is not None:
        out["perplexity"] = perplexity_from_loss(mean_token_nll)
    return out


def perplexity_from_loss(mean_token_nll: float) -> float:
    """``exp(mean per-token NLL)`` (natural log), what a causal LM's mean cross-entropy loss turns into."""
    value = float(mean_token_nll)
    if not math.isfinite(value) or value < 0:
        raise DataError(f"mean_token_nll must be a finite, non-negative loss in nats, got {mean_token_nll!r}")
    return math.exp(value)


def perplexity_from_logits(logits, targets, *, ignore_index: int | None = -100) -> float:
    """torchmetrics' perplexity of ``logits`` ``[B, T, V]`` against ``targets`` ``[B, T]``, tokens equal to
    ``ignore_index`` (padding, prompt) left out. Shift first for a causal LM: ``logits[:, :-1]`` against
    ``targets[:, 1:]``."""
    from torchmetrics.functional.text import perplexity

    lg, tg = _as_tensor(logits, torch.float32), _as_tensor(targets, torch.int64)
    if lg.ndim != 3 or tg.shape != lg.shape[:2]:
        raise DataError(f"logits must be [B, T, V] and targets [B, T]; got {tuple(lg.shape)} and {tuple(tg.shape)}")
    return float(perplexity(lg, tg, ignore_index=ignore_index))


# ---- figures (matplotlib's Agg canvas, no pyplot: nothing global is touched) ----


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def confusion_order(confusion, order: Literal["recall", "cluster", "index"] = "recall") -> np.ndarray:
    """Class indices in display order. ``"recall"``: per-class accuracy ascending (worst first, top-left),
    classes absent from the targets last; ``"cluster"``: average-linkage clustering of the symmetrised
    row-normalised confusion, so classes confused with each other sit side by side; ``"index"``: as given."""
    cm = np.asarray(confusion, dtype=np.float64)
    c = len(cm)
    support = cm.sum(axis=1)
    norm = np.divide(cm, support[:, None], out=np.zeros_like(cm), where=support[:, None] > 0)
    if order == "index":
        return np.arange(c)
    if order == "recall":
        recall = np.where(support > 0, np.diag(norm), np.inf)
        return np.lexsort((np.arange(c), recall))
    if order == "cluster":
        from scipy.cluster.hierarchy import leaves_list, linkage
        from scipy.spatial.distance import squareform

        sim = (norm + norm.T) / 2
        dist = 1.0 - np.clip(sim, 0.0, 1.0)
        np.fill_diagonal(dist, 0.0)
        return leaves_list(linkage(squareform(dist, checks=False), method="average"))
    raise DataError(f"order={order!r} is not one of {', '.join(ORDERS)}")


def plot_confusion_matrix(
    confusion,
    class_names: Sequence[str],
    path: str | Path,
    *,
    order: Literal["recall", "cluster", "index"] = "recall",
    top_k: int = 15,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Row-normalised confusion matrix PNG (each row: where the true class's samples went), readable at 133
    classes. Classes are sorted by ``order`` (default: per-class accuracy, worst first). Tick labels are drawn
    up to 60 classes, in a font that shrinks with the class count; above that they are omitted and the side
    panel, which lists the ``top_k`` confusions (true -> predicted, count, share of the true class), is the
    key: each listed pair is also ringed and numbered on the matrix. Rows of absent classes are grey."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(confusion, dtype=np.int64)
    names = [str(n) for n in class_names]
    if cm.ndim != 2 or cm.shape != (len(names), len(names)):
        raise DataError(f"confusion must be [C, C] with C = {len(names)} class names, got shape {cm.shape}")
    c = len(names)
    idx = confusion_order(cm, order)
    pos = np.empty(c, dtype=np.int64)
    pos[idx] = np.arange(c)
    support = cm.sum(axis=1)
    norm = np.divide(cm, support[:, None], out=np.zeros(cm.shape), where=support[:, None] > 0)
    shown = np.ma.masked_array(norm[np.ix_(idx, idx)], mask=np.repeat((support[idx] == 0)[:, None], c, axis=1))
    labelled = c <= _LABELLED_MAX
    side = float(np.clip(3.0 + 0.15 * c if labelled else 0.085 * c, 5.0, 13.0))
    panel = 5.2
    fig = Figure(figsize=(side + 2.0 + panel, side + (1.6 if labelled else 0.8)), dpi=dpi)
    FigureCanvasAgg(fig)
    # matrix | colour bar | gap for the colour bar's label | top-confusions list
    grid = fig.add_gridspec(1, 4, width_ratios=[side, 0.25, 0.9, panel], wspace=0.05)
    ax, cax, tax = fig.add_subplot(grid[0]), fig.add_subplot(grid[1]), fig.add_subplot(grid[3])
    import matplotlib as mpl

    cmap = mpl.colormaps["Blues"].with_extremes(bad="#d9d9d9")  # grey rows: classes absent from the targets
    # a square-root colour scale so that 5-10% confusions still show next to a dark diagonal
    scale = mpl.colors.PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    im = ax.imshow(shown, cmap=cmap, norm=scale, interpolation="nearest", aspect="equal")
    fig.colorbar(im, cax=cax).set_label("share of the true class (row-normalised, square-root scale)")
    cell_pt = 72.0 * side / c
    font = float(np.clip(0.55 * cell_pt, 4.0, 10.0))
    if labelled:
        ticks = [_short(names[i]) for i in idx]
        ax.set_xticks(range(c), ticks, rotation=90, fontsize=font)
        ax.set_yticks(range(c), ticks, fontsize=font)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if c <= _ANNOTATED_MAX:
        for r in range(c):
            for k in range(c):
                if not shown.mask[r, k] and shown[r, k] > 0:
                    colour = "white" if shown[r, k] > 0.35 else "black"
                    ax.text(k, r, f"{shown[r, k]:.2f}", ha="center", va="center", fontsize=font, color=colour)
    top = top_confusions(cm, names, top_k)
    where = {n: i for i, n in enumerate(names)}
    if c > _ANNOTATED_MAX:  # small matrices print every share; larger ones ring and number the listed pairs
        for rank, item in enumerate(top, 1):
            r, k = pos[where[item["true"]]], pos[where[item["predicted"]]]
            size = max(16.0, (1.2 * cell_pt) ** 2)
            ax.scatter([k], [r], s=size, marker="s", facecolors="none", edgecolors="#d62728", linewidths=0.8)
            ax.annotate(str(rank), (k, r), xytext=(3, 3), textcoords="offset points", color="#d62728", fontsize=6)
    how = {
        "recall": "by per-class accuracy, worst first",
        "cluster": "clustered by confusion",
        "index": "in index order",
    }
    note = "" if labelled else f"; {c} classes, labels omitted, see the list"
    ax.set_xlabel(f"predicted class ({how[order]}{note})", fontsize=9)
    ax.set_ylabel("true class", fontsize=9)
    total = int(cm.sum())
    acc = float(np.trace(cm)) / total if total else math.nan
    ax.set_title(title or f"Confusion matrix: {c} classes, {total} samples, accuracy {acc:.3f}", fontsize=10)
    tax.axis("off")
    lines = [f"Top {len(top)} confusions (true -> predicted)", ""]
    for rank, item in enumerate(top, 1):
        lines.append(f"{rank:>2}. {_short(item['true'], 40)}")
        lines.append(f"    -> {_short(item['predicted'], 40)}: {item['count']} ({100 * item['share']:.0f}%)")
    if not top:
        lines.append("(no confusions)")
    tax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=7.5, transform=tax.transAxes)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi, bbox_inches="tight")
    return out


def plot_per_class_f1(per_class: Mapping[str, Mapping[str, float]], path: str | Path, *, dpi: int = 110) -> Path:
    """Horizontal bars of each class's F1, sorted worst first, with the macro mean dashed; classes absent from
    the targets are grey. The figure grows with the class count so every name stays legible."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not per_class:
        raise DataError("plot_per_class_f1 needs at least one class in per_class")
    items = sorted(per_class.items(), key=lambda kv: (kv[1]["f1"], kv[0]))
    c = len(items)
    height = float(np.clip(0.14 * c + 1.3, 3.0, 24.0))
    fig = Figure(figsize=(8.0, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    f1 = np.array([row["f1"] for _, row in items])
    absent = np.array([row.get("support", 1) == 0 for _, row in items])
    ax.barh(np.arange(c), f1, color=np.where(absent, "#bdbdbd", "#3182bd"), height=0.8)
    font = float(np.clip(72.0 * (height - 1.3) / c * 0.7, 4.0, 10.0))
    ax.set_yticks(np.arange(c), [_short(n, 36) for n, _ in items], fontsize=font)
    ax.set_ylim(c - 0.5, -0.5)  # worst at the top, no empty margin
    present = f1[~absent]
    if present.size:
        ax.axvline(
            float(present.mean()), color="#d62728", linestyle="--", linewidth=1, label="mean F1 of the classes present"
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 (grey: class absent from the evaluation set)")
    ax.set_title(f"Per-class F1 ({c} classes, worst first)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi, bbox_inches="tight")
    return out


# ---- report ----


def _jsonable(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    return value


def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def _markdown(metrics: Mapping[str, Any], text_metrics: Mapping[str, Any] | None, files: Mapping[str, Path]) -> str:
    lines = ["# Classification report", "", "| metric | value |", "|---|---|"]
    for key in ("num_samples", "num_classes", *HEADLINE_METRICS, "auc_classes"):
        if key in metrics:
            lines.append(f"| {key} | {_fmt(metrics[key])} |")
    for key, value in (text_metrics or {}).items():
        lines.append(f"| {key} | {_fmt(value)} |")
    if metrics.get("classes_absent"):
        lines += ["", f"Classes absent from the evaluation set: {', '.join(metrics['classes_absent'])}."]
    if "auc_classes" in metrics and metrics["auc_classes"] < metrics.get("num_classes", 0):
        lines += ["", f"AUC (one-vs-rest, macro) averages the {metrics['auc_classes']} classes that have positives "
                      "and negatives in the evaluation set."]  # fmt: skip
    lines += ["", f"![confusion matrix]({files['confusion_matrix'].name})", ""]
    lines += ["## Top confusions", "", "| true | predicted | count | share of true class |", "|---|---|---|---|"]
    for item in metrics["top_confusions"]:
        lines.append(f"| {item['true']} | {item['predicted']} | {item['count']} | {100 * item['share']:.1f}% |")
    lines += ["", "## Per class", "", f"![per-class F1]({files['per_class_f1'].name})", ""]
    lines += ["| class | precision | recall | f1 | auc | support |", "|---|---|---|---|---|---|"]
    for name, row in metrics["per_class"].items():
        cells = [_fmt(row[k]) for k in ("precision", "recall", "f1")] + [
            _fmt(row.get("auc", math.nan)),
            str(row["support"]),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_evaluation_report(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    *,
    class_names: Sequence[str],
    confusion=None,
    text_metrics: Mapping[str, Any] | None = None,
    top_k: int = 15,
    order: Literal["recall", "cluster", "index"] = "recall",
) -> dict[str, Path]:
    """Write ``metrics.json``, ``confusion_matrix.png``, ``per_class_f1.png`` and ``classification_report.md``
    into ``out_dir``; returns their paths by name (``metrics``, ``confusion_matrix``, ``per_class_f1``,
    ``report``).

    ``metrics`` is ``ClassificationAccumulator.compute()``'s dict (or any dict of headline numbers);
    ``confusion`` (``[C, C]`` counts) defaults to its ``confusion_matrix``. The per-class report and the top
    confusions are recomputed from the confusion matrix when ``metrics`` lacks them. Non-finite numbers are
    written as JSON ``null``.
    """
    names = _class_names(None, class_names)
    cm = np.asarray(confusion if confusion is not None else metrics.get("confusion_matrix"), dtype=np.int64)
    if cm.ndim != 2 or cm.shape != (len(names), len(names)):
        raise DataError(f"confusion must be [C, C] with C = {len(names)} class names, got shape {cm.shape}")
    full = dict(metrics)
    full.setdefault("num_classes", len(names))
    full.setdefault("num_samples", int(cm.sum()))
    full["class_names"] = names
    full["confusion_matrix"] = cm.tolist()
    if "per_class" not in full:
        full["per_class"] = per_class_report(cm, names)
    if "top_confusions" not in full or len(full["top_confusions"]) < top_k:
        full["top_confusions"] = top_confusions(cm, names, top_k)
    if text_metrics:
        full["text"] = dict(text_metrics)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics": out / "metrics.json",
        "confusion_matrix": plot_confusion_matrix(cm, names, out / "confusion_matrix.png", order=order, top_k=top_k),
        "per_class_f1": plot_per_class_f1(full["per_class"], out / "per_class_f1.png"),
        "report": out / "classification_report.md",
    }
    files["metrics"].write_text(json.dumps(_jsonable(full), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    files["report"].write_text(_markdown(full, text_metrics, files), encoding="utf-8")
    logger.info("Evaluation report written to %s", out)
    return files


def model_index(
    metrics: Mapping[str, Any],
    *,
    dataset_name: str,
    dataset_type: str,
    split: str = "validation",
    text_metrics: Mapping[str, Any] | None = None,
    task_type: str | None = None,
):
    """``hubkit.cards.Metric`` entries for the card's model-index: the finite ``HEADLINE_METRICS`` of
    ``metrics`` and the ``TEXT_METRICS`` of ``text_metrics`` (or of ``metrics["text"]``), named by their keys."""
    from ..cards import Metric

    text = text_metrics if text_metrics is not None else metrics.get("text", {})
    rows = [(k, metrics.get(k)) for k in HEADLINE_METRICS] + [(k, text.get(k)) for k in TEXT_METRICS]
    return [
        Metric(name, float(value), dataset_name, dataset_type, split=split, task_type=task_type)
        for name, value in rows
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ]
