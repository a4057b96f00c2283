from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
    top_k_accuracy_score,
)

from hubkit.cards import Metric, adapter_card
from hubkit.errors import DataError
from hubkit.metrics.classification import (
    ClassificationAccumulator,
    classification_metrics,
    confusion_order,
    model_index,
    per_class_report,
    perplexity_from_logits,
    perplexity_from_loss,
    plot_confusion_matrix,
    text_generation_metrics,
    top_confusions,
    write_evaluation_report,
)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _noisy_logits(rng, n: int, c: int, *, signal: float = 1.5, classes: int | None = None):
    targets = rng.integers(0, classes or c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), targets] += signal
    return logits, targets


# ---- hand-computed ----

HAND_PROBS = np.array(
    [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]]
)
HAND_TARGETS = np.array([0, 0, 1, 1, 2, 2])  # argmax: 0, 1, 1, 1, 2, 0


def test_hand_computed_case():
    m = classification_metrics(HAND_PROBS, HAND_TARGETS, class_names=["a", "b", "c"])
    assert m["num_samples"] == 6 and m["num_classes"] == 3
    assert "top5_accuracy" not in m  # fewer than 5 classes
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # precision 1/2, 2/3, 1; recall 1/2, 1, 1/2; F1 1/2, 4/5, 2/3
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "auc": 0.875}
    )
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3, abs=1e-6)
    assert m["f1_weighted"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3, abs=1e-6)  # equal supports
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 1) / 3, abs=1e-6)
    assert m["recall_macro"] == pytest.approx((0.5 + 1 + 0.5) / 3, abs=1e-6)
    # class a vs rest: positives score 0.7, 0.3; negatives 0.1, 0.2, 0.1, 0.5 -> 7 of 8 pairs ordered
    assert m["per_class"]["a"]["auc"] == pytest.approx(7 / 8)
    assert m["auc_classes"] == 3
    assert m["top_confusions"] == [
        {"true": "a", "predicted": "b", "count": 1, "share": 0.5},
        {"true": "c", "predicted": "a", "count": 1, "share": 0.5},
    ]


def test_logits_and_probabilities_give_the_same_metrics():
    rng = np.random.default_rng(1)
    logits, targets = _noisy_logits(rng, 80, 6)
    from_logits = classification_metrics(logits, targets)
    from_probs = classification_metrics(_softmax(logits), targets)
    forced = classification_metrics(torch.tensor(logits), torch.tensor(targets), from_logits=True)
    for key in ("accuracy", "top5_accuracy", "f1_macro", "auc_ovr_macro"):
        assert from_logits[key] == pytest.approx(from_probs[key], abs=1e-6)
        assert forced[key] == pytest.approx(from_probs[key], abs=1e-6)
    assert from_logits["confusion_matrix"] == from_probs["confusion_matrix"]


# ---- against scikit-learn ----


def test_matches_sklearn_on_random_data_in_batches():
    rng = np.random.default_rng(0)
    c = 7
    logits, targets = _noisy_logits(rng, 300, c)
    probs = _softmax(logits)
    acc = ClassificationAccumulator(c)
    for start in range(0, 300, 64):  # batches of uneven size
        acc.update(logits[start : start + 64], targets[start : start + 64])
    m = acc.compute()
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(targets, pred), abs=1e-6)
    assert m["top5_accuracy"] == pytest.approx(top_k_accuracy_score(targets, probs, k=5), abs=1e-6)
    for avg in ("macro", "weighted"):
        assert m[f"f1_{avg}"] == pytest.approx(f1_score(targets, pred, average=avg), abs=1e-5)
    assert m["precision_macro"] == pytest.approx(precision_score(targets, pred, average="macro"), abs=1e-5)
    assert m["recall_macro"] == pytest.approx(recall_score(targets, pred, average="macro"), abs=1e-5)
    expected_auc = roc_auc_score(targets, probs, multi_class="ovr", average="macro")
    assert m["auc_ovr_macro"] == pytest.approx(expected_auc, abs=1e-5)
    assert m["auc_classes"] == c and m["classes_absent"] == []
    p, r, f, s = precision_recall_fscore_support(targets, pred, labels=range(c), zero_division=0)
    for i, row in enumerate(m["per_class"].values()):
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert row["support"] == s[i]


