"""Two gateways behind nginx: one drains and restarts, the other loses a worker, then dies.

Under steady load through nginx, no request fails that could have been saved: a draining
gateway finishes what it has, and nginx retries on the other gateway whatever a dead
process never answered. The one loss no server can avoid is a response a process was in
the middle of writing when it was killed: nginx has passed its head on and cannot retry.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from conftest import (
    Server,
    answers,
    cgi_guest,
    env_section,
    free_port,
    sleeper,
    wait_until,
    workers_of,
)

# scripts/test installs Debian's nginx; without it this test fails rather than skips.
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CLIENTS = 8  # threads sending requests through the balancer at once

NGINX_CONF = """
daemon off;
master_process off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    upstream wagi {{
        server 127.0.0.1:{first} max_fails=0;
        server 127.0.0.1:{second} max_fails=0;
        keepalive 32;
        keepalive_timeout 4s;  # below the gateways' 5 s: nginx closes idle ones first
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://wagi;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_connect_timeout 2s;
        }}
    }}
}}
"""


class Failed(NamedTuple):
    """A request that failed, and when (monotonic seconds) and for which client."""

    at: float
    client: int
    what: str
    # The response stopped after its head: its writer died in the middle of it.
    cut_short: bool


class Load:
    """Clients sending GETs through the balancer until stopped, tallying every answer."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.answers: Counter[str] = Counter()
        self.failures: list[Failed] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self, number: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                for path, expected in (("/slow", "slept"), ("/hello", "hi\n")):
                    self._one(number, client, path, expected)

    def _one(self, number: int, client: httpx.Client, path: str, expected: str) -> None:
        failure = None
        try:
            response = client.get(path)
            if response.status_code != 200 or response.text != expected:
                what = f"{path}: {response.status_code} {response.text[:80]!r}"
                failure = Failed(time.monotonic(), number, what, False)
        except httpx.HTTPError as error:
            cut_short = "without sending complete message body" in str(error)
            what = f"{path}: {type(error).__name__}: {error}"
            failure = Failed(time.monotonic(), number, what, cut_short)
        with self._lock:
            if failure:
                self.failures.append(failure)
            else:
                self.answers[path] += 1

    def total(self) -> int:
        with self._lock:
            return sum(self.answers.values())

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A fast route and a slow one (50 ms asleep), so that requests are always in flight."""
    (tmp_path / "slow.wat").write_text(sleeper(0.05))
    (tmp_path / "hello.wat").write_text(cgi_guest(b"Content-Type: text/plain\n\nhi\n"))
    (tmp_path / "modules.toml").write_text(
        '[[module]]\nroute = "/slow"\nmodule = "slow.wat"\n\n'
        '[[module]]\nroute = "/hello"\nmodule = "hello.wat"\n'
    )
    return tmp_path / "modules.toml"


@pytest.fixture
def gateways(serve, tmp_path: Path):
    """Start a two-worker gateway trusting the local balancer's forwarded headers."""

    def start(manifest: Path, port: int | None = None) -> Server:
        trust = ["--forwarded-allow-ips", "127.0.0.1"]
        return serve("-c", str(manifest), "--workers", "2", *trust, cwd=tmp_path, port=port)

    return start


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator:
    """Start nginx on loopback, balancing over two gateway ports."""
    processes: list[subprocess.Popen] = []

    def start(first: int, second: int) -> str:
        assert Path(NGINX).exists(), "nginx is not installed (scripts/test installs it)"
        folder = tmp_path / "nginx"
        folder.mkdir()
        port = free_port()
        conf = folder / "nginx.conf"
        conf.write_text(NGINX_CONF.format(folder=folder, first=first, second=second, port=port))
        process = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(conf)])
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{url}/hello"), f"nginx did not start: {folder}/error.log")
        return url

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def served(server: Server) -> int:
    """How many requests a gateway's access log shows, over its workers."""
    log = server.log()
    return log.count(" GET /slow 200 ") + log.count(" GET /hello 200 ")


def test_no_request_fails_while_gateways_behind_nginx_stop_and_die(
    gateways, balancer, app, tmp_path
):
    first, second = gateways(app), gateways(app)
    url = balancer(first.port, second.port)
    load = Load(url, CLIENTS)
    kills: list[float] = []
    try:
        wait_until(lambda: served(first) > 20 and served(second) > 20, "load reaches both")

        # 1. The first gateway is stopped as an orchestrator would: SIGTERM, drain, exit 0.
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(timeout=30) == 0, first.log()
        assert "draining" in first.log()
        before = load.total()
        wait_until(lambda: load.total() > before + 50, "the second gateway takes the load")

        # ... and comes back on its port; the balancer sends it requests again.
        first = gateways(app, port=first.port)
        wait_until(lambda: served(first) > 20, "load returns to the restarted gateway")

        # 2. A worker of the second gateway dies hard; its sibling worker and the first
        #    gateway carry on, and the supervisor starts a new worker.
        victim, sibling = workers_of(second)
        kills.append(time.monotonic())
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: "starting a new one" in second.log(), "the worker is replaced")
        assert sibling in workers_of(second)
        wait_until(lambda: len(workers_of(second)) == 2, "the new worker is running")

        # 3. The whole second gateway dies hard: everything goes to the first.
        kills.append(time.monotonic())
        for pid in [*workers_of(second), second.process.pid]:
            os.kill(pid, signal.SIGKILL)
        second.process.wait(timeout=10)
        before = served(first)
        wait_until(lambda: served(first) > before + 50, "the first gateway takes the load")
    finally:
        load.stop()

    # Only a response cut short by a hard kill, as it happened, may be lost: at most one
    # per client and kill (the one it was receiving).
    lost = Counter()
    failed = []
    for failure in load.failures:
        kill = next((k for k in kills if 0 <= failure.at - k < 1), None)
        if failure.cut_short and kill is not None:
            lost[failure.client, kill] += 1
        else:
            failed.append(failure.what)
    nginx_log = (tmp_path / "nginx" / "error.log").read_text()
    assert failed == [], f"{len(failed)} failed: {failed[:5]}\nnginx's log:\n{nginx_log}"
    assert max(lost.values(), default=0) <= 1, lost
    assert load.answers["/slow"] > 100 and load.answers["/hello"] > 100


def test_the_guest_sees_the_client_request_not_the_balancer(gateways, balancer, example_apps):
    """nginx is trusted: SERVER_NAME and the full URL come from its X-Forwarded-* headers."""
    first, second = gateways(example_apps), gateways(example_apps)
    url = balancer(first.port, second.port)
    response = httpx.get(f"{url}/env/where?x=1", headers={"Host": "shop.example:8443"})
    assert response.status_code == 200
    env = env_section(response.text)
    assert env["SERVER_NAME"] == "shop.example"
    assert env["X_FULL_URL"] == "http://shop.example:8443/env/where?x=1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
