"""HLBB features, the region classifier (skops save / load / hub) and the feature analysis of hubkit.segma."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from PIL import Image

from hubkit import list_repos
from hubkit.errors import ConfigError, MissingModelFileError, UnsafeWeightsError
from hubkit.segma.analysis import analyze_features
from hubkit.segma.classifier import CONFIG_FILE, MODEL_FILE, RegionClassifier
from hubkit.segma.features import (
    FEATURE_GROUPS,
    FEATURE_NAMES,
    N_FEATURES,
    hlbb_features,
    hlbb_features_batch,
)

R, G, B, LBP = slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 58)
AREA, ASPECT, COMPACT = 58, 59, 60


def square_mask(size=(200, 200), top=50, left=40, side=100):
    mask = np.zeros(size, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def disc_mask(size=(200, 200), centre=(100, 100), radius=60):
    yy, xx = np.mgrid[: size[0], : size[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


# ---- the feature layout ----


def test_feature_names_and_groups_cover_the_61_features_once():
    assert N_FEATURES == len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == 61
    assert FEATURE_NAMES[0] == "hist_r_00" and FEATURE_NAMES[15] == "hist_r_15" and FEATURE_NAMES[47] == "hist_b_15"
    assert FEATURE_NAMES[48:58] == tuple(f"lbp_{k}" for k in range(10))
    assert FEATURE_NAMES[58:] == ("area_ratio", "aspect_ratio", "compactness")
    assert sorted(i for group in FEATURE_GROUPS.values() for i in group) == list(range(61))


# ---- features of known shapes ----


def test_red_square_histograms_area_aspect_and_compactness():
    image = np.zeros((200, 200, 3), dtype=np.uint8)
    mask = square_mask(side=100)
    image[mask] = (255, 0, 0)
    features = hlbb_features(image, mask)

    assert features.dtype == np.float32 and features.shape == (61,)
    np.testing.assert_array_equal(features[R], np.eye(16)[15])  # all of R in the top bin (240..255)
    np.testing.assert_array_equal(features[G], np.eye(16)[0])
    np.testing.assert_array_equal(features[B], np.eye(16)[0])
    assert features[LBP].sum() == pytest.approx(1.0, abs=1e-6)
    assert (features[LBP] >= 0).all()
    assert features[AREA] == 100 * 100 / (200 * 200)  # exact: 0.25
    assert features[ASPECT] == 1.0
    # skimage's perimeter estimate of an s-pixel square is 4 * (s - 1) (it walks the border pixels' centres), so the
    # compactness is pi/4 * (s / (s - 1))**2: 0.801 for s = 100, within 0.02 of the continuous pi/4 = 0.785.
    assert abs(features[COMPACT] - math.pi / 4) < 0.02


def test_pil_image_gives_the_same_features_as_its_array():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    mask = disc_mask((64, 80), (30, 40), 20)
    np.testing.assert_array_equal(hlbb_features(Image.fromarray(array), mask), hlbb_features(array, mask))


def test_disc_is_close_to_compactness_one_and_more_compact_than_a_square():
    mask = disc_mask(radius=60)
    image = np.full((200, 200, 3), 128, dtype=np.uint8)
    disc = hlbb_features(image, mask)
    # The 4-neighbourhood perimeter estimate runs about 5% long on a curved border, so a digital disc scores about
    # 0.90 rather than 1: a tolerance of 0.12 holds for radii from 10 to 100 pixels.
    assert 0.88 <= disc[COMPACT] <= 1.0
    assert disc[COMPACT] > hlbb_features(image, square_mask())[COMPACT]
    assert disc[ASPECT] == 1.0
    assert disc[AREA] == pytest.approx(mask.sum() / mask.size)


@pytest.mark.parametrize(("height", "width"), [(20, 90), (30, 70), (90, 15)])
def test_elongated_rectangle_aspect_is_width_over_height(height, width):
    mask = np.zeros((120, 120), dtype=bool)
    mask[10 : 10 + height, 5 : 5 + width] = True
    features = hlbb_features(np.zeros((120, 120, 3), dtype=np.uint8), mask)
    assert features[ASPECT] == np.float32(width / height)
    assert 0.0 <= features[COMPACT] <= 1.0


def test_tiny_and_thin_masks_keep_compactness_within_0_1():
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    pixel = np.zeros((10, 10), dtype=bool)
    pixel[4, 4] = True
    line = np.zeros((10, 10), dtype=bool)
    line[5, 1:9] = True
    pixel_features, line_features = hlbb_features_batch(image, [pixel, line])
    assert pixel_features[COMPACT] == 1.0  # perimeter 0: defined as 1
    assert 0.0 <= line_features[COMPACT] <= 1.0  # the raw 4*pi*A/P^2 is above 1 here: clipped
    assert line_features[ASPECT] == 8.0


def test_batch_equals_single_masks():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    masks = [square_mask((90, 120), 5, 10, 30), disc_mask((90, 120), (45, 60), 25), rng.random((90, 120)) > 0.6]
    batch = hlbb_features_batch(image, masks)
    assert batch.shape == (3, 61) and batch.dtype == np.float32
    for row, mask in zip(batch, masks, strict=True):
        np.testing.assert_array_equal(row, hlbb_features(image, mask))
    np.testing.assert_array_equal(hlbb_features_batch(image, np.stack(masks)), batch)
    assert hlbb_features_batch(image, []).shape == (0, 61)


def test_multi_component_mask_uses_the_whole_area_and_summed_perimeters():
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    left, right = square_mask((100, 100), 10, 10, 20), square_mask((100, 100), 60, 60, 20)
    both = hlbb_features(image, left | right)
    one = hlbb_features(image, left)
    assert both[AREA] == pytest.approx(2 * one[AREA])
    # A = 2a, P = 2p: 4*pi*2a / (2p)^2 is half a single square's compactness.
    assert both[COMPACT] == pytest.approx(one[COMPACT] / 2, rel=1e-6)
    assert both[ASPECT] == 1.0  # the bounding box of both squares is 70 x 70


# ---- features against a direct skimage computation on a real image ----


def test_lbp_and_histograms_match_skimage_inside_the_mask_on_camera():
    from skimage import data
    from skimage.feature import local_binary_pattern

    camera = data.camera()  # 512 x 512 grey uint8
    mask = disc_mask(camera.shape, (200, 260), 120) & (camera > 60)
    expected_lbp = local_binary_pattern(camera, P=8, R=1, method="uniform")[mask]
    expected_lbp = np.histogram(expected_lbp, bins=10, range=(0, 10))[0] / mask.sum()
    expected_grey = np.histogram(camera[mask], bins=16, range=(0, 256))[0] / mask.sum()

    for image in (camera, np.stack([camera] * 3, axis=-1)):  # a grey array, and the same as RGB
        features = hlbb_features(image, mask)
        np.testing.assert_allclose(features[LBP], expected_lbp, rtol=1e-6)
        for channel in (R, G, B):
            np.testing.assert_allclose(features[channel], expected_grey, rtol=1e-6)
    assert expected_lbp[9] > 0 and np.count_nonzero(expected_lbp) >= 8  # a real texture, not a trivial one


# ---- bad inputs ----


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.zeros((50, 60), dtype=bool), r"mask is empty \(no pixel set\)"),
        (np.ones((60, 50), dtype=bool), r"mask has shape \(60, 50\) but the image is \(H, W\) = \(50, 60\)"),
        (np.ones((50, 60, 1), dtype=bool), r"mask has shape \(50, 60, 1\); it must be a 2-D \(H, W\) boolean array"),
        (np.full((50, 60), 7, dtype=np.uint8), r"must be a boolean mask \(or 0 / 1 values\)"),
    ],
)
def test_bad_masks_raise_config_error(mask, message):
    image = np.zeros((50, 60, 3), dtype=np.uint8)
    with pytest.raises(ConfigError, match=message):
        hlbb_features(image, mask)


def test_batch_errors_name_the_mask_and_refuse_a_single_2d_mask():
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    good, empty = np.ones((20, 20), dtype=bool), np.zeros((20, 20), dtype=bool)
    with pytest.raises(ConfigError, match=r"masks\[1\] is empty"):
        hlbb_features_batch(image, [good, empty])
    with pytest.raises(ConfigError, match=r"call hlbb_features for a single mask"):
        hlbb_features_batch(image, good)


def test_0_1_integer_masks_are_accepted():
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    mask = square_mask((20, 20), 2, 2, 10)
    np.testing.assert_array_equal(hlbb_features(image, mask.astype(np.uint8)), hlbb_features(image, mask))


# ---- the region classifier ----


def separable_data(n_per_class=60, seed=0):
    """Three classes, each shifted in its own few features; the rest is noise."""
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for k, name in enumerate(["cat", "dog", "background"]):
        block = rng.random((n_per_class, N_FEATURES))
        block[:, [3 + k, 50 + k, 58]] += 1.5 * (k + 1)
        features.append(block)
        labels += [name] * n_per_class
    features = np.concatenate(features)
    order = rng.permutation(len(labels))
    return features[order], [labels[i] for i in order]


@pytest.fixture(scope="module")
def trained():
    features, labels = separable_data()
    return RegionClassifier(n_estimators=40).fit(features[:120], labels[:120]), features, labels


def test_classifier_defaults_are_the_seeds():
    clf = RegionClassifier()
    assert (clf.n_estimators, clf.random_state) == (100, 42)
    assert clf.classes == [] and not clf.is_fitted


def test_classifier_separable_features_give_high_held_out_accuracy(trained):
    clf, features, labels = trained
    predicted = clf.predict(features[120:])
    accuracy = np.mean([p == t for p, t in zip(predicted, labels[120:], strict=True)])
    assert accuracy >= 0.95
    assert clf.classes == ["background", "cat", "dog"]
    proba = clf.predict_proba(features[120:])
    assert proba.shape == (60, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert clf.predict(features[0]) == clf.predict(features[:1])  # one (61,) vector is one row


def test_save_load_round_trip_is_identical(trained, tmp_path):
    from hubkit.cards import read_card, validate_card

    clf, features, labels = trained
    folder = clf.save(tmp_path / "clf")
    assert sorted(p.name for p in folder.iterdir()) == sorted([MODEL_FILE, CONFIG_FILE, "README.md"])
    assert not any(p.suffix in (".pkl", ".pickle") for p in folder.iterdir())

    loaded = RegionClassifier.load(folder)
    np.testing.assert_array_equal(loaded.predict_proba(features), clf.predict_proba(features))
    assert loaded.classes == clf.classes and loaded.predict(features) == clf.predict(features)
    assert (loaded.n_estimators, loaded.random_state, loaded.n_training_regions) == (40, 42, 120)

    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["feature_names"] == list(FEATURE_NAMES)
    assert config["classes"] == ["background", "cat", "dog"]
    assert (config["n_estimators"], config["random_state"], config["n_training_regions"]) == (40, 42, 120)
    assert config["sklearn_version"] and sum(config["class_counts"].values()) == 120

    card = read_card(folder)
    assert card.data.library_name == "sklearn"
    assert set(card.data.tags) >= {"hubkit", "segma", "hlbb"}
    assert validate_card(folder) == []


def test_push_to_the_local_store_and_load_by_repo_id(trained, isolated_home):
    clf, features, labels = trained
    first = clf.push("me/segma-regions", message="first")
    assert MODEL_FILE in first.files and first.message == "first"
    assert [ref.repo_id for ref in list_repos()] == ["me/segma-regions"]  # the test's own store (conftest)
    assert isolated_home.is_dir()

    other = RegionClassifier(n_estimators=5, random_state=0).fit(features[:30], labels[:30])
    other.push("me/segma-regions")
    latest = RegionClassifier.load("me/segma-regions")
    pinned = RegionClassifier.load("me/segma-regions", revision=first.id)
    np.testing.assert_array_equal(latest.predict_proba(features), other.predict_proba(features))
    np.testing.assert_array_equal(pinned.predict_proba(features), clf.predict_proba(features))


def test_folder_with_only_a_pickle_is_refused(trained, tmp_path):
    clf, _, _ = trained
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(clf.forest))
    with pytest.raises(UnsafeWeightsError, match=r"model\.pkl but no region_classifier\.skops.*does not load pickles"):
        RegionClassifier.load(tmp_path)


def test_a_pickle_named_like_the_skops_file_is_refused(trained, tmp_path):
    clf, _, _ = trained
    (tmp_path / MODEL_FILE).write_bytes(pickle.dumps(clf.forest))
    with pytest.raises(UnsafeWeightsError, match=r"is a pickle, not a skops file"):
        RegionClassifier.load(tmp_path)


def test_skops_file_with_untrusted_types_is_refused(trained, tmp_path):
    import skops.io as sio

    clf, _, _ = trained
    sio.dump({"forest": clf.forest, "hook": math.sqrt}, tmp_path / MODEL_FILE)
    with pytest.raises(UnsafeWeightsError, match=r"math\.sqrt"):
        RegionClassifier.load(tmp_path)


def test_folder_without_the_model_file_names_the_folder(tmp_path):
    with pytest.raises(MissingModelFileError, match=rf"{tmp_path.name}.*region_classifier\.skops"):
        RegionClassifier.load(tmp_path)


def test_wrong_feature_count_is_refused(trained, tmp_path):
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    clf, features, labels = trained
    with pytest.raises(ConfigError, match=r"shape \(120, 60\); expected \(N, 61\)"):
        RegionClassifier().fit(features[:120, :60], labels[:120])
    with pytest.raises(ConfigError, match=r"shape \(5, 62\); expected \(N, 61\)"):
        clf.predict(np.zeros((5, 62)))
    forest = RandomForestClassifier(n_estimators=3).fit(features[:, :60], labels)
    sio.dump(forest, tmp_path / MODEL_FILE)
    with pytest.raises(ConfigError, match=r"trained on 60 features, not the 61 HLBB features"):
        RegionClassifier.load(tmp_path)


def test_fit_refuses_bad_training_data():
    features, labels = separable_data(10)
    with pytest.raises(ConfigError, match=r"Got 30 feature rows but 29 labels"):
        RegionClassifier().fit(features, labels[:-1])
    with pytest.raises(ConfigError, match=r"at least 2 classes"):
        RegionClassifier().fit(features, ["cat"] * 30)
    bad = features.copy()
    bad[4, 59] = np.nan
    with pytest.raises(ConfigError, match=r"NaN or infinite value\(s\), first at row 4, feature 'aspect_ratio'"):
        RegionClassifier().fit(bad, labels)
    with pytest.raises(ConfigError, match=r"not trained"):
        RegionClassifier().predict(features)
    with pytest.raises(ConfigError, match=r"n_estimators=0"):
        RegionClassifier(n_estimators=0)


# ---- the feature analysis ----


def test_analysis_finds_the_informative_feature_and_writes_files(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    labels = ["cat" if i % 2 else "dog" for i in range(n)]
    features = rng.random((n, N_FEATURES))
    informative = 52  # lbp_4
    features[:, informative] = np.asarray([lab == "dog" for lab in labels]) + rng.normal(0, 0.1, n)
    features[:, 60] = 0.5  # a constant feature

    report = analyze_features(features, labels, out_dir=tmp_path / "analysis")

    mutual_info = np.asarray(report["mutual_info"])
    assert int(np.argmax(mutual_info)) == informative
    assert report["categories"]["texture_lbp"]["top_features"][0] == informative
    assert len(report["categories"]["color_histogram"]["top_features"]) == 5
    assert report["categories"]["geometric"]["top_features"] == sorted(range(58, 61), key=lambda i: -mutual_info[i])[:5]
    assert int(np.argmax(report["rf_importance"])) == informative
    assert report["constant_features"] == [60] and mutual_info[60] == 0.0
    correlation = np.asarray(report["correlation"])
    assert correlation.shape == (61, 61) and np.isfinite(correlation).all() and (correlation[60] == 0).all()
    assert any("constant" in note for note in report["notes"])
    dog_mean = report["class_means"]["dog"][informative]
    assert dog_mean == pytest.approx(np.mean(features[[lab == "dog" for lab in labels], informative]))

    files = report["files"]
    for key in ("correlation", "mutual_information", "rf_importance"):
        path = tmp_path / "analysis" / f"{key}.png"
        assert files[key] == str(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as png:
            assert png.format == "PNG" and png.width > 300
    saved = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert saved == json.loads(json.dumps(report))


def test_analysis_is_deterministic_and_refuses_bad_input():
    features, labels = separable_data(15)
    first, second = analyze_features(features, labels), analyze_features(features, labels)
    assert first == second and first["files"] == {}
    with pytest.raises(ConfigError, match=r"expected \(N, 61\)"):
        analyze_features(features[:, :10], labels)
    with pytest.raises(ConfigError, match=r"at least 2 classes"):
        analyze_features(features, ["cat"] * len(labels))