def test_classes_absent_from_targets():
    rng = np.random.default_rng(2)
    c, names = 6, [f"c{i}" for i in range(6)]
    logits, targets = _noisy_logits(rng, 120, c, classes=4)  # c4, c5 never true
    logits[:10, 4] += 6  # c4 predicted for some samples: a false positive class
    probs, pred = _softmax(logits), logits.argmax(1)
    assert (pred == 4).any()
    m = classification_metrics(logits, targets, class_names=names)
    assert m["classes_absent"] == ["c4", "c5"]
    assert m["auc_classes"] == 4
    present = [roc_auc_score(targets == k, probs[:, k]) for k in range(4)]
    assert m["auc_ovr_macro"] == pytest.approx(np.mean(present), abs=1e-5)
    assert math.isnan(m["per_class"]["c4"]["auc"]) and math.isnan(m["per_class"]["c5"]["auc"])
    # macro averages over the classes in targets or predictions, as sklearn's default labels do
    assert m["f1_macro"] == pytest.approx(f1_score(targets, pred, average="macro", zero_division=0), abs=1e-5)
    assert m["recall_macro"] == pytest.approx(recall_score(targets, pred, average="macro", zero_division=0), abs=1e-5)
    assert m["f1_weighted"] == pytest.approx(f1_score(targets, pred, average="weighted", zero_division=0), abs=1e-5)
    assert m["per_class"]["c5"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
        "auc": m["per_class"]["c5"]["auc"],
    }


def test_auc_undefined_when_only_one_class_is_true():
    m = classification_metrics(HAND_PROBS, np.zeros(6, dtype=int))
    assert m["auc_classes"] == 0 and math.isnan(m["auc_ovr_macro"])
    assert [x.name for x in model_index(m, dataset_name="d", dataset_type="t")].count("auc_ovr_macro") == 0


@pytest.mark.parametrize(
    ("scores", "targets", "match"),
    [
        (np.ones((4, 2)) / 2, [0, 1, 0, 1], r"\[N, 3\]"),
        (np.ones((4, 3)) / 3, [0, 1, 2], "4 rows but targets has 3"),
        (np.ones((2, 3)) / 3, [0, 3], "target 3 is not a class index"),
        (np.ones((2, 3)) / 3, [0, -1], "target -1"),
        (np.full((2, 3), np.nan), [0, 1], "NaN"),
    ],
)
def test_bad_inputs_are_rejected(scores, targets, match):
    acc = ClassificationAccumulator(3)
    with pytest.raises(DataError, match=match):
        acc.update(scores, targets)


def test_bad_construction_and_empty_compute():
    with pytest.raises(DataError, match="num_classes=3"):
        ClassificationAccumulator(3, ["a", "b"])
    with pytest.raises(DataError, match="unique"):
        ClassificationAccumulator(class_names=["a", "a", "b"])
    with pytest.raises(DataError, match="no samples"):
        ClassificationAccumulator(4).compute()


def test_top_confusions_and_order():
    cm = np.array([[5, 3, 0, 1], [0, 4, 0, 0], [2, 0, 1, 6], [0, 0, 0, 0]])
    names = ["w", "x", "y", "z"]
    top = top_confusions(cm, names, 3)
    assert [(t["true"], t["predicted"], t["count"]) for t in top] == [("y", "z", 6), ("w", "x", 3), ("y", "w", 2)]
    assert top[0]["share"] == pytest.approx(6 / 9)
    assert len(top_confusions(cm, names, 99)) == 4  # only non-empty off-diagonal cells
    # recall: y 1/9, w 5/9, x 1; z has no samples so it goes last
    assert confusion_order(cm, "recall").tolist() == [2, 0, 1, 3]
    assert sorted(confusion_order(cm, "cluster").tolist()) == [0, 1, 2, 3]
    assert per_class_report(cm, names)["z"]["support"] == 0
    with pytest.raises(DataError, match="order="):
        confusion_order(cm, "alphabetical")


