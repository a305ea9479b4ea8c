"""Outbound HTTP (`wasi_experimental_http`): to allowed hosts only, within the deadline."""

from __future__ import annotations

import http.server
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from conftest import get, wait_for_log
from gateway import outbound, testing


class Upstream(http.server.BaseHTTPRequestHandler):
    """Echoes what it got: the method, the path, the Host, the body; x-test as X-Echo."""

    trickles: queue.SimpleQueue = queue.SimpleQueue()  # how each /trickle ended, and when

    def _answer(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/trickle":  # a byte at a time, each well within a socket timeout
            self.send_response(200)
            self.send_header("Content-Length", "40")
            self.end_headers()
            started = time.monotonic()
            try:
                for _ in range(40):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    threading.Event().wait(0.3)
            except OSError:
                self.trickles.put(("cut", time.monotonic() - started))
                return
            self.trickles.put(("done", time.monotonic() - started))
            return
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(600 << 10))
            self.end_headers()
            self.wfile.write(b"b" * (600 << 10))
            return
        if self.path == "/slow":
            threading.Event().wait(5)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        text = f"{self.command} {self.path} {self.headers['Host']} {body.decode()}".encode()
        self.send_response(200)
        self.send_header("X-Echo", self.headers.get("x-test", "none"))
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def app(tmp_path: Path, c_guest, allowed: str, extra: str = "") -> Path:
    (tmp_path / "fetch.wasm").write_bytes(c_guest("fetch").read_bytes())
    (tmp_path / "modules.toml").write_text(
        f'[[module]]\nroute = "/fetch"\nmodule = "fetch.wasm"\nallowed_hosts = [{allowed}]\n{extra}'
    )
    return tmp_path / "modules.toml"


def test_a_guest_fetches_from_an_allowed_host(serve, tmp_path, c_guest, upstream):
    server = serve("-c", str(app(tmp_path, c_guest, f'"http://127.0.0.1:{upstream}"')))
    lines = get(server, f"/fetch?http://127.0.0.1:{upstream}/hello?q=1").text.splitlines()
    assert lines == [
        "status 200",
        "x-echo 0 yes",
        "small buffer 4",  # BUFFER_TOO_SMALL
        "missing 5",  # HEADER_NOT_FOUND
        "all headers 0 has x-echo",
        f"body GET /hello?q=1 127.0.0.1:{upstream} ",  # the Host it was allowed for
        "close 0 1",  # then INVALID_HANDLE
    ]
    posted = httpx.post(
        f"{server.url}/fetch?http://127.0.0.1:{upstream}/p", content=b"a body", timeout=10
    )
    assert f"body POST /p 127.0.0.1:{upstream} a body" in posted.text


def test_https_upstreams_are_verified_and_served(serve, tmp_path, c_guest):
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost")
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    certificate.configure_cert(server_side)
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    upstream.socket = server_side.wrap_socket(upstream.socket, server_side=True)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = upstream.server_address[1]
    authorities = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(authorities))
    try:
        manifest = app(tmp_path, c_guest, f'"https://localhost:{port}"')
        trusted = serve("-c", str(manifest), env={"SSL_CERT_FILE": str(authorities)})
        lines = get(trusted, f"/fetch?https://localhost:{port}/tls").text.splitlines()
        assert lines[0] == "status 200" and lines[5] == f"body GET /tls localhost:{port} "
        untrusted = serve("-c", str(manifest))  # the system's authorities only
        assert get(untrusted, f"/fetch?https://localhost:{port}/tls").text == "error 11\n"
    finally:
        upstream.shutdown()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{other}/",  # another port
        "https://127.0.0.1:{port}/",  # another scheme
        "http://localhost:{port}/",  # another name for the same host
    ],
)
def test_a_destination_not_allowed_is_refused(serve, tmp_path, c_guest, upstream, url):
    server = serve("-c", str(app(tmp_path, c_guest, f'"http://127.0.0.1:{upstream}"')))
    target = url.format(port=upstream, other=upstream + 1)
    assert get(server, f"/fetch?{target}").text == "error 7\n"  # DESTINATION_NOT_ALLOWED
    assert f"outbound request to {target} refused" in wait_for_log(server, "refused")


def test_no_host_is_allowed_by_default(serve, tmp_path, c_guest, upstream):
    server = serve("-c", str(app(tmp_path, c_guest, "")))
    wait_for_log(server, "makes outbound HTTP requests, but no host is allowed")
    assert get(server, f"/fetch?http://127.0.0.1:{upstream}/").text == "error 7\n"


@pytest.mark.parametrize(("most", "second"), [("1", "second 13 0"), ("2", "second 0 200")])
def test_http_max_concurrency_bounds_the_open_responses(
    serve, tmp_path, c_guest, upstream, most, second
):
    extra = f'http_max_concurrency = {most}\nenvironment = {{ TWICE = "1" }}\n'
    server = serve("-c", str(app(tmp_path, c_guest, f'"http://127.0.0.1:{upstream}"', extra)))
    lines = get(server, f"/fetch?http://127.0.0.1:{upstream}/").text.splitlines()
    assert lines[:2] == ["status 200", second]  # 13: TOO_MANY_SESSIONS


