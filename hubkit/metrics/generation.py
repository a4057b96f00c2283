"""Metrics for conditional image generation (PixCell-style histology): stain colour, encoder Frechet distance, cosine.

Three questions about a set of generated patches, each asked of the base model and of the adapted one:

- **Does it have the target's stain colours?** :func:`colour_statistics` pools the pixels of a set of RGB images
  and describes them in two colour spaces: the haematoxylin / eosin / DAB optical densities of
  ``skimage.color.rgb2hed`` (colour deconvolution, Ruifrok & Johnston) and CIELAB (``skimage.color.rgb2lab``):
  per-channel means, standard deviations, HED quantiles and LAB histograms (L* in [0, 100], a* and b* in
  [-128, 128], bins of one unit). :func:`colour_distance` compares two such descriptions:

  ``lab_hist_distance`` / ``colour_distance`` (the headline)
      the Wasserstein-1 (earth mover's) distance between the two sets' per-channel LAB histograms, averaged over
      L*, a*, b* (each also reported: ``lab_w1_L``, ``lab_w1_a``, ``lab_w1_b``). In CIELAB units, where about
      2.3 is a just-noticeable difference; it sees shifts of the mean colour and changes of spread alike, is
      symmetric, and is 0 exactly when the channel histograms match. It is the headline because CIELAB is close
      to perceptually uniform and every channel has the same units, so no weights are needed.
  ``lab_mean_distance`` / ``lab_std_distance``
      Euclidean distance between the mean LAB colours (the CIE76 colour difference of the two average colours),
      and between the per-channel standard deviations.
  ``hed_mean_distance`` / ``hed_std_distance`` / ``hed_w1``
      the same for the H, E, DAB optical densities (rgb2hed units: about 0 to 0.2 for tissue; the stain-specific
      reading of the shift), ``hed_w1`` from 256 quantiles per channel.

  Pixels are pooled over the set, so one image is enough (a set with itself gives 0); sets past ``max_pixels``
  pixels are subsampled with a fixed seed.
- **Is it distributed like the target in the encoder's feature space?** The Frechet distance between Gaussians
  fitted to the two sets' features, computed by torchmetrics' ``FrechetInceptionDistance`` with a custom feature
  extractor (:class:`EncoderFeatures` wraps any encoder; torchmetrics' custom-``nn.Module`` path needs neither
  torch-fidelity nor torchvision, and nothing is downloaded). With fewer samples than feature dimensions (N <= D,
  the usual case with a 1536-d UNI2-h and tens of patches) the covariances are singular: the full-dimension ``fd``
  is still defined but strongly biased upwards and only comparable between runs with the same N, so a note says
  so, and ``fd_pca`` gives the distance on the top ``fd_pca_dims`` principal axes of the pooled features
  (k < min(N) so both covariances can be full rank): compare base and adapted on that one.
- **Does it keep the conditioning patch's content?** The cosine similarity between each generated patch's
  embedding and its conditioning patch's embedding (``cosine_mean``, ``cosine_std``).

:func:`evaluate_generation` runs the three on one model's samples; :class:`GenerationReport` holds a base and an
adapted evaluation and turns them into a Markdown table (:func:`before_after`), card metrics
(:func:`card_metrics`, ``hubkit.cards.Metric``) and JSON.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..cards import Metric
from ..errors import ConfigError, DataError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # UNI2-h (timm) and most ViT encoders normalise with these
IMAGENET_STD = (0.229, 0.224, 0.225)
LAB_RANGES = ((0.0, 100.0), (-128.0, 128.0), (-128.0, 128.0))
LAB_BINS = (100, 256, 256)  # one CIELAB unit per bin
LAB_CHANNELS = ("L", "a", "b")
HED_CHANNELS = ("H", "E", "D")
QUANTILES = 256
MAX_PIXELS = 1_000_000
COLOUR_KEYS = (
    "colour_distance",
    "lab_hist_distance",
    "lab_w1_L",
    "lab_w1_a",
    "lab_w1_b",
    "lab_mean_distance",
    "lab_std_distance",
    "hed_mean_distance",
    "hed_std_distance",
    "hed_w1",
)
# What the before/after table and the card show, with the better direction (-1: lower is better, +1: higher).
REPORT_METRICS = {
    "colour_distance": -1,
    "lab_mean_distance": -1,
    "hed_mean_distance": -1,
    "hed_w1": -1,
    "fd_pca": -1,
    "fd": -1,
    "cosine_mean": +1,
}


# ---- images ----


def _rgb(image: Any, what: str) -> np.ndarray:
    """One image as float64 RGB (H, W, 3) in [0, 1]."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] not in (3, 4) and array.shape[0] in (3, 4):
        array = np.moveaxis(array, 0, -1)  # (C, H, W)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) < 1:
        raise DataError(f"{what}: expected RGB images (H, W, 3) or (3, H, W); got shape {array.shape}.")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{what}: images must be uint8 in [0, 255] or float in [0, 1]; got dtype {array.dtype}.")
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    if not (np.isfinite(array).all() and low >= -1e-3 and high <= 1 + 1e-3):
        raise DataError(f"{what}: float images must lie in [0, 1]; got values in [{low:.4g}, {high:.4g}].")
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def rgb_images(images: Any, what: str = "images") -> list[np.ndarray]:
    """A set of images as float64 RGB arrays (H, W, 3) in [0, 1]: a 4-D array or tensor (N, H, W, 3) or
    (N, 3, H, W), or a sequence of PIL images, arrays, tensors or paths (uint8, or float in [0, 1])."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim != 4:
            raise DataError(
                f"{what}: a batch array must be 4-D (N, H, W, 3) or (N, 3, H, W); got {tuple(images.shape)}."
            )
        items = list(images)
    elif isinstance(images, (str, Path, Image.Image)):
        raise DataError(f"{what}: pass a set of images (a list or a batch), not a single {type(images).__name__}.")
    else:
        items = list(images)
    if not items:
        raise DataError(f"{what}: the set is empty; pass at least one image.")
    return [_rgb(item, what) for item in items]


# ---- colour statistics ----


@dataclass(frozen=True)
class ColourStats:
    """The colour description of a set of RGB images (pixels pooled over the set). JSON round-trips through
    :meth:`to_dict` / :meth:`from_dict`, so a target domain's description can be stored and reused."""

    num_images: int
    num_pixels: int
    hed_mean: np.ndarray  # (3,) H, E, DAB optical densities (skimage.color.rgb2hed)
    hed_std: np.ndarray
    hed_quantiles: np.ndarray  # (3, QUANTILES) at the levels (k + 0.5) / QUANTILES
    lab_mean: np.ndarray  # (3,) L*, a*, b*
    lab_std: np.ndarray
    lab_hist: tuple[np.ndarray, ...] = field(repr=False)  # per channel, probabilities over LAB_BINS on LAB_RANGES

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_images": self.num_images,
            "num_pixels": self.num_pixels,
            **{name: getattr(self, name).tolist() for name in ("hed_mean", "hed_std", "hed_quantiles")},
            **{name: getattr(self, name).tolist() for name in ("lab_mean", "lab_std")},
            "lab_hist": [h.tolist() for h in self.lab_hist],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColourStats:
        try:
            return cls(
                num_images=int(data["num_images"]),
                num_pixels=int(data["num_pixels"]),
                hed_mean=np.asarray(data["hed_mean"], np.float64),
                hed_std=np.asarray(data["hed_std"], np.float64),
                hed_quantiles=np.asarray(data["hed_quantiles"], np.float64),
                lab_mean=np.asarray(data["lab_mean"], np.float64),
                lab_std=np.asarray(data["lab_std"], np.float64),
                lab_hist=tuple(np.asarray(h, np.float64) for h in data["lab_hist"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"Not a colour-statistics record ({exc!r}); write it with ColourStats.to_dict().") from exc

    def summary(self) -> dict[str, float]:
        """The means and standard deviations as flat named numbers (for JSON and display)."""
        out: dict[str, float] = {}
        for space, names, mean, std in (
            ("hed", HED_CHANNELS, self.hed_mean, self.hed_std),
            ("lab", LAB_CHANNELS, self.lab_mean, self.lab_std),
        ):
            for k, name in enumerate(names):
                out[f"{space}_{name}_mean"] = float(mean[k])
                out[f"{space}_{name}_std"] = float(std[k])
        return out


def colour_statistics(images: Any, *, max_pixels: int = MAX_PIXELS, seed: int = 0) -> ColourStats:
    """HED and CIELAB statistics of a set of RGB images (see :func:`rgb_images` for what a set may be)."""
    from skimage import color

    arrays = rgb_images(images, "colour_statistics")
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays])
    if len(pixels) > max_pixels:
        keep = np.random.default_rng(seed).choice(len(pixels), size=max_pixels, replace=False)
        pixels = pixels[np.sort(keep)]
    row = pixels[None]  # skimage's converters take an image: (1, P, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rgb2hed: log of 0 is clipped to 1e-6 already; silence numpy's noise
        hed = color.rgb2hed(row)[0]
    lab = color.rgb2lab(row)[0]
    levels = (np.arange(QUANTILES) + 0.5) / QUANTILES
    hist = tuple(
        np.histogram(np.clip(lab[:, k], *LAB_RANGES[k]), bins=LAB_BINS[k], range=LAB_RANGES[k])[0] / len(lab)
        for k in range(3)
    )
    return ColourStats(
        num_images=len(arrays),
        num_pixels=len(pixels),
        hed_mean=hed.mean(0),
        hed_std=hed.std(0),
        hed_quantiles=np.quantile(hed, levels, axis=0).T,
        lab_mean=lab.mean(0),
        lab_std=lab.std(0),
        lab_hist=hist,
    )


