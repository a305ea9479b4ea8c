"""Metrics at /.well-known/wagi/metrics and structured logs."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import re
import time
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import generate_latest

from conftest import SPIN, cgi_guest, metric, scrape, sleeper, wait_for_log, wait_until
from gateway.logs import MAX_STDERR_LINES, MAX_STDERR_LOGGED, ComponentLog, TextFormatter
from gateway.metrics import Metrics


def app(tmp_path):
    (tmp_path / "hi.wat").write_text(cgi_guest(b"Content-Type: text/plain\n\nhi\n", b"a note\n"))
    (tmp_path / "spin.wat").write_text(SPIN)
    (tmp_path / "modules.toml").write_text(
        '[[module]]\nroute = "/hi"\nmodule = "hi.wat"\npool_size = 2\n\n'
        '[[module]]\nroute = "/spin"\nmodule = "spin.wat"\nrequest_timeout = "200ms"\n'
    )
    return tmp_path / "modules.toml"


def test_metrics_count_requests_latency_guests_pools_cache_and_limits(serve, tmp_path):
    server = serve("-c", str(app(tmp_path)))
    for _ in range(5):
        assert httpx.get(f"{server.url}/hi", timeout=10).status_code == 200
    assert httpx.get(f"{server.url}/spin", timeout=10).status_code == 504
    assert httpx.post(f"{server.url}/hi", content=b"x" * (11 << 20), timeout=30).status_code == 413
    response = httpx.get(f"{server.url}/.well-known/wagi/metrics", timeout=10)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert metric(text, "wagi_requests_total", component="hi", route="/hi", status="200") == 5
    assert metric(text, "wagi_requests_total", component="spin", route="/spin", status="504") == 1
    assert metric(text, "wagi_requests_total", component="hi", route="/hi", status="413") == 1
    assert metric(text, "wagi_request_duration_seconds_count", component="hi", route="/hi") == 6
    assert metric(text, "wagi_guest_duration_seconds_count", component="hi") == 5
    assert metric(text, "wagi_guest_duration_seconds_sum", component="spin") >= 0.2
    assert metric(text, "wagi_limit_violations_total", component="spin", kind="timeout") == 1
    assert metric(text, "wagi_limit_violations_total", component="hi", kind="body") == 1
    takes = metric(text, "wagi_pool_takes_total", component="hi", result="hit") + metric(
        text, "wagi_pool_takes_total", component="hi", result="miss"
    )
    assert takes == 5
    assert metric(text, "wagi_pool_ready_instances", component="hi") == 2  # refilled
    assert metric(text, "wagi_module_loads_total", how="compiled") == 2
    assert metric(text, "wagi_app_version") == 1


def test_the_gateways_own_paths_leave_the_apps_alone(serve, tmp_path):
    """Only WAGI's and Spin's health checks come before an app's routes; the rest of the
    gateway's paths are under /.well-known/wagi/, so a catch-all app keeps /metrics."""
    (tmp_path / "all.wat").write_text(cgi_guest(b"Content-Type: text/plain\n\nthe app\n"))
    (tmp_path / "modules.toml").write_text('[[module]]\nroute = "/..."\nmodule = "all.wat"\n')
    server = serve("-c", str(tmp_path / "modules.toml"))
    for path in ("/metrics", "/readyz", "/livez", "/info"):
        assert httpx.get(f"{server.url}{path}", timeout=10).text == "the app\n"
    assert httpx.get(f"{server.url}/healthz", timeout=10).text == "OK\n"
    metrics = httpx.get(f"{server.url}/.well-known/wagi/metrics", timeout=10).text
    assert metric(metrics, "wagi_app_version") == 1


def test_a_route_the_gateway_answers_itself_is_served_with_a_warning(serve, tmp_path):
    (tmp_path / "hi.wat").write_text(cgi_guest(b"Content-Type: text/plain\n\nhi\n"))
    (tmp_path / "modules.toml").write_text(
        '[[module]]\nroute = "/hi"\nmodule = "hi.wat"\n\n'
        '[[module]]\nroute = "/healthz"\nmodule = "hi.wat"\n'
    )
    server = serve("-c", str(tmp_path / "modules.toml"))
    assert httpx.get(f"{server.url}/hi", timeout=10).text == "hi\n"
    log = wait_for_log(server, "is never reached")
    assert "route /healthz is never reached: the gateway answers /healthz itself" in log


def test_metrics_add_up_over_workers(serve, tmp_path):
    server = serve("-c", str(app(tmp_path)), "--workers", "2")
    wait_for_log(server, "wagi: ready", count=2)  # the readiness path answers at the first
    for _ in range(40):  # fresh connections, spread over both workers
        assert httpx.get(f"{server.url}/hi", timeout=10).status_code == 200
    assert len(set(re.findall(r"\[(worker \d)\] wagi\.access", server.log()))) == 2
    for _ in range(3):  # whichever worker answers, it reports both
        text = httpx.get(f"{server.url}/.well-known/wagi/metrics", timeout=10).text
        assert metric(text, "wagi_requests_total", component="hi", route="/hi", status="200") == 40
    assert metric(text, "wagi_module_loads_total", how="cached") == 4  # 2 modules x 2 workers


