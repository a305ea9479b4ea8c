"""The ASGI app: match a request to a route, run its guest CGI-style, answer with its output.

The request path only reads what the loader prepared. Guests run on worker threads
(wasm runs with the GIL released), so a slow guest never holds up the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import cgi
from .config import Settings
from .engine import Invocation
from .executor import Executor
from .loader import Handler, LoadedApp
from .routing import BadPath, Match, RequestPath

log = logging.getLogger("wagi")
access_log = logging.getLogger("wagi.access")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

HEALTH_PATHS = frozenset({"/healthz", "/.well-known/spin/health"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Gateway:
    """The ASGI application object; holds the loaded app and the guest threads."""

    def __init__(self, settings: Settings, loaded: LoadedApp, executor: Executor) -> None:
        self.settings = settings
        self.loaded = loaded
        self.executor = executor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def close(self) -> None:
        """Stop running guests and release the loaded app."""
        self.executor.close()
        self.loaded.close()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = _request_id(scope)
        try:
            await self._handle(scope, receive, send, request_id)
        except Exception:
            # A bug of ours: log it fully, and answer 500 unless a response already started.
            log.exception("%s: unexpected error handling %s", request_id, scope["path"])
            with contextlib.suppress(Exception):
                await _respond(send, request_id, 500, b"Internal Server Error\n")

    async def _handle(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        started = time.perf_counter()
        path = scope["path"]
        if path in HEALTH_PATHS:
            await _respond(send, request_id, 200, b"OK\n")
            return
        raw_path = scope.get("raw_path") or path.encode()
        try:
            request_path = RequestPath.parse(raw_path.decode("latin-1"))
        except BadPath as error:
            await _respond(send, request_id, 400, f"Bad Request: {error}\n".encode())
            return
        match = self.loaded.routes.match(request_path)
        if match is None:
            await _respond(send, request_id, 404, b"Not Found\n")
            return
        body = await _read_body(receive)
        handler = match.route.target
        status, sent = await self._run_guest(scope, match, handler, body, request_id, send)
        access_log.info(
            "%s %s %s %d %d %s %.1fms",
            request_id,
            scope["method"],
            path,
            status,
            sent,
            handler.component.id,
            (time.perf_counter() - started) * 1000,
        )

    async def _run_guest(
        self,
        scope: Scope,
        match: Match[Handler],
        handler: Handler,
        body: bytes,
        request_id: str,
        send: Send,
    ) -> tuple[int, int]:
        request = _cgi_request(scope, len(body))
        component = handler.component
        invocation = Invocation(
            argv=cgi.argv(handler.argv, request),
            env=cgi.request_environment(request, match, handler.optional_env),
            stdin=body,
            mounts=component.mounts,
            fixed_env=handler.fixed_env,
        )
        outcome = await self.executor.run(component.pool, handler.entrypoint, invocation)
        if outcome.stderr:
            component.log.write(request_id, outcome.stderr)
        if not outcome.ok:
            reason = outcome.error or f"exit code {outcome.exit_code}"
            log.error(
                "%s: component %s, route %s: guest failed: %s",
                request_id,
                component.id,
                handler.pattern.text,
                reason,
            )
            return await _respond(send, request_id, 500, b"Internal Server Error\n"), 0
        try:
            response = cgi.parse_response(outcome.stdout)
        except cgi.CgiError as error:
            log.error(
                "%s: component %s, route %s: %s",
                request_id,
                component.id,
                handler.pattern.text,
                error.reason,
            )
            status = error.status
            text = b"Bad Gateway\n" if status == 502 else b"Internal Server Error\n"
            return await _respond(send, request_id, status, text), 0
        headers = [*response.headers, (b"x-request-id", request_id.encode())]
        body_out = response.body
        if response.status in (204, 304):
            body_out = b""
        else:
            headers.append((b"content-length", str(len(body_out)).encode()))
        if scope["method"] == "HEAD":
            body_out = b""
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body_out})
        return response.status, len(body_out)


def _cgi_request(scope: Scope, body_length: int) -> cgi.Request:
    query = scope.get("query_string", b"").decode("latin-1")
    raw_path = scope.get("raw_path") or scope["path"].encode()
    return cgi.Request(
        method=scope["method"],
        raw_path=raw_path.decode("latin-1"),
        query=query,
        headers=scope["headers"],
        body_length=body_length,
        scheme=scope.get("scheme", "http"),
        protocol=f"HTTP/{scope.get('http_version', '1.1')}",
        client=scope.get("client"),
        server=scope.get("server"),
    )


def _request_id(scope: Scope) -> str:
    # Keep the id a load balancer or client already gave the request, when it is sane.
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
    return os.urandom(8).hex()


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(send: Send, request_id: str, status: int, body: bytes) -> int:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return status
