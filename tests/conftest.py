"""Shared fixtures: the example apps (built once, cached), a real `wagi serve`, WAT guests."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.build import build_component, is_up_to_date
from gateway.engine import Engine, Program
from gateway.manifest import load_manifest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "spin.toml.example"
WAGI = Path(sys.executable).parent / "wagi"


@pytest.fixture(scope="session")
def example_apps() -> Path:
    """Build the example apps unless their modules are newer than their sources."""
    manifest = load_manifest(EXAMPLE, check_sources=False)
    for component in manifest.components.values():
        if component.build is not None and not is_up_to_date(component):
            build_component(component, echo=lambda line: None)
    return EXAMPLE


GUESTS = ROOT / "tests" / "guests"


@pytest.fixture(scope="session")
def c_guest() -> Callable[[str], Path]:
    """Compile `tests/guests/<name>.c` to wasm once; later runs reuse the build."""

    def build(name: str) -> Path:
        source = GUESTS / f"{name}.c"
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
        output = GUESTS / "build" / f"{name}-{digest}.wasm"
        if not output.exists():
            output.parent.mkdir(exist_ok=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ziglang",
                    "cc",
                    "-target",
                    "wasm32-wasi",
                    "-O2",
                    "-s",
                    str(source),
                    "-o",
                    str(output),
                ],
                check=True,
            )
        return output

    return build


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A `wagi serve` subprocess on a free port, with its log captured."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        verify: ssl.SSLContext | None = None,
        port: int | None = None,
    ) -> None:
        self.port = free_port() if port is None else port
        self.verify = verify
        self.url = f"{'https' if verify else 'http'}://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(WAGI), "serve", "--listen", f"127.0.0.1:{self.port}", *args],
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"wagi serve exited {self.process.returncode}:\n{self.log()}")
            try:
                response = httpx.get(
                    f"{self.url}/.well-known/wagi/ready", timeout=1, verify=self.verify or True
                )
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"wagi serve did not become ready:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """Start `wagi serve ARGS...` and wait until it answers; stopped after the test."""
    servers: list[Server] = []

    def start(
        *args: str,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
        cache_dir: Path | None = None,
        verify: ssl.SSLContext | None = None,
        port: int | None = None,
    ) -> Server:
        cache = cache_dir or tmp_path / "cache"
        log_path = tmp_path / f"server-{len(servers)}.log"
        server = Server([*args, "--cache-dir", str(cache)], cwd, log_path, env, verify, port)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


def get(server: Server, path: str, **kwargs) -> httpx.Response:
    """GET `path` from a running server, on a fresh connection."""
    return httpx.get(server.url + path, timeout=10, **kwargs)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus' text format (0 if absent)."""
    selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        sample_name, _, sample_labels = sample.partition("{")
        found = ",".join(sorted(sample_labels.rstrip("}").split(","))) if sample_labels else ""
        if sample_name == name and found == selector:
            return float(value)
    return 0.0


def scrape(server: Server, name: str, **labels: str) -> float:
    """The value of one of a running server's metrics, from its /.well-known/wagi/metrics."""
    return metric(
        httpx.get(f"{server.url}/.well-known/wagi/metrics", timeout=10).text, name, **labels
    )


def answers(url: str) -> bool:
    """Whether `url` answers 200 now."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def workers_of(server: Server) -> list[int]:
    """Process ids of a gateway's worker processes (its spawned children)."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    pids = [int(pid) for pid in children.read_text().split()]
    return [pid for pid in pids if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def wait_until(condition: Callable[[], object], message: str, timeout: float = 30) -> None:
    """Poll `condition` until it holds; fail the test with `message` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout} s: {message}")
        time.sleep(0.05)


def wait_for_log(server: Server, text: str, count: int = 1, timeout: float = 20) -> str:
    """Wait until `text` appears `count` times in the server's log; the log."""
    deadline = time.monotonic() + timeout
    while (log := server.log()).count(text) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout} s, {text!r} x{count} not in the log:\n{log}")
        time.sleep(0.05)
    return log


def env_section(text: str) -> dict[str, str]:
    """The `## env` part of what the env app (apps/env) prints, as a dict."""
    block = text.split("## env\n", 1)[1].split("## stdin\n", 1)[0]
    return dict(line.split("=", 1) for line in block.splitlines())


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A wasm engine with its compiled cache in the test's temporary folder."""
    engine = Engine(tmp_path / "cache")
    yield engine
    engine.close()


