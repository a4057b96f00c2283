"""Pruning: structured (channels removed, a smaller dense model) and unstructured L1 magnitude (zeros only).

- Structured: torch-pruning's dependency graph removes the lowest-L1 channels of every convolution group (a CNN),
  keeping the classifier's outputs; ViT-like models (no convolutions to speak of; torch-pruning's tracing finds no
  prunable group in transformers' ViT) lose the lowest-L1 hidden neurons of each MLP instead. A short fine-tune
  through the shared loop recovers accuracy (see `hubkit.optimize.train`).
- Unstructured: `torch.nn.utils.prune.global_unstructured` (L1) over conv / linear weights, made permanent with
  `prune.remove`. Dense kernels do not skip zeros: its report shows sparsity, not speed.
"""

from __future__ import annotations

import copy
import logging

import torch

from ..errors import ConfigError
from .variant import LogitsModule

logger = logging.getLogger(__name__)


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio < 1:
        raise ConfigError(f"pruning ratio must be in (0, 1), got {ratio!r}")


def prune_structured(model: torch.nn.Module, example: torch.Tensor, *, ratio: float = 0.3) -> torch.nn.Module:
    """A copy of `model` with `ratio` of the channels (CNN) or MLP neurons (transformer) removed."""
    _check_ratio(ratio)
    pruned = copy.deepcopy(model).eval()
    if _mlp_pairs(pruned):
        _prune_mlp_neurons(pruned, ratio)
    elif any(isinstance(m, torch.nn.Conv2d) for m in pruned.modules()):
        _prune_channels(pruned, example, ratio)
    else:
        raise ConfigError(
            f"{type(model).__name__}: structured pruning handles CNNs (torch-pruning) and transformer MLPs "
            "(mlp.fc1 -> mlp.fc2); this model has neither"
        )
    return pruned


def _prune_channels(model: torch.nn.Module, example: torch.Tensor, ratio: float) -> None:
    import torch_pruning as tp

    wrapper = LogitsModule(model)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not head:
        raise ConfigError(f"{type(model).__name__}: no linear classifier found to keep while pruning")
    pruner = tp.pruner.MetaPruner(
        wrapper,
        example[:1].float(),
        importance=tp.importance.MagnitudeImportance(p=1),  # L1 norm of each channel's weights
        pruning_ratio=ratio,
        ignored_layers=head,  # the classifier keeps one output per class
    )
    pruner.step()


def _prune_mlp_neurons(model: torch.nn.Module, ratio: float) -> None:
    """Transformer MLPs (`mlp.fc1` -> `mlp.fc2`): keep the (1 - ratio) neurons of each layer with the
    largest L1 norm of their input weights, the same count in every layer so `config.intermediate_size` stays true."""
    pairs = _mlp_pairs(model)
    keep = max(1, round(pairs[0][1].out_features * (1 - ratio)))
    with torch.no_grad():
        for _, inter, out in pairs:
            idx = inter.weight.abs().sum(dim=1).topk(keep).indices.sort().values
            inter.weight = torch.nn.Parameter(inter.weight[idx].clone())
            inter.bias = torch.nn.Parameter(inter.bias[idx].clone()) if inter.bias is not None else None
            inter.out_features = keep
            out.weight = torch.nn.Parameter(out.weight[:, idx].clone())
            out.in_features = keep
    model.config.intermediate_size = keep


# (first, second) linear layers of a transformer MLP, as transformers names them: ViT in transformers 5 (mlp.fc1 /
# mlp.fc2, also DINOv2), and the older BERT-style layout (intermediate.dense / output.dense).
_MLP_NAMES = (("mlp.fc1", "mlp.fc2"), ("intermediate.dense", "output.dense"))


def _mlp_pairs(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear, torch.nn.Linear]]:
    if not hasattr(getattr(model, "config", None), "intermediate_size"):
        return []
    pairs = []
    for name, module in model.named_modules():
        for first, second in _MLP_NAMES:
            try:
                a, b = module.get_submodule(first), module.get_submodule(second)
            except AttributeError:
                continue
            if isinstance(a, torch.nn.Linear) and isinstance(b, torch.nn.Linear):
                pairs.append((name, a, b))
                break
    return pairs


def prune_unstructured(model: torch.nn.Module, *, amount: float = 0.5) -> torch.nn.Module:
    """A copy of `model` with the `amount` smallest-|w| weights of all conv / linear layers (globally) set to zero,
    permanently (no masks left)."""
    from torch.nn.utils import prune

    _check_ratio(amount)
    sparse = copy.deepcopy(model).eval()
    targets = [(m, "weight") for m in sparse.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    if not targets:
        raise ConfigError(f"{type(model).__name__} has no conv or linear weights to prune")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)  # fold weight_orig * weight_mask into a plain weight
    return sparse


def sparsity(model: torch.nn.Module) -> float:
    """Fraction of exact zeros among conv / linear weights."""
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and isinstance(module.weight, torch.Tensor):
            weight = module.weight
            if type(weight) is not torch.nn.Parameter and type(weight) is not torch.Tensor:
                continue  # quantized tensor subclasses
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total if total else 0.0
