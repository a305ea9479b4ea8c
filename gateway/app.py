"""The ASGI app: match a request to a route, run its guest CGI-style, answer with its output.

The request path only reads what the loader prepared. Every way a request can fail maps
to one status, a short plain-text body, and one log line carrying the request id (which
is also sent back in `x-request-id`).

The app answers as soon as the server listens: `/healthz` says the process is alive,
`/.well-known/wagi/ready` whether it serves (not while loading, nor while draining before
shutdown). The gateway's own paths other than WAGI's and Spin's health checks are under
`/.well-known/wagi/`, where no app's route is likely to be.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from http import HTTPStatus
from typing import Any, NamedTuple

from . import cgi, metrics
from .config import GRACE_ANSWER_SECONDS, MAX_HEAD_SIZE, Settings
from .engine import Failure, Invocation, Outcome
from .executor import Executor
from .loader import ComponentRuntime, Handler, LoadedApp
from .metrics import Metrics
from .proxy import Forwarded, TrustedProxies
from .routing import (
    INFO_PATH,
    LIVENESS_PATHS,
    METRICS_PATH,
    READINESS_PATH,
    BadPath,
    Match,
    RequestPath,
)

log = logging.getLogger("wagi")
access_log = logging.getLogger("wagi.access")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

# Seconds between updates of the pool metrics (and at every scrape).
POOL_METRICS_INTERVAL = 5.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# The status for each way a guest can fail.
FAILURE_STATUS = {
    Failure.EXIT: 500,
    Failure.TRAP: 500,
    Failure.MEMORY: 500,
    Failure.START: 500,
    Failure.OUTPUT: 502,
    Failure.TIMEOUT: 504,
    Failure.CANCELLED: 503,
    Failure.BUSY: 503,
}
# Failures that are a limit at work (counted as limit violations in the metrics).
LIMIT_FAILURES = frozenset({Failure.TIMEOUT, Failure.MEMORY, Failure.OUTPUT})
# RFC 9110's wording where Python's `HTTPStatus` still has the older one.
REASONS = {413: "Content Too Large"}


class Refused(Exception):
    """A limit turned the request away: answer `status` and count it as `kind`."""

    def __init__(self, status: int, reason: str, kind: str, retry: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.kind = kind
        self.retry = retry  # the client may try again soon (Retry-After)


class GuestCutOff(Exception):
    """The grace period ended while the request's guest ran: it may have done its work."""


class _Answer:
    """A request's `send`, noting what of the answer went out, for the end of the grace
    period: an answer it cuts short is logged as what was being sent."""

    __slots__ = ("guest", "send", "sent", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status: int | None = None  # once the answer has started
        self.sent = 0  # body bytes the server has taken
        self.guest = 0.0  # seconds the request's guest ran

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)
        self.sent += len(message.get("body", b""))  # a start message has none