def link_wat(engine: Engine, tmp_path: Path, wat: str, name: str = "guest") -> Program:
    """Write `wat` to NAME.wat in the test's folder, load and link it."""
    path = tmp_path / f"{name}.wat"
    path.write_text(wat)
    return engine.link(engine.load(path), name)


def run_wagi(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a `wagi` command to completion, capturing its output."""
    return subprocess.run(
        [str(WAGI), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def wat_string(data: bytes) -> str:
    """Bytes as a WAT string literal."""
    return "".join(f"\\{byte:02x}" for byte in data)


def cgi_guest(
    stdout: bytes = b"", stderr: bytes = b"", exit_code: int | None = None, trap: bool = False
) -> str:
    """A WAT command module that writes `stdout` and `stderr`, then exits, traps or returns."""
    exit_import = '(import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))'
    ending = ""
    if exit_code is not None:
        ending = f"(call $proc_exit (i32.const {exit_code}))"
    elif trap:
        ending = "unreachable"
    out_at = 1024
    err_at = out_at + len(stdout)
    return f"""
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  {exit_import}
  (memory (export "memory") {1 + (len(stdout) + len(stderr) + 1024) // 65536})
  (data (i32.const {out_at}) "{wat_string(stdout)}")
  (data (i32.const {err_at}) "{wat_string(stderr)}")
  (func $write (param $fd i32) (param $at i32) (param $length i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $length))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $write (i32.const 1) (i32.const {out_at}) (i32.const {len(stdout)}))
    (call $write (i32.const 2) (i32.const {err_at}) (i32.const {len(stderr)}))
    {ending}))
"""


# A guest that runs until it is stopped: pure wasm, no WASI calls.
SPIN = '(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))'


# The imports of a guest that sleeps and writes, and its memory (the start of a module).
POLL_AND_WRITE = """
      (import "wasi_snapshot_preview1" "poll_oneoff"
        (func $poll (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write"
        (func $write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)"""


def sleeper(seconds: float, says: bytes = b"slept") -> str:
    """A guest that sleeps in WASI, then answers."""
    answer = b"Content-Type: text/plain\n\n" + says
    return f"""
    (module {POLL_AND_WRITE}
      (data (i32.const 300) "{wat_string(answer)}")
      (func (export "_start")
        (i64.store (i32.const 24) (i64.const {int(seconds * 1e9)}))
        (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 200)))
        (i32.store (i32.const 400) (i32.const 300))
        (i32.store (i32.const 404) (i32.const {len(answer)}))
        (drop (call $write (i32.const 1) (i32.const 400) (i32.const 1) (i32.const 408)))))
    """


def spin_toml(routes: dict[str, str], extra: str = "") -> str:
    """spin.toml text with a component per route: route -> NAME runs `NAME.wat`, and
    route -> FILE (with a suffix, e.g. `env.wasm`) runs FILE as component `env`.

    `extra` is appended: new tables, or keys that continue the last component's table.
    """
    sources = {Path(value).stem: value if "." in value else f"{value}.wat"
               for value in routes.values()}  # fmt: skip
    text = 'spin_manifest_version = 2\n[application]\nname = "app"\n'
    for route, value in routes.items():
        text += (
            f'[[trigger.http]]\nroute = "{route}"\ncomponent = "{Path(value).stem}"\n'
            'executor = { type = "wagi" }\n'
        )
    for name, source in sources.items():
        text += f'[component.{name}]\nsource = "{source}"\n'
    return text + extra


def routes_guest(printed: bytes, trap: bool = False) -> str:
    """A module whose `_routes` prints `printed` (or traps)."""
    body = (
        "unreachable"
        if trap
        else (
            f"(i32.store (i32.const 0) (i32.const 100)) (i32.store (i32.const 4) "
            f"(i32.const {len(printed)})) (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) "
            "(i32.const 8)))"
        )
    )
    return f"""
    (module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 100) "{wat_string(printed)}")
      (func (export "_routes") {body})
      (func (export "_start"))
      (func (export "a"))
      (func (export "b")))
    """
