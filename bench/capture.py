"""Measure ways to pass stdin to a guest and capture its stdout and stderr.

Each variant runs the same guest many times in this process (no HTTP), on one thread, and
reports the time per run of the whole per-request sequence: make the WASI context,
attach it to a ready instance, run the entrypoint, read what it wrote, delete the store.
Instances are made beforehand, as the pool does.

    python bench/capture.py [--runs N] [MODULE...]

Variants:
  none           no stdout/stderr at all (the floor; not a usable gateway)
  memfd-files    stdout/stderr_file on /proc/self/fd/N of two memfds
  shm-files      stdout/stderr_file on files in /dev/shm
  custom-write   stdout/stderr_custom with libc write() as the C callback (no Python)
  custom-python  stdout/stderr_custom with a Python callback (wasmtime-py's API)
  fd_write-python  WASI fd_write replaced by a wasmtime-py host function (the reference's lead)
  fd_write-ctypes  WASI fd_write replaced by a raw ctypes callback (what the gateway does:
                   gateway/wasi.py)
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import os
import statistics
import sys
import time
from ctypes import byref, c_void_p
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import native, wasi  # noqa: E402
from gateway.config import EngineSettings  # noqa: E402
from gateway.engine import Engine  # noqa: E402

ENV = {f"VARIABLE_{i}": "a value of some length" for i in range(30)}
ARGV = ["/env/path", "a=1", "b=2"]
BODY = b"name=value&other=thing"

libc = ctypes.CDLL(None)
WRITE = ctypes.cast(libc.write, c_void_p).value
set_stdout_custom = native._declare(native._quick, "wasi_config_set_stdout_custom", None,
                                    c_void_p, c_void_p, c_void_p, c_void_p)  # fmt: skip
set_stderr_custom = native._declare(native._quick, "wasi_config_set_stderr_custom", None,
                                    c_void_p, c_void_p, c_void_p, c_void_p)  # fmt: skip
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_ssize_t, c_void_p, ctypes.POINTER(ctypes.c_ubyte),
                            ctypes.c_size_t)  # fmt: skip


class Capture:
    """One way of wiring stdout and stderr; `attach` configures, `collect` reads back."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.out = os.memfd_create("out")
        self.err = os.memfd_create("err")
        self.chunks: list[bytes] = []
        self.python_callback = CALLBACK(self._python_write)

    def _python_write(self, _data, buffer, length):
        self.chunks.append(ctypes.string_at(buffer, length))
        return length

    def attach(self, config: int, context: int) -> None:
        if self.name == "memfd-files":
            native.wasi_config_set_stdout_file(config, f"/proc/self/fd/{self.out}".encode())
            native.wasi_config_set_stderr_file(config, f"/proc/self/fd/{self.err}".encode())
        elif self.name == "shm-files":
            native.wasi_config_set_stdout_file(config, f"/dev/shm/bench-{os.getpid()}-o".encode())
            native.wasi_config_set_stderr_file(config, f"/dev/shm/bench-{os.getpid()}-e".encode())
        elif self.name == "custom-write":
            os.lseek(self.out, 0, os.SEEK_SET)
            os.lseek(self.err, 0, os.SEEK_SET)
            set_stdout_custom(config, WRITE, self.out, None)
            set_stderr_custom(config, WRITE, self.err, None)
        elif self.name == "fd_write-python":
            self.chunks = []
        elif self.name == "fd_write-ctypes":
            self.output = wasi.capture(context, 1 << 30)
        elif self.name == "custom-python":
            self.chunks = []
            address = ctypes.cast(self.python_callback, c_void_p).value
            set_stdout_custom(config, address, None, None)
            set_stderr_custom(config, address, None, None)

    def collect(self) -> bytes:
        if self.name == "memfd-files":
            return os.pread(self.out, os.fstat(self.out).st_size, 0)
        if self.name == "shm-files":
            with open(f"/dev/shm/bench-{os.getpid()}-o", "rb") as file:
                return file.read()
        if self.name == "custom-write":
            return os.pread(self.out, os.lseek(self.out, 0, os.SEEK_CUR), 0)
        if self.name in ("custom-python", "fd_write-python"):
            return b"".join(self.chunks)
        if self.name == "fd_write-ctypes":
            return b"".join(self.output.stdout)
        return b""


def plain_linker(engine: Engine) -> wasmtime.Linker:
    """WASI as wasmtime provides it, output included."""
    linker = wasmtime.Linker(engine.wasmtime)
    linker.define_wasi()
    return linker


