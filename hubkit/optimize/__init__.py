"""Make a fine-tuned classifier small and fast: int8, structured / unstructured pruning, distillation, each
variant measured (size, parameters, CPU latency, throughput, held-out accuracy) and saved as a loadable repo.

    from hubkit.optimize import OptimizeOptions, optimize, load_variant

    result = optimize("me/classifier", data="./images", out="./variants", push_prefix="me/classifier")
    model = load_variant("me/classifier-int8")
"""

from .data import ClassificationData, load_classification_data
from .prune import prune_structured, prune_unstructured, sparsity
from .quantize import INT8_METHODS, choose_int8_method, onnx_static_int8, torchao_int8
from .report import VariantReport, markdown_table, measure, write_report
from .run import OptimizeOptions, OptimizeResult, check_classifier, optimize
from .train import FinetuneSettings, build_student, distillation_loss, finetune
from .variant import VariantModel, load_variant, weights_size

__all__ = [
    "INT8_METHODS",
    "ClassificationData",
    "FinetuneSettings",
    "OptimizeOptions",
    "OptimizeResult",
    "VariantModel",
    "VariantReport",
    "build_student",
    "check_classifier",
    "choose_int8_method",
    "distillation_loss",
    "finetune",
    "load_classification_data",
    "load_variant",
    "markdown_table",
    "measure",
    "onnx_static_int8",
    "optimize",
    "prune_structured",
    "prune_unstructured",
    "sparsity",
    "torchao_int8",
    "weights_size",
    "write_report",
]
