"""int8 variants: torchao for Linear-heavy models, ONNX Runtime static QDQ for CNNs.

- torchao `quantize_` (Int8DynamicActivationInt8WeightConfig / Int8WeightOnlyConfig) replaces `nn.Linear` weights
  only (convolutions stay fp32), so it suits ViT-like models; saved with torchao's safetensors support.
- CNNs: `torch.onnx.export` (the TorchScript exporter: the dynamo one needs onnxscript, not installed) folds
  BatchNorm into the preceding convolutions in eval mode; `quant_pre_process` runs ONNX Runtime's graph
  optimisations and shape inference; `quantize_static` writes a QDQ model (per-channel int8 weights, uint8
  activations) calibrated on training images with MinMax ranges.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .variant import ONNX_FILE, LogitsModule, save_torchao

logger = logging.getLogger(__name__)
INT8_METHODS = ("auto", "onnx-static", "torchao-dynamic", "torchao-weight-only")


def conv_fraction(model: torch.nn.Module) -> float:
    """The share of the weights held by convolutions: above one half, a model is treated as a CNN."""
    conv = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return conv / max(conv + linear, 1)


def choose_int8_method(model: torch.nn.Module, method: str = "auto") -> str:
    if method not in INT8_METHODS:
        raise ConfigError(f"int8 method must be one of {INT8_METHODS}, got {method!r}")
    if method != "auto":
        return method
    return "onnx-static" if conv_fraction(model) > 0.5 else "torchao-dynamic"


def require_torchao() -> None:
    """torchao is optional (not in requirements.txt): installed, it makes transformers print load warnings at every
    import, which would break the one-line CLI contract everywhere else."""
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ConfigError(
            "int8 for Linear-heavy models (ViT-like) uses torchao, which is optional: `pip install torchao==0.18.0`, "
            "or pass --int8-method onnx-static"
        ) from None


def torchao_int8(model: torch.nn.Module, *, weight_only: bool = False) -> torch.nn.Module:
    """A copy of `model` with every nn.Linear in int8 (torchao); the rest stays fp32."""
    require_torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    quantized = copy.deepcopy(model).eval()
    if not any(isinstance(m, torch.nn.Linear) for m in quantized.modules()):
        raise ConfigError(f"{type(model).__name__} has no nn.Linear layer: torchao int8 would change nothing")
    quantize_(quantized, Int8WeightOnlyConfig() if weight_only else Int8DynamicActivationInt8WeightConfig())
    return quantized


def save_torchao_int8(model: torch.nn.Module, folder: Path) -> None:
    save_torchao(model, folder)


def export_onnx(model: torch.nn.Module, path: Path, example: torch.Tensor, *, opset: int = 17) -> Path:
    """fp32 ONNX with a dynamic batch axis (`pixel_values` -> `logits`); BatchNorm folds in eval mode."""
    import warnings

    wrapper = LogitsModule(copy.deepcopy(model).eval()).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            wrapper,
            (example[:1].float(),),
            str(path),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def onnx_static_int8(
    model: torch.nn.Module,
    calibration: np.ndarray,
    folder: Path,
    *,
    per_channel: bool = True,
    fp32_folder: Path | None = None,
) -> dict:
    """Export `model`, fold BatchNorm, calibrate on `calibration` (N, C, H, W float32) and write the QDQ int8 graph
    to `folder/model.onnx` (and the optimised fp32 graph to `fp32_folder/model.onnx` if given: the reference that
    separates what int8 gains from what ONNX Runtime alone gains). Returns facts for the card (BatchNorm nodes left,
    calibration count, op counts)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration.ndim != 4 or not len(calibration):
        raise ConfigError(f"calibration images must be a non-empty (N, C, H, W) array, got shape {calibration.shape}")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixel_values": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", torch.from_numpy(calibration[:1]))
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        if fp32_folder is not None:
            shutil.copyfile(prepared, fp32_folder / ONNX_FILE)
        batchnorms = sum(n.op_type == "BatchNormalization" for n in onnx.load(str(prepared)).graph.node)
        quantize_static(
            str(prepared),
            str(folder / ONNX_FILE),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
        )
    graph = onnx.load(str(folder / ONNX_FILE)).graph
    ops: dict[str, int] = {}
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"batchnorm_nodes_after_folding": batchnorms, "calibration_images": len(calibration), "onnx_ops": ops}
