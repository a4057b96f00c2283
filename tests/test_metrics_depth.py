from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hubkit.errors import DataError
from hubkit.metrics import (
    METRIC_NAMES,
    DepthMetricAccumulator,
    align_inverse,
    align_scale_shift,
    depth_metrics,
    masked_mse_normalised,
    silog_loss,
    ssi_loss,
)

LOSSES = [masked_mse_normalised, silog_loss, ssi_loss]


def test_identical_depth_is_perfect():
    target = np.random.default_rng(0).uniform(200, 5000, size=(6, 7))
    m = depth_metrics(target, target, np.ones_like(target, dtype=bool))
    assert list(m) == list(METRIC_NAMES)
    assert m["d1"] == m["d2"] == m["d3"] == 1.0
    for name in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"):
        assert m[name] == pytest.approx(0.0, abs=1e-12)


def test_metrics_by_hand():
    # four valid pixels: ratios max(p/t, t/p) = 3, 1, 1.5, 1.8; two invalid pixels that must not count
    pred = torch.tensor([[3.0, 1.0, 3.0], [1.8, 100.0, 1000.0]])
    target = torch.tensor([[1.0, 1.0, 2.0], [1.0, float("nan"), 7.0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    m = depth_metrics(pred, target, valid)
    assert (m["d1"], m["d2"], m["d3"]) == (0.25, 0.5, 0.75)  # < 1.25, < 1.5625, < 1.953125
    assert m["abs_rel"] == pytest.approx((2 / 1 + 0 + 1 / 2 + 0.8 / 1) / 4)
    assert m["sq_rel"] == pytest.approx((4 / 1 + 0 + 1 / 2 + 0.64 / 1) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((4 + 0 + 1 + 0.64) / 4))
    logs = [math.log(3), 0.0, math.log(1.5), math.log(1.8)]
    assert m["rmse_log"] == pytest.approx(math.sqrt(sum(x * x for x in logs) / 4))
    assert m["log10"] == pytest.approx(sum(x / math.log(10) for x in logs) / 4)
    mean_sq, mean = sum(x * x for x in logs) / 4, sum(logs) / 4
    assert m["silog"] == pytest.approx(math.sqrt(mean_sq - 0.5 * mean**2))
    assert depth_metrics(pred.numpy(), target.numpy(), valid.numpy()) == pytest.approx(m)


def test_metrics_reject_empty_and_mismatched():
    with pytest.raises(DataError, match="no valid pixel"):
        depth_metrics(np.ones(4), np.ones(4), np.zeros(4, bool))
    with pytest.raises(DataError, match="one shape"):
        depth_metrics(np.ones(4), np.ones(5), np.ones(4, bool))


def test_non_positive_prediction_is_penalised_not_dropped():
    m = depth_metrics(np.array([-1.0, 2.0]), np.array([2.0, 2.0]), np.ones(2, bool))
    assert m["d1"] == 0.5 and math.isfinite(m["rmse_log"]) and m["rmse_log"] > 1


def test_accumulator_averages_per_sample():
    acc = DepthMetricAccumulator()
    ones = np.ones((2, 2), bool)
    first = acc.update(np.full((2, 2), 2.0), np.full((2, 2), 1.0), ones)
    second = acc.update(np.full((2, 2), 1.0), np.full((2, 2), 1.0), ones)
    out = acc.compute()
    assert acc.count == 2 and first["abs_rel"] == 1.0 and second["abs_rel"] == 0.0
    assert out["abs_rel"] == 0.5 and out["d1"] == 0.5 and out["rmse"] == 0.5
    acc.reset()
    assert acc.compute() == {}


def test_align_scale_shift_recovers_known_fit():
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 1, size=(5, 6)).astype(np.float32)
    target = 2.5 * pred.astype(np.float64) - 3.0
    valid = np.ones_like(pred, dtype=bool)
    valid[0, :3] = False
    target[0, :3] = np.nan  # invalid pixels are ignored, whatever they hold
    aligned, scale, shift = align_scale_shift(pred, target, valid)
    assert scale == pytest.approx(2.5, rel=1e-9) and shift == pytest.approx(-3.0, rel=1e-9)
    assert isinstance(aligned, np.ndarray) and np.allclose(aligned[valid], target[valid], atol=1e-5)
    aligned_t, *_ = align_scale_shift(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(valid))
    assert isinstance(aligned_t, torch.Tensor) and aligned_t.dtype == torch.float32


def test_align_inverse_recovers_depth_and_clamps():
    rng = np.random.default_rng(1)
    disparity = torch.from_numpy(rng.uniform(1, 10, size=(4, 8)))
    depth = 1.0 / (0.5e-3 * disparity + 1e-4)  # mm
    valid = torch.ones_like(depth, dtype=torch.bool)
    aligned, scale, shift = align_inverse(disparity, depth, valid)
    assert scale == pytest.approx(0.5e-3, rel=1e-9) and shift == pytest.approx(1e-4, rel=1e-6)
    assert torch.allclose(aligned, depth, rtol=1e-9)
    far = disparity.clone()
    far[0, 0] = -1000.0  # an outlier that is invalid in the GT: its aligned inverse depth is negative
    valid[0, 0] = False
    aligned, *_ = align_inverse(far, depth, valid, max_depth=50_000.0)
    assert aligned[0, 0] == pytest.approx(50_000.0) and (aligned > 0).all()


def test_alignment_degenerate_cases():
    with pytest.raises(DataError, match="constant"):
        align_scale_shift(np.full(5, 3.0), np.arange(5.0), np.ones(5, bool))
    with pytest.raises(DataError, match="at least 2 valid pixels"):
        align_inverse(np.arange(5.0), np.arange(1.0, 6.0), np.eye(5, dtype=bool)[0])


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 6, 7, generator=g) * 4 + 0.5
    valid = torch.rand(2, 6, 7, generator=g) > 0.2
    return target, valid


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
def test_loss_zero_at_equality_positive_otherwise_with_gradients(loss):
    target, valid = _batch()
    pred = target.clone().requires_grad_(True)
    zero = loss(pred, target, valid)
    assert zero.ndim == 0 and zero.item() == 0.0
    zero.backward()
    assert torch.isfinite(pred.grad).all()
    noisy = (target * (1 + 0.3 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1)))).abs()
    pred = (noisy + 0.1).requires_grad_(True)
    value = loss(pred, target, valid)
    assert value.item() > 0
    value.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[valid].abs().sum() > 0
    assert (pred.grad[~valid] == 0).all()  # invalid pixels take no part
    assert loss(target[0], target[0], valid[0]).item() == 0.0  # a single (H, W) sample works too


def test_loss_invariances():
    target, valid = _batch(2)
    pred = target.flip(-1) + 1.0
    base = ssi_loss(pred, target, valid)
    assert ssi_loss(3 * pred - 2, target, valid).item() == pytest.approx(base.item(), rel=1e-4)
    assert masked_mse_normalised(3 * pred + 2, target, valid).item() == pytest.approx(
        masked_mse_normalised(pred, target, valid).item(), rel=1e-4
    )
    assert silog_loss(7 * target, target, valid, lam=1.0).item() == pytest.approx(0.0, abs=1e-3)
    assert ssi_loss(pred, target, torch.zeros_like(valid)).item() == 0.0
