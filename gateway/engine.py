"""Compile, link and run WASI modules with wasmtime: the wasm runner of the request path.

Work is split by when it happens:
- load time: `Engine.load` compiles a module once (or reads it from the compiled cache)
  and links it against WASI once (`Program`, which holds an `InstancePre`);
- ahead of a request: `Program.instantiate` makes a fresh store and instance;
- per request: `Instance.run` attaches the request's WASI context (argv, environment,
  stdin, mounts, captured stdout/stderr) and calls the entrypoint. An instance runs
  exactly once: a WASI command's `_start` is not meant to run twice.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import logging
import os
import platform
import tempfile
import threading
import time
from ctypes import byref, c_void_p
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

from . import native
from .cache import ModuleCache

log = logging.getLogger("wagi.engine")

WASI_MODULE = "wasi_snapshot_preview1"
# Epoch interruption is always on, so every store needs a deadline; this one is
# effectively "never" and is tightened by per-request limits.
_NO_DEADLINE = 1 << 62


class LoadError(Exception):
    """A module cannot be compiled or linked; the message names it and says why."""


@dataclass(frozen=True)
class Outcome:
    """What one run of a guest produced."""

    stdout: bytes
    stderr: bytes
    exit_code: int = 0
    # Set when the guest did not run to completion: a trap or a host error.
    error: str | None = None
    trap_code: int | None = None

    @property
    def ok(self) -> bool:
        """The guest returned from its entrypoint or exited with status 0."""
        return self.error is None and self.exit_code == 0


@dataclass(frozen=True)
class Invocation:
    """The WASI context of one request."""

    argv: list[str]
    env: list[tuple[str, str]]
    stdin: bytes = b""
    # (host directory, guest path) pairs, always mounted read-only.
    mounts: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class LoadedModule:
    """A compiled module and how it was obtained."""

    module: wasmtime.Module
    from_cache: bool
    seconds: float
    size: int


class Engine:
    """A wasmtime engine, a WASI linker and the compiled-module cache that go with it."""

    def __init__(self, cache_dir: Path | None) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        self._options = {"epoch_interruption": True}
        self.wasmtime = wasmtime.Engine(config)
        self.linker = wasmtime.Linker(self.wasmtime)
        self.linker.define_wasi()
        self.cache = ModuleCache(cache_dir, self.fingerprint())
        self.address = native.address(self.wasmtime)

    def fingerprint(self) -> str:
        """Identifies the wasmtime version and settings that compiled code depends on."""
        version = importlib.metadata.version("wasmtime")
        settings = ",".join(f"{k}={v}" for k, v in sorted(self._options.items()))
        digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
        return f"wasmtime-{version}-{platform.machine()}-{digest}"

    def load(self, source: Path) -> LoadedModule:
        """Compile a `.wasm` or `.wat` file, or read its compiled form from the cache."""
        try:
            module_bytes = source.read_bytes()
        except OSError as error:
            raise LoadError(f"{source}: cannot read module: {error.strerror}") from None
        started = time.perf_counter()
        entry = self.cache.entry(module_bytes)
        module = self.cache.load(self.wasmtime, entry) if entry else None
        from_cache = module is not None
        if module is None:
            try:
                module = wasmtime.Module(self.wasmtime, module_bytes)
            except wasmtime.WasmtimeError as error:
                raise LoadError(f"{source}: not a valid WebAssembly module: {error}") from None
            if entry:
                self.cache.store(module, entry)
        return LoadedModule(module, from_cache, time.perf_counter() - started, len(module_bytes))

    def link(self, module: wasmtime.Module, name: str) -> Program:
        """Resolve a module's imports against WASI once, for cheap instantiation."""
        unsupported = [
            f"{item.module}::{item.name}" for item in module.imports if item.module != WASI_MODULE
        ]
        if unsupported:
            raise LoadError(
                f"{name} imports {', '.join(unsupported)}, which this gateway does not "
                f"provide (it provides WASI preview 1, `{WASI_MODULE}`)"
            )
        try:
            instance_pre = self.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as error:
            raise LoadError(f"{name}: cannot link: {error}") from None
        return Program(self, module, instance_pre)

    def increment_epoch(self) -> None:
        """Advance the epoch that guest deadlines are measured in."""
        self.wasmtime.increment_epoch()


class Program:
    """A module linked against WASI, ready to be instantiated many times."""

    def __init__(self, engine: Engine, module: wasmtime.Module, instance_pre: object) -> None:
        self.engine = engine
        self.module = module
        self._instance_pre = instance_pre  # keeps the InstancePre alive
        self._instance_pre_address = native.address(instance_pre)
        self.exports = {item.name: item.type for item in module.exports}

    def entrypoint_problem(self, name: str) -> str | None:
        """Why `name` cannot be an entrypoint, or None if it can."""
        kind = self.exports.get(name)
        if kind is None:
            return f"the module does not export `{name}`"
        if not isinstance(kind, wasmtime.FuncType) or kind.params or kind.results:
            return f"export `{name}` is not a function without parameters or results"
        return None

    def instantiate(self) -> Instance:
        """A fresh store and instance; WASI is attached later, per request."""
        store = native.wasmtime_store_new(self.engine.address, None, None)
        context = native.wasmtime_store_context(store)
        native.wasmtime_context_set_epoch_deadline(context, _NO_DEADLINE)
        handle = native.InstanceHandle()
        trap = c_void_p()
        error = native.wasmtime_instance_pre_instantiate(
            self._instance_pre_address, context, byref(handle), byref(trap)
        )
        if error or trap.value:
            native.wasmtime_store_delete(store)
            reason = native.error_text(error) if error else native.trap_details(trap.value)[0]
            raise LoadError(f"cannot instantiate: {reason}")
        return Instance(store, context, handle, "_initialize" in self.exports)