def test_the_open_responses_share_the_output_limit(serve, tmp_path, c_guest, upstream):
    extra = 'max_output_size = "1M"\nenvironment = { TWICE = "1" }\n'
    server = serve("-c", str(app(tmp_path, c_guest, f'"http://127.0.0.1:{upstream}"', extra)))
    lines = get(server, f"/fetch?http://127.0.0.1:{upstream}/big").text.splitlines()
    assert lines[:2] == ["status 200", "second 11 0"]  # 2 x 600 KiB: REQUEST_ERROR
    wait_for_log(server, "with the responses it holds open, over the output limit")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1/caf\u00e9", None),  # not ASCII: a guest percent-encodes it
        ("http://[::1%25eth0]/", None),  # an IPv6 zone
        ("http://user@127.0.0.1/", None),
        ("HTTP://Example.COM:8080/a?b", ("http", "example.com", 8080, "/a?b")),
        ("https://example.com", ("https", "example.com", 443, "/")),
    ],
)
def test_request_urls_are_checked_before_the_allowlist(url, expected):
    assert outbound._target(url) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nB:2\n\n", [("a", "1"), ("B", "2")]),
        ("Host: elsewhere\nContent-Length: 9\nx: y", [("x", "y")]),  # the gateway's own
        ("X-V: \u20ac", None),  # not Latin-1
        ("X\n: v", None),
        ("bad name: v", None),
    ],
)
def test_request_headers_are_checked(text, expected):
    assert outbound._request_headers(text) == expected


def test_a_method_is_one_token():
    assert outbound._TOKEN.fullmatch("GET") and not outbound._TOKEN.fullmatch("GET\n")


def test_redirects_are_not_followed(serve, tmp_path, c_guest, upstream):
    server = serve("-c", str(app(tmp_path, c_guest, f'"http://127.0.0.1:{upstream}"')))
    text = get(server, f"/fetch?http://127.0.0.1:{upstream}/redirect").text
    assert text.startswith("status 302\n")


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/", "http:///nohost"])
def test_a_bad_url_is_refused(serve, tmp_path, c_guest, upstream, url):
    server = serve("-c", str(app(tmp_path, c_guest, '"insecure:allow-all"')))
    assert get(server, f"/fetch?{url}").text == "error 10\n"  # INVALID_URL


def test_a_request_ends_at_the_guests_deadline(serve, tmp_path, c_guest, upstream):
    manifest = app(tmp_path, c_guest, f'"http://127.0.0.1:{upstream}"', 'request_timeout = "1s"\n')
    server = serve("-c", str(manifest))
    response = get(server, f"/fetch?http://127.0.0.1:{upstream}/slow")
    assert response.status_code == 504
    assert response.elapsed.total_seconds() < 4


def test_an_upstream_that_trickles_its_answer_is_cut_off_at_the_deadline(
    serve, tmp_path, c_guest, upstream
):
    manifest = app(tmp_path, c_guest, f'"http://127.0.0.1:{upstream}"', 'request_timeout = "1s"\n')
    server = serve("-c", str(manifest))
    response = get(server, f"/fetch?http://127.0.0.1:{upstream}/trickle")
    assert response.status_code == 504
    # The guest's thread let go of the upstream at the deadline, not after the 12 s the
    # trickle takes (the client got its 504 at the deadline either way).
    ended, after = Upstream.trickles.get(timeout=20)
    assert ended == "cut" and after < 4, (ended, after)


def test_a_slow_name_lookup_ends_at_the_guests_deadline(tmp_path, c_guest, monkeypatch):
    lookup = socket.getaddrinfo

    def slow_lookup(host, *args, **kwargs):
        if host == "slow.example":
            time.sleep(5)
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
    manifest = app(tmp_path, c_guest, '"http://slow.example"', 'request_timeout = "1s"\n')
    with testing.wagi_client(manifest, cache_dir=tmp_path / "cache") as client:
        asked = time.monotonic()
        assert client.get("/fetch?http://slow.example/").status_code == 504
        assert time.monotonic() - asked < 4  # at the 1 s deadline, not after the lookup
        # The guest stopped at its deadline (its thread no longer needs ticks), though
        # the lookup itself goes on for seconds more.
        started = time.monotonic()
        while client.gateway.executor.ticker.ticking and time.monotonic() - started < 10:
            time.sleep(0.05)
        assert time.monotonic() - started < 2


def test_an_unreachable_host_is_a_request_error(serve, tmp_path, c_guest):
    server = serve("-c", str(app(tmp_path, c_guest, '"http://127.0.0.1:9"')))
    assert get(server, "/fetch?http://127.0.0.1:9/").text == "error 11\n"  # REQUEST_ERROR


def test_the_test_kit_runs_a_module_with_an_allowlist(tmp_path, c_guest, upstream):
    fetch, url = c_guest("fetch"), f"http://127.0.0.1:{upstream}/kit"
    env = {"QUERY_STRING": url, "REQUEST_METHOD": "GET"}
    allowed = testing.run_module(fetch, env=env, allowed_outbound_hosts=[url.rsplit("/", 1)[0]])
    assert f"body GET /kit 127.0.0.1:{upstream} " in allowed.response.text
    refused = testing.run_module(fetch, env=env)  # no host is allowed by default
    assert refused.response.text == "error 7\n"
    with pytest.raises(ValueError, match="is not a URL like"):
        testing.run_module(fetch, allowed_outbound_hosts=["ftp://127.0.0.1"])