@pytest.mark.parametrize("workers", ["1", "2"])
def test_requests_in_flight_are_counted_over_workers(serve, tmp_path, workers):
    (tmp_path / "nap.wat").write_text(sleeper(2.0, b"rested"))
    (tmp_path / "modules.toml").write_text('[[module]]\nroute = "/nap"\nmodule = "nap.wat"\n')
    server = serve("-c", str(tmp_path / "modules.toml"), "--workers", workers)
    wait_for_log(server, "wagi: ready", count=int(workers))
    assert scrape(server, "wagi_requests_in_flight") == 0
    with concurrent.futures.ThreadPoolExecutor(3) as threads:
        naps = [threads.submit(httpx.get, f"{server.url}/nap", timeout=30) for _ in range(3)]
        wait_until(lambda: scrape(server, "wagi_requests_in_flight") == 3, "3 in flight")
        assert [nap.result().text for nap in naps] == ["rested"] * 3
    wait_until(lambda: scrape(server, "wagi_requests_in_flight") == 0, "none left in flight")


def test_json_logs_carry_the_access_fields_and_tag_guest_stderr(serve, tmp_path):
    server = serve("-c", str(app(tmp_path)), "--log-format", "json")
    response = httpx.get(f"{server.url}/hi", timeout=10)
    request_id = response.headers["x-request-id"]
    wait_for_log(server, '"logger": "wagi.access"')  # written after the stderr record
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    access = next(r for r in records if r["logger"] == "wagi.access")
    assert access["request_id"] == request_id
    assert (access["method"], access["path"], access["component"], access["route"]) == (
        "GET",
        "/hi",
        "hi",
        "/hi",
    )
    assert (access["status"], access["bytes"]) == (200, 3)
    assert access["duration_ms"] >= access["guest_ms"] > 0
    assert access["time"].endswith("Z")
    stderr = next(r for r in records if r["logger"] == "wagi.guest")
    assert (stderr["component"], stderr["request_id"], stderr["stderr"]) == (
        "hi",
        request_id,
        "a note",
    )
    failed = httpx.get(f"{server.url}/spin", timeout=10)
    wait_for_log(server, "ran longer than its limit")
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    failure = next(r for r in records if r.get("reason", "").startswith("timeout"))
    assert (failure["request_id"], failure["status"], failure["component"]) == (
        failed.headers["x-request-id"],
        504,
        "spin",
    )


def test_the_text_access_log_is_one_readable_line(serve, tmp_path):
    server = serve("-c", str(app(tmp_path)))
    request_id = httpx.get(f"{server.url}/hi", timeout=10).headers["x-request-id"]
    wait_for_log(server, f"{request_id} GET /hi")
    line = next(
        line for line in server.log().splitlines() if "wagi.access" in line and request_id in line
    )
    assert re.search(rf"{request_id} GET /hi 200 3B hi [\d.]+ms \(guest [\d.]+ms\)$", line)


def test_the_access_line_of_a_failed_guest_counts_the_bytes_of_the_answer(serve, tmp_path):
    server = serve("-c", str(app(tmp_path)))
    response = httpx.get(f"{server.url}/spin", timeout=10)
    assert response.status_code == 504
    request_id = response.headers["x-request-id"]
    line = wait_for_log(server, f"{request_id} GET /spin 504")
    assert f"{request_id} GET /spin 504 {len(response.content)}B spin " in line


@pytest.mark.parametrize("path, status", [("/nowhere", 404), ("/hi/%2e%2e/x", 400)])
def test_requests_the_gateway_turns_away_have_access_lines_too(serve, tmp_path, path, status):
    server = serve("-c", str(app(tmp_path)))
    response = httpx.get(f"{server.url}{path}", timeout=10)
    assert response.status_code == status
    request_id = response.headers["x-request-id"]
    wait_for_log(server, f"{request_id} GET")
    line = next(line for line in server.log().splitlines() if request_id in line)
    assert "wagi.access" in line
    sent = len(response.content)
    assert re.search(rf"{request_id} GET \S+ {status} {sent}B - [\d.]+ms \(guest 0.0ms\)$", line)


