"""Adapter switching, merging and memory on real-size architectures with random weights (CPU).

Prints one JSON object. The alternative a user would reach for without hubkit's resident adapters is
loading base + adapter afresh for every switch; ratios compare against that and against the base.

    python bench/adapters.py [--families depth-anything sam] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from skimage import data

import hubkit
from hubkit import tiny
from hubkit.plan import build_on_meta, bundled_config_dir
from hubkit.tasks import get_task

SIZES = {  # family -> (task, real architecture id, processor overrides)
    "depth-anything": ("depth-estimation", "depth-anything/Depth-Anything-V2-Small-hf", {"size": 518}),
    "sam": ("mask-generation", "facebook/sam-vit-base", {}),
}


# SAM's automatic mode runs hundreds of prompts; one prompted point keeps the bench on the encoder.
BENCH_KWARGS = {"sam": {"points": [[256, 256]]}}


def real_size_folder(family: str, root: Path) -> Path:
    """The real architecture with random weights, plus the tiny model's processor files."""
    task, repo_id, _ = SIZES[family]
    small = tiny.build(family, root / "tiny")
    model, _ = build_on_meta(bundled_config_dir(repo_id))
    model = model.to_empty(device="cpu")
    torch.manual_seed(0)
    for param in model.parameters():
        torch.nn.init.normal_(param, std=0.02)
    for buf in model.buffers():
        if buf.is_floating_point():
            buf.zero_()
    folder = root / "real"
    model.save_pretrained(folder)
    for extra in small.glob("*.json"):
        if extra.name != "config.json":
            (folder / extra.name).write_text(extra.read_text())
    if family == "sam":  # SAM ViT-B's own sizes: 1024 px input, 256 px low-res masks
        cfg = json.loads((folder / "processor_config.json").read_text())
        cfg["image_processor"].update(
            size={"longest_edge": 1024},
            pad_size={"height": 1024, "width": 1024},
            mask_size={"longest_edge": 256},
            mask_pad_size={"height": 256, "width": 256},
        )
        (folder / "processor_config.json").write_text(json.dumps(cfg))
    if family == "depth-anything":
        cfg = json.loads((folder / "preprocessor_config.json").read_text())
        cfg["size"] = {"height": 518, "width": 518}
        (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
    return folder


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_family(family: str, repeats: int) -> dict:
    task = SIZES[family][0]
    get_task(task)
    kwargs = get_task(task).example_kwargs
    image = data.astronaut()
    with tempfile.TemporaryDirectory() as tmp:
        folder = real_size_folder(family, Path(tmp))
        adapters = [tiny.random_adapter(task, folder, Path(tmp) / f"lora{i}", seed=i, r=16) for i in range(3)]
        fresh_load = timed(lambda: hubkit.load(task, folder, adapters=[adapters[1]]), max(2, repeats // 2))
        one = hubkit.load(task, folder, adapters=adapters[:1])
        one_bytes = sum(a.nbytes for a in one.adapters.values())
        del one
        gc.collect()
        plain = hubkit.load(task, folder)  # the base alone, no LoRA layers at all
        p = hubkit.load(task, folder, adapters=adapters)
        names = list(p.adapters)
        switches = iter(range(10**9))
        switch = timed(lambda: p.set_adapter(names[next(switches) % 3]), 200)
        p.set_adapter(names[0])
        kwargs = {**kwargs, **BENCH_KWARGS.get(family, {})}
        predict = lambda **kw: p.predict(image, **kwargs, **kw)  # noqa: E731
        predict()  # warm-up
        plain.predict(image, **kwargs)  # warm-up
        base = timed(lambda: plain.predict(image, **kwargs), repeats)
        disabled = timed(lambda: predict(adapter="base"), repeats)
        unmerged = timed(lambda: predict(adapter=names[0]), repeats)
        p.merge(names[0])
        merged = timed(lambda: predict(adapter=names[0]), repeats)
        p.unmerge()
        three_bytes = sum(a.nbytes for a in p.adapters.values())
    return {
        "task": task,
        "architecture": SIZES[family][1],
        "adapter_rank": 16,
        "switch_s": switch,
        "fresh_load_base_plus_adapter_s": fresh_load,
        "fresh_load_over_switch": fresh_load / switch,
        "latency_base_s": base,
        "latency_adapters_disabled_s": disabled,
        "latency_unmerged_s": unmerged,
        "latency_merged_s": merged,
        "unmerged_over_base": unmerged / base,
        "merged_over_base": merged / base,
        "adapter_bytes_1": one_bytes,
        "adapter_bytes_3": three_bytes,
        "adapter_bytes_3_over_1": three_bytes / one_bytes,
        "base_param_bytes": sum(t.numel() * t.element_size() for t in plain.model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    results = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__}
    for family in args.families:
        results[family] = bench_family(family, args.repeats)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
