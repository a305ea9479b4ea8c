"""Compile, link and run WASI modules with wasmtime: the wasm runner of the request path.

Work is split by when it happens:
- load time: `Engine.load` compiles a module once (or reads it from the compiled cache)
  and `Engine.link` links it against WASI once (`Program`, holding an `InstancePre`);
- ahead of a request: `Program.instantiate` makes a fresh store and instance (the pool
  does this in the background);
- per request: `Instance.start` attaches the request's WASI context (argv, environment,
  stdin, mounts, captured stdout/stderr) and starts the entrypoint as an async call, which
  `GuestCall.poll` drives. The guest yields at epoch deadlines, so whoever polls decides
  how long it may run before it is polled again elsewhere, or dropped.

An instance runs once: a WASI command's `_start` is not meant to run twice.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from ctypes import byref, c_void_p
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

from . import native, outbound, wasi
from .cache import ModuleCache
from .config import EngineSettings, Limits, human_size
from .ticker import EpochTicker

log = logging.getLogger("wagi.engine")

WASI_MODULE = "wasi_snapshot_preview1"
# The preamble of a component-model binary: magic, then version 0x0d and layer 1.
_COMPONENT_HEADER = b"\0asm\x0d\x00\x01\x00"
# Idle instances never run code; this deadline is "never" until a call sets a real one.
_NO_DEADLINE = 1 << 62
_NO_LIMIT = 1 << 62
WASM_PAGE = 65536


class LoadError(Exception):
    """A module cannot be compiled, linked or instantiated; the message says why, and
    `origin` (`file:line` of the manifest, when known) says where."""

    def __init__(self, message: str, origin: str = "") -> None:
        super().__init__(f"{origin}: {message}" if origin else message)
        self.message = message
        self.origin = origin


class NoInstanceSlot(LoadError):
    """Every instance slot of the pooling allocator is in use (a passing condition)."""


@dataclass(slots=True)
class Outcome:
    """What one run of a guest produced."""

    stdout: bytes
    stderr: bytes
    exit_code: int = 0
    # Why the guest did not succeed (one of the Failure names), and in words.
    failure: str | None = None
    error: str | None = None
    # Seconds from the start of the guest to its end (set by the executor).
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """The guest returned from its entrypoint or exited with status 0."""
        return self.failure is None


class Failure:
    """Why a guest call failed; each maps to one HTTP status in the app."""

    EXIT = "exit"  # proc_exit with a status other than 0
    TRAP = "trap"  # the guest trapped (stack overflow, unreachable, ...)
    MEMORY = "memory"  # it failed with its memory at the limit
    OUTPUT = "output"  # it wrote more than its output limit
    TIMEOUT = "timeout"  # it ran past its deadline and was stopped
    START = "start"  # it could not start (no such entrypoint, WASI setup)
    CANCELLED = "cancelled"  # stopped because the gateway is shutting down
    BUSY = "busy"  # every instance slot was in use: it may work in a moment


class FixedEnvironment:
    """Environment variables that are the same for many calls, laid out in C memory once."""

    __slots__ = ("_blob", "_pointers", "count", "names_address", "values_address")

    def __init__(self, variables: dict[str, str]) -> None:
        self.count = len(variables)
        self._blob, self._pointers = native.string_table([*variables, *variables.values()])
        self.names_address = ctypes.addressof(self._pointers)
        self.values_address = self.names_address + self.count * ctypes.sizeof(c_void_p)


@dataclass(slots=True)
class Invocation:
    """The WASI context of one request."""

    argv: list[str]
    # Variables of this request; `fixed_env` never holds the same names (see
    # `cgi.fixed_environment`), so the guest sees each name once.
    env: dict[str, str]
    stdin: bytes = b""
    # (host directory, guest path) pairs, always mounted read-only.
    mounts: list[tuple[str, str]] = field(default_factory=list)
    fixed_env: FixedEnvironment | None = None
    # What its outbound HTTP requests may do, for a module that makes any.
    outbound: outbound.OutboundPolicy | None = None


@dataclass(frozen=True)
class LoadedModule:
    """A compiled module and how it was obtained."""

    module: wasmtime.Module
    # "compiled", "cached" (read from the compiled cache) or "reused" (already loaded).
    how: str
    seconds: float
    size: int
    digest: str
    # Its start function runs whenever an instance is made (see `Program.instantiate`).
    has_start_function: bool = False


class Engine:
    """A tuned wasmtime engine, a WASI linker, the compiled-module cache, and the one
    ticker that advances the engine's epoch for every guest it runs."""

    def __init__(self, cache_dir: Path | None, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.wasmtime = wasmtime.Engine(_engine_config(self.settings))
        self.linker = wasmtime.Linker(self.wasmtime)
        self.linker.define_wasi()
        wasi.install(self.linker)
        outbound.install(self.linker)
        self.cache = ModuleCache(cache_dir, self.fingerprint())
        self.address = native.address(self.wasmtime)
        settings = self.settings
        self.ticker = EpochTicker(self.address, settings.epoch_tick, settings.inline_ticks)
        weakref.finalize(self, self.ticker.close)  # an engine dropped unclosed stops it too

    def close(self) -> None:
        """Stop the epoch ticker for good (at exit it stops by itself)."""
        self.ticker.close()

    def fingerprint(self) -> str:
        """Identifies the wasmtime build and the settings that compiled code depends on.

        The library file stands for the wasmtime version (reading the package version
        through importlib.metadata would cost a fifth of the gateway's start-up time).
        """
        library = os.stat(native.LIBRARY)
        items = sorted(self.settings.fingerprint_items().items())
        identity = f"{native.LIBRARY}:{library.st_size}:{library.st_mtime_ns}:{items}"
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return f"wasmtime-{platform.machine()}-{digest}"

    def load(
        self,
        source: Path,
        loaded: Mapping[str, wasmtime.Module] | None = None,
        compiling: Callable[[Path, int], None] | None = None,
    ) -> LoadedModule:
        """Compile a `.wasm` or `.wat` file, or read its compiled form from the cache.

        `loaded` maps digests to modules this process has already: those are reused.
        `compiling(source, size)` is called just before a compilation starts (which can
        take seconds for a large module).
        """
        try:
            module_bytes = source.read_bytes()
        except OSError as error:
            raise LoadError(f"{source}: cannot read module: {error.strerror}") from None
        started = time.perf_counter()
        digest = hashlib.sha256(module_bytes).hexdigest()
        binary = _binary(source, module_bytes)
        module, how = (loaded or {}).get(digest), "reused"
        if module is None:
            entry = self.cache.entry(digest)
            module, how = (self.cache.load(self.wasmtime, entry) if entry else None), "cached"
        if module is None:
            if compiling is not None:
                compiling(source, len(module_bytes))
            module, how = self._compile(source, binary), "compiled"
            if entry:
                self.cache.store(module, entry)
        seconds = time.perf_counter() - started
        starts = _has_start_function(binary)
        return LoadedModule(module, how, seconds, len(module_bytes), digest, starts)

    def _compile(self, source: Path, binary: bytes) -> wasmtime.Module:
        try:
            return wasmtime.Module(self.wasmtime, binary)
        except wasmtime.WasmtimeError as error:
            raise _invalid(source, error) from None

    def link(self, loaded: LoadedModule, name: str) -> Program:
        """Resolve a module's imports against WASI once, for cheap instantiation."""
        module = loaded.module
        unsupported = [
            f"{item.module}::{item.name}"
            for item in module.imports
            if item.module not in (WASI_MODULE, outbound.MODULE)
        ]
        if unsupported:
            raise LoadError(
                f"{name} imports {', '.join(unsupported)}, which this gateway does not "
                f"provide (it provides WASI preview 1, `{WASI_MODULE}`, and WAGI's "
                f"outbound HTTP, `{outbound.MODULE}`)"
            )
        try:
            instance_pre = self.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as error:
            raise LoadError(f"{name}: cannot link: {_one_line(str(error))}") from None
        return Program(self, module, instance_pre, loaded.has_start_function)


def _engine_config(settings: EngineSettings) -> wasmtime.Config:
    config = wasmtime.Config()
    config.epoch_interruption = True
    config.memory_init_cow = settings.copy_on_write
    if settings.pooling:
        slots = settings.max_instances
        native.use_pooling_allocator(
            native.address(config),
            total_core_instances=slots,
            total_memories=slots,
            total_tables=slots,
            total_stacks=slots,  # async calls run on fiber stacks from the pool
            max_memory_size=settings.instance_memory,
            linear_memory_keep_resident=settings.keep_resident,
            table_keep_resident=settings.keep_resident,
        )
    return config


class Program:
    """A module linked against WASI, ready to be instantiated many times."""

    def __init__(
        self,
        engine: Engine,
        module: wasmtime.Module,
        instance_pre: object,
        has_start_function: bool = False,
    ) -> None:
        self.engine = engine
        self.module = module
        self.has_start_function = has_start_function
        self._instance_pre = instance_pre  # keeps the InstancePre alive
        self._instance_pre_address = native.address(instance_pre)
        self.exports = {item.name: item.type for item in module.exports}
        self.is_reactor = "_initialize" in self.exports
        # Whether it makes outbound HTTP requests (`outbound`).
        self.makes_requests = any(item.module == outbound.MODULE for item in module.imports)
        # A guest that can sleep or wait for a response inside a host call cannot be
        # interrupted there.
        self.may_block = self.makes_requests or any(
            item.module == WASI_MODULE and item.name == "poll_oneoff" for item in module.imports
        )

    def entrypoint_problem(self, name: str) -> str | None:
        """Why `name` cannot be an entrypoint, or None if it can."""
        kind = self.exports.get(name)
        if kind is None:
            return f"the module does not export `{name}`"
        if not isinstance(kind, wasmtime.FuncType) or kind.params or kind.results:
            return f"export `{name}` is not a function without parameters or results"
        return None

    def run_once(self, entrypoint: str, invocation: Invocation, limits: Limits) -> Outcome:
        """Run `entrypoint` on a fresh instance, on this thread, within `limits` (for load
        time, where no executor runs guests yet)."""
        instance = self.instantiate(limits.max_memory)
        call = instance.start(
            entrypoint, invocation, first_slice=1, slice_ticks=1,
            output_limit=limits.max_output_size,
        )  # fmt: skip
        ticker = self.engine.ticker
        ticker.thread_started()
        try:
            timeout = limits.request_timeout
            return call.run_to_end(time.monotonic() + timeout, timeout)
        finally:
            ticker.thread_stopped()

    def instantiate(self, memory_limit: int = -1) -> Instance:
        """A fresh store and instance; WASI is attached later, per request.

        `memory_limit` caps the instance's linear memory: growing past it fails.
        """
        store = native.wasmtime_store_new(self.engine.address, None, None)
        context = native.wasmtime_store_context(store)
        native.wasmtime_store_limiter(store, memory_limit, -1, -1, -1, -1)
        handle = native.InstanceHandle()
        trap = c_void_p()
        if self.has_start_function:
            error = self._instantiate_running_start(context, handle, trap)
        else:
            native.wasmtime_context_set_epoch_deadline(context, _NO_DEADLINE)
            error = native.wasmtime_instance_pre_instantiate(
                self._instance_pre_address, context, byref(handle), byref(trap)
            )
        if error or trap.value:
            native.wasmtime_store_delete(store)
            reason = _instantiation_failure(error, trap.value)
            # wasmtime's C API gives this condition no code of its own, only its message.
            busy = "maximum concurrent limit" in reason
            raise (NoInstanceSlot if busy else LoadError)(f"cannot instantiate: {reason}")
        return Instance(store, context, handle, self.is_reactor, memory_limit)

    def _instantiate_running_start(self, context: int, handle: object, trap: c_void_p) -> int:
        """Instantiate a module whose start function runs now, within START_FUNCTION_LIMIT:
        instances are made outside any request, so nothing else would stop it."""
        settings, ticker = self.engine.settings, self.engine.ticker
        # wasmtime's WASI functions abort the process when called on a store without a
        # WASI context, so a start function that calls one gets an empty context (no
        # argv, environment, stdin or files), which the request's replaces later.
        error = native.wasmtime_context_set_wasi(context, native.wasi_config_new())
        if error:
            return error
        ticks = max(1, math.ceil(START_FUNCTION_LIMIT / settings.epoch_tick))
        native.wasmtime_context_set_epoch_deadline(context, ticks)
        ticker.thread_started()
        try:
            return native.wasmtime_instance_pre_instantiate_running_start(
                self._instance_pre_address, context, byref(handle), byref(trap)
            )
        finally:
            ticker.thread_stopped()
            native.wasmtime_context_set_epoch_deadline(context, _NO_DEADLINE)


START_FUNCTION_LIMIT = 0.25  # seconds a module's start function may run per instance


def _instantiation_failure(error: int | None, trap: int | None) -> str:
    if error:
        return native.error_text(error)
    message, code = native.trap_details(trap)
    if code == native.TRAP_CODE_INTERRUPT:
        return f"its start function ran longer than {START_FUNCTION_LIMIT:g} s"
    return _one_line(message)


def _binary(source: Path, module_bytes: bytes) -> bytes:
    """A module file's binary form: as it is, or translated from WebAssembly text."""
    if module_bytes.startswith(_COMPONENT_HEADER):
        raise LoadError(
            f"{source} is a WebAssembly component (WASI 0.2), not a core module: "
            "build it for WASI preview 1 (target wasm32-wasip1, or wasm32-wasi)"
        )
    if module_bytes.startswith(b"\0asm"):
        return module_bytes
    if not module_bytes.lstrip().startswith((b"(", b";;")):
        raise LoadError(
            f"{source}: not WebAssembly (neither a binary module, which starts with "
            "`\\0asm`, nor WebAssembly text)"
        )
    try:
        return wasmtime.wat2wasm(module_bytes.decode("utf-8", "replace"))
    except wasmtime.WasmtimeError as error:
        raise _invalid(source, error) from None


def _invalid(source: Path, error: wasmtime.WasmtimeError) -> LoadError:
    return LoadError(f"{source}: not a valid WebAssembly module: {_one_line(str(error))}")


def _has_start_function(binary: bytes) -> bool:
    """Whether a binary module has a start section."""
    position = 8  # past the magic number and the version
    while position < len(binary):
        section_id = binary[position]
        size, position = _leb128(binary, position + 1)
        if section_id == _START_SECTION:
            return True
        position += size
    return False


_START_SECTION = 8


def _leb128(data: bytes, position: int) -> tuple[int, int]:
    """An unsigned LEB128 number at `position`, and the position after it."""
    value = shift = 0
    while position < len(data):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return value, position


SHUTTING_DOWN = "the gateway is shutting down"  # why a guest is cancelled


def timeout_message(timeout: float) -> str:
    """What a guest stopped at its time limit is told, and the log says."""
    return f"ran longer than its limit of {timeout:g} s"


def _one_line(message: str) -> str:
    """wasmtime's multi-line error as one log-friendly line: its causes joined, a
    backtrace left out, a WAT error's source diagram reduced to its line and column."""
    parts: list[str] = []
    in_backtrace = False
    for raw in message.splitlines():
        line = raw.strip()
        if line == "Caused by:" or line.endswith("wasm backtrace:"):
            # a backtrace names only guest functions; its cause says what went wrong
            in_backtrace = line != "Caused by:"
        elif in_backtrace or not line or _DIAGRAM.match(line):
            continue
        elif line.startswith("--> ") and parts:  # `--> <anon>:4:4`, then the diagram
            _, row, column = line.rsplit(":", 2)
            parts[-1] += f" (line {row}, column {column})"
        else:
            parts.append(_CAUSE_NUMBER.sub("", line))
    return ": ".join(parts) or message.strip()


_DIAGRAM = re.compile(r"^\d* *\|")  # `|` and `4 |   (bogus))` lines of a WAT error
_CAUSE_NUMBER = re.compile(r"^\d+: ")  # `0: ...`, `1: ...` in a list of causes


class Instance:
    """One store and instance, used for exactly one call and then closed."""

    def __init__(
        self,
        store: int,
        context: int,
        handle: native.InstanceHandle,
        is_reactor: bool,
        memory_limit: int = -1,
    ) -> None:
        self._store = store
        self._context = context
        self._handle = handle
        self._is_reactor = is_reactor
        self.memory_limit = memory_limit

    def start(
        self,
        entrypoint: str,
        invocation: Invocation,
        first_slice: int = _NO_DEADLINE,
        slice_ticks: int = _NO_DEADLINE,
        output_limit: int = _NO_LIMIT,
    ) -> GuestCall:
        """Attach the request's WASI context and start `entrypoint`.

        The guest runs `first_slice` epoch ticks on the first poll, then `slice_ticks`
        per poll. The instance belongs to the returned call from now on.
        """
        output = wasi.capture(self._context, output_limit)
        if invocation.outbound is not None:
            output.outbound = outbound.Session(invocation.outbound)
        problem = self._attach_wasi(invocation)
        names = [entrypoint]
        if self._is_reactor and entrypoint != "_start":
            names.insert(0, "_initialize")  # a reactor is initialised before anything else
        functions = []
        for name in names:
            function = self._function(name)
            if function is None:
                problem = problem or f"the module does not export a function `{name}`"
            functions.append(function)
        if problem is None:
            yield_at_deadlines = native.wasmtime_context_epoch_deadline_async_yield_and_update
            yield_at_deadlines(self._context, slice_ticks)
            native.wasmtime_context_set_epoch_deadline(self._context, first_slice)
        return GuestCall(self, functions, output, problem)

    def run(self, entrypoint: str, invocation: Invocation) -> Outcome:
        """Run `entrypoint` to completion on this thread, without limits (tests, bench)."""
        return self.start(entrypoint, invocation).run_to_end(math.inf, math.inf)

    def _attach_wasi(self, invocation: Invocation) -> str | None:
        config = native.wasi_config_new()
        argv, env = invocation.argv, invocation.env
        keep, pointers = native.string_table([*argv, *env, *env.values()])
        address = ctypes.addressof(pointers)
        width = ctypes.sizeof(c_void_p)
        native.wasi_config_set_argv(config, len(argv), address)
        names_address = address + len(argv) * width
        values_address = names_address + len(env) * width
        native.wasi_config_set_env(config, len(env), names_address, values_address)
        fixed = invocation.fixed_env
        if fixed is not None:
            native.wasi_config_set_env(
                config, fixed.count, fixed.names_address, fixed.values_address
            )
        stdin = native.stdin_vector(invocation.stdin)
        native.wasi_config_set_stdin_bytes(config, byref(stdin))
        for host, guest in invocation.mounts:
            if not native.wasi_config_preopen_dir(config, host.encode(), guest.encode(), False):
                native.wasi_config_delete(config)
                return f"cannot mount {host} at {guest}"
        error = native.wasmtime_context_set_wasi(self._context, config)  # takes `config`
        del keep
        return native.error_text(error) if error else None

    def _function(self, name: str) -> native.Extern | None:
        function = native.Extern()
        encoded = name.encode()
        found = native.wasmtime_instance_export_get(
            self._context, byref(self._handle), encoded, len(encoded), byref(function)
        )
        return function if found and function.kind == native.EXTERN_FUNC else None

    @property
    def context(self) -> int:
        """The store's context pointer."""
        return self._context

    def memory_size(self) -> int:
        """Bytes of linear memory the instance has now (0 if it exports none)."""
        memory = native.Extern()
        found = native.wasmtime_instance_export_get(
            self._context, byref(self._handle), b"memory", 6, byref(memory)
        )
        if not found or memory.kind != native.EXTERN_MEMORY:
            return 0
        return native.wasmtime_memory_data_size(self._context, byref(memory.of.memory))

    def close(self) -> None:
        """Free the store and everything in it (idempotent)."""
        if self._store:
            wasi.release(self._context)
            native.wasmtime_store_delete(self._store)
            self._store = 0


class GuestCall:
    """A guest's entrypoint running as an async call: poll until done, then `finish`."""

    def __init__(
        self,
        instance: Instance,
        functions: list[native.Extern | None],
        output: wasi.Output,
        problem: str | None,
    ) -> None:
        self._instance = instance
        self._functions = deque(functions)
        self._output = output
        self._future: int | None = None
        self._trap = c_void_p()
        self._error = c_void_p()
        self._exit_code = 0
        self._message = problem
        self._failure = Failure.START if problem else None
        self.done = problem is not None

    def set_deadline(self, ticks: int) -> None:
        """Make the guest yield `ticks` epoch ticks from now (next time it runs)."""
        native.wasmtime_context_set_epoch_deadline(self._instance.context, ticks)

    def poll(self) -> bool:
        """Run the guest until it finishes (True) or yields at a deadline (False)."""
        while not self.done:
            if self._future is None:
                function = self._functions.popleft()
                self._future = native.wasmtime_func_call_async(
                    self._instance.context,
                    byref(function.of.func),
                    None,
                    0,
                    None,
                    0,
                    byref(self._trap),
                    byref(self._error),
                )
            if not native.wasmtime_call_future_poll(self._future):
                return False
            native.wasmtime_call_future_delete(self._future)
            self._future = None
            self._collect_result()
            self.done = self._failure is not None or not self._functions
        return True

    def run_to_end(
        self, deadline: float, timeout: float, stopped: threading.Event | None = None
    ) -> Outcome:
        """Poll on this thread until the guest finishes, `deadline` (monotonic) passes,
        or `stopped` is set; each poll returns at a tick, so both are seen in time."""
        self._output.deadline, self._output.stopped = deadline, stopped  # sleeps end by then
        while not self.poll():
            if time.monotonic() > deadline:
                return self.cancel(Failure.TIMEOUT, timeout_message(timeout))
            if stopped is not None and stopped.is_set():
                return self.cancel(Failure.CANCELLED, SHUTTING_DOWN)
        if self._output.overslept:  # stopped in a sleep: by the deadline or the stop
            if stopped is not None and stopped.is_set():
                self._failure, self._message = Failure.CANCELLED, SHUTTING_DOWN
            else:
                self._failure, self._message = Failure.TIMEOUT, timeout_message(timeout)
        return self.finish()

    def _collect_result(self) -> None:
        if self._error.value:
            status = native.exit_status(self._error.value)
            if status is None:
                self._fail(Failure.TRAP, native.error_text(self._error.value))
            else:
                native.wasmtime_error_delete(self._error.value)
                self._exit_code = status
                self._functions.clear()  # proc_exit ends the program, even exit(0)
                if status != 0:
                    self._fail(Failure.EXIT, f"exit status {status}")
        elif self._trap.value:
            message, code = native.trap_details(self._trap.value)
            if code == native.TRAP_CODE_STACK_OVERFLOW:
                message = "stack overflow (the guest recursed too deeply)"
            self._fail(Failure.TRAP, message)
        self._error.value = self._trap.value = None

    def _fail(self, failure: str, message: str) -> None:
        message = _one_line(message)
        limit = self._instance.memory_limit
        if self._output.exceeded:
            failure, message = Failure.OUTPUT, self._output.exceeded
        elif limit > 0:
            size = self._instance.memory_size()
            used = f"{human_size(size)} of {human_size(limit)}"
            if size + max(limit // 8, WASM_PAGE) > limit:
                # wasmtime does not say when it refused to grow a memory; a guest that
                # fails this close to its limit most likely ran out.
                failure = Failure.MEMORY
                message = f"{message}, with memory at its limit ({used})"
            elif size * 2 >= limit:
                # One large allocation can be refused further below the limit: say how
                # near it was, without claiming that was the cause.
                message = f"{message}, with memory at {used}"
        self._failure, self._message = failure, message

    def finish(self) -> Outcome:
        """The outcome of a finished call; frees the instance."""
        output = self._output
        outcome = Outcome(
            b"".join(output.stdout),
            b"".join(output.stderr),
            self._exit_code,
            self._failure,
            self._message,
        )
        output.outbound = None  # its responses' bodies, which can be large
        self._instance.close()
        return outcome

    def cancel(self, failure: str, message: str) -> Outcome:
        """Drop a call that has not finished (the guest never runs again)."""
        if self._future is not None:
            native.wasmtime_call_future_delete(self._future)
            self._future = None
        self._failure, self._message = failure, message
        return self.finish()
