"""Guest stdout and stderr, captured by replacing WASI's `fd_write` for fds 1 and 2.

wasmtime's ways to capture output each cost more than running a small guest: files
(`stdout_file`) are opened, truncated and closed on every request, and custom streams
(`stdout_custom`) go through an async write stream. Here, a host function installed in
place of `wasi_snapshot_preview1::fd_write` copies the bytes straight out of the guest's
memory into a Python buffer: no file, no syscall, and an exact output limit (the call
that would cross it traps instead). `bench/capture.py` measures the alternatives.

Every pointer the guest passes is checked against its memory's size before it is read.
Writes to any other descriptor fail with EBADF: guests only ever get read-only files.
"""

from __future__ import annotations

import ctypes
import itertools
import struct
from ctypes import byref, c_void_p

import wasmtime

from . import native

# WASI errno values.
_SUCCESS, _BADF, _FAULT = 0, 8, 21
# fd_write(fd, iovs, iovs_len, nwritten): four i32 arguments, each in a 16-byte raw value.
_ARGUMENTS = struct.Struct("<I12xI12xI12xI")
_IOVEC = struct.Struct("<II")
_MAX_IOVECS = 1024


class OutputLimitExceeded(Exception):
    """A guest wrote more than it may (raised inside the guest as a trap)."""


class Output:
    """What one guest call wrote to stdout and stderr."""

    __slots__ = ("exceeded", "limit", "memory", "stderr", "stdout", "written")

    def __init__(self, limit: int) -> None:
        self.stdout: list[bytes] = []
        self.stderr: list[bytes] = []
        self.written = 0
        self.limit = limit
        # Set, to say so, once the guest tried to write past the limit.
        self.exceeded: str | None = None
        # The guest's exported memory, looked up at its first write.
        self.memory: native.Extern | None = None

    def take(self, fd: int, data: bytes) -> None:
        if self.written + len(data) > self.limit:
            self.exceeded = f"the guest wrote more than its limit of {self.limit} bytes of output"
            raise OutputLimitExceeded(self.exceeded)
        self.written += len(data)
        (self.stdout if fd == 1 else self.stderr).append(data)


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
    """Replace `fd_write` in a linker that already has WASI defined."""
    linker.allow_shadowing = True
    i32 = wasmtime.ValType.i32()
    signature = wasmtime.FuncType([i32, i32, i32, i32], [i32])
    module, name = b"wasi_snapshot_preview1", b"fd_write"
    error = native.wasmtime_linker_define_func_unchecked(
        native.address(linker),
        module,
        len(module),
        name,
        len(name),
        native.address(signature),
        _fd_write,
        None,
        None,
    )
    if error:
        raise RuntimeError(f"cannot replace fd_write: {native.error_text(error)}")


@native.HostCallback
def _fd_write(_env: int, caller: int, values: int, _count: int) -> int:
    try:
        return _write(caller, values)
    except OutputLimitExceeded as error:
        return _trap(str(error))
    except Exception as error:  # never let an exception cross into wasm
        return _trap(f"fd_write failed in the host: {error!r}")


def _write(caller: int, values: int) -> int | None:
    raw = ctypes.string_at(values, _ARGUMENTS.size)
    fd, iovs, iovs_count, written_at = _ARGUMENTS.unpack(raw)
    context = native.wasmtime_caller_context(caller)
    output = _outputs.get(native.wasmtime_context_get_data(context) or 0)
    if output is None or fd not in (1, 2):
        return _result(values, _BADF)
    memory = output.memory
    if memory is None:
        memory = native.Extern()
        if not native.wasmtime_caller_export_get(caller, b"memory", 6, byref(memory)):
            return _result(values, _FAULT)
        output.memory = memory
    # Read every time: a guest's memory may grow (and move) between writes.
    data = native.wasmtime_memory_data(context, byref(memory.of.memory))
    base = ctypes.cast(data, c_void_p).value or 0
    size = native.wasmtime_memory_data_size(context, byref(memory.of.memory))
    if iovs_count > _MAX_IOVECS or iovs + 8 * iovs_count > size or written_at + 4 > size:
        return _result(values, _FAULT)
    vectors = ctypes.string_at(base + iovs, 8 * iovs_count)
    total = 0
    for pointer, length in _IOVEC.iter_unpack(vectors):
        if pointer + length > size:
            return _result(values, _FAULT)
        if length:
            output.take(fd, ctypes.string_at(base + pointer, length))
            total += length
    ctypes.c_uint32.from_address(base + written_at).value = total
    return _result(values, _SUCCESS)


def _result(values: int, errno: int) -> None:
    ctypes.c_int32.from_address(values).value = errno


def _trap(message: str) -> int:
    encoded = message.encode()
    return native.wasmtime_trap_new(encoded, len(encoded))
