"""HTTP/2 requests that hypercorn 0.18 does not survive, turned away before it sees them.

For HTTP/1.1, h11 checks the request line before hypercorn reads it. Over HTTP/2,
hypercorn takes a stream's `:method` and `:path` as they come, and two events end the
whole connection with a traceback (and, with other streams in flight, leak its socket
and keep SIGTERM from finishing):
- a `:method` or `:path` byte outside ASCII (hypercorn decodes them as ASCII), or a
  CONNECT without `:path`;
- body data for a stream hypercorn has already answered and forgotten, which any client
  sends that keeps uploading after an early answer (a 413, say).

`install()` wraps hypercorn's HTTP/2 event handler once: a malformed request gets a 400
(RFC 9113 8.1.1 makes it a stream error; the answer says why), and data for a forgotten
stream is acknowledged, so the connection's flow-control window is not used up, and
dropped, the stream reset with NO_ERROR so the client stops sending (RFC 9113 8.1).
Other streams on the connection go on. Upstream fixed the first in the anycorn fork;
drop this module when hypercorn has both fixes.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from hypercorn.protocol.h2 import H2Protocol

# RFC 9110 5.6.2: a method is a token.
_METHOD = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Origin form of visible ASCII (no space, no control byte), or `*` for OPTIONS.
_PATH = re.compile(rb"^(?:/[\x21-\x7e]*|\*)$")
_BAD_BODY = b"Bad Request: the :method or :path is malformed\n"
_BAD_REQUEST = [(b":status", b"400"), (b"content-type", b"text/plain; charset=utf-8")]
_SHOWN = (b":method", b":path")
log = logging.getLogger("wagi")

_Handler = Callable[[H2Protocol, list[h2.events.Event]], Awaitable[None]]


def install() -> None:
    """Guard hypercorn's HTTP/2 connections (idempotent)."""
    handler = H2Protocol._handle_events
    if getattr(handler, "guarded", False):
        return
    H2Protocol._handle_events = _guarded(handler)


def well_formed(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's `:method` and `:path` are ones hypercorn can take."""
    method = path = b""
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
    return _METHOD.match(method) is not None and _PATH.match(path) is not None


def _guarded(handler: _Handler) -> _Handler:
    async def handle_events(protocol: H2Protocol, events: list[h2.events.Event]) -> None:
        # One at a time: a stream hypercorn knows of only once its request is handled
        # may have body data among the same events.
        for event in events:
            if _passes(protocol, event):
                await handler(protocol, [event])
        await handler(protocol, [])  # sends what the checks queued

    handle_events.guarded = True  # type: ignore[attr-defined]
    return handle_events


def _passes(protocol: H2Protocol, event: h2.events.Event) -> bool:
    """Whether hypercorn may see `event`; if not, the stream is answered here."""
    connection = protocol.connection
    if isinstance(event, h2.events.RequestReceived) and not well_formed(event.headers):
        shown = [(name, value) for name, value in event.headers if name in _SHOWN]
        log.info("refused a malformed HTTP/2 request (400): %r", shown)
        connection.send_headers(event.stream_id, _BAD_REQUEST)
        try:
            connection.send_data(event.stream_id, _BAD_BODY, end_stream=True)
        except h2.exceptions.FlowControlError:  # the client allows no body yet: none, then
            connection.end_stream(event.stream_id)
        _stop_sending(connection, event.stream_id)
        return False
    if isinstance(event, h2.events.DataReceived) and event.stream_id not in protocol.streams:
        connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        _stop_sending(connection, event.stream_id)
        return False
    return True


def _stop_sending(connection: h2.connection.H2Connection, stream_id: int) -> None:
    """Ask the client to send no more of a stream that is answered (RFC 9113 8.1)."""
    with contextlib.suppress(h2.exceptions.StreamClosedError):  # it has ended already
        connection.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
