"""Generation metrics: stain colour statistics, encoder Frechet distance (torchmetrics), cosine, before/after."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color

from hubkit.cards import Metric
from hubkit.errors import DataError
from hubkit.metrics.generation import (
    COLOUR_KEYS,
    ColourStats,
    EncoderFeatures,
    GenerationReport,
    before_after,
    card_metrics,
    colour_distance,
    colour_statistics,
    embedding_cosine,
    encoder_fid,
    evaluate_generation,
    frechet_distance,
    frechet_distance_pca,
)


def tissue(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    """n random crops of the IHC slide, uint8 (n, size, size, 3)."""
    from skimage import data

    slide = data.immunohistochemistry()
    rng = np.random.default_rng(seed)
    return np.stack([slide[y : y + size, x : x + size] for y, x in rng.integers(0, 512 - size, (n, 2))])


def shifted(images: np.ndarray, lab_shift=(0.0, 12.0, -8.0)) -> np.ndarray:
    lab = color.rgb2lab(images) + np.asarray(lab_shift)
    return (np.clip(color.lab2rgb(lab), 0, 1) * 255 + 0.5).astype(np.uint8)


class TinyEncoder(torch.nn.Module):
    """A fixed random conv net: images (N, 3, H, W) -> (N, 24)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 24, 5, stride=2)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(2, 3)) + 0.05 * torch.tanh(self.conv(x)).amax(dim=(2, 3))


# ---- colour statistics ----


def test_colour_distance_is_zero_for_a_set_and_itself_and_symmetric():
    a, b = tissue(5, seed=0), shifted(tissue(4, seed=1))
    same = colour_distance(a, a)
    assert set(same) == set(COLOUR_KEYS)
    assert all(value == pytest.approx(0.0, abs=1e-12) for value in same.values())
    ab, ba = colour_distance(a, b), colour_distance(b, a)
    for key in COLOUR_KEYS:
        assert ab[key] == pytest.approx(ba[key], rel=1e-9, abs=1e-12), key
    assert ab["colour_distance"] > 3 and ab["colour_distance"] == ab["lab_hist_distance"]
    one = colour_distance(a[:1], a[:1])  # one image is a set
    assert one["colour_distance"] == 0.0


def test_colour_distance_of_flat_colours_by_hand():
    """Two single-colour images: the LAB mean distance is the CIE76 difference of the two colours, each channel's
    histogram W1 the channel's difference (to the one-unit bin), the HED distances those of rgb2hed."""
    c1, c2 = np.array([200, 120, 150], np.uint8), np.array([120, 90, 170], np.uint8)
    a = np.broadcast_to(c1, (1, 8, 8, 3)).copy()
    b = np.broadcast_to(c2, (2, 8, 8, 3)).copy()
    lab1, lab2 = color.rgb2lab(c1[None, None])[0, 0], color.rgb2lab(c2[None, None])[0, 0]
    hed1, hed2 = color.rgb2hed(c1[None, None])[0, 0], color.rgb2hed(c2[None, None])[0, 0]
    d = colour_distance(a, b)
    assert d["lab_mean_distance"] == pytest.approx(np.linalg.norm(lab1 - lab2), rel=1e-9)
    assert d["lab_std_distance"] == pytest.approx(0.0, abs=1e-9)
    for k, name in enumerate("Lab"):
        assert d[f"lab_w1_{name}"] == pytest.approx(abs(lab1[k] - lab2[k]), abs=1.0)
    assert d["hed_mean_distance"] == pytest.approx(np.linalg.norm(hed1 - hed2), rel=1e-9)
    assert d["hed_w1"] == pytest.approx(np.abs(hed1 - hed2).mean(), rel=1e-6)


def test_colour_distance_grows_with_the_shift():
    base = tissue(6)
    values = [colour_distance(shifted(base, (0, s, -s)), base)["colour_distance"] for s in (0.0, 4.0, 10.0, 20.0)]
    assert values[0] < 0.5  # rounding to uint8 only
    assert values == sorted(values) and values[-1] > 10


def test_colour_statistics_accepts_the_usual_image_forms():
    images = tissue(3)
    reference = colour_statistics(images)
    forms = [
        list(images),
        [Image.fromarray(i) for i in images],
        torch.from_numpy(images).permute(0, 3, 1, 2),  # uint8 NCHW
        torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255,  # float NCHW in [0, 1]
        images.astype(np.float32) / 255,  # float NHWC
    ]
    for form in forms:
        stats = colour_statistics(form)
        assert stats.num_images == 3 and stats.num_pixels == 3 * 32 * 32
        assert np.allclose(stats.lab_mean, reference.lab_mean, atol=1e-4)
        assert np.allclose(stats.hed_quantiles, reference.hed_quantiles, atol=1e-6)
    assert all(h.sum() == pytest.approx(1.0) for h in reference.lab_hist)
    assert set(reference.summary()) >= {"hed_H_mean", "hed_D_std", "lab_L_mean", "lab_b_std"}