def _hist_w1(p: np.ndarray, q: np.ndarray, width: float) -> float:
    """Wasserstein-1 between two histograms on the same bins: the L1 distance between their CDFs times the bin width."""
    return float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() * width)


def colour_distance(generated: Any, target: Any) -> dict[str, float]:
    """How far the colours of `generated` are from those of `target` (image sets or :class:`ColourStats`); the keys
    are ``COLOUR_KEYS``, described in the module docstring. Symmetric; 0 for a set and itself."""
    a = generated if isinstance(generated, ColourStats) else colour_statistics(generated)
    b = target if isinstance(target, ColourStats) else colour_statistics(target)
    widths = [(hi - lo) / n for (lo, hi), n in zip(LAB_RANGES, LAB_BINS, strict=True)]
    w1 = [_hist_w1(a.lab_hist[k], b.lab_hist[k], widths[k]) for k in range(3)]
    out = {
        "lab_hist_distance": float(np.mean(w1)),
        **{f"lab_w1_{name}": w1[k] for k, name in enumerate(LAB_CHANNELS)},
        "lab_mean_distance": float(np.linalg.norm(a.lab_mean - b.lab_mean)),
        "lab_std_distance": float(np.linalg.norm(a.lab_std - b.lab_std)),
        "hed_mean_distance": float(np.linalg.norm(a.hed_mean - b.hed_mean)),
        "hed_std_distance": float(np.linalg.norm(a.hed_std - b.hed_std)),
        "hed_w1": float(np.abs(a.hed_quantiles - b.hed_quantiles).mean(axis=1).mean()),
    }
    return {"colour_distance": out["lab_hist_distance"], **out}


