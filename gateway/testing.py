"""A test kit for module authors: the real gateway in-process, and single-module runs.

    from gateway.testing import wagi_client, run_module, cgi_environment

    with wagi_client("spin.toml") as client:
        response = client.get("/hello?name=you", headers={"Accept": "text/plain"})
        assert response.status_code == 200 and "you" in response.text

    result = run_module("hello.wasm", env=cgi_environment("GET", "/hello", query="name=you"))
    assert result.exit_code == 0 and result.response.status_code == 200

`wagi_client` runs the gateway's own ASGI app (routing, CGI environment, limits, response
rules) on an event loop thread of its own, without a socket. `run_module` runs one module
with exactly the environment, stdin and arguments given, and shows what it printed, raw
and parsed. With pytest, the `wagi_client` and `wagi_manifest` fixtures come from the
plugin this package registers (`gateway.pytest_plugin`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

from . import cgi
from .app import FAILURE_STATUS
from .config import (
    LIMIT_NAMES,
    EngineSettings,
    Limits,
    Settings,
    default_cache_dir,
    parse_limit,
)
from .engine import Engine, Failure, Invocation, Program
from .executor import Executor
from .manifest import DEFAULT_ENTRYPOINT, load_manifest, parse_allowed_host
from .outbound import DEFAULT_MAX_OPEN, OutboundPolicy
from .pool import InstancePool
from .routing import RequestPath, Route, RoutePattern, RouteTable
from .server import make_gateway

# Enough instance slots for a test, far fewer than a server reserves.
TEST_ENGINE = EngineSettings(max_instances=128)
# How long past its request timeout a test waits for an answer before failing.
ANSWER_GRACE = 10.0
# The peer and the listening address requests appear to come from and go to.
CLIENT_ADDRESS = ("127.0.0.1", 50000)
SERVER_ADDRESS = ("127.0.0.1", 3000)

HeaderInput = Mapping[str, str] | list[tuple[str, str]] | None


class Headers(Mapping[str, str]):
    """Response headers: names case-insensitive; a repeated header joined by `, `."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = [(name.lower(), value) for name, value in pairs]

    def __getitem__(self, name: str) -> str:
        values = self.get_all(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, in order (`Set-Cookie` needs this)."""
        name = name.lower()
        return [value for key, value in self.pairs if key == name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self.pairs))

    def __len__(self) -> int:
        return len(set(name for name, _ in self.pairs))

    def __repr__(self) -> str:
        return f"Headers({self.pairs!r})"


@dataclass(frozen=True)
class Response:
    """An HTTP response, as a client would receive it."""

    status_code: int
    headers: Headers
    content: bytes

    @property
    def text(self) -> str:
        """The body decoded with the charset of its Content-Type (UTF-8 by default)."""
        charset = "utf-8"
        for part in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip('"')
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:  # a charset Python does not know: read it as UTF-8
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.content)


class InvalidCgiResponse(AssertionError):
    """The module's output is not a CGI response; the message says why."""


class ModuleFailed(AssertionError):
    """The module failed, so the gateway would not send what it printed."""


@dataclass(frozen=True)
class ModuleResult:
    """What a module did when run once: its raw output, how it ended, the response."""

    stdout: bytes
    stderr: bytes
    # The status it exited with (0 when its entrypoint returned); None when it did not
    # end by itself (a trap, a timeout, a limit).
    exit_code: int | None
    # Why the run failed: "exit", "trap", "timeout", "memory", "output", "start"; or None.
    failure: str | None
    error: str | None
    seconds: float

    @property
    def response(self) -> Response:
        """stdout parsed as a CGI response, the way the gateway parses it.

        Raises ModuleFailed if the run failed (a non-zero exit, a trap, a limit): the
        gateway then answers with an error of its own, whatever the module printed.
        """
        if self.failure is not None:
            status = FAILURE_STATUS.get(self.failure, 500)
            raise ModuleFailed(
                f"the module failed ({self.failure}: {self.error}); the gateway would answer "
                f"{status}, not what it printed"
            )
        try:
            parsed = cgi.parse_response(self.stdout)
        except cgi.CgiError as error:
            raise InvalidCgiResponse(f"not a CGI response: {error.reason}") from None
        return Response(parsed.status, _headers(parsed.headers), parsed.body)

    @property
    def stderr_text(self) -> str:
        """stderr decoded as UTF-8."""
        return self.stderr.decode("utf-8", errors="replace")


def cgi_environment(
    method: str = "GET",
    path: str = "/",
    *,
    query: str | Mapping[str, str] = "",
    headers: HeaderInput = None,
    body: bytes = b"",
    route: str = "/...",
    env: Mapping[str, str] | None = None,
    scheme: str = "http",
) -> dict[str, str]:
    """The environment the gateway gives a module on `route` for this request."""
    path, _, query_in_path = path.partition("?")
    query_text = query if isinstance(query, str) else urlencode(query)
    if query_in_path and query_text:
        raise ValueError("give the query in `path` or in `query`, not in both")
    query_text = query_text or query_in_path
    pattern = RoutePattern.parse(route)
    match = RouteTable([Route(pattern, None)]).match(RequestPath.parse(path, query_text))
    if match is None:
        raise ValueError(f"route {route} does not match {path}")
    request = cgi.Request(
        method=method,
        raw_path=path,
        query=query_text,
        headers=_header_pairs(headers, body),
        body_length=len(body),
        scheme=scheme,
        client=CLIENT_ADDRESS,
        server=SERVER_ADDRESS,
    )
    constants = cgi.RouteConstants.of(pattern.text)
    return cgi.environment(request, constants, match, dict(env or {}))


def run_module(
    module: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    stdin: bytes = b"",
    args: list[str] | None = None,
    entrypoint: str = DEFAULT_ENTRYPOINT,
    mounts: Mapping[str, str | Path] | None = None,
    allowed_outbound_hosts: Sequence[str] = (),
    cache_dir: Path | None = None,
    **limits: str | float | int,
) -> ModuleResult:
    """Run a module once with this environment, stdin and argv (default: its file name).

    `mounts` maps guest paths to host folders (read-only). `allowed_outbound_hosts` is
    spin.toml's allowlist, such as `["https://api.example.com"]`. Limits are keyword
    arguments with `wagi serve`'s names: `request_timeout="2s"`, `max_memory="16M"`, ...
    """
    source = Path(module)
    allowed = tuple(host for text in allowed_outbound_hosts for host in parse_allowed_host(text))
    run_limits = _limits(limits)
    engine = Engine(cache_dir or default_cache_dir(), TEST_ENGINE)
    loaded = engine.load(source)
    program = engine.link(loaded, source.name)
    invocation = Invocation(
        argv=list(args) if args is not None else [source.name],
        env=dict(env or {}),
        stdin=stdin,
        mounts=[(str(Path(host).resolve()), guest) for guest, host in (mounts or {}).items()],
        outbound=OutboundPolicy(source.name, allowed, DEFAULT_MAX_OPEN, run_limits.max_output_size),
    )
    executor = Executor(engine, threads=1)
    try:
        return asyncio.run(_run(executor, program, entrypoint, invocation, run_limits))
    finally:
        executor.close()
        engine.close()


async def _run(
    executor: Executor, program: Program, entrypoint: str, invocation: Invocation, limits: Limits
) -> ModuleResult:
    """One run of `program` on an instance made for it, within `limits`."""
    pool = InstancePool(program, 0, "test", limits.max_memory)
    outcome = await executor.run(pool, entrypoint, invocation, limits)
    ended = outcome.failure in (None, Failure.EXIT)  # it returned, or it called exit
    return ModuleResult(
        outcome.stdout,
        outcome.stderr,
        outcome.exit_code if ended else None,
        outcome.failure,
        outcome.error,
        outcome.seconds,
    )


def _limits(overrides: Mapping[str, object]) -> Limits:
    for name in overrides:
        if name not in LIMIT_NAMES:
            raise TypeError(f"unknown option {name!r} (limits are {', '.join(LIMIT_NAMES)})")
    return Limits().merged({name: parse_limit(name, value) for name, value in overrides.items()})


def _headers(pairs: list[tuple[bytes, bytes]]) -> Headers:
    return Headers([(name.decode("latin-1"), value.decode("latin-1")) for name, value in pairs])


def _latin1(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else str(text).encode("latin-1")


def _header_pairs(headers: HeaderInput, body: bytes) -> list[tuple[bytes, bytes]]:
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    pairs = [(_latin1(name).lower(), _latin1(value)) for name, value in items]
    if body and not any(name == b"content-length" for name, _ in pairs):
        pairs.append((b"content-length", str(len(body)).encode()))
    return pairs


# --------------------------------------------------------------------------- the client


@dataclass
class _Exchange:
    """One request's ASGI conversation, from the client's side."""

    body: bytes
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    sent_body: bool = False
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    async def receive(self) -> dict:
        if not self.sent_body:
            self.sent_body = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.complete.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete.set()


class Client:
    """Requests to an app through the real gateway, in this process, without a socket."""

    def __init__(self, settings: Settings, host: str = "localhost") -> None:
        self.settings = settings
        self.host = host
        self.manifest = load_manifest(settings.manifest)
        self.gateway = make_gateway(settings, self.manifest)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._lifespan: asyncio.Queue | None = None
        self._closed = False
        try:
            self._call(self._start(), timeout=60)
        except BaseException:
            self._stop_loop()
            raise

    # ------------------------------------------------------------ requests

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: HeaderInput = None,
        content: bytes | str = b"",
        data: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Response:
        """Send a request (`url` is a path with an optional query) and return the answer."""
        body, content_type = _body(content, data, json)
        pairs = _header_pairs(headers, body)
        names = {name for name, _ in pairs}
        if content_type and b"content-type" not in names:
            pairs.append((b"content-type", content_type.encode()))
        if b"host" not in names:
            pairs.insert(0, (b"host", self.host.encode()))
        scope = _scope(method, url, pairs)
        return self._call(self._exchange(scope, body), self._answer_timeout(), f"{method} {url}")

    def get(self, url: str, *, headers: HeaderInput = None) -> Response:
        """A GET request."""
        return self.request("GET", url, headers=headers)

    def head(self, url: str, *, headers: HeaderInput = None) -> Response:
        """A HEAD request."""
        return self.request("HEAD", url, headers=headers)

    def post(self, url: str, **options: Any) -> Response:
        """A POST request: `content=`, `data=` (a form) or `json=`, and `headers=`."""
        return self.request("POST", url, **options)

    def put(self, url: str, **options: Any) -> Response:
        """A PUT request, with the options of `post`."""
        return self.request("PUT", url, **options)

    def delete(self, url: str, *, headers: HeaderInput = None) -> Response:
        """A DELETE request."""
        return self.request("DELETE", url, headers=headers)

    def run(
        self,
        component: str,
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes = b"",
        args: list[str] | None = None,
        entrypoint: str = DEFAULT_ENTRYPOINT,
    ) -> ModuleResult:
        """Run one component's module directly: its own environment and files, plus `env`."""
        loaded = self.gateway.loaded
        runtime = loaded.components.get(component) if loaded else None
        if runtime is None:
            known = ", ".join(sorted(loaded.components)) if loaded else ""
            raise KeyError(f"no component `{component}` (the app has: {known})")
        invocation = Invocation(
            argv=list(args) if args is not None else [runtime.source.name],
            env={**runtime.env, **(env or {})},
            stdin=stdin,
            mounts=list(runtime.mounts),
            outbound=runtime.outbound,
        )
        return self._call(
            _run(self.gateway.executor, runtime.program, entrypoint, invocation, runtime.limits),
            runtime.limits.request_timeout + ANSWER_GRACE,
            f"component {component}",
        )

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Shut the gateway down as a server would, then stop the loop thread."""
        if not self._closed:
            try:
                self._call(self._stop(), timeout=30, what="stopping the app")
            finally:
                self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _answer_timeout(self) -> float:
        """How long a request may take: the slowest component's limit, and some."""
        loaded = self.gateway.loaded
        limits = [c.limits for c in loaded.components.values()] if loaded else []
        slowest = max((each.request_timeout for each in limits), default=0.0)
        return max(slowest, self.settings.limits.request_timeout) + ANSWER_GRACE

    def _call(self, coroutine: Any, timeout: float, what: str = "starting the app") -> Any:
        if self._closed:
            coroutine.close()
            raise RuntimeError("this client is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{what}: no answer within {timeout:g} s") from None

    async def _start(self) -> None:
        self._lifespan = asyncio.Queue()
        self._lifespan_done = asyncio.Event()
        self._lifespan.put_nowait({"type": "lifespan.startup"})
        started = asyncio.Event()

        async def send(message: dict) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()
            elif message["type"] == "lifespan.shutdown.complete":
                self._lifespan_done.set()

        self._lifespan_task = asyncio.create_task(
            self.gateway({"type": "lifespan"}, self._lifespan.get, send)
        )
        await started.wait()
        while self.gateway.loaded is None:  # the gateway loads the app in the background
            if self.gateway.load_error is not None:
                await self._stop()
                raise self.gateway.load_error
            await asyncio.sleep(0.005)

    async def _stop(self) -> None:
        assert self._lifespan is not None
        self._lifespan.put_nowait({"type": "lifespan.shutdown"})
        await self._lifespan_done.wait()
        await self._lifespan_task
        await asyncio.get_running_loop().shutdown_default_executor()  # the loading thread

    async def _exchange(self, scope: dict, body: bytes) -> Response:
        exchange = _Exchange(body)
        await self.gateway(scope, exchange.receive, exchange.send)
        exchange.complete.set()
        return Response(exchange.status, _headers(exchange.headers), b"".join(exchange.chunks))


def wagi_client(
    manifest: str | Path = "spin.toml",
    *,
    env: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
    host: str = "localhost",
    **limits: str | float | int,
) -> Client:
    """A client for the app `manifest` describes; use it in a `with` block, or close it.

    `env` adds variables for every module (like `wagi serve --env`); limits are keyword
    arguments with `wagi serve`'s names: `request_timeout="2s"`, `max_memory="16M"`, ...
    """
    settings = Settings(
        manifest=Path(manifest).absolute(),
        env=tuple((env or {}).items()),
        cache_dir=cache_dir or default_cache_dir(),
        engine=TEST_ENGINE,
        limits=_limits(limits),
        pool_size=1,
        guest_threads=2,
    )
    return Client(settings, host)


def _body(
    content: bytes | str, data: Mapping[str, str] | None, json_value: Any
) -> tuple[bytes, str]:
    if data is not None:
        return urlencode(data).encode(), "application/x-www-form-urlencoded"
    if json_value is not None:
        return json.dumps(json_value).encode(), "application/json"
    return (content.encode() if isinstance(content, str) else content), ""


def _split_target(url: str) -> tuple[str, str]:
    """A path and query as an HTTP client sends them: percent-encoded where needed."""
    if not url.startswith("/"):
        raise ValueError(f"pass a path that starts with `/`, not {url!r}")
    path, _, query = url.partition("#")[0].partition("?")
    return quote(path, safe=_PATH_SAFE), quote(query, safe=_QUERY_SAFE)


# What a client leaves as it is in a path and a query (RFC 3986), `%` included: a
# path given already encoded stays as it was.
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


def _scope(method: str, url: str, headers: list[tuple[bytes, bytes]]) -> dict:
    raw_path, query = _split_target(url)
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("ascii"),
        "query_string": query.encode("ascii"),
        "root_path": "",
        "headers": headers,
        "client": CLIENT_ADDRESS,
        "server": SERVER_ADDRESS,
    }
