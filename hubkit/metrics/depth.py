"""Depth evaluation (Depth Anything V2's metric-depth metrics), scale / shift alignment, and masked losses.

Metrics follow ``eval_depth`` in Depth Anything V2's ``metric_depth/util/metric.py`` on valid pixels
(``d1``, ``d2``, ``d3``, ``abs_rel``, ``sq_rel``, ``rmse``, ``rmse_log``, ``log10``, ``silog``), computed per
image and averaged over images (``DepthMetricAccumulator``), as DA-V2's validation loop does. ``rmse``
and ``sq_rel`` carry the unit of the inputs (mm in hubkit); the others are unitless.

Which alignment for a relative model: Depth Anything V2's relative ("-hf") heads, like MiDaS, predict an
affine-invariant *inverse* depth (bigger = nearer), so evaluate them with ``align_inverse`` (fit in
inverse-depth space, then invert). ``align_scale_shift`` is for models whose output is affine-invariant
*depth* (e.g. Marigold), or for fitting in whatever space the caller already works in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional.regression import mean_absolute_percentage_error, mean_squared_error

from ..errors import DataError

logger = logging.getLogger(__name__)

METRIC_NAMES = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
HIGHER_IS_BETTER = {"d1", "d2", "d3"}
_EPS = 1e-8


def _tensor(x, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu().to(dtype)


def _flat_valid(pred, target, valid) -> tuple[torch.Tensor, torch.Tensor]:
    p, t = _tensor(pred), _tensor(target)
    m = _tensor(valid, torch.bool)
    if not (p.shape == t.shape == m.shape):
        raise DataError(
            f"pred, target and valid must have one shape, got {tuple(p.shape)}, {tuple(t.shape)}, {tuple(m.shape)}"
        )
    m = m & torch.isfinite(t) & (t > 0)
    return p[m], t[m]


def depth_metrics(pred, target, valid, *, min_pred: float = 1e-3) -> dict[str, float]:
    """DA-V2's ``eval_depth`` on the valid pixels of one image (torch or numpy, any matching shape).

    Pixels count where ``valid`` is set and the target is finite and positive. Predictions there are
    clamped to ``min_pred`` (in the inputs' unit; NaN counts as ``min_pred``) so that the log metrics stay
    finite for a non-positive prediction; a bad prediction is penalised, never dropped.
    """
    p, t = _flat_valid(pred, target, valid)
    if p.numel() == 0:
        raise DataError("depth_metrics: no valid pixel (valid mask empty, or target non-finite / non-positive)")
    p = torch.nan_to_num(p, nan=min_pred, neginf=min_pred).clamp_min(min_pred)
    thresh = torch.maximum(t / p, p / t)
    diff, diff_log = p - t, torch.log(p) - torch.log(t)
    return {
        # threshold accuracies, sq_rel, log10 and silog have no torchmetrics counterpart: custom code
        "d1": (thresh < 1.25).double().mean().item(),
        "d2": (thresh < 1.25**2).double().mean().item(),
        "d3": (thresh < 1.25**3).double().mean().item(),
        # MAPE is mean(|p - t| / max(|t|, 1.17e-6)): abs_rel for the positive targets kept above
        "abs_rel": mean_absolute_percentage_error(p, t).item(),
        "sq_rel": (diff.pow(2) / t).mean().item(),  # DA-V2 divides by t, not t^2 (unit: that of the input)
        "rmse": mean_squared_error(p, t, squared=False).item(),
        "rmse_log": mean_squared_error(torch.log(p), torch.log(t), squared=False).item(),
        "log10": (torch.log10(p) - torch.log10(t)).abs().mean().item(),
        "silog": torch.sqrt((diff_log.pow(2).mean() - 0.5 * diff_log.mean().pow(2)).clamp_min(0)).item(),
    }


def _fit(p: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row least squares ``min_{s,t} sum m (s p + t - y)^2`` over the last dim; differentiable.

    Closed form in centred variables: ``s = cov(p, y) / var(p)``, ``t = mean(y) - s mean(p)`` (the normal
    equations of MiDaS's ``compute_scale_and_shift``, better conditioned). Rows whose prediction is constant
    over the mask (relative variance under 1e-12) get ``s = 0`` and ``t`` = mean target, the best constant.
    """
    m = m.to(p.dtype)
    n = m.sum(-1).clamp_min(1)
    mp, my = (m * p).sum(-1) / n, (m * y).sum(-1) / n
    dp, dy = (p - mp[..., None]) * m, (y - my[..., None]) * m
    var, cov = (dp * dp).sum(-1), (dp * dy).sum(-1)
    ok = var / n > 1e-12 * mp.pow(2) + 1e-30
    scale = torch.where(ok, cov / torch.where(ok, var, torch.ones_like(var)), torch.zeros_like(var))
    return scale, my - scale * mp


def _aligned_like(pred, aligned: torch.Tensor):
    if isinstance(pred, torch.Tensor):
        return aligned.to(dtype=pred.dtype if pred.is_floating_point() else torch.float32, device=pred.device)
    return aligned.numpy().astype(np.float32)


def _fit_checked(p: torch.Tensor, y: torch.Tensor, m: torch.Tensor, what: str) -> tuple[float, float]:
    pv = p[m]
    if pv.numel() < 2:
        raise DataError(f"{what}: need at least 2 valid pixels to fit a scale and shift, got {pv.numel()}")
    if torch.unique(pv).numel() < 2:
        raise DataError(f"{what}: the prediction is constant over the valid pixels; scale and shift are undefined")
    scale, shift = _fit(p[m][None], y[m][None], torch.ones_like(pv, dtype=torch.bool)[None])
    return scale.item(), shift.item()


def align_scale_shift(pred, target, valid) -> tuple[object, float, float]:
    """Least-squares ``scale * pred + shift`` fitted to ``target`` over valid pixels (closed form, float64).

    Returns (aligned, scale, shift); ``aligned`` covers every pixel and has ``pred``'s kind (torch / numpy).
    Raises ``DataError`` with fewer than 2 valid pixels or a constant prediction (the fit is undefined).
    """
    p, t, m = _tensor(pred), _tensor(target), _tensor(valid, torch.bool)
    if not (p.shape == t.shape == m.shape):
        raise DataError(f"align_scale_shift: shapes differ: {tuple(p.shape)}, {tuple(t.shape)}, {tuple(m.shape)}")
    m = m & torch.isfinite(t) & torch.isfinite(p)
    scale, shift = _fit_checked(p, t, m, "align_scale_shift")
    return _aligned_like(pred, p * scale + shift), scale, shift


def align_inverse(pred, target, valid, *, max_depth: float | None = None) -> tuple[object, float, float]:
    """Align an inverse-depth prediction (bigger = nearer) to a depth ``target``; return depth.

    Fits ``scale * pred + shift`` to ``1 / target`` on valid pixels (least squares in inverse-depth space,
    the space the model predicts in), then returns ``1 / clamp(aligned, 1 / max_depth)`` so the result is
    positive and at most ``max_depth`` (default: 10x the farthest valid target). Returns (depth, scale,
    shift) with scale and shift in inverse-depth units (1 / target unit). Use this one to evaluate relative
    Depth Anything V2 / MiDaS outputs.
    """
    p, t, m = _tensor(pred), _tensor(target), _tensor(valid, torch.bool)
    if not (p.shape == t.shape == m.shape):
        raise DataError(f"align_inverse: shapes differ: {tuple(p.shape)}, {tuple(t.shape)}, {tuple(m.shape)}")
    m = m & torch.isfinite(t) & (t > 0) & torch.isfinite(p)
    inv_t = torch.where(m, 1.0 / torch.where(m, t, torch.ones_like(t)), torch.zeros_like(t))
    scale, shift = _fit_checked(p, inv_t, m, "align_inverse")
    far = float(max_depth) if max_depth is not None else 10.0 * t[m].max().item()
    depth = 1.0 / (p * scale + shift).clamp_min(1.0 / far)
    return _aligned_like(pred, depth), scale, shift


class DepthMetricAccumulator:
    """Per-image ``depth_metrics`` averaged over images (DA-V2's validation averages per-sample metrics).

    Plain sums and a count, no distributed sync: hubkit evaluates on the main process only.
    """

    def __init__(self, names: Sequence[str] = METRIC_NAMES):
        self.names = tuple(names)
        self.reset()

    def reset(self) -> None:
        self.sums = dict.fromkeys(self.names, 0.0)
        self.count = 0

    def update(self, pred, target, valid) -> dict[str, float]:
        """Add one image; returns its metrics."""
        metrics = depth_metrics(pred, target, valid)
        for name in self.names:
            self.sums[name] += metrics[name]
        self.count += 1
        return metrics

    def compute(self) -> dict[str, float]:
        """Mean of each metric over the images added; empty (with a warning) if none were."""
        if not self.count:
            logger.warning("DepthMetricAccumulator: no images were evaluated; returning no metrics")
            return {}
        return {name: self.sums[name] / self.count for name in self.names}


# ---- losses: torch, differentiable, masked; ``pred`` / ``target`` (H, W) or (B, ...) with a batch dim ----


def _rows(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, what: str):
    if not (pred.shape == target.shape == valid.shape):
        raise DataError(
            f"{what}: pred, target and valid must have one shape, got {tuple(pred.shape)}, "
            f"{tuple(target.shape)}, {tuple(valid.shape)}"
        )
    if pred.ndim <= 2:
        pred, target, valid = pred[None], target[None], valid[None]
    flat = (pred.flatten(1), target.flatten(1).to(pred.dtype), valid.flatten(1).bool().detach())
    return flat[0], flat[1], flat[2] & torch.isfinite(flat[1])


def _zero(pred: torch.Tensor) -> torch.Tensor:
    return (pred * 0).sum()  # a zero that keeps the graph (no valid pixel in the batch)


def _normalise(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    lo = torch.where(m, x, torch.full_like(x, torch.inf)).amin(-1, keepdim=True)
    hi = torch.where(m, x, torch.full_like(x, -torch.inf)).amax(-1, keepdim=True)
    lo, hi = torch.where(torch.isfinite(lo), lo, 0), torch.where(torch.isfinite(hi), hi, 1)
    return (x - lo) / (hi - lo).clamp_min(_EPS)


def masked_mse_normalised(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The seed notebook's loss: per-sample min/max normalisation to [0, 1] over valid pixels, then MSE
    over all valid pixels of the batch. Invariant to a positive scale and shift of either input."""
    p, t, m = _rows(pred, target, valid, "masked_mse_normalised")
    if not m.any():
        return _zero(pred)
    t = torch.where(m, t, torch.zeros_like(t))
    diff = torch.where(m, _normalise(p, m) - _normalise(t, m), torch.zeros_like(p))
    return diff.pow(2).sum() / m.sum()


def silog_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Depth Anything V2's metric-depth ``SiLogLoss``: ``sqrt(mean(d^2) - lam mean(d)^2)``,
    ``d = log(target) - log(pred)`` over the batch's valid pixels (positive target only).

    Eps-safe: logs of values clamped to 1e-8, the radicand clamped to >= 0, and ``sqrt(v + eps) -
    sqrt(eps)`` (eps = 1e-8) so the loss is exactly 0 at ``pred == target`` with a finite gradient there
    (it differs from DA-V2's by at most 1e-4).
    """
    p, t, m = _rows(pred, target, valid, "silog_loss")
    m = m & (t > 0)
    if not m.any():
        return _zero(pred)
    d = torch.log(t[m].clamp_min(_EPS)) - torch.log(p[m].clamp_min(_EPS))
    v = (d.pow(2).mean() - lam * d.mean().pow(2)).clamp_min(0)
    eps = v.new_tensor(_EPS)
    return torch.sqrt(v + eps) - torch.sqrt(eps)


def ssi_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift-invariant MSE (MiDaS's data term): per sample, fit ``s pred + t`` to ``target`` by
    least squares over valid pixels (closed form, gradients flow through s and t as in MiDaS), then the
    mean squared residual over the batch's valid pixels. MiDaS halves it and adds a gradient-matching
    term; neither is used here."""
    p, t, m = _rows(pred, target, valid, "ssi_loss")
    if not m.any():
        return _zero(pred)
    t = torch.where(m, t, torch.zeros_like(t))
    scale, shift = _fit(p, t, m)
    res = torch.where(m, scale[:, None] * p + shift[:, None] - t, torch.zeros_like(p))
    return res.pow(2).sum() / m.sum()