# ---- Frechet distance on encoder features ----


class _Features(torch.nn.Module):
    """Identity 'extractor' for torchmetrics' FID when the features are already computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _features(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu().double()
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise DataError(f"{what}: features must be a 2-D array (N, D); got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        raise DataError(f"{what}: features hold NaN or infinite values; check the encoder's output.")
    return t


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D), computed by torchmetrics'
    ``FrechetInceptionDistance`` with the features passed through (float64). Needs N >= 2 on both sides; tiny
    negative values from rounding are clipped to 0. With N <= D the covariances are singular: see the module
    docstring and :func:`frechet_distance_pca`."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"Feature sets differ in width: {a.shape[1]} vs {b.shape[1]}; use the same encoder for both.")
    if min(len(a), len(b)) < 2:
        raise DataError(f"The Frechet distance needs at least 2 samples per set; got {len(a)} and {len(b)}.")
    # sync_on_compute=False: under DDP only the main process evaluates; torchmetrics would wait for the others
    fid = FrechetInceptionDistance(feature=_Features(a.shape[1]), reset_real_features=True, sync_on_compute=False)
    fid.update(b, real=True)
    fid.update(a, real=False)
    return max(float(fid.compute()), 0.0)


def frechet_distance_pca(features_a: Any, features_b: Any, *, dims: int = 16) -> tuple[float, int]:
    """The Frechet distance on the top-k principal axes of the two sets' pooled, centred features, with
    k = min(dims, N_a - 1, N_b - 1, D) so both projected covariances can be full rank. Returns (distance, k)."""
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"Feature sets differ in width: {a.shape[1]} vs {b.shape[1]}; use the same encoder for both.")
    k = min(int(dims), len(a) - 1, len(b) - 1, a.shape[1])
    if k < 1:
        raise DataError(f"fd_pca needs dims >= 1 and at least 2 samples per set; got dims={dims}, {len(a)}, {len(b)}.")
    pooled = torch.cat([a, b])
    centre = pooled.mean(0)
    _, _, vh = torch.linalg.svd(pooled - centre, full_matrices=False)
    axes = vh[:k].T
    return frechet_distance((a - centre) @ axes, (b - centre) @ axes), k


class EncoderFeatures(torch.nn.Module):
    """A feature extractor for torchmetrics' FID (and for the cosine metric) around any image encoder.

    Takes images (N, 3, H, W), uint8 in [0, 255] or float in [0, 1]; resizes them to `image_size` (bilinear,
    antialiased; None keeps the size), normalises with `mean` / `std` (None: leave in [0, 1]) and calls
    ``encoder(pixel_values)``. The output may be a tensor (N, D), a token tensor (N, T, D) (averaged over T), a
    tuple (first item) or a transformers output (``pooler_output``, else ``image_embeds``, else the first token of
    ``last_hidden_state``). Returns float32 (N, D), without gradients, in batches of `batch_size`.
    """

    def __init__(
        self,
        encoder: Callable[[torch.Tensor], Any],
        *,
        image_size: int | None = None,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        batch_size: int = 16,
        num_features: int | None = None,
    ):
        super().__init__()
        if not callable(encoder):
            raise ConfigError(f"encoder must be callable (images -> embeddings); got {type(encoder).__name__}.")
        if (mean is None) != (std is None):
            raise ConfigError("Pass both mean and std to normalise, or neither.")
        self.encoder = encoder  # an nn.Module becomes a submodule; a plain function is kept as an attribute
        self.image_size = image_size
        self.batch_size = max(1, int(batch_size))
        self.register_buffer("mean", None if mean is None else torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", None if std is None else torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if num_features is not None:
            self.num_features = int(num_features)  # torchmetrics reads this instead of probing with a 299 px image

    def _encoder_place(self) -> tuple[torch.device, torch.dtype]:
        if isinstance(self.encoder, torch.nn.Module):
            param = next(self.encoder.parameters(), None)
            if param is not None:
                return param.device, param.dtype
        return torch.device("cpu"), torch.float32

    def _pool(self, output: Any) -> torch.Tensor:
        if isinstance(output, (tuple, list)):
            output = output[0]
        if not isinstance(output, (torch.Tensor, np.ndarray)):
            for name in ("pooler_output", "image_embeds", "last_hidden_state"):
                value = getattr(output, name, None)
                if value is None and isinstance(output, Mapping):
                    value = output.get(name)
                if value is not None:
                    output = value[:, 0] if name == "last_hidden_state" else value
                    break
        output = torch.as_tensor(output)
        if output.ndim == 3:
            output = output.mean(dim=1)
        if output.ndim != 2:
            raise DataError(f"The encoder returned shape {tuple(output.shape)}; expected embeddings (N, D).")
        return output.float().cpu()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"EncoderFeatures takes images (N, 3, H, W); got shape {tuple(images.shape)}.")
        device, dtype = self._encoder_place()
        chunks = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                x = images[start : start + self.batch_size]
                x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
                if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size,) * 2:
                    x = torch.nn.functional.interpolate(
                        x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True
                    )
                if self.mean is not None:
                    x = (x - self.mean.to(x)) / self.std.to(x)
                chunks.append(self._pool(self.encoder(x.to(device=device, dtype=dtype))))
        return torch.cat(chunks)

    def embed(self, images: Any) -> torch.Tensor:
        """Embeddings (N, D) of a set of images in any form :func:`rgb_images` takes (sizes may differ when
        `image_size` is set: each image is resized on its own)."""
        arrays = rgb_images(images, "EncoderFeatures.embed")
        tensors = [torch.from_numpy(a).permute(2, 0, 1).float()[None] for a in arrays]
        if self.image_size is not None:
            size = (self.image_size,) * 2
            tensors = [
                t
                if tuple(t.shape[-2:]) == size
                else torch.nn.functional.interpolate(t, size=size, mode="bilinear", antialias=True)
                for t in tensors
            ]
        shapes = sorted({tuple(t.shape) for t in tensors})
        if len(shapes) > 1:
            raise DataError(f"Images have different sizes {shapes[:3]}; set image_size so the encoder gets one size.")
        features = self(torch.cat(tensors))
        if not hasattr(self, "num_features"):
            self.num_features = int(features.shape[1])
        return features


def encoder_fid(generated: Any, target: Any, encoder: Callable | EncoderFeatures, **extractor_kwargs) -> float:
    """torchmetrics' ``FrechetInceptionDistance`` with `encoder` as the feature extractor (no Inception, no
    download), between two image sets of one size (N, 3, H, W) uint8 or float in [0, 1], or lists. `encoder` is an
    :class:`EncoderFeatures` or a callable wrapped in one with `extractor_kwargs`."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    extractor = encoder if isinstance(encoder, EncoderFeatures) else EncoderFeatures(encoder, **extractor_kwargs)
    fake, real = _batch(generated, "generated"), _batch(target, "target")
    if min(len(fake), len(real)) < 2:
        raise DataError(f"The Frechet distance needs at least 2 images per set; got {len(fake)} and {len(real)}.")
    if not hasattr(extractor, "num_features"):
        extractor.num_features = int(extractor(real[:1]).shape[1])
    fid = FrechetInceptionDistance(feature=extractor, normalize=True, sync_on_compute=False)  # float64 states
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return max(float(fid.compute()), 0.0)


