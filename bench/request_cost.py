"""The gateway's own cost per request, without HTTP: the ASGI app called in a loop.

    python bench/request_cost.py [--requests 20000] [--rounds 3] [--profile] [--replay]

Loads the benchmark's modules (hello, env, page) into a gateway, then calls its ASGI
app directly with a ready-made GET scope, so what is measured is routing, the CGI
environment, the pool, the guest and the response parsing: everything but hypercorn
and h11. `--profile` prints cProfile's top functions for hello (profiling slows every
call down; read it for proportions only). `--replay` replays each
guest's first outcome instead of running it (as target D of bench/run.py does), which
leaves the gateway's Python around the guest.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path

from baselines import replay_gateway
from run import OUT, manifest, prepare

from gateway.config import Settings
from gateway.manifest import load_manifest
from gateway.server import make_gateway

HEADERS = [(b"host", b"localhost:3000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]


def scope(path: str) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "headers": HEADERS,
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 3000)}  # fmt: skip


class Recorder:
    """The ASGI `send` side: keeps the statuses."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.statuses.append(message["status"])


async def receive() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


async def started(app) -> tuple[asyncio.Task, asyncio.Queue]:
    """Run the app's lifespan startup; the task and the queue that ends it."""
    messages: asyncio.Queue = asyncio.Queue()
    ready = asyncio.Event()

    async def send(message: dict) -> None:
        if message["type"] == "lifespan.startup.complete":
            ready.set()

    await messages.put({"type": "lifespan.startup"})
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                   messages.get, send))  # fmt: skip
    await ready.wait()
    return task, messages


async def per_request(app, path: str, count: int, profiler: cProfile.Profile | None) -> float:
    """Microseconds per request for `count` requests to `path` (all must answer 200)."""
    request, recorder = scope(path), Recorder()
    while not recorder.statuses or recorder.statuses[-1] != 200:  # the app loads meanwhile
        await app(request, receive, recorder.send)
        await asyncio.sleep(0.01)
    for _ in range(1000):  # warm up
        await app(request, receive, recorder.send)
    recorder.statuses.clear()
    if profiler:
        profiler.enable()
    begin = time.perf_counter()
    for _ in range(count):
        await app(request, receive, recorder.send)
    elapsed = time.perf_counter() - begin
    if profiler:
        profiler.disable()
    if set(recorder.statuses) != {200}:
        raise RuntimeError(f"{path}: statuses {sorted(set(recorder.statuses))}")
    return elapsed / count * 1e6


async def measure(routes: Path, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as cache:
        if args.replay:
            app = replay_gateway(routes, Path(cache))
        else:
            app = make_gateway(
                Settings(manifest=routes, cache_dir=Path(cache)), load_manifest(routes)
            )
        task, lifespan = await started(app)
        for path in ("/hello", "/env", "/page"):
            costs = [await per_request(app, path, args.requests, None) for _ in range(args.rounds)]
            print(f"{path:8} {statistics.median(costs):6.1f} us per request "
                  f"(median of {args.rounds} rounds of {args.requests})")  # fmt: skip
        if args.profile:
            profiler = cProfile.Profile()
            await per_request(app, "/hello", args.requests, profiler)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        await lifespan.put({"type": "lifespan.shutdown"})
        await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--replay", action="store_true", help="replay the guests' output")
    args = parser.parse_args()
    routes = manifest(prepare(), ["hello", "env", "page"], OUT / "request-cost.toml")
    asyncio.run(measure(routes, args))


if __name__ == "__main__":
    main()
