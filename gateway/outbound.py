"""Outbound HTTP for WAGI modules: the `wasi_experimental_http` host functions.

WAGI 0.8 let a module make HTTP requests through five functions of deislabs'
wasi-experimental-http (`req`, `header_get`, `headers_get_all`, `body_read`, `close`);
modules built with its SDKs import them. They are provided here, within limits:

- A request goes out only if its component allows the destination
  (`allowed_outbound_hosts` in spin.toml, `allowed_hosts` in modules.toml), matching the
  URL's scheme, host and port; none is allowed by default. WAGI matched the host alone,
  so `https://api.example.com` also let plain HTTP through.
- Redirects are not followed (each hop would need the same check): the guest gets the
  3xx and its `Location`, as with any other response.
- The request must finish by the guest's own deadline. A module that imports `req` always
  runs on a worker thread (as one that sleeps does), since a guest waiting in a host call
  cannot be interrupted; the socket's timeout ends the wait at the deadline, and the
  guest is then stopped as timed out.
- A response body is read whole; the responses a guest holds open (at most
  `http_max_concurrency`, WAGI's key, default 32) share the component's output limit.

Every pointer the guest passes is checked against its memory, as in `wasi`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import wasmtime

from . import native, wasi
from .config import DEFAULT_PORTS
from .manifest import AllowedHost

if TYPE_CHECKING:
    import ssl  # imported when a request first needs it: it is slow to import

log = logging.getLogger("wagi.outbound")

MODULE = "wasi_experimental_http"
DEFAULT_MAX_OPEN = 32

# The SDK's error codes (its witx `http_error`).
_SUCCESS, _INVALID_HANDLE, _MEMORY_NOT_FOUND, _MEMORY_ACCESS_ERROR = 0, 1, 2, 3
_BUFFER_TOO_SMALL, _HEADER_NOT_FOUND, _UTF8_ERROR, _DESTINATION_NOT_ALLOWED = 4, 5, 6, 7
_INVALID_METHOD, _INVALID_ENCODING, _INVALID_URL, _REQUEST_ERROR = 8, 9, 10, 11
_TOO_MANY_SESSIONS = 13

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # used with fullmatch
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers the gateway sets itself: the body's length, the connection, and `Host`, which
# must name the host that was allowed.
_OWN_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding", "te"})


@dataclass(frozen=True)
class OutboundPolicy:
    """What one component's guests may do over HTTP."""

    component: str
    allowed: tuple[AllowedHost, ...]
    max_open: int  # responses open at once
    max_response: int  # bytes of body, over all open responses


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    read: int = 0


@dataclass
class Session:
    """One guest call's outbound requests: the policy, and the responses it holds."""

    policy: OutboundPolicy
    responses: dict[int, _Response] = field(default_factory=dict)
    next_handle: int = 1

    def room(self) -> int:
        """Bytes of body it may still take: the open responses share the output limit."""
        held = sum(len(response.body) for response in self.responses.values())
        return self.policy.max_response - held


class _Stop(Exception):
    """The guest's time ran out during a request: it is stopped, as timed out."""


def install(linker: wasmtime.Linker) -> None:
    """Define the `wasi_experimental_http` functions in `linker`."""
    functions = [
        (b"req", _req, 10),
        (b"close", _close, 1),
        (b"header_get", _header_get, 6),
        (b"headers_get_all", _headers_get_all, 4),
        (b"header_get_all", _headers_get_all, 4),  # the name in some versions of the SDK
        (b"body_read", _body_read, 4),
    ]
    for name, callback, arguments in functions:
        native.define_i32_function(linker, MODULE.encode(), name, arguments, callback)


def _host_function(function):
    """Make `function(memory, *i32 arguments) -> error code` a host function: bad memory
    and bad text are the SDK's error codes; a stop or a bug of ours traps the guest (no
    exception may cross into wasm)."""

    @native.HostCallback
    def callback(_env: int, caller: int, values: int, count: int) -> int:
        try:
            arguments = struct.unpack_from(
                "<" + "I12x" * count, ctypes.string_at(values, 16 * count)
            )
            ctypes.c_uint32.from_address(values).value = _call(function, caller, arguments)
            return None
        except _Stop as stop:
            return wasi.trap(str(stop))
        except Exception as error:
            return wasi.trap(f"{MODULE} failed in the host: {error!r}")

    return callback


def _call(function, caller: int, arguments: tuple[int, ...]) -> int:
    memory = _Memory(caller)
    if not memory.base:
        return _MEMORY_NOT_FOUND
    try:
        return function(memory, *arguments)
    except _Fault:
        return _MEMORY_ACCESS_ERROR
    except UnicodeDecodeError:
        return _UTF8_ERROR


