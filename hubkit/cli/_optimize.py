"""`hubkit optimize`: int8 / pruned / distilled variants of an image classifier, with a measured report."""

from __future__ import annotations

from ._models import quiet_model_loading
from ._registry import arg, command


@command(
    "optimize",
    arg("repo", help="image classifier: store repo, Hub id or folder"),
    arg("--data", required=True, metavar="DIR", help="labelled images, one sub-folder per class (the model's labels)"),
    arg("--out", required=True, metavar="DIR", help="where the variant folders and report.{json,md,png} go"),
    arg("--push-prefix", default=None, metavar="REPO", help="push each variant as REPO-<variant> (e.g. me/clf)"),
    arg("--int8", action="store_true", help="int8 post-training quantization"),
    arg("--int8-method", default="auto", help="auto | onnx-static | torchao-dynamic | torchao-weight-only"),
    arg("--calibration-images", type=int, default=32, help="training images for static quantization ranges"),
    arg("--prune", action="store_true", help="structured pruning + recovery, and unstructured L1 for comparison"),
    arg("--prune-ratio", type=float, default=0.3, help="share of channels / MLP neurons removed"),
    arg("--sparse-amount", type=float, default=0.5, help="share of weights zeroed by unstructured L1"),
    arg("--recovery-steps", type=int, default=30),
    arg("--distill", action="store_true", help="distil into a small student"),
    arg("--student", default="mobilenet_v2", help="mobilenet_v2 | resnet (random init)"),
    arg("--student-width", type=float, default=0.35),
    arg("--temperature", type=float, default=5.0),
    arg("--alpha", type=float, default=0.5, help="weight of the hard-label CE (1 - alpha: T^2 * KL)"),
    arg("--distill-steps", type=int, default=150),
    arg("--heldout", type=float, default=0.25, help="share of each class held out for accuracy"),
    arg("--latency-runs", type=int, default=20),
    arg("--seed", type=int, default=0),
    help="make int8 / pruned / distilled variants of a classifier and measure them (size, latency, accuracy)",
    options=("hub", "offline"),
)
def _optimize(args) -> None:
    quiet_model_loading()
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    from ..optimize import FinetuneSettings, OptimizeOptions, optimize

    chosen = dict(int8=args.int8, prune=args.prune, distill=args.distill)
    if not any(chosen.values()):
        chosen = dict.fromkeys(chosen, True)  # no flag: every technique
    options = OptimizeOptions(
        **chosen,
        int8_method=args.int8_method,
        calibration_images=args.calibration_images,
        prune_ratio=args.prune_ratio,
        sparse_amount=args.sparse_amount,
        student=args.student,
        student_width=args.student_width,
        temperature=args.temperature,
        alpha=args.alpha,
        recovery=FinetuneSettings(steps=args.recovery_steps, learning_rate=5e-4, seed=args.seed),
        distillation=FinetuneSettings(steps=args.distill_steps, learning_rate=2e-3, seed=args.seed),
        heldout=args.heldout,
        latency_runs=args.latency_runs,
        seed=args.seed,
    )
    result = optimize(args.repo, data=args.data, out=args.out, options=options, push_prefix=args.push_prefix,
                      hub_name=args.hub)  # fmt: skip
    print((result.out / "report.md").read_text().rstrip())
    for name, where in result.pushed.items():
        print(f"{name}  {where}")
    print(result.report_files["json"])