def test_colour_stats_round_trip_through_json():
    a, b = tissue(4), shifted(tissue(4, seed=3))
    stats = ColourStats.from_dict(json.loads(json.dumps(colour_statistics(b).to_dict())))
    assert colour_distance(a, stats) == pytest.approx(colour_distance(a, b), rel=1e-12)
    with pytest.raises(DataError, match="colour-statistics"):
        ColourStats.from_dict({"num_images": 1})


def test_bad_image_sets_raise():
    with pytest.raises(DataError, match="empty"):
        colour_statistics([])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        colour_statistics(tissue(2).astype(np.float32))  # 0..255 floats: a common mistake
    with pytest.raises(DataError, match="single"):
        colour_statistics(Image.new("RGB", (8, 8)))


# ---- Frechet distance ----


def exact_gaussian_samples(mean, cov, n: int, seed: int) -> np.ndarray:
    """n samples whose sample mean and (unbiased) sample covariance are exactly `mean` and `cov`."""
    x = np.random.default_rng(seed).normal(size=(n, len(mean)))
    x -= x.mean(0)
    white = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T
    return white @ np.linalg.cholesky(cov).T + mean


def test_frechet_distance_matches_the_closed_form():
    # N(mu1, diag(1, 4, 9)) vs N(mu2, diag(4, 1, 1)): |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2 = 5 + 1 + 1 + 4
    a = exact_gaussian_samples(np.array([1.0, 2.0, 0.0]), np.diag([1.0, 4.0, 9.0]), 50, seed=0)
    b = exact_gaussian_samples(np.zeros(3), np.diag([4.0, 1.0, 1.0]), 40, seed=1)
    assert frechet_distance(a, b) == pytest.approx(11.0, rel=1e-6)
    assert frechet_distance(b, a) == pytest.approx(11.0, rel=1e-6)
    # full covariances: compare with the textbook formula through scipy's sqrtm
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(2)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    g1, g2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = g1 @ g1.T + np.eye(5), g2 @ g2.T + 0.5 * np.eye(5)
    root = sqrtm(sqrtm(s1) @ s2 @ sqrtm(s1)).real
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * root)
    x, y = exact_gaussian_samples(m1, s1, 60, 3), exact_gaussian_samples(m2, s2, 70, 4)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_mean_shift():
    feats = np.random.default_rng(0).normal(size=(30, 8))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)
    direction = np.random.default_rng(1).normal(size=8)
    direction /= np.linalg.norm(direction)
    previous = 0.0
    for step in (0.5, 1.0, 2.0, 4.0):  # same covariance: the distance is exactly |shift|^2
        value = frechet_distance(feats + step * direction, feats)
        assert value == pytest.approx(step**2, rel=1e-6)
        assert value > previous
        previous = value


def test_frechet_distance_with_fewer_samples_than_dimensions():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 40)), rng.normal(size=(6, 40))  # N < D: singular covariances
    assert math.isfinite(frechet_distance(a, b)) and frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    value, k = frechet_distance_pca(a, b, dims=16)
    assert k == 5 and math.isfinite(value) and value > 0  # k = N - 1
    assert frechet_distance_pca(a, a, dims=16)[0] == pytest.approx(0.0, abs=1e-8)
    shift = np.zeros(40)
    shift[3] = 30.0  # a large shift dominates the pooled variance: the top axis carries it
    assert frechet_distance_pca(a + shift, a, dims=4)[0] == pytest.approx(900.0, rel=1e-2)
    with pytest.raises(DataError, match="at least 2"):
        frechet_distance(a[:1], b)
    with pytest.raises(DataError, match="width"):
        frechet_distance(a, b[:, :5])


def test_encoder_fid_uses_torchmetrics_with_the_custom_extractor_only():
    images, other = tissue(8), shifted(tissue(8, seed=5))
    extractor = EncoderFeatures(TinyEncoder(), image_size=28)
    fid = encoder_fid(images, other, extractor)
    features = frechet_distance(extractor.embed(images), extractor.embed(other))
    assert fid == pytest.approx(features, rel=1e-4)  # float32 features inside torchmetrics
    assert fid > 0 and encoder_fid(images, images, extractor) == pytest.approx(0.0, abs=1e-5)
    # the custom-module path of torchmetrics needs neither of Inception's dependencies (and none is installed here)
    assert "torch_fidelity" not in sys.modules and "torchvision" not in sys.modules
    assert importlib.util.find_spec("torch_fidelity") is None


