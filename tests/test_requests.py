"""Hostile requests: oversize or slow bodies, huge heads, smuggled headers, escaping paths."""

from __future__ import annotations

import contextlib
import re
import socket
import time

import httpx
import pytest

from conftest import ROOT, Server, cgi_guest, spin_toml
from gateway.app import RequestHead


@pytest.fixture(scope="module")
def target(tmp_path_factory, c_guest, example_apps):
    """The env dumper at /env/..., a stderr-writing guest, and the file-probing guest."""
    folder = tmp_path_factory.mktemp("requests")
    (folder / "env.wasm").write_bytes((ROOT / "apps/env/env.wasm").read_bytes())
    (folder / "files.wasm").write_bytes(c_guest("files").read_bytes())
    (folder / "noisy.wat").write_text(cgi_guest(b"Content-Type: text/plain\n\nran\n", b"I ran\n"))
    (folder / "public").mkdir()
    (folder / "public" / "ok.txt").write_text("visible")
    (folder / "secret.txt").write_text("invisible")
    routes = {"/env/...": "env.wasm", "/noisy": "noisy.wat", "/files": "files.wasm"}
    (folder / "spin.toml").write_text(spin_toml(routes, 'files = ["public/*"]\n'))
    server = Server(
        [
            "-c",
            str(folder / "spin.toml"),
            "--cache-dir",
            str(folder / "cache"),
            "--max-body-size",
            "1K",
            "--client-timeout",
            "1",
            "--log-dir",
            str(folder / "logs"),
        ],
        folder,
        folder / "server.log",
    )
    server.wait_ready()
    server.folder = folder
    yield server
    server.stop()


