"""The WASI calls the gateway implements itself, in place of wasmtime's.

`fd_write`, for fds 1 and 2: guest stdout and stderr are captured by copying the bytes
straight out of the guest's memory into a Python buffer. wasmtime's own ways each cost
more than running a small guest: files (`stdout_file`) are opened, truncated and closed
on every request, and custom streams (`stdout_custom`) go through an async write stream.
Here there is no file and no syscall, and the output limit is exact (the call that would
cross it traps instead). `bench/capture.py` measures the alternatives. Writes to any
other descriptor fail with EBADF: guests only ever get read-only files.

`poll_oneoff`, WASI's sleep: wasmtime's blocks its thread for as long as the guest asks,
and an epoch deadline cannot interrupt a host call, so a guest sleeping past its request's
deadline kept a worker thread long after its request was answered. Here a sleep ends by
the call's deadline (or when the gateway stops), and the call then traps: the guest is
stopped rather than woken as if its time had come.

Every pointer the guest passes is checked against its memory's size before it is used.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import struct
import threading
import time
from ctypes import byref, c_void_p

import wasmtime

from . import native

# WASI errno values.
_SUCCESS, _BADF, _FAULT, _INVAL = 0, 8, 21, 28
# Both calls take four i32 arguments, each in a 16-byte raw value:
# fd_write(fd, iovs, iovs_len, nwritten) and poll_oneoff(in, out, nsubscriptions, nevents).
_ARGUMENTS = struct.Struct("<I12xI12xI12xI")
_IOVEC = struct.Struct("<II")
_MAX_IOVECS = 1024


class OutputLimitExceeded(Exception):
    """A guest wrote more than it may (raised inside the guest as a trap)."""


class Output:
    """What one guest call wrote to stdout and stderr."""

    __slots__ = (
        "deadline",
        "exceeded",
        "limit",
        "memory",
        "outbound",
        "overslept",
        "stderr",
        "stdout",
        "stopped",
        "written",
    )

    def __init__(self, limit: int) -> None:
        self.stdout: list[bytes] = []
        self.stderr: list[bytes] = []
        self.written = 0
        self.limit = limit
        # Set, to say so, once the guest tried to write past the limit.
        self.exceeded: str | None = None
        # The guest's exported memory, looked up at its first write.
        self.memory: native.Extern | None = None
        # When the call's time is up (monotonic), and the gateway's stop: sleeps end then.
        self.deadline = math.inf
        self.stopped: threading.Event | None = None
        # Set when a sleep was cut short by the deadline or the stop: the guest is stopped.
        self.overslept = False
        # The call's outbound HTTP requests (`outbound.Session`), if its module makes any.
        self.outbound: object | None = None

    def take(self, fd: int, address: int, length: int) -> None:
        """Keep a write to fd 1 or 2 (copied from `address`); raise instead if the output
        would pass its limit, before copying anything."""
        if self.written + length > self.limit:
            self.exceeded = f"the guest wrote more than its limit of {self.limit} bytes of output"
            raise OutputLimitExceeded(self.exceeded)
        self.written += length
        (self.stdout if fd == 1 else self.stderr).append(ctypes.string_at(address, length))


# Calls in progress, by the key stored as their store's data pointer.
_outputs: dict[int, Output] = {}
_keys = itertools.count(1)


def capture(context: int, limit: int) -> Output:
    """Start capturing a store's output; `release` it when the call is over."""
    key = next(_keys)
    output = Output(limit)
    _outputs[key] = output
    native.wasmtime_context_set_data(context, key)
    return output


def release(context: int) -> None:
    """Stop capturing a store's output."""
    key = native.wasmtime_context_get_data(context)
    if key:
        _outputs.pop(key, None)
        native.wasmtime_context_set_data(context, None)


def install(linker: wasmtime.Linker) -> None:
    """Replace `fd_write` and `poll_oneoff` in a linker that already has WASI defined."""
    linker.allow_shadowing = True
    for name, callback in ((b"fd_write", _fd_write), (b"poll_oneoff", _poll_oneoff)):
        native.define_i32_function(linker, b"wasi_snapshot_preview1", name, 4, callback)


@native.HostCallback
def _fd_write(_env: int, caller: int, values: int, _count: int) -> int:
    try:
        return _write(caller, values)
    except OutputLimitExceeded as error:
        return trap(str(error))
    except Exception as error:  # never let an exception cross into wasm
        return trap(f"fd_write failed in the host: {error!r}")


def call_output(caller: int) -> tuple[Output | None, int]:
    """The calling guest's Output (None if it has none), and its store's context."""
    context = native.wasmtime_caller_context(caller)
    return _outputs.get(native.wasmtime_context_get_data(context) or 0), context


