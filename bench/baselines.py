"""The benchmark's baselines, served with the gateway's own hypercorn settings.

    python bench/baselines.py plain --listen 127.0.0.1:4001 [--workers N]
    python bench/baselines.py cgi --listen 127.0.0.1:4002 --wasmtime PATH --module hello.wasm
    python bench/baselines.py replay --listen 127.0.0.1:4003 --manifest modules.toml

- plain (B): an ASGI app answering what the `hello` module prints, with nothing else to
  do; no gateway can be faster than this on the same HTTP server.
- cgi (C): classic CGI, one `wasmtime run MODULE` process per request, which is what
  a user does without a gateway. Its output is parsed with the gateway's CGI parser.
- replay (D, a diagnostic): the gateway itself, except that each route's guest runs once
  and its outcome is replayed for every later request. Everything else (routing, the CGI
  environment, admission, metrics, parsing the output, the answer) runs as in `wagi serve`,
  so D splits the gap between A and B: D - B is the gateway's Python around the guest,
  A - D the guest's own path (the pool, WASI, the call, the output). D/B is the highest
  A/B that any faster guest path could reach.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import cgi  # noqa: E402
from gateway.config import Settings, default_cache_dir  # noqa: E402
from gateway.engine import Outcome  # noqa: E402
from gateway.manifest import load_manifest  # noqa: E402
from gateway.server import (  # noqa: E402
    Supervisor,
    hypercorn_config,
    make_gateway,
    serve_on,
    worker_sockets,
)

HELLO = b"Hello from WebAssembly!\n"


async def plain_app(scope: dict, receive, send) -> None:
    """Answers like the `hello` module, without running anything."""
    if scope["type"] != "http":
        return await _lifespan(receive, send)
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", b"24")]})  # fmt: skip
    await send({"type": "http.response.body", "body": HELLO})


class CgiApp:
    """Runs `wasmtime run MODULE` for every request, CGI style."""

    def __init__(self, wasmtime: str, module: str) -> None:
        self.wasmtime = wasmtime
        self.module = module

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            return await _lifespan(receive, send)
        message = await receive()
        env = {"REQUEST_METHOD": scope["method"], "PATH_INFO": scope["path"],
               "QUERY_STRING": scope["query_string"].decode("latin-1")}  # fmt: skip
        arguments = [f"--env={name}={value}" for name, value in env.items()]
        process = await asyncio.create_subprocess_exec(
            self.wasmtime, "run", *arguments, self.module,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, _ = await process.communicate(message.get("body", b""))
        response = cgi.parse_response(stdout)
        headers = [*response.headers, (b"content-length", str(len(response.body)).encode())]
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})  # fmt: skip
        await send({"type": "http.response.body", "body": response.body})


class ReplayExecutor:
    """Runs each pool's guest once, through the real executor, then replays that outcome
    (its `seconds` too, so the guest-time metric repeats the first run's)."""

    def __init__(self, executor) -> None:
        self._executor = executor
        self._outcomes: dict[object, Outcome] = {}

    async def run(self, pool, entrypoint, invocation, limits) -> Outcome:
        outcome = self._outcomes.get(pool)
        if outcome is None:
            outcome = await self._executor.run(pool, entrypoint, invocation, limits)
            self._outcomes[pool] = outcome
        return outcome

    def close(self) -> None:
        self._executor.close()


def replay_gateway(manifest: Path, cache: Path) -> object:
    """The gateway for `manifest`, with its guests replayed."""
    settings = Settings(manifest=manifest, cache_dir=cache, log_level="warning")
    gateway = make_gateway(settings, load_manifest(manifest))
    gateway.executor = ReplayExecutor(gateway.executor)
    return gateway


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _app(args: argparse.Namespace) -> object:
    if args.kind == "plain":
        return plain_app
    if args.kind == "replay":
        return replay_gateway(args.manifest, args.cache_dir)
    return CgiApp(args.wasmtime, args.module)


def _worker(number: int, sockets: list, args: argparse.Namespace) -> None:
    config = hypercorn_config(Settings(manifest=Path("-"), listen=args.listen))
    serve_on(_app(args), config, sockets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["plain", "cgi", "replay"])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--wasmtime")
    parser.add_argument("--module")
    parser.add_argument("--manifest", type=Path, help="replay: the app to serve")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help="replay: the compiled cache")  # fmt: skip
    args = parser.parse_args()
    config = hypercorn_config(Settings(manifest=Path("-"), listen=args.listen))
    if args.workers == 1:
        serve_on(_app(args), config, None)
        return
    # The same sockets as `wagi serve --workers N`: one per worker, SO_REUSEPORT.
    Supervisor(_worker, worker_sockets(config, args.workers), (args,)).run()


if __name__ == "__main__":
    main()