class Gateway:
    """The ASGI application object: the loaded app, its guests' executor, its state."""

    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        load: Callable[[LoadedApp | None], LoadedApp],
        serve_while_loading: bool = True,
    ) -> None:
        """`load(previous)` makes a version of the app. With `serve_while_loading`,
        connections are accepted while the first version loads (answered 503 until it is
        ready, so that health checks see a live process); a worker under a supervisor
        loads first instead, its socket holding connections until then."""
        self.settings = settings
        self.executor = executor
        self._load = load
        self.serve_while_loading = serve_while_loading
        # Tasks to run, once the app is loaded, for as long as it serves.
        self.background: list[Callable[[], Awaitable[None]]] = []
        self.loaded: LoadedApp | None = None
        self.load_error: Exception | None = None
        self.draining = False
        self._stop = asyncio.Event()
        self._reloading = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        # The tasks handling HTTP requests now, so that the grace period can end them.
        self._requests: set[asyncio.Task] = set()
        self._grace_over = False
        self.metrics = Metrics()
        self.proxies = TrustedProxies(settings.forwarded_allow_ips)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point: HTTP requests and the lifespan."""
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await _refuse_websocket(scope, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    @property
    def version(self) -> int:
        """The number of the version being served (0 before the first)."""
        return self.loaded.version if self.loaded is not None else 0

    # ---------------------------------------------------------------- lifecycle

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.serve_while_loading:
                    self._spawn(self._load_first())
                else:  # hypercorn accepts connections once the startup is complete
                    await self._load_first()
                    if self.load_error is not None:
                        # hypercorn then accepts none: they wait for the next worker
                        # rather than being reset.
                        reason = str(self.load_error)
                        await send({"type": "lifespan.startup.failed", "message": reason})
                        return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in self._tasks:
                    task.cancel()
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _spawn(self, coroutine: Coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load_first(self) -> None:
        async with self._reloading:  # a reload asked for meanwhile comes after this load
            try:
                loaded = await asyncio.get_running_loop().run_in_executor(None, self._load, None)
            except Exception as error:  # reported by the caller of serve, then exit 1
                self.load_error = error
                self._stop.set()
                return
            self._install(loaded)
        count = len(loaded.routes.routes)
        log.info("ready: version %d, %d route%s", loaded.version, count, "" if count == 1 else "s")
        self._spawn(self._sync_pool_metrics())
        for run in self.background:
            self._spawn(run())

    async def _sync_pool_metrics(self) -> None:
        while True:
            self.metrics.sync_pools(self.loaded)
            await asyncio.sleep(POOL_METRICS_INTERVAL)

    def module_digests(self) -> set[str]:
        """The contents of the running version's modules."""
        return set(self.loaded.modules()) if self.loaded is not None else set()

    def _install(self, loaded: LoadedApp) -> None:
        """Make `loaded` the version new requests use; the old one retires."""
        loaded.version = self.version + 1
        old, self.loaded = self.loaded, loaded
        # No guest waits for a thread, even while the old version's are still running.
        in_flight = old.most_guests() if old is not None else 0
        self.executor.reserve(loaded.most_guests() + in_flight)
        self.metrics.loaded(loaded)
        if old is not None:
            self.metrics.retired(old, loaded)
            old.retire()

    async def reload(self, reason: str, rebuilt: Sequence[str] = ()) -> bool:
        """Load the next version beside the running one and switch to it when complete.

        If anything is wrong with it, the running version stays; one log line says which
        happened. Returns whether the new version took over.
        """
        async with self._reloading:
            if self.loaded is None:  # the first load failed: the gateway is stopping
                return False
            started = time.perf_counter()
            try:
                loaded = await asyncio.get_running_loop().run_in_executor(
                    None, self._load, self.loaded
                )
            except Exception as error:
                live = f"version {self.version} is still live" if self.loaded else "not serving"
                log.error("reload failed (%s): %s; %s", reason, error, live)
                return False
            previous = self.loaded
            self._install(loaded)
            log.info(
                "reloaded to version %d in %.0f ms (%s)%s",
                self.version,
                (time.perf_counter() - started) * 1000,
                reason,
                _what_changed(loaded, previous, rebuilt),
            )
            return True

    async def until_stopped(self) -> None:
        """hypercorn's shutdown trigger: returns on SIGTERM or SIGINT, or a failed load."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        # SIGHUP reloads the app (the supervisor of several workers sends it). A worker
        # starts with it blocked, so one sent meanwhile is delivered now.
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload("SIGHUP")))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        await self._stop.wait()
        # Stop being ready at once, so load balancers stop sending traffic; hypercorn
        # now stops accepting and lets requests in flight finish.
        self.draining = True
        if self.load_error is None:
            log.info(
                "draining: finishing requests in flight (for up to %g s)",
                self.settings.grace_period,
            )
        loop.call_later(self.settings.grace_period, self._end_requests)

    def _end_requests(self) -> None:
        """The grace period is over: stop the requests still in flight.

        The gateway ends them itself, a moment before hypercorn would cancel them: a task
        cancelled by hypercorn while an HTTP/2 request waited for its body never finished
        (its error answer waited for the connection's sender, already cancelled), and the
        process never exited.
        """
        self._grace_over = True
        if self._requests:
            log.warning(
                "the grace period is over: stopping %d request%s in flight",
                len(self._requests),
                "" if len(self._requests) == 1 else "s",
            )
        for task in self._requests:
            task.cancel()

    def close(self) -> None:
        """Stop running guests and release the loaded app."""
        self.executor.close()
        if self.loaded is not None:
            self.loaded.close()

    # ---------------------------------------------------------------- requests

    async def _http(self, scope: Scope, receive: Receive, server_send: Send) -> None:
        started = time.perf_counter()
        scope = _origin_form(scope)
        head = RequestHead.read(scope)
        request_id = head.request_id
        send = _Answer(server_send)
        task = asyncio.current_task()
        self._requests.add(task)
        try:
            if head.size > MAX_HEAD_SIZE:
                # hypercorn limits only heads that arrive in pieces; this catches the rest.
                self.metrics.limit("", "head")
                detail = f"more than {MAX_HEAD_SIZE} bytes"
                await self._turn_away(send, scope, head, 431, detail)
                return
            if not head.host_ok:
                detail = "the Host header is not a host[:port]"
                await self._turn_away(send, scope, head, 400, detail)
                return
            if head.conflicting_lengths:
                # RFC 9112 6.3: a likely request-smuggling attempt (nginx refuses it too).
                # The connection's framing is in doubt, so it closes after the answer.
                detail = "both Content-Length and Transfer-Encoding"
                await self._turn_away(send, scope, head, 400, detail, close=True)
                return
            await self._handle(scope, receive, send, head, started)
        except asyncio.CancelledError as stopped:  # a routed request is seen to in `_route`
            self._unless_grace_over(stopped)
            await self._grace_ended(send, scope, head, started, None, stopped)
        except Exception:
            # A bug of ours: log it fully, and answer 500 unless a response already started.
            log.exception("%s: unexpected error handling %s", request_id, scope["path"])
            with contextlib.suppress(Exception):
                await _respond(send, request_id, 500)
        finally:
            self._requests.discard(task)

    async def _handle(
        self, scope: Scope, receive: Receive, send: _Answer, head: RequestHead, started: float
    ) -> None:
        request_id = head.request_id
        path = scope["path"]
        if path in LIVENESS_PATHS:
            await _respond(send, request_id, 200, "OK")
            return
        if path == METRICS_PATH:
            self.metrics.sync_pools(self.loaded)
            body = self.metrics.render()
            await _send(send, 200, body, metrics.CONTENT_TYPE, request_id)
            return
        if path == READINESS_PATH:
            ready = self.loaded is not None and not self.draining
            await _respond(send, request_id, 200 if ready else 503, "OK" if ready else "not ready")
            return
        loaded = self.loaded
        if loaded is None:
            await self._turn_away(send, scope, head, 503, "the app is still loading", retry=True)
            return
        if path == INFO_PATH:
            await _respond_json(send, request_id, _info(loaded))
            return
        self.metrics.in_flight.inc()
        loaded.requests += 1  # this version stays open until the request is answered
        try:
            await self._route(scope, receive, send, head, loaded, started)
        finally:
            loaded.request_done()
            self.metrics.in_flight.dec()

    async def _route(
        self,
        scope: Scope,
        receive: Receive,
        send: _Answer,
        head: RequestHead,
        loaded: LoadedApp,
        started: float,
    ) -> None:
        request_id = head.request_id
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            request_path = RequestPath.parse(raw_path.decode("latin-1"), query)
        except BadPath as error:
            await self._turn_away(send, scope, head, 400, str(error))
            return
        match = loaded.routes.match(request_path)
        if match is None:
            await self._turn_away(send, scope, head, 404)
            return
        handler = match.route.target
        try:
            status, sent, guest = await self._serve_route(
                scope, receive, send, head, request_path, match, handler
            )
        except (asyncio.CancelledError, GuestCutOff) as stopped:
            self._unless_grace_over(stopped)
            await self._grace_ended(send, scope, head, started, handler, stopped)
            return
        self._record(request_id, scope, handler, status, sent, started, guest)

    def _unless_grace_over(self, stopped: BaseException) -> None:
        """Raise `stopped` again unless it is the gateway ending a request at the end of
        the grace period, which is then answered."""
        if not self._grace_over:
            raise stopped  # the client went away, or hypercorn is stopping
        task = asyncio.current_task()
        if task is not None and task.uncancel() > 0:  # besides ours: hypercorn's backstop
            raise asyncio.CancelledError from None

    async def _grace_ended(
        self,
        send: _Answer,
        scope: Scope,
        head: RequestHead,
        started: float,
        handler: Handler | None,
        stopped: BaseException,
    ) -> None:
        """Answer, log and count a request the end of the grace period stopped.

        An answer it cut short is logged as what was being sent. Else a guest cut off may
        have done its work (504), and any other request may safely be tried again (503).
        """
        if send.status is not None:
            status, sent = send.status, send.sent
            detail = _STOPPED + " while sending the answer: the client got it cut short"
        else:
            cut_off = isinstance(stopped, GuestCutOff)
            status, sent = (504 if cut_off else 503), 0
            detail = _STOPPED + (" while the guest ran" if cut_off else "")
            with contextlib.suppress(Exception):  # it may not wait for long, nor fail
                async with asyncio.timeout(GRACE_ANSWER_SECONDS):
                    sent = await _respond(send, head.request_id, status, detail, close=True)
        if handler is None:
            log.warning("%s: %d: %s", head.request_id, status, detail)
            if access_log.isEnabledFor(logging.INFO):
                seconds = time.perf_counter() - started
                _access_line(head.request_id, scope, "-", "", status, sent, seconds, 0.0)
        else:
            _log_answer(logging.WARNING, head.request_id, status, handler, detail)
            self._record(head.request_id, scope, handler, status, sent, started, send.guest)

    async def _turn_away(
        self,
        send: Send,
        scope: Scope,
        head: RequestHead,
        status: int,
        detail: str = "",
        retry: bool = False,
        close: bool = False,
    ) -> None:
        """Answer a request no guest will see, with an access-log line as for the rest."""
        started = time.perf_counter()
        sent = await _respond(send, head.request_id, status, detail, retry, close)
        if access_log.isEnabledFor(logging.INFO):
            seconds = time.perf_counter() - started
            _access_line(head.request_id, scope, "-", "", status, sent, seconds, 0.0)

    def _record(
        self,
        request_id: str,
        scope: Scope,
        handler: Handler,
        status: int,
        sent: int,
        started: float,
        guest: float,
    ) -> None:
        """One access-log line and the request metrics."""
        seconds = time.perf_counter() - started
        component, route = handler.component.id, handler.pattern.text
        self.metrics.request(component, route, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            _access_line(request_id, scope, component, route, status, sent, seconds, guest)

    async def _serve_route(
        self,
        scope: Scope,
        receive: Receive,
        send: _Answer,
        head: RequestHead,
        request_path: RequestPath,
        match: Match,
        handler: Handler,
    ) -> tuple[int, int, float]:
        """Serve a matched request: (status, body bytes sent, seconds the guest ran)."""
        request_id = head.request_id
        component = handler.component
        limits = component.limits
        if handler.problem is not None:  # found at load: no guest could run
            _log_answer(logging.ERROR, request_id, 500, handler, handler.problem)
            return 500, await _respond(send, request_id, 500), 0.0
        try:
            body = await self._admit(receive, head, component)
        except Refused as refusal:
            return refusal.status, await self._refuse(send, request_id, handler, refusal), 0.0
        if body is None:
            return 499, 0, 0.0  # the client went away
        try:
            outcome = await self.executor.run(
                component.pool,
                handler.entrypoint,
                self._invocation(scope, request_path, match, handler, body),
                limits,
            )
        except asyncio.CancelledError:
            if self._grace_over:
                raise GuestCutOff from None
            raise
        finally:
            component.admission.leave()
        self.metrics.guest(component.id, outcome.seconds)
        send.guest = outcome.seconds
        status, sent = await self._answer(send, request_id, handler, outcome, scope["method"])
        return status, sent, outcome.seconds

    async def _admit(
        self, receive: Receive, head: RequestHead, component: ComponentRuntime
    ) -> bytes | None:
        """The request body and a slot to run the guest in; None if the client went away.

        Raises Refused when a limit turns the request away.
        """
        limit = component.limits.max_body_size
        if head.body_length > limit:
            raise _body_too_large(limit)
        body = await self._receive_body(receive, head, limit)
        if body is None:
            return None
        admission = component.admission
        if not admission.try_enter() and not await admission.enter():
            raise Refused(503, f"too many requests for {component.id}", "concurrency", retry=True)
        return body

    async def _receive_body(self, receive: Receive, head: RequestHead, limit: int) -> bytes | None:
        """The request body within the client timeout, or None if the client went away."""
        if not head.may_have_body:
            # HTTP/1 framing says there is none: the server queued the one empty message
            # with the request, and no client data is needed (hypercorn and h11 do so).
            return await _read_body(receive, limit)
        try:
            async with asyncio.timeout(self.settings.client_timeout):
                return await _read_body(receive, limit)
        except TimeoutError:
            raise Refused(408, "the body did not arrive in time", "slow_body") from None

    def _refuse(
        self, send: Send, request_id: str, handler: Handler, refusal: Refused
    ) -> Awaitable[int]:
        """Answer a request a limit turned away, and count and log it; returns the body's
        size."""
        self.metrics.limit(handler.component.id, refusal.kind)
        _log_answer(logging.WARNING, request_id, refusal.status, handler, refusal.reason)
        return _respond(send, request_id, refusal.status, refusal.reason, retry=refusal.retry)

    def _invocation(
        self, scope: Scope, target: RequestPath, match: Match, handler: Handler, body: bytes
    ) -> Invocation:
        request = _cgi_request(scope, target, len(body))
        if self.proxies.enabled:
            _apply_forwarding(request, self.proxies.resolve(_peer(scope), scope["headers"]))
        return Invocation(
            argv=cgi.argv(handler.argv, request),
            env=cgi.request_environment(request, match, handler.optional_env),
            stdin=body,
            mounts=handler.component.mounts,
            fixed_env=handler.fixed_env,
            outbound=handler.component.outbound,
        )

    async def _answer(
        self, send: Send, request_id: str, handler: Handler, outcome: Outcome, method: str
    ) -> tuple[int, int]:
        component = handler.component
        if outcome.stderr:
            component.log.write(request_id, outcome.stderr)
        if outcome.failure is not None:
            status = FAILURE_STATUS[outcome.failure]
            if outcome.failure in LIMIT_FAILURES:
                self.metrics.limit(component.id, outcome.failure)
            reason = f"{outcome.failure}: {outcome.error}"
            _log_answer(logging.ERROR, request_id, status, handler, reason)
            retry = outcome.failure == Failure.BUSY
            return status, await _respond(send, request_id, status, retry=retry)
        try:
            response = cgi.parse_response(outcome.stdout)
        except cgi.CgiError as error:
            _log_answer(logging.ERROR, request_id, error.status, handler, error.reason)
            return error.status, await _respond(send, request_id, error.status)
        headers = [*response.headers, (b"x-request-id", request_id.encode())]
        body = response.body
        if response.status in (204, 304):
            body = b""
        else:
            headers.append((b"content-length", str(len(body)).encode()))
        if method == "HEAD":
            body = b""
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return response.status, len(body)


def _access_line(
    request_id: str,
    scope: Scope,
    component: str,
    route: str,
    status: int,
    sent: int,
    seconds: float,
    guest: float,
) -> None:
    """The access log's line for one request."""
    method, path = scope["method"], scope["path"]
    access_log.info(
        "%s %s %s %d %dB %s %.1fms (guest %.1fms)",
        request_id,
        method,
        path,
        status,
        sent,
        component,
        seconds * 1000,
        guest * 1000,
        extra={
            "fields": {
                "request_id": request_id,
                "method": method,
                "path": path,
                "component": component,
                "route": route,
                "status": status,
                "bytes": sent,
                "duration_ms": round(seconds * 1000, 3),
                "guest_ms": round(guest * 1000, 3),
            }
        },
    )


def _log_answer(level: int, request_id: str, status: int, handler: Handler, reason: str) -> None:
    """The one log line for a request the gateway answered itself, saying why."""
    component, route = handler.component.id, handler.pattern.text
    log.log(
        level,
        "%s: %d, component %s, route %s: %s",
        request_id,
        status,
        component,
        route,
        reason,
        extra={
            "fields": {
                "request_id": request_id,
                "status": status,
                "component": component,
                "route": route,
                "reason": reason,
            }
        },
    )


def _what_changed(loaded: LoadedApp, previous: LoadedApp, rebuilt: Sequence[str]) -> str:
    """`; rebuilt a; recompiled b; unchanged c` for the reload log line."""
    by_how: dict[str, list[str]] = {"compiled": [], "cached": [], "reused": [], "swapped": []}
    for component in loaded.components.values():
        how = component.module.how
        before = previous.components.get(component.id)
        if how == "reused" and (before is None or before.module.digest != component.module.digest):
            how = "swapped"  # a module this process had loaded for another component
        by_how[how].append(component.id)
    parts = [
        ("rebuilt", list(rebuilt)),
        ("recompiled", by_how["compiled"]),
        ("from the compiled cache", by_how["cached"]),
        ("changed to a module already loaded", by_how["swapped"]),
        ("unchanged", by_how["reused"]),
    ]
    return "".join(f"; {label} {', '.join(names)}" for label, names in parts if names)


def _info(loaded: LoadedApp) -> dict:
    return {
        "app": loaded.manifest.name,
        "version": loaded.version,
        "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(loaded.loaded_at)),
        "routes": {route.pattern.text: route.target.component.id for route in loaded.routes.routes},
    }


async def _refuse_websocket(scope: Scope, send: Send) -> None:
    """WAGI modules answer plain HTTP requests: a WebSocket upgrade gets a 501."""
    request_id = RequestHead.read(scope).request_id
    log.info("%s: refused a WebSocket upgrade of %s (501)", request_id, scope["path"])
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close"})  # the server answers 403
        return
    body = _plain_body(501, "WebSocket is not supported; WAGI modules answer HTTP requests")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    await send({"type": "websocket.http.response.start", "status": 501, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


async def _respond_json(send: Send, request_id: str, document: dict) -> None:
    body = json.dumps(document, indent=2).encode() + b"\n"
    await _send(send, 200, body, b"application/json", request_id)


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    request_id: str,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """A complete response of the gateway's own."""
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _cgi_request(scope: Scope, target: RequestPath, body_length: int) -> cgi.Request:
    return cgi.Request(
        method=scope["method"],
        raw_path=target.raw,
        query=target.query,
        headers=scope["headers"],
        body_length=body_length,
        scheme=scope.get("scheme", "http"),
        protocol=f"HTTP/{scope.get('http_version', '1.1')}",
        client=scope.get("client"),
        server=scope.get("server"),
    )


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def _apply_forwarding(request: cgi.Request, forwarded: Forwarded | None) -> None:
    """Use what a trusted proxy says about the original request."""
    if forwarded is None:
        return
    if forwarded.client is not None:
        request.client = forwarded.client
    if forwarded.scheme is not None:
        request.scheme = forwarded.scheme
    if forwarded.host is not None:
        request.forwarded_host = forwarded.host


class RequestHead(NamedTuple):
    """What the gateway reads from a request's headers, in one pass over them."""

    request_id: str
    # Bytes in the request line and headers.
    size: int
    # The Content-Length, or 0 if none was given.
    body_length: int
    # False when the request says it has no body (HTTP/1 without Content-Length or
    # Transfer-Encoding), so the body's one empty message is already waiting.
    may_have_body: bool
    # False for a Host header that is no host[:port] (RFC 9112 3.2: answer 400).
    host_ok: bool
    # An HTTP/1 request with both Content-Length and Transfer-Encoding.
    conflicting_lengths: bool

    @classmethod
    def read(cls, scope: Scope) -> RequestHead:
        """Scan `scope`'s headers once."""
        request_id = None
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        body_length = 0
        may_have_body = not scope.get("http_version", "1.1").startswith("1")
        host = b""
        has_length = has_coding = False
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4
            if name == b"host":
                host = value
            elif name == b"content-length":
                has_length = True
                body_length = int(value) if value.isdigit() and len(value) < 19 else 0
                may_have_body = may_have_body or body_length > 0
            elif name == b"transfer-encoding":
                has_coding = may_have_body = True
            elif name == b"x-request-id":
                # Keep the id a load balancer or client already gave, when it is sane.
                text = value.decode("latin-1")
                if _REQUEST_ID.match(text):
                    request_id = text
        request_id = request_id or os.urandom(8).hex()
        host_ok = (match := _HOST.match(host)) is not None and int(match[1] or 0) <= 65535
        conflicting = has_length and has_coding
        return cls(request_id, size, body_length, may_have_body, host_ok, conflicting)


# RFC 3986's host (a name, IPv4, or [IPv6]) with an optional port.
_HOST = re.compile(rb"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::([0-9]{0,5}))?$")


def _origin_form(scope: Scope) -> Scope:
    """A request in absolute form (`GET http://host/path`) as the origin form it stands
    for; RFC 9112 3.2.2 has servers accept it, with its authority as the Host."""
    raw_path = scope.get("raw_path") or b""
    if not raw_path.startswith((b"http://", b"https://")):
        return scope
    authority, slash, path = raw_path.partition(b"://")[2].partition(b"/")
    raw_path = slash + path or b"/"
    headers = [(name, value) for name, value in scope["headers"] if name != b"host"]
    headers.append((b"host", authority))
    path_text = urllib.parse.unquote(raw_path.decode("latin-1"))
    return {**scope, "raw_path": raw_path, "path": path_text, "headers": headers}


def _body_too_large(limit: int) -> Refused:
    return Refused(413, f"the body is larger than {limit} bytes", "body")


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client disconnected first."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _body_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


# Why a request was answered 503 or 504 at the end of the grace period.
_STOPPED = "the gateway stopped"


def _plain_body(status: int, detail: str) -> bytes:
    """The body of the gateway's own answers: the status's reason, then the detail."""
    reason = REASONS.get(status) or HTTPStatus(status).phrase
    text = reason + (f": {detail}" if detail and status != 200 else "")
    return (detail if status == 200 else text).encode() + b"\n"


async def _respond(
    send: Send,
    request_id: str,
    status: int,
    detail: str = "",
    retry: bool = False,
    close: bool = False,
) -> int:
    """A short plain-text answer: the status's reason, then the detail if any; returns
    the body's size."""
    body = _plain_body(status, detail)
    extra = [(b"retry-after", b"1")] if retry else []
    if close:
        extra.append((b"connection", b"close"))  # hypercorn (h11) closes after the answer
    await _send(send, status, body, b"text/plain; charset=utf-8", request_id, extra)
    return len(body)