def _write(caller: int, values: int) -> int | None:
    raw = ctypes.string_at(values, _ARGUMENTS.size)
    fd, iovs, iovs_count, written_at = _ARGUMENTS.unpack(raw)
    output, context = call_output(caller)
    if output is None or fd not in (1, 2):
        return _result(values, _BADF)
    base, size = memory(caller, context, output)
    if not base:
        return _result(values, _FAULT)
    if iovs_count > _MAX_IOVECS or iovs + 8 * iovs_count > size or written_at + 4 > size:
        return _result(values, _FAULT)
    vectors = tuple(_IOVEC.iter_unpack(ctypes.string_at(base + iovs, 8 * iovs_count)))
    for pointer, length in vectors:
        if pointer + length > size:  # then nothing of this write is kept
            return _result(values, _FAULT)
    total = 0
    for pointer, length in vectors:
        if length:
            output.take(fd, base + pointer, length)
            total += length
    ctypes.c_uint32.from_address(base + written_at).value = total
    return _result(values, _SUCCESS)


def memory(caller: int, context: int, output: Output) -> tuple[int, int]:
    """The calling guest's memory: its address and size, (0, 0) if it exports none."""
    export = output.memory
    if export is None:
        export = native.Extern()
        found = native.wasmtime_caller_export_get(caller, b"memory", 6, byref(export))
        if not found or export.kind != native.EXTERN_MEMORY:  # a function named so, say
            return 0, 0
        output.memory = export
    # Read every time: a guest's memory may grow (and move) between calls.
    data = native.wasmtime_memory_data(context, byref(export.of.memory))
    base = ctypes.cast(data, c_void_p).value or 0
    return base, native.wasmtime_memory_data_size(context, byref(export.of.memory))


# poll_oneoff's records. A subscription: userdata, tag, then for a clock its id, timeout
# (ns), precision and flags, or for an fd its number (read as the clock id's u32).
_SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")
# An event: userdata, error, type, then for an fd the bytes ready and flags (left 0).
_EVENT = struct.Struct("<QHB5x16x")
_CLOCK, _FD_READ, _FD_WRITE = 0, 1, 2
_ABSOLUTE = 1  # subclockflags: the timeout is a point in time, not a duration
_CLOCKS = {  # WASI clock id: the host clock it reads
    0: time.time,
    1: time.monotonic,
    2: time.process_time,
    3: time.thread_time,
}
_MAX_SUBSCRIPTIONS = 1024


@native.HostCallback
def _poll_oneoff(_env: int, caller: int, values: int, _count: int) -> int:
    try:
        return _poll(caller, values)
    except Exception as error:  # never let an exception cross into wasm
        return trap(f"poll_oneoff failed in the host: {error!r}")


def _poll(caller: int, values: int) -> int | None:
    """Fd subscriptions are ready at once (stdin is in memory, the files are regular);
    with none, sleep until the first clock's time, but not past the call's deadline."""
    raw = ctypes.string_at(values, _ARGUMENTS.size)
    subscriptions_at, events_at, count, count_at = _ARGUMENTS.unpack(raw)
    output, context = call_output(caller)
    if output is None or not 0 < count <= _MAX_SUBSCRIPTIONS:
        return _result(values, _INVAL)
    base, size = memory(caller, context, output)
    ends = (subscriptions_at + 48 * count, events_at + 32 * count, count_at + 4)
    if not base or max(ends) > size:
        return _result(values, _FAULT)
    records = ctypes.string_at(base + subscriptions_at, 48 * count)
    ready: list[bytes] = []
    clocks: list[tuple[float, int]] = []  # (seconds to wait, userdata)
    for userdata, tag, clock_or_fd, timeout, _precision, flags in _SUBSCRIPTION.iter_unpack(
        records
    ):
        if tag in (_FD_READ, _FD_WRITE):
            ready.append(_EVENT.pack(userdata, _SUCCESS, tag))
        elif tag == _CLOCK and clock_or_fd in _CLOCKS:
            wait = timeout / 1e9
            if flags & _ABSOLUTE:
                wait -= _CLOCKS[clock_or_fd]()
            clocks.append((wait, userdata))
        else:
            ready.append(_EVENT.pack(userdata, _INVAL, tag))
    if not ready:
        first = min(wait for wait, _ in clocks)
        allowed = output.deadline - time.monotonic()
        _sleep(min(first, allowed), output.stopped)
        if first > allowed or (output.stopped is not None and output.stopped.is_set()):
            # Waking it as if its time had come would be a lie: stop it instead.
            output.overslept = True
            return trap("stopped while sleeping")
        ready = [_EVENT.pack(data, _SUCCESS, _CLOCK) for wait, data in clocks if wait <= first]
    ctypes.memmove(base + events_at, b"".join(ready), 32 * len(ready))
    ctypes.c_uint32.from_address(base + count_at).value = len(ready)
    return _result(values, _SUCCESS)


def _sleep(seconds: float, stopped: threading.Event | None) -> None:
    if seconds <= 0:
        return
    if stopped is not None:
        stopped.wait(seconds)
    else:
        time.sleep(seconds)


def _result(values: int, errno: int) -> None:
    ctypes.c_int32.from_address(values).value = errno


def trap(message: str) -> int:
    """A trap with `message`, for a host function to return."""
    encoded = message.encode()
    return native.wasmtime_trap_new(encoded, len(encoded))