def test_encoder_features_unwraps_transformers_outputs():
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(
        Dinov2Config(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
    ).eval()
    extractor = EncoderFeatures(model, image_size=28, batch_size=2)
    images = tissue(3)
    feats = extractor.embed(images)
    assert feats.shape == (3, 32) and extractor.num_features == 32
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    pixels = torch.nn.functional.interpolate(pixels, size=(28, 28), mode="bilinear", antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    with torch.no_grad():
        expected = model(pixel_values=(pixels - mean[:, None, None]) / std[:, None, None]).pooler_output
    assert torch.allclose(feats, expected, atol=1e-5)
    tokens = EncoderFeatures(lambda x: torch.ones(len(x), 4, 6), mean=None, std=None).embed(images)
    assert tokens.shape == (3, 6)  # (N, T, D) outputs are averaged over the tokens


# ---- cosine and the whole evaluation ----


def test_embedding_cosine():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(5, 7))
    same = embedding_cosine(e, e)
    assert same["cosine_mean"] == pytest.approx(1.0) and same["cosine_std"] == pytest.approx(0.0, abs=1e-7)
    assert embedding_cosine(-e, e)["cosine_mean"] == pytest.approx(-1.0)
    angle = embedding_cosine([[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]])
    assert angle["cosine_mean"] == pytest.approx(np.sqrt(0.5) / 2)
    with pytest.raises(DataError, match="row by row"):
        embedding_cosine(e, e[:3])


def test_evaluate_generation_perfect_and_shifted_samples():
    inputs = tissue(4)
    encoder = TinyEncoder()
    # "generated" = two copies of each input; the target is that very set: every distance is 0, cosine 1
    perfect = [[x, x] for x in inputs]
    target = np.repeat(inputs, 2, axis=0)
    good = evaluate_generation(perfect, inputs, target, encoder, image_size=28)
    assert good["colour_distance"] == pytest.approx(0.0, abs=1e-12)
    assert good["fd"] == pytest.approx(0.0, abs=1e-5) and good["fd_pca"] == pytest.approx(0.0, abs=1e-5)
    assert good["cosine_mean"] == pytest.approx(1.0, abs=1e-6) and good["cosine_std"] == pytest.approx(0.0, abs=1e-6)
    assert (good["num_inputs"], good["num_generated"], good["num_target"], good["feature_dim"]) == (4, 8, 8, 24)
    assert good["fd_pca_dims"] == 7 and any("singular" in note for note in good["notes"])
    bad = evaluate_generation([[shifted(x[None])[0]] * 2 for x in inputs], inputs, target, encoder, image_size=28)
    assert bad["colour_distance"] > 3 and bad["fd"] > good["fd"] and bad["cosine_mean"] < 1.0
    json.dumps(bad)
    lone = evaluate_generation([[inputs[0]]], inputs[:1], inputs[:1], encoder, image_size=28)
    assert math.isnan(lone["fd"]) and any("at least 2" in note for note in lone["notes"])
    quick = evaluate_generation(perfect, inputs, target, encoder, image_size=28, full_fd=False)
    assert math.isnan(quick["fd"]) and quick["fd_pca"] == pytest.approx(0.0, abs=1e-5)
    assert lone["cosine_mean"] == pytest.approx(1.0, abs=1e-6) and lone["colour_distance"] == 0.0
    with pytest.raises(DataError, match="one per input"):
        evaluate_generation(perfect[:3], inputs, target, encoder)


def test_before_after_card_metrics_and_report(tmp_path):
    base = {"colour_distance": 20.0, "lab_mean_distance": 30.0, "fd": 9.0, "fd_pca": math.nan, "cosine_mean": 0.5}
    adapted = {"colour_distance": 5.0, "lab_mean_distance": 31.0, "fd": 9.0, "fd_pca": 2.0, "cosine_mean": 0.7}
    table = before_after(base, adapted)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert set(rows) == {"colour_distance", "lab_mean_distance", "fd", "fd_pca", "cosine_mean"}
    assert rows["colour_distance"].rstrip(" |").endswith("adapted") and "-15" in rows["colour_distance"]
    assert rows["lab_mean_distance"].rstrip(" |").endswith("base")
    assert rows["fd"].rstrip(" |").endswith("=") and "n/a" in rows["fd_pca"]
    assert rows["cosine_mean"].rstrip(" |").endswith("adapted")
    metrics = card_metrics(base, adapted, dataset_name="ihc-target", dataset_type="imagefolder")
    assert all(isinstance(m, Metric) and m.split == "test" for m in metrics)
    names = {m.name: m.value for m in metrics}
    assert names["colour_distance"] == 5.0 and names["base_colour_distance"] == 20.0
    assert "fd_pca" in names and "base_fd_pca" not in names  # NaN left out
    report = GenerationReport(base={**base, "notes": ["fd: few samples"]}, adapted=adapted, dataset_name="ihc-target")
    assert report.moved_toward_target() and "- fd: few samples" in report.markdown()
    saved = json.loads(report.write_json(tmp_path / "metrics.json").read_text())
    assert saved["base"]["fd_pca"] is None and saved["adapted"]["colour_distance"] == 5.0
    assert len(report.card_metrics()) == len(metrics)