def _batch(images: Any, what: str) -> torch.Tensor:
    arrays = rgb_images(images, what)
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise DataError(f"{what}: images have different sizes {shapes[:3]}; resize them to one size first.")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


# ---- cosine similarity to the conditioning patch ----


def embedding_cosine(generated: Any, conditioning: Any) -> dict[str, float]:
    """Cosine similarity between each generated embedding (N, D) and its conditioning patch's embedding (N, D),
    row by row: ``cosine_mean`` and ``cosine_std`` (population std; 0 for one pair)."""
    a, b = _features(generated, "generated embeddings"), _features(conditioning, "conditioning embeddings")
    if a.shape != b.shape:
        raise DataError(f"Embeddings must pair up row by row: {tuple(a.shape)} vs {tuple(b.shape)}.")
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)
    return {"cosine_mean": float(cos.mean()), "cosine_std": float(cos.std(unbiased=False))}


# ---- one model's evaluation ----


def evaluate_generation(
    generated_by_input: Sequence[Sequence[Any]],
    inputs: Any,
    target_images: Any,
    encoder: Callable | EncoderFeatures,
    *,
    target_colour: ColourStats | None = None,
    pca_dims: int = 16,
    full_fd: bool = True,
    **extractor_kwargs,
) -> dict[str, Any]:
    """Evaluate one model's samples: ``generated_by_input[i]`` holds the variants generated from ``inputs[i]``.

    Returns a JSON-ready dict: the ``COLOUR_KEYS`` of the generated set against the target set (or against
    `target_colour`, precomputed), ``fd`` and ``fd_pca`` (+ ``fd_pca_dims``) between the generated and the target
    features, ``cosine_mean`` / ``cosine_std`` to the conditioning patches, the set sizes, ``feature_dim`` and
    ``notes`` (strings; e.g. the singular-covariance warning). A metric that cannot be computed (fewer than 2
    images on a side) is NaN with a note. ``full_fd=False`` skips the full-dimension ``fd`` (NaN): its D x D
    eigenvalue problem takes seconds at D = 1536 on a CPU. `extractor_kwargs` go to :class:`EncoderFeatures`.
    """
    if len(generated_by_input) != len(inputs):
        raise DataError(
            f"generated_by_input has {len(generated_by_input)} groups for {len(inputs)} inputs; give one per input."
        )
    flat, owner = [], []
    for i, group in enumerate(generated_by_input):
        items = rgb_images(group, f"generated_by_input[{i}]")
        flat.extend(items)
        owner.extend([i] * len(items))
    extractor = encoder if isinstance(encoder, EncoderFeatures) else EncoderFeatures(encoder, **extractor_kwargs)
    f_inputs = extractor.embed(inputs)
    f_generated = extractor.embed(flat)
    f_target = extractor.embed(target_images)
    notes: list[str] = []
    n_gen, n_tgt, dim = len(f_generated), len(f_target), int(f_generated.shape[1])
    result: dict[str, Any] = {}
    if min(n_gen, n_tgt) >= 2:
        result["fd"] = frechet_distance(f_generated, f_target) if full_fd else math.nan
        result["fd_pca"], result["fd_pca_dims"] = frechet_distance_pca(f_generated, f_target, dims=pca_dims)
        if min(n_gen, n_tgt) <= dim:
            notes.append(
                f"fd: {n_gen} generated and {n_tgt} target samples for {dim} feature dimensions: the covariances "
                f"are singular and fd is biased upwards (compare it only between runs with the same set sizes); "
                f"fd_pca uses the top {result['fd_pca_dims']} principal axes."
            )
    else:
        result.update(fd=math.nan, fd_pca=math.nan, fd_pca_dims=0)
        notes.append(f"fd: needs at least 2 generated and 2 target images; got {n_gen} and {n_tgt}.")
    result.update(embedding_cosine(f_generated, f_inputs[torch.tensor(owner)]))
    result.update(colour_distance(flat, target_colour if target_colour is not None else target_images))
    result.update(num_inputs=len(f_inputs), num_generated=n_gen, num_target=n_tgt, feature_dim=dim, notes=notes)
    return result


