"""Visual-search service bench (issue 13): prints JSON.

1. API throughput with 8 concurrent clients against `uvicorn spaces.search.app:app` (a real server process),
   micro-batching on (max batch 8, 5 ms window) vs off (max batch 1), for the small search model (56 px) and a
   DINOv2-small-sized backbone (random weights, 224 px: the real architecture's compute).
2. Search latency of the faiss index at 10k and 100k items (random vectors, 384 dims as DINOv2-small; uniform and
   clustered): exact (IndexFlatIP) vs approximate (HNSW M=32 efSearch=64, IVF nprobe=16), one query at a time,
   with recall@10 of the approximate vs the exact.

    python bench/deploy_search.py [--requests-per-client 12] [--sizes 10000,100000] [--out bench.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- 1. API throughput -------------------------------------------------------------------------------------------
def build_index(tmp: Path, arch: str) -> Path:
    from hubkit.data.garments import make_catalogue
    from hubkit.search import build_search_model, write_catalogue_index

    shop = tmp / "shop"
    if not shop.exists():
        make_catalogue(shop, n_per_category=8, seed=0, size=96)
    model = tmp / f"model-{arch}"
    if arch == "small":
        build_search_model(model, seed=0)
    else:  # DINOv2-small's architecture (22M parameters), random weights, its 224-px preprocessing
        from transformers import Dinov2Config, Dinov2Model
        from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

        Dinov2Model(
            Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=224, patch_size=14)
        ).save_pretrained(model)
        BitImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(
            model
        )
    return write_catalogue_index(shop, tmp / f"index-{arch}", model=model, probe_views=1)


async def drive(url: str, images: list[bytes], clients: int, per_client: int) -> dict:
    import httpx

    latencies, batch_sizes = [], []

    async def client(i: int) -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            for j in range(per_client):
                data = images[(i * per_client + j) % len(images)]
                started = time.perf_counter()
                response = await http.post(url, files={"file": ("q.png", data, "image/png")})
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)
                batch_sizes.append(response.json()["batch_size"])

    await client(0)  # warm-up
    latencies.clear()
    batch_sizes.clear()
    started = time.perf_counter()
    await asyncio.gather(*[client(i) for i in range(clients)])
    wall = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "throughput_rps": len(latencies) / wall,
        "latency_ms_p50": 1e3 * statistics.median(latencies),
        "latency_ms_p95": 1e3 * percentile(latencies, 0.95),
        "mean_batch_size": float(np.mean(batch_sizes)),
    }


def raw_embed(model: Path, images: list[bytes], rounds: int = 3) -> dict:
    """The model alone, no HTTP: 8 images one at a time vs one batch of 8 (median of `rounds`, alternating)."""
    from PIL import Image

    from hubkit.search import ModelEmbedder

    embedder = ModelEmbedder(model).load()
    pil = [Image.open(io.BytesIO(data)).convert("RGB") for data in images[:8]]
    embedder.embed(pil[:2])
    singles, batched = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for image in pil:
            embedder.embed([image])
        singles.append(time.perf_counter() - started)
        started = time.perf_counter()
        embedder.embed(pil)
        batched.append(time.perf_counter() - started)
    return {
        "eight_singles_s": statistics.median(singles),
        "one_batch_of_8_s": statistics.median(batched),
        "batch_speedup": statistics.median(singles) / statistics.median(batched),
    }


def api_throughput(tmp: Path, arch: str, clients: int, per_client: int) -> dict:
    from PIL import Image

    from hubkit.data.garments import camera_view, read_catalogue

    index = build_index(tmp, arch)
    rng = np.random.default_rng(0)
    images = []
    for row in read_catalogue(tmp / "shop")[:16]:
        buffer = io.BytesIO()
        camera_view(Image.open(tmp / "shop" / row["file"]), rng).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    out = {"raw_embed": raw_embed(tmp / f"model-{arch}", images)}
    for label, max_batch in (("micro_batching", 8), ("no_batching", 1)):
        port = free_port()
        env = {
            **os.environ,
            "HUBKIT_SEARCH_INDEX": str(index),
            "HUBKIT_SEARCH_MAX_BATCH": str(max_batch),
            "HUBKIT_SEARCH_WINDOW_MS": "5",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "spaces.search.app:app", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            import httpx

            deadline = time.monotonic() + 300
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"uvicorn exited: {server.stderr.read().decode()[-2000:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the search server was not ready in 300 s")
                time.sleep(0.3)
            out[label] = asyncio.run(drive(f"http://127.0.0.1:{port}/api/predict", images, clients, per_client))
        finally:
            server.terminate()
            server.wait(timeout=30)
    out["throughput_ratio"] = out["micro_batching"]["throughput_rps"] / out["no_batching"]["throughput_rps"]
    return out


# -- 2. index latency ---------------------------------------------------------------------------------------------
def index_latency(size: int, dim: int, queries: int, data: str, seed: int = 0) -> dict:
    """`uniform`: i.i.d. Gaussian vectors and queries (no structure: the worst case for approximate search);
    `clustered`: items around size/50 centres, queries near items (closer to real embeddings)."""
    from hubkit.search import VectorIndex, recall_at_k

    rng = np.random.default_rng(seed)
    if data == "uniform":
        vectors = rng.standard_normal((size, dim), dtype=np.float32)
        qs = rng.standard_normal((queries, dim), dtype=np.float32)
    else:
        centres = rng.standard_normal((max(1, size // 50), dim), dtype=np.float32)
        vectors = centres[rng.integers(0, len(centres), size)] + 0.5 * rng.standard_normal(
            (size, dim), dtype=np.float32
        )
        qs = vectors[rng.integers(0, size, queries)] + 0.3 * rng.standard_normal((queries, dim), dtype=np.float32)
    ids = [str(i) for i in range(size)]
    result = {"items": size, "dim": dim, "queries": queries, "data": data}
    exact_hits = None
    for kind in ("flat", "hnsw", "ivf"):
        started = time.perf_counter()
        index = VectorIndex(ids, vectors, kind=kind)
        build = time.perf_counter() - started
        times, hits = [], []
        for q in qs:
            t = time.perf_counter()
            hits.append(index.search(q[None], 10)[0])
            times.append(time.perf_counter() - t)
        row = {
            "build_s": build,
            "latency_ms_p50": 1e3 * statistics.median(times),
            "latency_ms_p95": 1e3 * percentile(times, 0.95),
        }
        if kind == "flat":
            exact_hits = hits
        else:
            row["recall_at_10"] = recall_at_k(exact_hits, hits, 10)
            row["speedup_vs_exact_p50"] = result["flat"]["latency_ms_p50"] / row["latency_ms_p50"]
        result[kind] = row
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests-per-client", type=int, default=12)
    parser.add_argument("--archs", default="small,dinov2-small")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import faiss
    import torch

    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "faiss": faiss.__version__,
            "faiss_threads": faiss.omp_get_max_threads(),
        },
        "api": {},
        "index": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HUBKIT_HOME"] = str(Path(tmp) / "store")
        os.environ["HF_HUB_OFFLINE"] = "1"
        for arch in [a for a in args.archs.split(",") if a]:
            report["api"][arch] = api_throughput(Path(tmp), arch, args.clients, args.requests_per_client)
            print(json.dumps({arch: report["api"][arch]}), file=sys.stderr)
    for size in [int(s) for s in args.sizes.split(",") if s]:
        for data in ("uniform", "clustered"):
            report["index"].append(index_latency(size, args.dim, args.queries, data))
            print(json.dumps(report["index"][-1]), file=sys.stderr)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
