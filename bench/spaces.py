"""Spaces bench: per Space, latency p50 / p95 and throughput at 1, 8 and 50 concurrent clients through the HTTP API;
batched vs unbatched where a Space batches (depth, search); depth's 8 clients on 8 different adapters of one base
(mixed-adapter passes vs one request at a time, switching adapters); API overhead over the direct hubkit call.

Setup: a temporary HUBKIT_HOME filled by `hubkit bootstrap` (tiny random-weight models, 8 demo adapters per task;
2 with --quick). Each Gradio Space is built from its spaces/<name>/app.py and launched in this process on a free
port; depth three times: batched (`build_demo(batch=True)`: micro-batched passes, 16 requests in flight), unbatched
(`batch=False`, same concurrency, a pass per request) and one at a time (`concurrency_limit=1`, gradio's default:
the Space before batching). Clients are threads, all starting together, each sending --calls requests through
Gradio's HTTP API on a kept-alive connection with its own session (`GradioHTTP`; each call uploads the image);
`gradio_client_1` repeats the 1-client figure with gradio_client, whose per-call client setup costs ~0.15 s of CPU
here. The search Space runs under uvicorn with micro-batching (max_batch 8) and without (max_batch 1).

Per-request work is kept small (64 px images; 2 sampling steps and 1 sample for pixcell; the tiny models), so the
figures measure the serving path: queueing, batching, uploads, encoding (result files are not downloaded).
Direct: the same request through the Space's hubkit object (PlantDemo.run, PixCellDemo.run, SegmaDemo.run,
DepthDemo, the search service), median of --calls runs; overhead = API p50 at 1 client - direct p50. Depth's
`in_process_*`: 8 threads calling DepthDemo without HTTP, batched vs not: the batching gain of the model call alone.
Clients and servers share the machine (and this process), so on a 2-core machine absolute numbers are pessimistic;
the ratios are the point. stdout carries one JSON object.

    python bench/spaces.py [--quick] [--spaces plant,pixcell,segma,depth,search] [--calls 3] [--levels 1,8,50]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALL_SPACES = ("plant", "pixcell", "segma", "depth", "search")
log = logging.getLogger("bench.spaces")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo_png(folder: Path, size: int = 64) -> Path:
    from PIL import Image
    from skimage import data

    path = folder / f"astronaut-{size}.png"
    Image.fromarray(data.astronaut()).resize((size, size)).save(path)
    return path


def summarise(latencies: list[float], wall: float) -> dict[str, float]:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_s": round(statistics.median(ordered), 4), "p95_s": round(p95, 4),
            "calls_per_s": round(len(ordered) / wall, 3), "calls": len(ordered)}  # fmt: skip


def run_clients(make_client: Callable[[], Callable[[], object]], clients: int, calls: int) -> dict[str, float]:
    """`clients` threads, each with its own client from `make_client()`, start together and send `calls` requests;
    any failure aborts the bench (a bench of failing requests measures nothing)."""
    callers = [make_client() for _ in range(clients)]
    barrier = threading.Barrier(clients)
    latencies: list[float] = []
    lock = threading.Lock()

    def work(call):
        barrier.wait()
        mine = []
        for _ in range(calls):
            began = time.perf_counter()
            call()
            mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(work, c) for c in callers]:
            future.result()
    return summarise(latencies, time.perf_counter() - began)


def direct(call: Callable[[], object], calls: int) -> dict[str, float]:
    call()  # the model loads outside the timing, as it has for the API figures
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return {"p50_s": round(statistics.median(times), 4)}


def load_app_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_space_{name}", ROOT / "spaces" / name / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def launched(demo):
    port = free_port()
    demo.queue(max_size=None)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


class Upload:
    """A file argument: each call uploads it, as a client with a new photo would."""

    def __init__(self, path: Path):
        self.path, self.data = path, path.read_bytes()


class GradioHTTP:
    """A lean client of Gradio's HTTP API (POST /gradio_api/upload, POST /gradio_api/call/NAME, then its event
    stream) on one kept-alive connection. gradio_client opens a new HTTPS-capable httpx client (an SSL context,
    ~30 ms of CPU) for each upload and call; on a 2-core machine shared with the server that CPU would be the
    bottleneck being measured. `gradio_client_1` in the output keeps that figure for comparison."""

    def __init__(self, url: str):
        import httpx

        self.url, self.http = url, httpx.Client(timeout=600)
        # One session per client, as gradio_client keeps: without one, gradio builds a new session (the config of
        # every component of the page) for each call.
        self.session = uuid.uuid4().hex

    def _value(self, arg):
        if not isinstance(arg, Upload):
            return arg
        response = self.http.post(self.url + "gradio_api/upload", files={"files": (arg.path.name, arg.data)})
        response.raise_for_status()
        return {"path": response.json()[0], "orig_name": arg.path.name, "meta": {"_type": "gradio.FileData"}}

    def __call__(self, api_name: str, args: list):
        body = {"data": [self._value(a) for a in args], "session_hash": self.session}
        response = self.http.post(self.url + f"gradio_api/call/{api_name.strip('/')}", json=body)
        response.raise_for_status()
        event = response.json()["event_id"]
        kind = None
        with self.http.stream("GET", self.url + f"gradio_api/call/{api_name.strip('/')}/{event}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[len("event: ") :]
                elif line.startswith("data: ") and kind in ("complete", "error"):
                    if kind == "error":
                        raise RuntimeError(f"{api_name} failed: {line[len('data: ') :][:300]}")
                    return json.loads(line[len("data: ") :])
        raise RuntimeError(f"{api_name}: the event stream ended without a result")


def gradio_levels(url: str, api_name: str, args: list, levels, calls: int) -> dict[str, dict]:
    from gradio_client import Client, handle_file

    def make():
        client = GradioHTTP(url)
        return lambda: client(api_name, args)

    make()()  # warm: the model loads before any timing
    out = {str(n): run_clients(make, n, calls) for n in levels}

    def make_gradio_client():
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 600}, download_files=False)
        plain = [handle_file(str(a.path)) if isinstance(a, Upload) else a for a in args]
        return lambda: client.predict(*plain, api_name=api_name)

    out["gradio_client_1"] = run_clients(make_gradio_client, 1, calls)
    return out


def ratio(a: dict, b: dict, key: str = "calls_per_s") -> float:
    return round(a[key] / b[key], 3) if b.get(key) else float("nan")


# -- the Spaces -------------------------------------------------------------------------------------------------
def bench_plant(image: Path, levels, calls: int) -> dict:
    module = load_app_module("plant")
    tiny = "hubkit-tiny/plant-vlm"
    with launched(module.build_demo()) as url:
        api = gradio_levels(url, "/predict", [Upload(image), None, "", tiny, None, 3, False], levels, calls)
    result = {"api": api, "direct": direct(lambda: module.plant.run(str(image), models=[tiny], top_k=3), calls)}
    result["overhead_s"] = round(api[str(levels[0])]["p50_s"] - result["direct"]["p50_s"], 4)
    result["batching"] = "micro-batched (batch=True, up to 8 per pass), concurrency_limit 16; no unbatched run"
    return result


def bench_pixcell(image: Path, levels, calls: int) -> dict:
    module = load_app_module("pixcell")
    base = "hubkit-tiny/pixcell"
    work = ["dpm++", 2, 1.5, 1, 0]
    with launched(module.build_demo()) as url:
        api = gradio_levels(url, "/generate", [Upload(image), base, "", *work], levels, calls)
    run = lambda: module.pixcell.run(str(image), base=base, num_inference_steps=2, num_images=1)  # noqa: E731
    result = {"api": api, "direct": direct(run, calls)}
    result["overhead_s"] = round(api[str(levels[0])]["p50_s"] - result["direct"]["p50_s"], 4)
    result["batching"] = "none: concurrency_limit 2 (sampling is CPU-bound)"
    return result


def bench_segma(image: Path, levels, calls: int) -> dict:
    module = load_app_module("segma")
    menus = [module.segma.default_base(stage) if i % 2 == 0 else "" for stage in module.STAGES for i in (0, 1)]
    args = [Upload(image), "general", "none", "coin", *menus, 0.25, 0.2]
    with launched(module.build_demo()) as url:
        api = gradio_levels(url, "/run", args, levels, calls)
    run = lambda: module.segma.run(str(image), classes="coin")  # noqa: E731
    result = {"api": api, "direct": direct(run, calls)}
    result["overhead_s"] = round(api[str(levels[0])]["p50_s"] - result["direct"]["p50_s"], 4)
    result["batching"] = "none: concurrency_limit 2 (five models per run)"
    return result


def bench_depth(image: Path, levels, calls: int) -> dict:
    module = load_app_module("depth")
    base = module.depth.available_bases()[0]
    adapters = module.depth.available_adapters(base)
    upload = Upload(image)
    out: dict = {"base": base, "adapters_in_store": len(adapters)}
    at_8 = sorted({levels[0], 8})
    # batched: micro-batched passes, 16 requests in flight; unbatched: the same concurrency, a pass per request;
    # one_at_a_time: gradio's default concurrency_limit=1, no batching (the Space before batching).
    setups = {"batched": (True, 2 * module.MAX_BATCH), "unbatched": (False, 2 * module.MAX_BATCH),
              "one_at_a_time": (False, 1)}  # fmt: skip
    for key, (batch, limit) in setups.items():
        with launched(module.build_demo(batch=batch, concurrency_limit=limit)) as url:
            args = [upload, base, adapters[:1], None, None, None, None, False]
            out[key] = gradio_levels(url, "/predict", args, levels if batch else at_8, calls)
            if key == "one_at_a_time":
                continue
            # 8 clients, client i always on adapter i (of one base): mixed-adapter passes vs switching
            counter = iter(range(10**6))
            lock = threading.Lock()

            def make(url=url, counter=counter, lock=lock):
                with lock:
                    i = next(counter)
                client, mine = GradioHTTP(url), [adapters[i % len(adapters)]]
                return lambda: client("/predict", [upload, base, mine, None, None, None, None, False])

            out[f"{key}_8_adapters"] = run_clients(make, 8, calls)
    out["batched_over_unbatched_at_8"] = ratio(out["batched"]["8"], out["unbatched"]["8"])
    out["batched_over_one_at_a_time_at_8"] = ratio(out["batched"]["8"], out["one_at_a_time"]["8"])
    out["mixed_adapters_batched_over_switching"] = ratio(out["batched_8_adapters"], out["unbatched_8_adapters"])
    out["direct"] = direct(lambda: module.depth.submit(
        module.depth.check(str(image), base, adapters[:1], None, files=False), batch=False), calls)  # fmt: skip
    # The same 8 clients without HTTP: threads calling the Space's DepthDemo (decode, check, predict, render), so
    # the batching gain of the model call itself shows beside the end-to-end figure.
    for batch in (True, False):

        def request(batch=batch):
            check = module.depth.check(str(image), base, adapters[:1], None, files=False)
            return module.depth.submit(check, batch=batch)

        out[f"in_process_{'batched' if batch else 'unbatched'}_8"] = run_clients(lambda r=request: r, 8, calls)
    out["in_process_batched_over_unbatched_at_8"] = ratio(out["in_process_batched_8"], out["in_process_unbatched_8"])
    out["overhead_s"] = round(out["batched"][str(levels[0])]["p50_s"] - out["direct"]["p50_s"], 4)
    out["overhead_gradio_client_s"] = round(out["batched"]["gradio_client_1"]["p50_s"] - out["direct"]["p50_s"], 4)
    return out


def bench_search(image: Path, levels, calls: int, tmp: Path) -> dict:
    import httpx
    import uvicorn

    from hubkit.data.garments import make_catalogue
    from hubkit.search import SearchService, Version, build_search_model, create_app, write_catalogue_index

    shop = make_catalogue(tmp / "shop", n_per_category=4, seed=0, size=64)
    index = write_catalogue_index(shop, tmp / "index", model=build_search_model(tmp / "model", seed=0), probe_views=1)
    data = image.read_bytes()
    out: dict = {}
    for max_batch in (8, 1):
        service = SearchService([Version("a", str(index))], max_batch=max_batch, window_ms=5)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}/api/predict?k=5"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200:
                        break
                time.sleep(0.2)

            def make(url=url):
                client = httpx.Client(timeout=120)

                def call():
                    response = client.post(url, files={"file": ("a.png", data)})
                    response.raise_for_status()

                return call

            make()()
            key = "batched" if max_batch > 1 else "unbatched"
            out[key] = {str(n): run_clients(make, n, calls) for n in levels}
            if max_batch > 1:
                from PIL import Image

                served = service.served["a"]

                # what the route does, without HTTP and the batcher: decode, embed, search
                def search_directly(served=served):
                    pil = Image.open(io.BytesIO(data)).convert("RGB")
                    vector = served.embedder.embed_list([pil])[0]
                    index, _ = served.catalogue.for_embedder(served.fallback)
                    return index.search(vector[None], 5)

                out["direct"] = direct(search_directly, calls)
                out["overhead_s"] = round(out["batched"][str(levels[0])]["p50_s"] - out["direct"]["p50_s"], 4)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    top = str(levels[-1])
    out["batched_over_unbatched"] = {n: ratio(out["batched"][n], out["unbatched"][n]) for n in out["batched"]}
    out["note"] = f"micro-batching (max_batch 8, 5 ms window) vs max_batch 1; {top} clients at most"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run: 1 call per client, 2 adapters per task")
    parser.add_argument("--spaces", default=",".join(ALL_SPACES), help="a comma-separated subset")
    parser.add_argument("--calls", type=int, default=3, help="requests per client")
    parser.add_argument("--levels", default="1,8,50", help="concurrent clients")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared small machine: 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    calls = 1 if args.quick else args.calls
    levels = [int(n) for n in args.levels.split(",")]
    spaces = [s for s in args.spaces.split(",") if s]
    unknown = sorted(set(spaces) - set(ALL_SPACES))
    if unknown:
        parser.error(f"unknown Space(s) {unknown}; choose from {', '.join(ALL_SPACES)}")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-spaces-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ.update({"HUBKIT_HOME": str(tmp / "home"), "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1",
                           "GRADIO_ANALYTICS_ENABLED": "False"})  # fmt: skip
        from hubkit import hub
        from hubkit.bootstrap import bootstrap

        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            bootstrap(hub.LocalStore(tmp / "home"), adapters_per_task=2 if args.quick else 8)
        log.info("bootstrapped in %.0f s", time.perf_counter() - started)
        image = photo_png(tmp)
        result: dict = {"levels": levels, "calls_per_client": calls, "torch_threads": torch.get_num_threads(),
                        "cpus": os.cpu_count(), "spaces": {}}  # fmt: skip
        for name in spaces:
            log.info("bench: %s", name)
            began = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):
                if name == "search":
                    result["spaces"][name] = bench_search(image, levels, calls, tmp / "search")
                else:
                    result["spaces"][name] = globals()[f"bench_{name}"](image, levels, calls)
            result["spaces"][name]["bench_seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