# ---- report and figures ----


def _strict_json(path):
    def no_constants(value):
        raise AssertionError(f"metrics.json holds {value}, which is not valid JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)


def test_report_files(tmp_path):
    rng = np.random.default_rng(3)
    names = [f"species {i} disease" for i in range(8)]
    logits, targets = _noisy_logits(rng, 90, 8, classes=7)  # the last class is absent
    m = classification_metrics(logits, targets, class_names=names)
    text = text_generation_metrics(["la feuille a des taches brunes"], ["la feuille a des taches brunes"])
    files = write_evaluation_report(
        tmp_path / "eval", m, class_names=names, confusion=m["confusion_matrix"], text_metrics=text
    )
    assert set(files) == {"metrics", "confusion_matrix", "per_class_f1", "report"}
    for key in ("confusion_matrix", "per_class_f1"):
        with Image.open(files[key]) as im:
            assert im.format == "PNG"
            assert 400 <= im.width <= 4000 and 300 <= im.height <= 4000, im.size
    data = _strict_json(files["metrics"])
    assert data["accuracy"] == pytest.approx(m["accuracy"])
    assert data["per_class"][names[0]]["support"] == m["per_class"][names[0]]["support"]
    assert data["per_class"][names[7]]["auc"] is None  # nan written as null
    assert data["class_names"] == names and data["text"]["bleu"] == pytest.approx(1.0)
    md = files["report"].read_text(encoding="utf-8")
    assert "| f1_macro |" in md and "| bleu | 1.0000 |" in md and f"absent from the evaluation set: {names[7]}" in md
    assert f"| {m['top_confusions'][0]['true']} | {m['top_confusions'][0]['predicted']} |" in md


def test_report_from_confusion_only(tmp_path):
    cm = [[3, 1], [0, 4]]
    files = write_evaluation_report(tmp_path, {"accuracy": 7 / 8}, class_names=["ok", "sick"], confusion=cm)
    data = _strict_json(files["metrics"])
    assert data["per_class"]["ok"]["recall"] == pytest.approx(0.75)
    assert data["top_confusions"] == [{"true": "ok", "predicted": "sick", "count": 1, "share": 0.25}]
    with pytest.raises(DataError, match=r"\[C, C\]"):
        write_evaluation_report(tmp_path, {}, class_names=["a", "b", "c"], confusion=cm)


def test_133_classes_render_and_list_top_confusions(tmp_path):
    rng = np.random.default_rng(4)
    c = 133
    names = [f"Plant{i // 7:02d}___disease_{i % 7}" for i in range(c)]
    logits, targets = _noisy_logits(rng, 1400, c, signal=4.0)
    logits[targets == 17, 90] += 8.0  # plant a dominant confusion 17 -> 90
    m = classification_metrics(logits, targets, class_names=names)
    assert (m["top_confusions"][0]["true"], m["top_confusions"][0]["predicted"]) == (names[17], names[90])
    files = write_evaluation_report(tmp_path, m, class_names=names)
    with Image.open(files["confusion_matrix"]) as im:
        assert 800 <= im.width <= 3000 and 700 <= im.height <= 2500, im.size
    with Image.open(files["per_class_f1"]) as im:
        assert im.height > im.width  # one bar per class, names legible: a tall chart
    md = files["report"].read_text(encoding="utf-8")
    assert f"| {names[17]} | {names[90]} |" in md
    assert len(_strict_json(files["metrics"])["top_confusions"]) == 15
    # the clustered order renders too and is a permutation
    assert plot_confusion_matrix(m["confusion_matrix"], names, tmp_path / "cm.png", order="cluster").is_file()


def test_model_index_feeds_the_card():
    m = classification_metrics(HAND_PROBS, HAND_TARGETS, class_names=["a", "b", "c"])
    text = {"bleu": 0.25, "rougeL_f": 0.5, "perplexity": 12.0, "num_texts": 4}
    metrics = model_index(m, dataset_name="leaves", dataset_type="imagefolder", split="test", text_metrics=text)
    assert all(isinstance(x, Metric) for x in metrics)
    by_name = {x.name: x.value for x in metrics}
    assert by_name["accuracy"] == pytest.approx(4 / 6) and by_name["perplexity"] == 12.0
    assert set(by_name) == {"accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro"} | {
        "auc_ovr_macro",
        "bleu",
        "rougeL_f",
        "perplexity",
    }
    card = adapter_card(
        model_name="plant-test",
        base_model="google/vit-base-patch16-224",
        pipeline_tag="image-classification",
        metrics=metrics,
    )
    assert "model-index" in str(card) and "f1_macro" in str(card)


# ---- text generation ----


def test_text_metrics_identical_and_disjoint():
    refs = ["les feuilles présentent des taches brunes cerclées de jaune", "mildiou poudreux sur la face supérieure"]
    same = text_generation_metrics(refs, refs)
    assert same["bleu"] == pytest.approx(1.0) and same["rougeL_f"] == pytest.approx(1.0)
    disjoint = text_generation_metrics(["aucun mot commun ici vraiment", "rien du tout pareil"], refs)
    assert disjoint["bleu"] == 0.0 and disjoint["rougeL_f"] == 0.0
    assert same["num_texts"] == 2


def test_rouge_l_by_hand_keeps_accents_and_takes_the_best_reference():
    # LCS("a b c d", "a c d e") = 3 -> P = R = F = 3/4
    assert text_generation_metrics(["a b c d"], ["a c d e"])["rougeL_f"] == pytest.approx(0.75)
    # accented words stay whole: 1 of 2 words shared -> F = 1/2 (torchmetrics' ASCII-only default normaliser
    # turns both "été" and "ôté" into "t" and would score 1)
    assert text_generation_metrics(["feuille été"], ["feuille ôté"])["rougeL_f"] == pytest.approx(0.5)
    multi = text_generation_metrics(["a b c d"], [["x y", "a b c d"]])
    assert multi["rougeL_f"] == pytest.approx(1.0) and multi["bleu"] == pytest.approx(1.0)
    assert text_generation_metrics(["Taches, BRUNES!"], ["taches brunes"])["rougeL_f"] == pytest.approx(1.0)


def test_text_metrics_errors_and_perplexity():
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        text_generation_metrics(["a", "b"], ["a"])
    with pytest.raises(DataError, match="lists of strings"):
        text_generation_metrics("a b", "a b")
    assert text_generation_metrics(["a b c d"], ["a b c d"], mean_token_nll=2.0)["perplexity"] == pytest.approx(
        math.exp(2)
    )
    assert perplexity_from_loss(0.0) == 1.0
    assert perplexity_from_loss(1.5) == pytest.approx(math.exp(1.5))
    with pytest.raises(DataError, match="mean_token_nll"):
        perplexity_from_loss(float("nan"))


def test_perplexity_from_logits_is_exp_cross_entropy():
    assert perplexity_from_logits(torch.zeros(2, 5, 11), torch.zeros(2, 5, dtype=torch.long)) == pytest.approx(11.0)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 20, generator=gen)
    targets = torch.randint(0, 20, (3, 6), generator=gen)
    targets[0, 4:] = -100  # padding
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, 20), targets.reshape(-1), ignore_index=-100)
    assert perplexity_from_logits(logits, targets) == pytest.approx(math.exp(float(nll)), rel=1e-5)
    with pytest.raises(DataError, match=r"\[B, T, V\]"):
        perplexity_from_logits(torch.zeros(5, 11), torch.zeros(5, dtype=torch.long))