def raw_request(server, data: bytes, then: bytes = b"", pause: float = 0.0) -> bytes:
    """Send bytes over a plain socket (optionally more after a pause); the raw answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(data)
        if pause:
            time.sleep(pause)
        if then:
            with contextlib.suppress(OSError):
                connection.sendall(then)
        chunks = []
        while True:
            try:
                chunk = connection.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_an_oversize_body_is_refused_before_the_guest_runs(target):
    response = httpx.post(f"{target.url}/noisy", content=b"x" * 2000, timeout=10)
    assert response.status_code == 413
    assert response.text == "Content Too Large: the body is larger than 1024 bytes\n"
    assert (target.folder / "logs" / "noisy.log").read_text() == ""  # the guest never ran


def test_an_oversize_chunked_body_is_refused_too(target):
    def chunks():
        for _ in range(20):
            yield b"y" * 100

    response = httpx.post(f"{target.url}/noisy", content=chunks(), timeout=10)
    assert response.status_code == 413


def test_a_body_within_the_limit_reaches_the_guest(target):
    response = httpx.post(f"{target.url}/env", content=b"z" * 1000, timeout=10)
    assert response.status_code == 200
    assert response.text.endswith("## stdin\n" + "z" * 1000)


def test_a_body_that_trickles_in_too_slowly_gets_408(target):
    head = b"POST /noisy HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 10
    started = time.monotonic()
    answer = raw_request(target, head, then=b"b" * 10, pause=0.5)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 5


def test_a_chunked_body_that_never_comes_gets_408(target):
    started = time.monotonic()
    head = b"POST /noisy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = raw_request(target, head)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started >= 0.9  # the 1 s client timeout


def test_an_http2_body_that_never_comes_gets_408(target):
    # HTTP/2 needs no Content-Length for a body, so the gateway must wait for one, timed.
    import h2.config
    import h2.connection
    import h2.events

    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    request = [(":method", "POST"), (":path", "/noisy"), (":scheme", "http"),
               (":authority", f"127.0.0.1:{target.port}")]  # fmt: skip
    connection.send_headers(1, request, end_stream=False)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", target.port), timeout=10) as sock:
        sock.sendall(connection.data_to_send())
        while data := sock.recv(65536):
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    assert dict(event.headers)[b":status"] == b"408"
                    assert time.monotonic() - started >= 0.9  # the 1 s client timeout
                    return
            sock.sendall(connection.data_to_send())
    raise AssertionError("the connection closed without an answer")


def test_an_oversize_head_gets_431(target):
    answer = raw_request(target, b"GET /env HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 +
                         b"\r\n\r\n")  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 431 ")
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert body == b"Request Header Fields Too Large: more than 16384 bytes\n"


def test_an_oversize_url_gets_431(target):
    answer = raw_request(target, b"GET /env/" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_credentials_and_the_proxy_header_never_reach_the_guest(target):
    response = httpx.get(f"{target.url}/env", timeout=10, headers={
        "Proxy": "http://evil.example:8080", "Authorization": "Basic c2VjcmV0",
        "Proxy-Authorization": "Basic c2VjcmV0", "X-Fine": "yes"})  # fmt: skip
    assert "HTTP_X_FINE=yes" in response.text
    for hidden in ("HTTP_PROXY", "HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION", "evil"):
        assert hidden not in response.text


def http2_statuses(server, method: bytes, path: bytes, body: bytes = b"") -> dict[int, bytes]:
    """Over one HTTP/2 connection: stream 1 as given (its body in two halves, the second
    after the answer), then stream 3, a plain GET /env. The status of each stream."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                       normalize_outbound_headers=False)  # fmt: skip
    connection = h2.connection.H2Connection(config)
    connection.initiate_connection()
    authority = f"127.0.0.1:{server.port}".encode()
    request = [(b":method", method), (b":path", path), (b":scheme", b"http"),
               (b":authority", authority)]  # fmt: skip
    connection.send_headers(1, request, end_stream=not body)
    if body:
        connection.send_data(1, body[: len(body) // 2])
    statuses: dict[int, bytes] = {}
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(connection.data_to_send())
        while 3 not in statuses:
            data = sock.recv(65536)
            assert data, f"the connection closed; answers so far: {statuses}"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses[event.stream_id] = dict(event.headers)[b":status"]
            if 1 in statuses and 3 not in connection.streams:
                if body:  # the rest of the body, after the answer: the client goes on
                    with contextlib.suppress(h2.exceptions.StreamClosedError):
                        connection.send_data(1, body[len(body) // 2 :], end_stream=True)
                get = [(b":method", b"GET"), (b":path", b"/env"), (b":scheme", b"http"),
                       (b":authority", authority)]  # fmt: skip
                connection.send_headers(3, get, end_stream=True)
            sock.sendall(connection.data_to_send())
    return statuses


@pytest.mark.parametrize("method, path", [
    (b"GET", b"/env/\xff"), (b"GET", b"/env/a b"), (b"G ET", b"/env"), (b"G\xffT", b"/env"),
    (b"GET", b"env"),
])  # fmt: skip
def test_a_malformed_http2_request_is_400_and_its_connection_goes_on(target, method, path):
    # hypercorn itself took such a request as it came; a byte outside ASCII ended the
    # whole connection with a traceback.
    assert http2_statuses(target, method, path) == {1: b"400", 3: b"200"}
    assert "refused a malformed HTTP/2 request (400)" in target.log()
    assert "Traceback" not in target.log()


def test_http2_body_sent_after_an_early_answer_does_not_end_the_connection(target):
    # The 413 comes before the whole body; the client sends the rest anyway.
    assert http2_statuses(target, b"POST", b"/noisy", b"x" * 4000) == {1: b"413", 3: b"200"}
    assert "Traceback" not in target.log()


@pytest.mark.parametrize("path", [
    b"/env/../files", b"/env/%2e%2e/files", b"/env/a/%2E%2e/b", b"/env/a%2f..%2fb",
    b"/env/a%2F..%2F..%2Fsecret", b"/env/%00", b"/env/%ff%fe", b"/env/x#fragment",
])  # fmt: skip
def test_dot_segments_encoded_slashes_and_bad_bytes_are_400(target, path):
    answer = raw_request(
        target, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


@pytest.mark.parametrize("host", [b"a b", b"a/b", b"[::1]:123456", b"x:y", b"x:99999"])
def test_a_host_header_that_is_no_host_is_400(target, host):
    answer = raw_request(
        target, b"GET /env HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"the Host header is not a host[:port]" in answer


def test_content_length_with_transfer_encoding_is_400_and_closes_the_connection(target):
    # RFC 9112 6.3: a likely smuggling attempt. The pipelined GET must not be served.
    smuggled = b"GET /env/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    head = (b"POST /noisy HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")  # fmt: skip
    started = time.monotonic()
    answer = raw_request(target, head + smuggled)
    assert time.monotonic() - started < 5  # closed by the gateway, not by the timeout
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"both Content-Length and Transfer-Encoding" in answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert b"connection: close" in answer.lower()
    assert (target.folder / "logs" / "noisy.log").read_text() == ""  # the guest never ran


def test_a_websocket_upgrade_is_501_with_a_reason(target):
    answer = raw_request(target, b"GET /env HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                         b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 501 "), answer[:200]
    assert b"WebSocket is not supported" in answer
    assert b"x-request-id: " in answer
    assert "refused a WebSocket upgrade of /env (501)" in target.log()


def test_an_absolute_form_target_is_served_with_its_authority_as_host(target):
    answer = raw_request(target, b"GET http://shop.example:8080/env/x?a=1 HTTP/1.1\r\n"
                         b"Host: other\r\nConnection: close\r\n\r\n")  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    for variable in (b"PATH_INFO=/x", b"QUERY_STRING=a=1", b"HTTP_HOST=shop.example:8080",
                     b"SERVER_NAME=shop.example", b"SERVER_PORT=8080"):  # fmt: skip
        assert variable + b"\n" in answer


def test_an_encoded_slash_stays_inside_its_segment(target):
    response = httpx.get(f"{target.url}/env/a%2Fb", timeout=10)
    assert "PATH_INFO=/a/b\n" in response.text
    assert "X_RAW_PATH_INFO=/a%2Fb\n" in response.text


@pytest.mark.parametrize("path", [
    "/secret.txt", "/public/../secret.txt", "/public/../../secret.txt", "/etc/passwd",
    "../secret.txt",
])  # fmt: skip
def test_a_guest_cannot_read_outside_its_mounts(target, path):
    response = httpx.get(f"{target.url}/files?read={path}", timeout=10)
    # The guest ran normally and reported that the file was not there for it.
    assert response.status_code == 200
    assert response.text.startswith(f"error: read {path}: "), response.text
    assert response.text.count("\n") == 1, response.text  # the error line, no contents


@pytest.mark.parametrize("folder", ["/", "/public/.."])
def test_a_guest_sees_only_its_mounts(target, folder):
    response = httpx.get(f"{target.url}/files?list={folder}", timeout=10)
    assert (response.status_code, response.text) == (200, "public\n")


def test_inside_its_mounts_the_guest_reads_normally(target):
    assert httpx.get(f"{target.url}/files?read=/public/ok.txt", timeout=10).text == "visible"


def test_every_answer_carries_the_request_id(target):
    for path in ("/env", "/nowhere", "/files?read=/x"):
        response = httpx.get(f"{target.url}{path}", timeout=10)
        assert re.fullmatch("[0-9a-f]{16}", response.headers["x-request-id"])
    given = httpx.get(f"{target.url}/nowhere", headers={"X-Request-Id": "lb-1234"}, timeout=10)
    assert given.headers["x-request-id"] == "lb-1234"
    forged = httpx.get(f"{target.url}/nowhere", headers={"X-Request-Id": "bad id\x7f"}, timeout=10)
    assert re.fullmatch("[0-9a-f]{16}", forged.headers["x-request-id"])  # a fresh one instead


@pytest.mark.parametrize(
    ("version", "headers", "length", "may_have_body"),
    [
        ("1.1", [], 0, False),
        ("1.1", [(b"content-length", b"0")], 0, False),
        ("1.1", [(b"content-length", b"12")], 12, True),
        ("1.1", [(b"transfer-encoding", b"chunked")], 0, True),
        ("1.0", [], 0, False),
        ("2", [], 0, True),  # HTTP/2 and 3 may send a body without declaring its length
        ("3", [(b"content-length", b"0")], 0, True),
    ],
)
def test_the_head_says_whether_a_body_may_follow(version, headers, length, may_have_body):
    scope = {"http_version": version, "raw_path": b"/a", "query_string": b"", "headers": headers}
    head = RequestHead.read(scope)
    assert (head.body_length, head.may_have_body) == (length, may_have_body)


def test_the_head_keeps_a_sane_request_id_and_counts_its_size():
    headers = [(b"host", b"x"), (b"x-request-id", b"lb-42.a:b")]
    scope = {"raw_path": b"/path", "query_string": b"q=1", "headers": headers}
    head = RequestHead.read(scope)
    assert head.request_id == "lb-42.a:b"
    assert head.size == len("/path") + len("q=1") + (4 + 1 + 4) + (12 + 9 + 4)
    insane = RequestHead.read({**scope, "headers": [(b"x-request-id", b"a b\r\n")]})
    assert re.fullmatch("[0-9a-f]{16}", insane.request_id)