# ---- before / after ----


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4g}"


def before_after(base_metrics: Mapping[str, Any], adapted_metrics: Mapping[str, Any]) -> str:
    """A Markdown table: each of ``REPORT_METRICS`` found in both dicts, base vs adapted, the change and which is
    better (lower is better for the distances, higher for the cosine similarity)."""
    lines = [
        "| metric | better | base | adapted | change | better model |",
        "|---|---|---|---|---|---|",
    ]
    for name, sign in REPORT_METRICS.items():
        if name not in base_metrics or name not in adapted_metrics:
            continue
        base, adapted = _number(base_metrics[name]), _number(adapted_metrics[name])
        if math.isfinite(base) and math.isfinite(adapted):
            change = adapted - base
            winner = "=" if change == 0 else ("adapted" if change * sign > 0 else "base")
            delta = f"{change:+.4g}"
        else:
            winner, delta = "n/a", "n/a"
        direction = "lower" if sign < 0 else "higher"
        lines.append(f"| {name} | {direction} | {_fmt(base)} | {_fmt(adapted)} | {delta} | {winner} |")
    return "\n".join(lines) + "\n"


def card_metrics(
    base_metrics: Mapping[str, Any],
    adapted_metrics: Mapping[str, Any],
    *,
    dataset_name: str,
    dataset_type: str,
    split: str = "test",
    task_type: str | None = None,
) -> list[Metric]:
    """``hubkit.cards.Metric`` entries for the card's model-index: the adapted model's ``REPORT_METRICS`` under
    their names, the base's as ``base_<name>``. Values that are not finite numbers are left out."""
    metrics = []
    for prefix, source in (("", adapted_metrics), ("base_", base_metrics)):
        for name in REPORT_METRICS:
            value = _number(source.get(name))
            if math.isfinite(value):
                metrics.append(Metric(f"{prefix}{name}", value, dataset_name, dataset_type, split, task_type))
    return metrics


