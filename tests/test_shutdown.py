"""Graceful shutdown and readiness: drain on SIGTERM, finish what is in flight, exit 0."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import SPIN, cgi_guest, scrape, sleeper, wait_for_log, wait_until, workers_of
from gateway.app import Gateway
from gateway.config import Settings
from gateway.engine import Engine
from gateway.executor import Executor
from gateway.server import Supervisor, hypercorn_config, worker_sockets


def app_folder(tmp_path: Path, seconds: float) -> Path:
    (tmp_path / "slow.wat").write_text(sleeper(seconds))
    (tmp_path / "hello.wat").write_text(cgi_guest(b"Content-Type: text/plain\n\nhi\n"))
    (tmp_path / "modules.toml").write_text(
        '[[module]]\nroute = "/slow"\nmodule = "slow.wat"\n\n'
        '[[module]]\nroute = "/hello"\nmodule = "hello.wat"\n'
    )
    return tmp_path / "modules.toml"


def start_requests(server, count: int) -> list[concurrent.futures.Future]:
    threads = concurrent.futures.ThreadPoolExecutor(count)
    return [threads.submit(httpx.get, f"{server.url}/slow", timeout=30) for _ in range(count)]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_lets_requests_in_flight_finish_then_exits_0(serve, tmp_path, workers):
    server = serve("-c", str(app_folder(tmp_path, 1.5)), "--workers", workers)
    in_flight = start_requests(server, 4)
    wait_until(lambda: scrape(server, "wagi_requests_in_flight") == 4, "4 requests in flight")
    server.process.send_signal(signal.SIGTERM)
    responses = [future.result() for future in in_flight]
    assert [r.status_code for r in responses] == [200] * 4
    assert [r.text for r in responses] == ["slept"] * 4
    assert server.process.wait(timeout=20) == 0
    assert "draining" in server.log()
    assert "Traceback" not in server.log()


def test_workers_stop_when_their_supervisor_is_killed(serve, tmp_path):
    server = serve("-c", str(app_folder(tmp_path, 0.1)), "--workers", "2")
    wait_for_log(server, "wagi: ready", count=2)
    workers = workers_of(server)
    assert len(workers) == 2
    server.process.kill()
    server.process.wait()
    wait_until(lambda: not any(_running(pid) for pid in workers), "orphans still running")


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent has yet to reap it


def test_a_stopping_gateway_refuses_new_connections_while_its_workers_drain(serve, tmp_path):
    server = serve("-c", str(app_folder(tmp_path, 5)), "--workers", "2")
    in_flight = start_requests(server, 1)
    wait_until(lambda: scrape(server, "wagi_requests_in_flight") == 1, "the request in flight")
    server.process.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    # At once, not queued until the drain ends (5 s) and then reset.
    wait_until(refused, "new connections are still taken", timeout=3)
    assert in_flight[0].result().text == "slept"  # the one in flight still finishes
    assert server.process.wait(timeout=20) == 0


def _no_worker(number: int, sockets: list) -> None:
    raise AssertionError("no worker starts once the supervisor is stopping")


def test_a_supervisor_stopped_while_it_starts_workers_starts_no_more():
    settings = Settings(manifest=Path("-"), listen="127.0.0.1:0")
    supervisor = Supervisor(_no_worker, worker_sockets(hypercorn_config(settings), 2))
    supervisor._stop(signal.SIGTERM, None)  # as SIGTERM would, between two starts
    supervisor._start(2)  # the next start of `Supervisor.run`, on a closed socket
    assert supervisor.workers == {}
    assert [sock.fileno() for sockets in supervisor.sockets for sock in sockets] == [-1, -1]


def test_the_grace_period_bounds_the_wait(serve, tmp_path):
    server = serve(
        "-c", str(app_folder(tmp_path, 30)), "--grace-period", "1", "--request-timeout", "60"
    )
    in_flight = start_requests(server, 1)
    wait_until(lambda: scrape(server, "wagi_requests_in_flight") == 1, "the request in flight")
    stopped = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0
    waited = time.monotonic() - stopped
    assert 0.9 <= waited < 8, waited  # the 1 s grace for the request in flight, not 30 s
    response = in_flight[0].result()
    assert response.status_code == 504  # it did not finish in time, and was told so
    assert response.text == "Gateway Timeout: the gateway stopped while the guest ran\n"
    log = server.log()
    assert "stopping 1 request in flight" in log
    request_id = response.headers["x-request-id"]
    # Logged as any failed request is: its component and route, its real duration.
    assert f"{request_id}: 504, component slow, route /slow: the gateway stopped while" in log
    sent = len(response.content)
    access = re.search(rf"{request_id} GET /slow 504 {sent}B slow ([\d.]+)ms", log)
    assert access and float(access[1]) >= 900, log
    assert "Traceback" not in log
    assert "panicked" not in log


# Prints its header block, then 320 chunks of 64 KiB (20 MiB) of the memory after it.
BIG = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 64) "Content-Type: text/plain\\n\\n")
  (func (export "_start") (local $n i32)
    (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 26))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 65536)) (i32.store (i32.const 4) (i32.const 65536))
    (local.set $n (i32.const 320))
    (loop $more
      (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br_if $more (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))))
"""


