"""The benchmark's baselines, served with the gateway's own hypercorn settings.

    python bench/baselines.py plain --listen 127.0.0.1:4001 [--workers N]
    python bench/baselines.py cgi --listen 127.0.0.1:4002 --wasmtime PATH --module hello.wasm

- plain (B): an ASGI app answering what the `hello` module prints, with nothing else to
  do; no gateway can be faster than this on the same HTTP server.
- cgi (C): classic CGI, one `wasmtime run MODULE` process per request, which is what
  a user does without a gateway. Its output is parsed with the gateway's CGI parser.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import cgi  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.server import Supervisor, hypercorn_config, listening_sockets, serve_on  # noqa: E402

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


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _app(kind: str, wasmtime: str | None, module: str | None) -> object:
    return plain_app if kind == "plain" else CgiApp(wasmtime, module)


def _worker(number: int, sockets: list, listen: str, kind: str, wasmtime: str | None,
            module: str | None) -> None:  # fmt: skip
    config = hypercorn_config(Settings(manifest=Path("-"), listen=listen))
    serve_on(_app(kind, wasmtime, module), config, sockets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["plain", "cgi"])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--wasmtime")
    parser.add_argument("--module")
    args = parser.parse_args()
    config = hypercorn_config(Settings(manifest=Path("-"), listen=args.listen))
    if args.workers == 1:
        serve_on(_app(args.kind, args.wasmtime, args.module), config, None)
        return
    sockets = listening_sockets(config)
    Supervisor(args.workers, _worker, sockets,
               (args.listen, args.kind, args.wasmtime, args.module)).run()  # fmt: skip


if __name__ == "__main__":
    main()
