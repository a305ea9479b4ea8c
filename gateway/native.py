"""The wasmtime C API calls that wasmtime-py does not wrap, or wraps too slowly.

wasmtime-py's high-level objects are used at load time (compiling, linking). On the
request path, its per-call Python overhead (wrappers, type checks, building every
export of an instance) cost more than running a small guest, so the few calls a
request makes are declared here directly against the same shared library.

Two handles to that library are used on purpose:
- `_quick` (ctypes.PyDLL) keeps the GIL during the call. For calls that take a few
  microseconds, releasing and re-taking the GIL costs more than the call, and a thread
  that re-takes a busy GIL can wait milliseconds.
- `_slow` (ctypes.CDLL) releases the GIL, for calls that run guest code or may block,
  so other threads (and the event loop) keep going meanwhile.

This module is the only place that knows the C API; it is tied to wasmtime-py 50.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, byref, c_bool, c_char_p, c_int, c_size_t, c_uint8, c_uint64, c_void_p

from wasmtime import _ffi as ffi

_quick = ctypes.PyDLL(str(ffi.filename))
_slow = ctypes.CDLL(str(ffi.filename))

ByteVec = ffi.wasm_byte_vec_t
InstanceHandle = ffi.wasmtime_instance_t
Extern = ffi.wasmtime_extern_t
EXTERN_FUNC = 0
TRAP_CODE_INTERRUPT = 10
TRAP_CODE_STACK_OVERFLOW = 0


def _declare(lib: ctypes.CDLL, name: str, restype, *argtypes):
    function = getattr(lib, name)
    function.restype = restype
    function.argtypes = argtypes
    return function


# WASI configuration: built per request, then handed to a store.
wasi_config_new = _declare(_quick, "wasi_config_new", c_void_p)
wasi_config_delete = _declare(_quick, "wasi_config_delete", None, c_void_p)
wasi_config_set_argv = _declare(
    _quick, "wasi_config_set_argv", c_bool, c_void_p, c_size_t, c_void_p
)
wasi_config_set_env = _declare(
    _quick, "wasi_config_set_env", c_bool, c_void_p, c_size_t, c_void_p, c_void_p
)
wasi_config_set_stdin_bytes = _declare(
    _quick, "wasi_config_set_stdin_bytes", None, c_void_p, c_void_p
)
wasi_config_set_stdout_file = _declare(
    _quick, "wasi_config_set_stdout_file", c_bool, c_void_p, c_char_p
)
wasi_config_set_stderr_file = _declare(
    _quick, "wasi_config_set_stderr_file", c_bool, c_void_p, c_char_p
)
wasi_config_preopen_dir = _declare(
    _quick, "wasi_config_preopen_dir", c_bool, c_void_p, c_char_p, c_char_p, c_bool
)
wasm_byte_vec_new = _declare(_quick, "wasm_byte_vec_new", None, c_void_p, c_size_t, c_char_p)
wasm_byte_vec_delete = _declare(_quick, "wasm_byte_vec_delete", None, c_void_p)

# Stores and instances.
wasmtime_store_new = _declare(_quick, "wasmtime_store_new", c_void_p, c_void_p, c_void_p, c_void_p)
wasmtime_store_context = _declare(_quick, "wasmtime_store_context", c_void_p, c_void_p)
wasmtime_store_delete = _declare(_quick, "wasmtime_store_delete", None, c_void_p)
wasmtime_store_limiter = _declare(
    _quick,
    "wasmtime_store_limiter",
    None,
    c_void_p,
    ctypes.c_int64,
    ctypes.c_int64,
    ctypes.c_int64,
    ctypes.c_int64,
    ctypes.c_int64,
)
wasmtime_context_set_wasi = _declare(
    _quick, "wasmtime_context_set_wasi", c_void_p, c_void_p, c_void_p
)
wasmtime_context_set_epoch_deadline = _declare(
    _quick, "wasmtime_context_set_epoch_deadline", None, c_void_p, c_uint64
)
wasmtime_instance_pre_instantiate = _declare(
    _quick, "wasmtime_instance_pre_instantiate", c_void_p, c_void_p, c_void_p, c_void_p, c_void_p
)
wasmtime_instance_export_get = _declare(
    _quick, "wasmtime_instance_export_get", c_bool, c_void_p, c_void_p, c_char_p, c_size_t, c_void_p
)

# Running guest code: the GIL is released for the whole call.
wasmtime_func_call = _declare(
    _slow,
    "wasmtime_func_call",
    c_void_p,
    c_void_p,
    c_void_p,
    c_void_p,
    c_size_t,
    c_void_p,
    c_size_t,
    c_void_p,
)

# Errors and traps.
wasmtime_error_message = _declare(_quick, "wasmtime_error_message", None, c_void_p, c_void_p)
wasmtime_error_exit_status = _declare(
    _quick, "wasmtime_error_exit_status", c_bool, c_void_p, POINTER(c_int)
)
wasmtime_error_delete = _declare(_quick, "wasmtime_error_delete", None, c_void_p)
wasm_trap_message = _declare(_quick, "wasm_trap_message", None, c_void_p, c_void_p)
wasmtime_trap_code = _declare(_quick, "wasmtime_trap_code", c_bool, c_void_p, POINTER(c_uint8))
wasm_trap_delete = _declare(_quick, "wasm_trap_delete", None, c_void_p)


def address(managed: object) -> int:
    """The raw pointer behind a wasmtime-py object (Engine, InstancePre, ...)."""
    return ctypes.cast(managed.ptr(), c_void_p).value  # type: ignore[attr-defined]


def take_message(vec: ByteVec) -> str:
    """Decode and free a message vector filled by the C API."""
    text = ctypes.string_at(vec.data, vec.size).decode("utf-8", "replace")
    wasm_byte_vec_delete(byref(vec))
    return text.rstrip("\x00")


def error_text(error: int) -> str:
    """The message of a `wasmtime_error_t`, which is then freed."""
    vec = ByteVec()
    wasmtime_error_message(error, byref(vec))
    wasmtime_error_delete(error)
    return take_message(vec)


def exit_status(error: int) -> int | None:
    """The WASI exit code if `error` is a `proc_exit`, else None."""
    status = c_int()
    return status.value if wasmtime_error_exit_status(error, byref(status)) else None


def trap_details(trap: int) -> tuple[str, int | None]:
    """The message and trap code of a `wasm_trap_t`, which is then freed."""
    vec = ByteVec()
    wasm_trap_message(trap, byref(vec))
    code = c_uint8()
    has_code = wasmtime_trap_code(trap, byref(code))
    wasm_trap_delete(trap)
    return take_message(vec), (code.value if has_code else None)


def string_array(items: list[bytes]) -> tuple[bytes, ctypes.Array]:
    """NUL-terminated copies of `items` and an array of pointers to them.

    One joined buffer and one pointer array are far cheaper to build than a ctypes
    `c_char_p` per string. Both returned objects must outlive the C call.
    """
    blob = b"\x00".join(items) + b"\x00"
    base = ctypes.cast(c_char_p(blob), c_void_p).value or 0
    pointers = (c_void_p * len(items))()
    offset = base
    for index, item in enumerate(items):
        pointers[index] = offset
        offset += len(item) + 1
    return blob, pointers


def stdin_vector(data: bytes) -> ByteVec:
    """A byte vector holding a copy of `data`, for `wasi_config_set_stdin_bytes`."""
    vec = ByteVec()
    wasm_byte_vec_new(byref(vec), len(data), data)
    return vec