class _Memory:
    """The calling guest's memory, every access checked against its size."""

    def __init__(self, caller: int) -> None:
        self.output, context = wasi.call_output(caller)
        self.base, self.size = (
            (0, 0) if self.output is None else wasi.memory(caller, context, self.output)
        )

    def read(self, address: int, length: int) -> bytes:
        if address + length > self.size:
            raise _Fault
        return ctypes.string_at(self.base + address, length)

    def text(self, address: int, length: int) -> str:
        return self.read(address, length).decode()  # UnicodeDecodeError: _UTF8_ERROR

    def write(self, address: int, data: bytes) -> None:
        if address + len(data) > self.size:
            raise _Fault
        ctypes.memmove(self.base + address, data, len(data))

    def write_u32(self, address: int, value: int) -> None:
        self.write(address, struct.pack("<I", value))


class _Fault(Exception):
    """A pointer outside the guest's memory."""


def _session(memory: _Memory) -> Session | None:
    return None if memory.output is None else memory.output.outbound


@_host_function
def _req(
    memory: _Memory,
    url_at: int,
    url_length: int,
    method_at: int,
    method_length: int,
    headers_at: int,
    headers_length: int,
    body_at: int,
    body_length: int,
    status_at: int,
    handle_at: int,
) -> int:
    session = _session(memory)
    url = memory.text(url_at, url_length)
    method = memory.text(method_at, method_length)
    headers = _request_headers(memory.text(headers_at, headers_length))
    body = memory.read(body_at, body_length)
    memory.write(status_at, b"\0\0")  # both in bounds before anything goes out
    memory.write_u32(handle_at, 0)
    if not _TOKEN.fullmatch(method):
        return _INVALID_METHOD
    if headers is None:
        return _INVALID_ENCODING
    target = _target(url)
    if target is None:
        return _INVALID_URL
    scheme, host, port, path = target
    if session is None or not any(
        rule.allows(scheme, host, port) for rule in session.policy.allowed
    ):
        component = session.policy.component if session else "?"
        log.warning(
            "component %s: outbound request to %s refused: not an allowed host", component, url
        )
        return _DESTINATION_NOT_ALLOWED
    if len(session.responses) >= session.policy.max_open:
        return _TOO_MANY_SESSIONS
    response = _send(memory.output, session, scheme, host, port, method, path, headers, body)
    if response is None:
        return _REQUEST_ERROR
    handle = session.next_handle
    session.next_handle += 1
    session.responses[handle] = response
    memory.write(status_at, struct.pack("<H", response.status))
    memory.write_u32(handle_at, handle)
    return _SUCCESS


def _request_headers(text: str) -> list[tuple[str, str]] | None:
    """The SDK's `name:value` lines; None if one is malformed."""
    headers = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        value = value.strip(" \t")
        if not colon or not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            return None
        try:
            value.encode("latin-1")  # what HTTP/1.1 can carry
        except UnicodeEncodeError:
            return None
        if name.lower() not in _OWN_HEADERS:
            headers.append((name, value))
    return headers


def _target(url: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path and query) of an absolute http(s) URL; None if it is not."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    if not url.isascii() or any(ord(c) <= 32 or ord(c) == 127 for c in url):
        return None  # a guest percent-encodes what else it sends
    if "%" in parts.hostname:  # an IPv6 zone
        return None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme], path


def _send(
    output: wasi.Output,
    session: Session,
    scheme: str,
    host: str,
    port: int,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> _Response | None:
    """Make the request within the guest's deadline; None if it failed."""
    import http.client  # only apps that make requests pay for importing it

    policy, room = session.policy, session.room()

    remaining = _remaining(output)
    if scheme == "https":  # (the socket comes from `_connect`; the context only fills a slot)
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=remaining, context=_tls_context()
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=remaining)
    # The socket's timeout bounds each wait, not their sum: an upstream that trickles its
    # answer (or its TLS handshake) would outlast the deadline. At the deadline the
    # socket is shut instead. (Each socket is kept here from its start: the connection
    # lets go of it when the response will close it.)
    connected: list[socket.socket] = []
    watchdog = threading.Timer(remaining, _cut_off, (connected,))
    watchdog.daemon = True
    watchdog.start()
    answer: http.client.HTTPResponse | None = None
    try:
        connection.sock = _connect(output, scheme, host, port, connected)
        connection.putrequest(method, path)  # with the Host it was allowed for
        for name, value in headers:  # repeated ones too
            connection.putheader(name, value)
        if body or method in ("POST", "PUT", "PATCH"):
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        answer = connection.getresponse()
        data = answer.read(room + 1)
        if len(data) > room:
            log.warning(
                "component %s: outbound response from %s refused: with the responses it "
                "holds open, over the output limit of %d bytes",
                policy.component,
                host,
                policy.max_response,
            )
            return None
        pairs = [(name.lower(), value) for name, value in answer.getheaders()]
        return _Response(answer.status, pairs, data)
    except (OSError, http.client.HTTPException, ValueError, AttributeError) as error:
        # Timeouts included; the last two can come from a TLS socket the watchdog shut
        # in the middle of a call, so they are only the request's failure at the deadline.
        if time.monotonic() >= output.deadline:
            output.overslept = True
            raise _Stop("stopped: the request's time ran out during an outbound request") from None
        if not isinstance(error, OSError | http.client.HTTPException):  # (TLS errors are)
            raise  # a bug of ours: the guest traps, and the log says so
        log.info("component %s: outbound request to %s failed: %s", policy.component, host, error)
        return None
    finally:
        watchdog.cancel()
        if answer is not None:
            answer.close()  # it holds the socket once the connection has let go of it
        connection.close()


