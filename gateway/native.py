"""The wasmtime C API calls that wasmtime-py does not wrap, or wraps too slowly.

wasmtime-py's high-level objects are used at load time (compiling, linking). On the
request path its per-call Python overhead (wrappers, type checks, building every export
of an instance) costs more than running a small guest, so the few calls a request makes
are declared here directly against the same shared library. It also has no wrapper for
the pooling allocator or for async calls, which this gateway relies on.

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
from ctypes import (
    POINTER,
    byref,
    c_bool,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)

import wasmtime
from wasmtime import _ffi as ffi

LIBRARY = str(ffi.filename)
_quick = ctypes.PyDLL(LIBRARY)
_slow = ctypes.CDLL(LIBRARY)

ByteVec = ffi.wasm_byte_vec_t
InstanceHandle = ffi.wasmtime_instance_t
Extern = ffi.wasmtime_extern_t
EXTERN_FUNC = 0
EXTERN_MEMORY = 3
TRAP_CODE_STACK_OVERFLOW = 0
TRAP_CODE_INTERRUPT = 10  # an epoch deadline passed

_P = c_void_p  # any pointer


def _declare(lib: ctypes.CDLL, name: str, restype: object, *argtypes: object):
    function = getattr(lib, name)
    function.restype = restype
    function.argtypes = argtypes
    return function


# fmt: off
# WASI configuration: built per request, then handed to a store.
wasi_config_new = _declare(_quick, "wasi_config_new", _P)
wasi_config_delete = _declare(_quick, "wasi_config_delete", None, _P)
wasi_config_set_argv = _declare(_quick, "wasi_config_set_argv", c_bool, _P, c_size_t, _P)
wasi_config_set_env = _declare(_quick, "wasi_config_set_env", c_bool, _P, c_size_t, _P, _P)
wasi_config_set_stdin_bytes = _declare(_quick, "wasi_config_set_stdin_bytes", None, _P, _P)
wasi_config_set_stdout_file = _declare(_quick, "wasi_config_set_stdout_file", c_bool, _P, c_char_p)
wasi_config_set_stderr_file = _declare(_quick, "wasi_config_set_stderr_file", c_bool, _P, c_char_p)
wasi_config_preopen_dir = _declare(_quick, "wasi_config_preopen_dir", c_bool, _P, c_char_p,
                                   c_char_p, c_bool)
wasm_byte_vec_new = _declare(_quick, "wasm_byte_vec_new", None, _P, c_size_t, c_char_p)
wasm_byte_vec_delete = _declare(_quick, "wasm_byte_vec_delete", None, _P)

# Stores and instances.
wasmtime_store_new = _declare(_quick, "wasmtime_store_new", _P, _P, _P, _P)
wasmtime_store_context = _declare(_quick, "wasmtime_store_context", _P, _P)
wasmtime_store_delete = _declare(_quick, "wasmtime_store_delete", None, _P)
wasmtime_store_limiter = _declare(_quick, "wasmtime_store_limiter", None, _P, c_int64, c_int64,
                                  c_int64, c_int64, c_int64)
wasmtime_context_set_wasi = _declare(_quick, "wasmtime_context_set_wasi", _P, _P, _P)
wasmtime_context_set_epoch_deadline = _declare(_quick, "wasmtime_context_set_epoch_deadline",
                                               None, _P, c_uint64)
wasmtime_instance_pre_instantiate = _declare(_quick, "wasmtime_instance_pre_instantiate", _P, _P,
                                             _P, _P, _P)
# The same, for a module with a start function: that runs guest code, so the GIL is let go.
wasmtime_instance_pre_instantiate_running_start = _declare(
    _slow, "wasmtime_instance_pre_instantiate", _P, _P, _P, _P, _P)
wasmtime_instance_export_get = _declare(_quick, "wasmtime_instance_export_get", c_bool, _P, _P,
                                        c_char_p, c_size_t, _P)
wasmtime_memory_data_size = _declare(_quick, "wasmtime_memory_data_size", c_size_t, _P, _P)

# Running guest code. A call is started as a future and polled: each poll runs the guest
# until it finishes or yields at an epoch deadline, with the GIL released.
wasmtime_func_call_async = _declare(_quick, "wasmtime_func_call_async", _P, _P, _P, _P, c_size_t,
                                    _P, c_size_t, _P, _P)
wasmtime_call_future_poll = _declare(_slow, "wasmtime_call_future_poll", c_bool, _P)
wasmtime_call_future_delete = _declare(_quick, "wasmtime_call_future_delete", None, _P)
# Returns nothing (wasmtime-py's binding says an error pointer; the C function is void).
wasmtime_context_epoch_deadline_async_yield_and_update = _declare(
    _quick, "wasmtime_context_epoch_deadline_async_yield_and_update", None, _P, c_uint64)
wasmtime_engine_increment_epoch = _declare(_slow, "wasmtime_engine_increment_epoch", None, _P)
# A second handle on an engine keeps it alive until that handle is deleted too.
wasmtime_engine_clone = _declare(_quick, "wasmtime_engine_clone", _P, _P)
wasm_engine_delete = _declare(_quick, "wasm_engine_delete", None, _P)

# Host functions (`wasi`'s `fd_write` and `poll_oneoff`): defined on a linker, called with
# a caller whose store data identifies the request.
HostCallback = ctypes.CFUNCTYPE(_P, _P, _P, _P, c_size_t)
wasmtime_linker_define_func_unchecked = _declare(
    _quick, "wasmtime_linker_define_func_unchecked", _P, _P, c_char_p, c_size_t, c_char_p,
    c_size_t, _P, HostCallback, _P, _P)
wasmtime_caller_context = _declare(_quick, "wasmtime_caller_context", _P, _P)
wasmtime_caller_export_get = _declare(_quick, "wasmtime_caller_export_get", c_bool, _P, c_char_p,
                                      c_size_t, _P)
wasmtime_context_get_data = _declare(_quick, "wasmtime_context_get_data", _P, _P)
wasmtime_context_set_data = _declare(_quick, "wasmtime_context_set_data", None, _P, _P)
wasmtime_memory_data = _declare(_quick, "wasmtime_memory_data", POINTER(ctypes.c_ubyte), _P, _P)
wasmtime_trap_new = _declare(_quick, "wasmtime_trap_new", _P, c_char_p, c_size_t)

# Errors and traps.
wasmtime_error_message = _declare(_quick, "wasmtime_error_message", None, _P, _P)
wasmtime_error_exit_status = _declare(_quick, "wasmtime_error_exit_status", c_bool, _P,
                                      POINTER(c_int))
wasmtime_error_delete = _declare(_quick, "wasmtime_error_delete", None, _P)
wasm_trap_message = _declare(_quick, "wasm_trap_message", None, _P, _P)
wasmtime_trap_code = _declare(_quick, "wasmtime_trap_code", c_bool, _P, POINTER(c_uint8))
wasm_trap_delete = _declare(_quick, "wasm_trap_delete", None, _P)

# The pooling allocator: instance slots reserved up front and reused, so making an
# instance does not map (nor deleting one unmap) its memory.
_pooling_new = _declare(_quick, "wasmtime_pooling_allocation_config_new", _P)
_pooling_delete = _declare(_quick, "wasmtime_pooling_allocation_config_delete", None, _P)
_pooling_use = _declare(_quick, "wasmtime_pooling_allocation_strategy_set", None, _P, _P)
# fmt: on

_POOLING_SETTINGS = {
    "total_core_instances": c_uint32,
    "total_memories": c_uint32,
    "total_tables": c_uint32,
    "total_stacks": c_uint32,
    "max_memory_size": c_size_t,
    "linear_memory_keep_resident": c_size_t,
    "table_keep_resident": c_size_t,
    "max_unused_warm_slots": c_uint32,
}


def use_pooling_allocator(config_address: int, **settings: int) -> None:
    """Make a `wasm_config_t` use the pooling allocator with these settings."""
    pooling = _pooling_new()
    try:
        for name, value in settings.items():
            setter = _declare(
                _quick,
                f"wasmtime_pooling_allocation_config_{name}_set",
                None,
                _P,
                _POOLING_SETTINGS[name],
            )
            setter(pooling, value)
        _pooling_use(config_address, pooling)
    finally:
        _pooling_delete(pooling)


def define_i32_function(
    linker: object, module: bytes, name: bytes, arguments: int, callback: object
) -> None:
    """Define (or, if the linker allows shadowing, replace) `module::name` in a
    wasmtime-py Linker as a HostCallback: `arguments` i32 values in, one i32 out."""
    i32 = wasmtime.ValType.i32()
    signature = wasmtime.FuncType([i32] * arguments, [i32])
    error = wasmtime_linker_define_func_unchecked(
        address(linker), module, len(module), name, len(name), address(signature), callback,
        None, None,
    )  # fmt: skip
    if error:
        raise RuntimeError(f"cannot define {module.decode()}::{name.decode()}: {error_text(error)}")


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


def string_table(strings: list[str]) -> tuple[bytes, ctypes.Array]:
    """NUL-terminated UTF-8 copies of `strings` and an array of pointers to them.

    One encoded buffer and one pointer array cost far less than a ctypes string per
    item. Both returned objects must outlive the C calls that use them.
    """
    text = "\x00".join(strings) + "\x00"
    blob = text.encode()
    base = ctypes.cast(c_char_p(blob), c_void_p).value or 0
    if len(blob) == len(text):
        lengths = map(len, strings)  # ASCII: a character is a byte
    else:
        lengths = (len(item.encode()) for item in strings)
    pointers = (c_void_p * len(strings))()
    offset = base
    for index, length in enumerate(lengths):
        pointers[index] = offset
        offset += length + 1
    return blob, pointers


def stdin_vector(data: bytes) -> ByteVec:
    """A byte vector holding a copy of `data`, for `wasi_config_set_stdin_bytes`."""
    vec = ByteVec()
    wasm_byte_vec_new(byref(vec), len(data), data)
    return vec