def test_an_answer_cut_short_by_the_grace_period_is_logged_as_what_was_sent(serve, tmp_path):
    (tmp_path / "big.wat").write_text(BIG)
    (tmp_path / "modules.toml").write_text('[[module]]\nroute = "/big"\nmodule = "big.wat"\n')
    server = serve("-c", str(tmp_path / "modules.toml"), "--grace-period", "1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # then reads no more
        wait_until(lambda: scrape(server, "wagi_requests_in_flight") == 1, "the answer sending")
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0
    log = server.log()
    assert "route /big: the gateway stopped while sending the answer" in log
    assert re.search(r"GET /big 200 0B big [\d.]+ms \(guest [1-9][\d.]*ms\)", log), log
    assert "503" not in log and "Traceback" not in log


def stop_with_a_closed_window(server, method: str, path: str, body: bytes, wait) -> str:
    """Send one HTTP/2 request from a client that opens no flow-control window, call
    `wait()`, stop the server with SIGTERM and read until it closes; its log."""
    import h2.config
    import h2.connection
    import h2.settings

    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    connection.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    request = [(":method", method), (":path", path), (":scheme", "http"),
               (":authority", f"127.0.0.1:{server.port}")]  # fmt: skip
    connection.send_headers(1, request, end_stream=not body)
    if body:
        connection.send_data(1, body, end_stream=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(connection.data_to_send())
        wait()
        server.process.send_signal(signal.SIGTERM)
        while data := sock.recv(65536):
            connection.receive_data(data)
            sock.sendall(connection.data_to_send())
    assert server.process.wait(timeout=20) == 0
    return server.log()


def test_an_http2_answer_that_flow_control_holds_does_not_outlast_the_backstop(serve, tmp_path):
    # The 504's body waited for a window the client never opened; hypercorn's backstop
    # then cancelled it mid-send and the process exited 1 with a traceback.
    (tmp_path / "spin.wat").write_text(SPIN)
    (tmp_path / "modules.toml").write_text('[[module]]\nroute = "/spin"\nmodule = "spin.wat"\n')
    server = serve("-c", str(tmp_path / "modules.toml"), "--grace-period", "1")

    def in_flight() -> None:
        wait_until(lambda: scrape(server, "wagi_requests_in_flight") == 1, "the request")

    log = stop_with_a_closed_window(server, "GET", "/spin", b"", in_flight)
    assert re.search(r"GET /spin 504 \d+B spin", log), log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("method", "path", "status", "component"),
    [("POST", "/hello", 413, "hello"), ("GET", "/nowhere", 404, "-")],
)
def test_a_refusal_cut_short_by_the_grace_period_is_logged_as_what_was_sent(
    serve, tmp_path, method, path, status, component
):
    server = serve("-c", str(app_folder(tmp_path, 1)), "--grace-period", "1",
                   "--max-body-size", "10")  # fmt: skip
    body = b"x" * 100 if method == "POST" else b""
    log = stop_with_a_closed_window(server, method, path, body, lambda: time.sleep(0.5))
    assert f": {status}" in log and "while sending the answer" in log, log
    assert re.search(rf"{method} {path} {status} 0B {re.escape(component)} ", log), log
    assert "503" not in log and "Traceback" not in log


def test_the_grace_period_ends_an_http2_body_that_is_still_arriving(serve, tmp_path):
    # hypercorn's own cancellation of such a request never finished: the process hung.
    import h2.config
    import h2.connection
    import h2.events

    server = serve("-c", str(app_folder(tmp_path, 0.1)), "--grace-period", "1")
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    request = [(":method", "POST"), (":path", "/hello"), (":scheme", "http"),
               (":authority", f"127.0.0.1:{server.port}")]  # fmt: skip
    connection.send_headers(1, request, end_stream=False)
    connection.send_data(1, b"abc")  # and the rest never comes
    statuses = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(connection.data_to_send())
        wait_until(lambda: scrape(server, "wagi_requests_in_flight") == 1, "the request")
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        while data := sock.recv(65536):
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses.append(dict(event.headers)[b":status"])
            sock.sendall(connection.data_to_send())
    assert statuses == [b"503"]
    assert server.process.wait(timeout=20) == 0
    assert time.monotonic() - stopped < 8
    assert "Traceback" not in server.log()


class _Asgi:
    """Calls an ASGI app in memory: lifespan, then plain GET requests."""

    def __init__(self, app: Gateway) -> None:
        self.app = app
        self.startup = asyncio.Queue()

    async def start(self) -> None:
        sent: asyncio.Queue = asyncio.Queue()
        await self.startup.put({"type": "lifespan.startup"})
        self.lifespan = asyncio.create_task(
            self.app({"type": "lifespan"}, self.startup.get, sent.put)
        )
        assert (await sent.get())["type"] == "lifespan.startup.complete"

    async def get(self, path: str) -> int:
        messages = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            messages.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [],
            "http_version": "1.1",
            "scheme": "http",
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 3000),
        }
        await self.app(scope, receive, send)
        return messages[0]["status"]