class Instance:
    """One store and instance, used for exactly one run and then closed."""

    def __init__(
        self, store: int, context: int, handle: native.InstanceHandle, is_reactor: bool
    ) -> None:
        self._store = store
        self._context = context
        self._handle = handle
        self._is_reactor = is_reactor

    def run(self, entrypoint: str, invocation: Invocation) -> Outcome:
        """Attach the request's WASI context, call `entrypoint`, and close the instance."""
        try:
            return self._run(entrypoint, invocation)
        finally:
            self.close()

    def _run(self, entrypoint: str, invocation: Invocation) -> Outcome:
        output = _thread_output()
        problem = self._attach_wasi(invocation, output)
        if problem:
            return Outcome(b"", b"", error=problem)
        if self._is_reactor and entrypoint != "_start":
            # A reactor must be initialised before any other export is called.
            outcome = self._call("_initialize", output)
            if not outcome.ok:
                return outcome
        return self._call(entrypoint, output)

    def _attach_wasi(self, invocation: Invocation, output: _OutputFiles) -> str | None:
        config = native.wasi_config_new()
        argv_keep, argv = native.string_array([a.encode() for a in invocation.argv])
        native.wasi_config_set_argv(config, len(invocation.argv), argv)
        names = [name.encode() for name, _ in invocation.env]
        values = [value.encode() for _, value in invocation.env]
        env_keep, env = native.string_array(names + values)
        count = len(names)
        env_address = ctypes.addressof(env)
        if not native.wasi_config_set_env(
            config, count, env_address, env_address + count * ctypes.sizeof(c_void_p)
        ):
            native.wasi_config_delete(config)
            return "environment is not valid UTF-8"
        stdin = native.stdin_vector(invocation.stdin)
        native.wasi_config_set_stdin_bytes(config, byref(stdin))
        native.wasi_config_set_stdout_file(config, output.stdout_path)
        native.wasi_config_set_stderr_file(config, output.stderr_path)
        for host, guest in invocation.mounts:
            if not native.wasi_config_preopen_dir(config, host.encode(), guest.encode(), False):
                native.wasi_config_delete(config)
                return f"cannot mount {host} at {guest}"
        error = native.wasmtime_context_set_wasi(self._context, config)  # takes `config`
        del argv_keep, env_keep
        return native.error_text(error) if error else None

    def _call(self, name: str, output: _OutputFiles) -> Outcome:
        function = native.Extern()
        encoded = name.encode()
        found = native.wasmtime_instance_export_get(
            self._context, byref(self._handle), encoded, len(encoded), byref(function)
        )
        if not found or function.kind != native.EXTERN_FUNC:
            return Outcome(b"", b"", error=f"the module does not export a function `{name}`")
        trap = c_void_p()
        error = native.wasmtime_func_call(
            self._context, byref(function.of.func), None, 0, None, 0, byref(trap)
        )
        exit_code, message, trap_code = 0, None, None
        if error:
            status = native.exit_status(error)
            if status is None:
                message = native.error_text(error)
            else:
                native.wasmtime_error_delete(error)
                exit_code = status
        elif trap.value:
            message, trap_code = native.trap_details(trap.value)
        return Outcome(output.read_stdout(), output.read_stderr(), exit_code, message, trap_code)

    def close(self) -> None:
        """Free the store and everything in it (idempotent)."""
        if self._store:
            native.wasmtime_store_delete(self._store)
            self._store = 0

    def __del__(self) -> None:
        self.close()


class _OutputFiles:
    """A thread's stdout and stderr files, reused by every run on that thread.

    wasmtime opens the path given for stdout/stderr with truncation, so each run starts
    with empty files. On Linux they are memfds: memory, no disk, no cleanup.
    """

    def __init__(self) -> None:
        self._stdout_fd, self.stdout_path = _anonymous_file("stdout")
        self._stderr_fd, self.stderr_path = _anonymous_file("stderr")

    def read_stdout(self) -> bytes:
        return _read_all(self._stdout_fd)

    def read_stderr(self) -> bytes:
        return _read_all(self._stderr_fd)


def _anonymous_file(name: str) -> tuple[int, bytes]:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(f"wagi-{name}", os.MFD_CLOEXEC)
        return fd, f"/proc/self/fd/{fd}".encode()
    fd, path = tempfile.mkstemp(prefix=f"wagi-{name}-")
    return fd, path.encode()


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


_thread_state = threading.local()


def _thread_output() -> _OutputFiles:
    output = getattr(_thread_state, "output", None)
    if output is None:
        output = _thread_state.output = _OutputFiles()
    return output
