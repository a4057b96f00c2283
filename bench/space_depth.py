"""Depth Space request latency: through the Gradio API (what a browser or client pays) vs calling
hubkit.spaces_support.DepthDemo.run directly (the same work without HTTP / queue). Prints JSON.

Runs on the tiny bootstrap models in a temporary store, so it measures the serving path, not the model.

    python bench/space_depth.py [--requests 30]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HUBKIT_HOME"] = str(Path(tmp) / "store")
        os.environ["HF_HUB_OFFLINE"] = "1"
        from gradio_client import Client, handle_file

        from hubkit.bootstrap import bootstrap

        bootstrap()
        spec = importlib.util.spec_from_file_location("depth_app", ROOT / "spaces" / "depth" / "app.py")
        app = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(ROOT / "spaces" / "depth"))
        spec.loader.exec_module(app)
        image = str(ROOT / "spaces" / "depth" / "examples" / "motorcycle.png")
        base, adapter = "hubkit-tiny/depth-anything", "hubkit-tiny/depth-anything-demo-lora-0"

        direct = []
        app.depth.run(image, base, [adapter])  # warm-up: loads the base and the adapter once
        for _ in range(args.requests):
            start = time.perf_counter()
            app.depth.run(image, base, [adapter])
            direct.append(time.perf_counter() - start)

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        app.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(Path(tmp) / "dl"))
            call = lambda: client.predict(  # noqa: E731
                handle_file(image), base, [adapter], 150, None, None, None, api_name="/predict"
            )
            call()
            served = []
            for _ in range(args.requests):
                start = time.perf_counter()
                call()
                served.append(time.perf_counter() - start)
        finally:
            app.demo.close()
    result = {
        "requests": args.requests,
        "model": "hubkit-tiny/depth-anything + one LoRA adapter (base and adapted maps per request)",
        "api_p50_s": statistics.median(served),
        "api_p95_s": percentile(served, 0.95),
        "direct_p50_s": statistics.median(direct),
        "direct_p95_s": percentile(direct, 0.95),
        "api_over_direct_p50": statistics.median(served) / statistics.median(direct),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