def _remaining(output: wasi.Output) -> float:
    """Seconds left before the guest's deadline; stops the guest if none are."""
    remaining = output.deadline - time.monotonic()
    if remaining <= 0:
        output.overslept = True
        raise _Stop("stopped: the request's time ran out during an outbound request")
    return remaining


def _connect(
    output: wasi.Output, scheme: str, host: str, port: int, connected: list[socket.socket]
) -> socket.socket:
    """A connection to the upstream, each socket in `connected` as soon as it exists, so
    that the deadline's watchdog can shut it; checked against the deadline after each
    step (one may end after the watchdog fired)."""
    sock = _open(output, _resolve(output, host, port))
    connected.append(sock)
    _remaining(output)
    if scheme != "https":
        return sock
    secure = _tls_context().wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    connected.append(secure)  # it holds the file descriptor now
    _remaining(output)
    secure.settimeout(_remaining(output))
    secure.do_handshake()
    _remaining(output)
    return secure


def _open(output: wasi.Output, addresses: list[tuple[str, int]]) -> socket.socket:
    """A TCP connection to the first of `addresses` that answers, within the deadline."""
    failure: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection(address, timeout=_remaining(output))
        except OSError as error:
            failure = error
    raise failure or OSError("no address")


def _resolve(output: wasi.Output, host: str, port: int) -> list[tuple[str, int]]:
    """The addresses of `host`, looked up within the deadline: a lookup cannot be
    interrupted, so it runs on a thread of its own, which the guest stops waiting for."""
    found: list[list[tuple[str, int]] | OSError] = []
    done = threading.Event()

    def look_up() -> None:
        try:
            entries = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append([(entry[4][0], entry[4][1]) for entry in entries])
        except OSError as error:
            found.append(error)
        finally:
            done.set()

    threading.Thread(target=look_up, name=f"resolve-{host}", daemon=True).start()
    if not done.wait(_remaining(output)):
        _remaining(output)  # stops the guest: its time ran out
        raise OSError(f"looking up {host} took too long")  # (at the deadline's very edge)
    result = found[0]
    if isinstance(result, OSError):
        raise result
    return result


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The TLS settings of every request: certificates checked against the system's
    authorities. Made once: loading them takes tens of milliseconds."""
    import ssl

    return ssl.create_default_context()


def _cut_off(connected: list[socket.socket]) -> None:
    """End a request at its deadline: a read waiting on its socket returns at once."""
    for sock in connected:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _response(memory: _Memory, handle: int) -> _Response | None:
    session = _session(memory)
    return None if session is None else session.responses.get(handle)


@_host_function
def _close(memory: _Memory, handle: int) -> int:
    session = _session(memory)
    if session is None or session.responses.pop(handle, None) is None:
        return _INVALID_HANDLE
    return _SUCCESS


@_host_function
def _header_get(
    memory: _Memory,
    handle: int,
    name_at: int,
    name_length: int,
    value_at: int,
    value_length: int,
    written_at: int,
) -> int:
    response = _response(memory, handle)
    if response is None:
        return _INVALID_HANDLE
    name = memory.text(name_at, name_length).lower()
    value = next((v for n, v in response.headers if n == name), None)
    if value is None:
        return _HEADER_NOT_FOUND
    return _write_out(memory, value.encode("latin-1"), value_at, value_length, written_at)


@_host_function
def _headers_get_all(
    memory: _Memory, handle: int, buffer_at: int, buffer_length: int, written_at: int
) -> int:
    response = _response(memory, handle)
    if response is None:
        return _INVALID_HANDLE
    text = "".join(f"{name}:{value}\n" for name, value in response.headers)
    return _write_out(memory, text.encode("latin-1"), buffer_at, buffer_length, written_at)


def _write_out(memory: _Memory, data: bytes, at: int, length: int, written_at: int) -> int:
    if len(data) > length:
        return _BUFFER_TOO_SMALL
    memory.write(at, data)
    memory.write_u32(written_at, len(data))
    return _SUCCESS


@_host_function
def _body_read(
    memory: _Memory, handle: int, buffer_at: int, buffer_length: int, written_at: int
) -> int:
    response = _response(memory, handle)
    if response is None:
        return _INVALID_HANDLE
    chunk = response.body[response.read : response.read + buffer_length]
    memory.write(buffer_at, chunk)
    memory.write_u32(written_at, len(chunk))
    response.read += len(chunk)
    return _SUCCESS