def test_the_text_format_gives_each_record_its_own_time_and_the_worker():
    formatter = TextFormatter("worker 2")
    lines = []
    for created in (3600.2, 3600.9, 3601.1, 3599.5):  # the time is formatted once a second
        record = logging.LogRecord("wagi.access", logging.INFO, "", 0, "a line", None, None)
        record.created = created
        lines.append(formatter.format(record))
    stamps = [time.strftime("%H:%M:%S", time.localtime(c)) for c in (3600, 3600, 3601, 3599)]
    assert lines == [f"{stamp} INFO    [worker 2] wagi.access: a line" for stamp in stamps]


class _Pool:
    def __init__(self, ready: int, hits: int, misses: int) -> None:
        self.ready, self.counts = ready, (hits, misses)

    def __len__(self) -> int:
        return self.ready

    def take_counts(self) -> tuple[int, int]:
        counts, self.counts = self.counts, (0, 0)
        return counts


def _version(**pools: _Pool) -> SimpleNamespace:
    components = {name: SimpleNamespace(id=name, pool=pool) for name, pool in pools.items()}
    return SimpleNamespace(components=components)


def test_a_reload_counts_the_old_pools_last_takes_and_drops_removed_components():
    metrics = Metrics()
    old = _version(kept=_Pool(2, hits=3, misses=1), removed=_Pool(1, hits=2, misses=0))
    metrics.sync_pools(old)
    old.components["kept"].pool.counts = (4, 0)  # taken after the last scrape
    new = _version(kept=_Pool(2, hits=1, misses=0))
    metrics.retired(old, new)
    metrics.sync_pools(new)
    text = metrics.render().decode()
    assert metric(text, "wagi_pool_takes_total", component="kept", result="hit") == 3 + 4 + 1
    assert metric(text, "wagi_pool_takes_total", component="removed", result="hit") == 2
    assert metric(text, "wagi_pool_ready_instances", component="kept") == 2
    assert 'wagi_pool_ready_instances{component="removed"}' not in text


def test_a_reload_with_workers_removes_no_label_with_a_warning(monkeypatch, recwarn):
    # prometheus-client cannot remove a label in multiprocess mode, and printed a raw
    # UserWarning to stderr (breaking --log-format json) for each worker
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent")
    metrics = Metrics()
    old = _version(kept=_Pool(2, hits=3, misses=1), removed=_Pool(1, hits=2, misses=0))
    metrics.retired(old, _version(kept=_Pool(2, hits=0, misses=0)))
    assert not recwarn.list
    text = generate_latest(metrics.registry).decode()  # this worker's own values
    assert metric(text, "wagi_pool_ready_instances", component="removed") == 0  # kept, at 0


def test_guest_stderr_is_logged_up_to_a_bound(tmp_path):
    component_log = ComponentLog(tmp_path, "noisy")
    long_line = b"x" * 1000 + b"\n"
    stderr = long_line * (MAX_STDERR_LOGGED // 1001 + 10)
    component_log.write("r1", stderr)  # past the bytes: whole lines within them
    many = b"line\n" * (MAX_STDERR_LINES + 500)
    component_log.write("r2", many)  # past the lines (each ~15 us on the event loop)
    component_log.write("r3", b"just this")
    component_log.close()
    lines = (tmp_path / "noisy.log").read_text().splitlines()
    first = MAX_STDERR_LOGGED // 1001
    assert [line.split(" ", 1)[1] for line in lines[first : first + 2]] == [
        f"r1 ... {len(stderr) - first * 1001} more bytes of stderr not logged",
        "r2 line",
    ]
    assert lines[first + MAX_STDERR_LINES + 1].endswith(
        " r2 ... 2500 more bytes of stderr not logged"
    )
    assert lines[first + MAX_STDERR_LINES + 2 :] == [lines[-1]] and lines[-1].endswith(
        " r3 just this"
    )


def test_stderr_lines_end_at_newlines_only(caplog):
    # split at \r as well, 200 of 300 progress lines were dropped without a word
    caplog.set_level(logging.INFO)
    ComponentLog(None, "noisy").write("r1", b"50%\r100%\r\n" * 150 + b"end\r\n")
    lines = [r.getMessage() for r in caplog.records if r.name == "wagi.guest"]
    assert lines[:100] == ["[noisy r1] 50%\r100%"] * 100
    assert lines[100:] == [f"[noisy r1] ... {50 * 10 + 5} more bytes of stderr not logged"]


def test_a_full_log_disk_does_not_fail_the_request(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    (tmp_path / "noisy.log").symlink_to("/dev/full")  # every write: ENOSPC
    component_log = ComponentLog(tmp_path, "noisy")
    component_log.write("r1", b"one\n")
    component_log.write("r2", b"two\n")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    where = tmp_path / "noisy.log"
    assert warnings == [
        f"cannot write {where}: No space left on device; stderr goes on to the gateway's log"
    ]
    assert [r.getMessage() for r in caplog.records if r.name == "wagi.guest"] == [
        "[noisy r1] one",
        "[noisy r2] two",
    ]
    component_log.close()