def shadow_linker(engine: Engine, capture: Capture) -> wasmtime.Linker:
    """A linker whose fd_write copies fd 1 and 2 in Python (the reference's "lead")."""
    linker = plain_linker(engine)
    linker.allow_shadowing = True
    i32 = wasmtime.ValType.i32()
    func_type = wasmtime.FuncType([i32, i32, i32, i32], [i32])

    def fd_write(caller, fd, iovs, count, written_at):
        memory = caller["memory"]
        base = ctypes.cast(memory.data_ptr(caller), c_void_p).value
        total = 0
        for index in range(count):
            iovec = memory.read(caller, iovs + 8 * index, iovs + 8 * index + 8)
            pointer, length = memoryview(iovec).cast("I")
            if fd == 1:
                capture.chunks.append(ctypes.string_at(base + pointer, length))
            total += length
        memory.write(caller, total.to_bytes(4, "little"), written_at)
        return 0

    linker.define_func("wasi_snapshot_preview1", "fd_write", func_type, fd_write,
                       access_caller=True)  # fmt: skip
    return linker


def run_variant(engine: Engine, module: wasmtime.Module, variant: str, runs: int) -> float:
    capture = Capture(variant)
    if variant == "fd_write-python":
        pre = shadow_linker(engine, capture).instantiate_pre(module)
    elif variant == "fd_write-ctypes":
        pre = engine.linker.instantiate_pre(module)  # the gateway's linker
    else:
        pre = plain_linker(engine).instantiate_pre(module)
    program_address = native.address(pre)
    durations: list[float] = []
    output = b""
    # Instances are made ahead in batches (the pooling allocator has a slot limit).
    for batch in range(0, runs, 500):
        handles = [_instance(engine, program_address) for _ in range(min(500, runs - batch))]
        for store, context, function in handles:
            started = time.perf_counter()
            output = _request(context, function, capture)
            wasi.release(context)
            native.wasmtime_store_delete(store)
            durations.append(time.perf_counter() - started)
    if variant != "none" and not output.startswith(b"Content-Type"):
        raise AssertionError(f"{variant}: unexpected output {output[:60]!r}")
    return statistics.median(durations)


def _instance(engine: Engine, program_address: int) -> tuple[int, int, native.Extern]:
    store = native.wasmtime_store_new(engine.address, None, None)
    context = native.wasmtime_store_context(store)
    native.wasmtime_context_set_epoch_deadline(context, 1 << 62)
    handle = native.InstanceHandle()
    trap = c_void_p()
    error = native.wasmtime_instance_pre_instantiate(program_address, context, byref(handle),
                                                     byref(trap))  # fmt: skip
    if error or trap.value:
        raise RuntimeError("cannot instantiate")
    function = native.Extern()
    native.wasmtime_instance_export_get(context, byref(handle), b"_start", 6, byref(function))
    return store, context, function


def _request(context: int, function: native.Extern, capture: Capture) -> bytes:
    """The per-request sequence: WASI context, attach, run, collect the output."""
    config = native.wasi_config_new()
    _keep, pointers = native.string_table([*ARGV, *ENV, *ENV.values()])
    address = ctypes.addressof(pointers)
    native.wasi_config_set_argv(config, len(ARGV), address)
    names = address + 8 * len(ARGV)
    native.wasi_config_set_env(config, len(ENV), names, names + 8 * len(ENV))
    stdin = native.stdin_vector(BODY)
    native.wasi_config_set_stdin_bytes(config, byref(stdin))
    capture.attach(config, context)
    native.wasmtime_context_set_wasi(context, config)
    trap, error = c_void_p(), c_void_p()
    future = native.wasmtime_func_call_async(context, byref(function.of.func), None, 0, None, 0,
                                             byref(trap), byref(error))  # fmt: skip
    while not native.wasmtime_call_future_poll(future):
        pass
    native.wasmtime_call_future_delete(future)
    return capture.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "modules",
        nargs="*",
        type=Path,
        default=[ROOT / "apps/hello/hello.wat", ROOT / "apps/env/env.wasm"],
    )
    parser.add_argument("--runs", type=int, default=3000)
    args = parser.parse_args()
    engine = Engine(None, EngineSettings())
    variants = ["none", "memfd-files", "shm-files", "custom-write", "custom-python",
                "fd_write-python", "fd_write-ctypes"]  # fmt: skip
    version = importlib.metadata.version("wasmtime")
    print(f"median microseconds per request, {args.runs} runs each, wasmtime-py {version}")
    print(f"{'variant':<16}" + "".join(f"{m.name:>14}" for m in args.modules))
    modules = [engine.load(path).module for path in args.modules]
    for variant in variants:
        row = [run_variant(engine, module, variant, args.runs) * 1e6 for module in modules]
        print(f"{variant:<16}" + "".join(f"{value:>14.1f}" for value in row))


if __name__ == "__main__":
    main()