def test_readiness_follows_loading_and_draining(tmp_path):
    manifest = app_folder(tmp_path, 1)
    settings = Settings(manifest=manifest, cache_dir=tmp_path / "cache")
    engine = Engine(settings.cache_dir)
    release = threading.Event()

    def slow_load(previous):
        from gateway.loader import load_app
        from gateway.manifest import load_manifest

        release.wait(10)
        known = previous.modules() if previous is not None else None
        return load_app(load_manifest(manifest), settings, engine, known)

    gateway = Gateway(settings, Executor(engine, 2), slow_load)

    async def scenario() -> list[tuple[int, int, int]]:
        asgi = _Asgi(gateway)
        await asgi.start()
        seen = [
            (
                await asgi.get("/healthz"),
                await asgi.get("/.well-known/wagi/ready"),
                await asgi.get("/hello"),
            )
        ]
        release.set()
        deadline = time.monotonic() + 10
        while gateway.loaded is None:
            assert gateway.load_error is None, gateway.load_error
            if time.monotonic() > deadline:
                pytest.fail("the app did not finish loading within 10 s")
            await asyncio.sleep(0.01)
        seen.append(
            (
                await asgi.get("/healthz"),
                await asgi.get("/.well-known/wagi/ready"),
                await asgi.get("/hello"),
            )
        )
        gateway.draining = True  # what SIGTERM does first
        seen.append(
            (
                await asgi.get("/healthz"),
                await asgi.get("/.well-known/wagi/ready"),
                await asgi.get("/hello"),
            )
        )
        gateway.close()
        return seen

    assert asyncio.run(scenario()) == [
        (200, 503, 503),  # loading: alive, not ready, routes wait
        (200, 200, 200),  # ready
        (200, 503, 200),  # draining: not ready for new traffic, still serving
    ]