@dataclass
class GenerationReport:
    """A base and an adapted evaluation (dicts from :func:`evaluate_generation`) of one target data set."""

    base: dict[str, Any]
    adapted: dict[str, Any]
    dataset_name: str
    dataset_type: str = "imagefolder"
    split: str = "test"

    def markdown(self) -> str:
        notes = sorted(set(self.base.get("notes", [])) | set(self.adapted.get("notes", [])))
        return (
            before_after(self.base, self.adapted) + "".join(f"\n- {note}" for note in notes) + ("\n" if notes else "")
        )

    def card_metrics(self, task_type: str | None = None) -> list[Metric]:
        return card_metrics(
            self.base,
            self.adapted,
            dataset_name=self.dataset_name,
            dataset_type=self.dataset_type,
            split=self.split,
            task_type=task_type,
        )

    def moved_toward_target(self) -> bool:
        """True when the adapted samples' headline colour distance to the target is lower than the base's."""
        return _number(self.adapted.get("colour_distance")) < _number(self.base.get("colour_distance"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_name": self.dataset_name,
            "dataset_type": self.dataset_type,
            "split": self.split,
            "base": _jsonable(self.base),
            "adapted": _jsonable(self.adapted),
        }

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return path


def _jsonable(value: Any) -> Any:
    """NaN / inf become null (strict JSON); numpy and torch scalars become Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
