"""CGI: the request's argv and environment, and the response parser, from the reference."""

from __future__ import annotations

import pytest

from gateway import cgi
from gateway.manifest import DEFAULT_ARGV
from gateway.routing import Match

ROUTE = cgi.RouteConstants.of("/env/...")
MATCH = Match(None, script_name="/env", path_info="/foo bar", raw_path_info="/foo%20bar")


def environment(request, configured=None, route=ROUTE, match=MATCH):
    return cgi.environment(request, route, match, configured or {})


def request(**changes) -> cgi.Request:
    values = dict(
        method="POST",
        raw_path="/env/foo%20bar",
        query="greet=matt&x=1",
        headers=[(b"host", b"example.com:8080"), (b"content-type", b"text/plain")],
        body_length=5,
        client=("10.0.0.7", 51234),
        server=("127.0.0.1", 3000),
    )
    values.update(changes)
    return cgi.Request(**values)


# ---------------------------------------------------------------------------- argv

ARGV = [
    (DEFAULT_ARGV, "/env/foo", "greet=matt&x=1", ["/env/foo", "greet=matt", "x=1"]),
    (DEFAULT_ARGV, "/env/foo", "", ["/env/foo"]),  # fix: no empty extra argument
    ("${SCRIPT_NAME}", "/a", "q=1", ["/a"]),
    ("tool --path=${SCRIPT_NAME} ${ARGS}", "/a", "b&c", ["tool", "--path=/a", "b", "c"]),
    ("x ${ARGS} y", "/a", "", ["x", "y"]),
    ("q=${ARGS}", "/a", "b&c", ["q=b&c"]),
    ("--path=${SCRIPT_NAME}", "/a${ARGS}", "b", ["--path=/a${ARGS}"]),  # the path's own text
]


@pytest.mark.parametrize(("template", "path", "query", "expected"), ARGV)
def test_argv_template(template, path, query, expected):
    assert cgi.argv(template, request(raw_path=path, query=query)) == expected


# ---------------------------------------------------------------------------- environment


def test_every_cgi_variable_of_the_reference():
    env = environment(request())
    assert env == {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "WAGI/1",
        "REQUEST_METHOD": "POST",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SCRIPT_NAME": "/env",
        "PATH_INFO": "/foo bar",
        "X_RAW_PATH_INFO": "/foo%20bar",
        "PATH_TRANSLATED": "/foo bar",
        "QUERY_STRING": "greet=matt&x=1",
        "CONTENT_LENGTH": "5",
        "CONTENT_TYPE": "text/plain",  # fix: both peers send ""
        "REMOTE_ADDR": "10.0.0.7",
        "REMOTE_HOST": "10.0.0.7",
        "X_CLIENT_ADDR": "10.0.0.7:51234",
        "AUTH_TYPE": "",
        "REMOTE_USER": "",
        "SERVER_NAME": "example.com",
        "SERVER_PORT": "8080",
        "X_MATCHED_ROUTE": "/env/...",
        "X_FULL_URL": "http://example.com:8080/env/foo%20bar?greet=matt&x=1",
        "X_COMPONENT_ROUTE": "/env",
        "X_RAW_COMPONENT_ROUTE": "/env/...",
        "X_BASE_PATH": "/",
        "HTTP_HOST": "example.com:8080",
        "HTTP_CONTENT_TYPE": "text/plain",
    }


def test_no_body_means_content_length_zero_and_no_content_type():
    env = environment(request(method="GET", body_length=0, headers=[]))
    assert (env["CONTENT_LENGTH"], env["CONTENT_TYPE"]) == ("0", "")


@pytest.mark.parametrize(
    ("host", "scheme", "name", "port", "url"),
    [
        (b"example.com", "http", "example.com", "80", "http://example.com:80/env/foo%20bar"),
        (b"example.com", "https", "example.com", "443", "https://example.com:443/env/foo%20bar"),
        (b"[::1]:9000", "http", "[::1]", "9000", "http://[::1]:9000/env/foo%20bar"),
        (b"a:" + b"9" * 5000, "http", "a", "80", "http://a:80/env/foo%20bar"),  # no port
        (b"a:\xc2\xb2", "http", "a", "80", "http://a:80/env/foo%20bar"),  # `2` superscript
        (
            None,
            "http",
            "127.0.0.1",
            "3000",
            "http://127.0.0.1:3000/env/foo%20bar",
        ),  # listen address
    ],
)
def test_server_name_and_port_come_from_host_else_the_listen_address(host, scheme, name, port, url):
    headers = [(b"host", host)] if host else []
    env = environment(request(headers=headers, scheme=scheme, query=""))
    assert (env["SERVER_NAME"], env["SERVER_PORT"], env["X_FULL_URL"]) == (name, port, url)


def test_https_is_flagged():
    assert environment(request(scheme="https"))["HTTPS"] == "on"
    assert "HTTPS" not in environment(request())


def test_headers_become_http_variables_and_repeats_are_joined():
    headers = [
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"accept", b"text/html"),
        (b"x-forwarded-for", b"2.2.2.2"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
    ]
    env = environment(request(headers=headers))
    assert env["HTTP_X_FORWARDED_FOR"] == "1.1.1.1, 2.2.2.2"  # fix: WAGI keeps only the last
    assert env["HTTP_ACCEPT"] == "text/html"
    assert env["HTTP_COOKIE"] == "a=1; b=2"  # HTTP/2 cookie crumbs rejoin with "; "


@pytest.mark.parametrize(
    "name", [b"proxy", b"authorization", b"proxy-authorization", b"connection", b"Proxy"]
)
def test_credentials_and_httpoxy_headers_are_never_passed(name):
    env = environment(request(headers=[(name, b"http://evil:8080")]))
    assert not [key for key in env if key.startswith("HTTP_")]


def test_header_names_with_underscores_are_dropped():
    # they would pose as the dashed header a proxy in front has set
    headers = [(b"x_forwarded_for", b"6.6.6.6"), (b"x-forwarded-for", b"1.1.1.1")]
    env = environment(request(headers=headers))
    assert env["HTTP_X_FORWARDED_FOR"] == "1.1.1.1"


def test_non_utf8_header_values_pass_as_latin1():
    env = environment(request(headers=[(b"x-name", "café".encode("latin-1"))]))
    assert env["HTTP_X_NAME"] == "café"


def test_configured_variables_cannot_override_cgi_variables():
    configured = {"GREETING": "hi", "REQUEST_METHOD": "DELETE", "PATH_INFO": "/etc/passwd",
                  "X_MATCHED_ROUTE": "/forged"}  # fmt: skip
    env = environment(request(), configured)
    assert env["GREETING"] == "hi"
    assert (env["REQUEST_METHOD"], env["PATH_INFO"]) == ("POST", "/foo bar")
    assert env["X_MATCHED_ROUTE"] == "/env/..."


def test_configured_header_variables_apply_only_without_that_header():
    configured = {"HTTP_X_DEFAULT": "configured", "HTTP_HOST": "configured"}
    env = environment(request(), configured)
    assert env["HTTP_X_DEFAULT"] == "configured"
    assert env["HTTP_HOST"] == "example.com:8080"


def test_the_fixed_part_is_the_same_for_every_request_and_never_overlaps():
    fixed, optional = cgi.fixed_environment(ROUTE, {"A": "1", "HTTP_B": "2", "SCRIPT_NAME": "x"})
    assert optional == {"HTTP_B": "2"}
    assert "SCRIPT_NAME" not in fixed
    assert not set(fixed) & set(cgi.request_environment(request(), MATCH, optional))


def test_path_parameters_are_exported():
    match = Match(None, "/users/42", "", "", (("id", "42"),))
    route = cgi.RouteConstants.of("/users/:id")
    assert environment(request(), route=route, match=match)["X_PATH_MATCH_ID"] == "42"


# ---------------------------------------------------------------------------- response

PARSED = [
    # (stdout, status, headers, body)
    (b"Content-Type: text/plain\n\nhello", 200, [(b"content-type", b"text/plain")], b"hello"),
    (
        b"Content-Type: text/plain\r\n\r\nhello",
        200,
        [(b"content-type", b"text/plain")],
        b"hello",
    ),  # CRLF accepted
    (b"Content-Type: text/plain\r\n\nmixed", 200, [(b"content-type", b"text/plain")], b"mixed"),
    (
        b"Status: 404 Not Found\nContent-Type: text/plain\n\nno",
        404,
        [(b"content-type", b"text/plain")],
        b"no",
    ),
    (b"Status: 418\n\n", 418, [], b""),  # Status alone is enough
    (b"Location: /elsewhere\n\n", 302, [(b"location", b"/elsewhere")], b""),
    (b"Status: 303 See Other\nLocation: /x\n\n", 303, [(b"location", b"/x")], b""),
    (
        b"Content-Type: text/plain\nSet-Cookie: a=1\nSet-Cookie: b=2\n\n",
        200,
        [(b"content-type", b"text/plain"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")],
        b"",
    ),  # fix: both peers keep only one
    (
        b"Content-Type: text/plain\nX-Thing:   spaced   \n\n",
        200,
        [(b"content-type", b"text/plain"), (b"x-thing", b"spaced")],
        b"",
    ),
    (
        b"Content-Type: application/octet-stream\n\n\x00\x01\r\n\r\n\xff",
        200,
        [(b"content-type", b"application/octet-stream")],
        b"\x00\x01\r\n\r\n\xff",
    ),  # binary-safe
    (
        b"Content-Type: text/plain\nConnection: close\nTransfer-Encoding: chunked\n"
        b"Keep-Alive: 5\nContent-Length: 999\nUpgrade: h2c\n\nbody",
        200,
        [(b"content-type", b"text/plain")],
        b"body",
    ),  # hop-by-hop and length dropped
    (
        b"Content-Type: text/plain\nDate: yesterday\nX-Request-Id: spoof\nServer: mine\n\n",
        200,
        [(b"content-type", b"text/plain"), (b"server", b"mine")],
        b"",
    ),  # the server's own headers are its to set
]


@pytest.mark.parametrize(("stdout", "status", "headers", "body"), PARSED)
def test_cgi_response_parsing(stdout, status, headers, body):
    response = cgi.parse_response(stdout)
    assert (response.status, response.headers, response.body) == (status, headers, body)


FAILURES = [
    # (stdout, status): 500 when there is no header block, 502 when it is broken
    (b"", 500),
    (b"hello world", 500),  # no empty line at all
    (b"\nbody", 500),  # an empty header block
    (b"X-Custom: 1\n\nbody", 500),  # none of Content-Type, Status or Location
    (b"Status: abc\n\n", 502),
    (b"Status: 99 Too Low\n\n", 502),
    (b"Status: 1000\n\n", 502),
    (b"Status: 0200\n\n", 502),  # three digits, no more
    (b"Content-Type: text/plain\nnot a header\n\n", 502),
    (b"Content-Type: text/plain\nBad Name: x\n\n", 502),
    (b"Content-Type: text/plain\nX-Injected: a\rb\n\n", 502),  # CR inside a value
    (b"Content-Type: text/plain\nX-Nul: a\x00b\n\n", 502),
    (b"Content-Type: text/plain\n folded: continuation\n\n", 502),
    (b"Status: 404\nStatus: 500\nContent-Type: text/plain\n\n", 502),  # which one?
    (b"Content-Type: text/plain\nContent-Type: text/html\n\n", 502),
    (b"Location:\n\n", 502),
    (b"Location: /a\nLocation: /b\n\n", 502),
]


@pytest.mark.parametrize(("stdout", "status"), FAILURES)
def test_unusable_output_is_a_clean_error(stdout, status):
    with pytest.raises(cgi.CgiError) as caught:
        cgi.parse_response(stdout)
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("stdout", "why"),
    [
        (b"just text\n", "no empty line ends its headers"),
        (b"Content-Type: text/plain\n", "no empty line ends its headers"),
        (b"\nbody", "its output starts with an empty line"),
        (b"", "it printed nothing"),
    ],
)
def test_no_header_block_is_named_as_such_with_what_is_missing(stdout, why):
    with pytest.raises(cgi.CgiError) as caught:
        cgi.parse_response(stdout)
    assert caught.value.reason == f"module printed no CGI header block ({why})"


def test_a_header_block_is_read_up_to_a_bound():
    count = (cgi.MAX_HEADER_BLOCK - 25) // 7  # lines of 7 bytes after a first of 25
    lines = b"Content-Type: text/plain\n" + b"X-A: b\n" * count
    assert len(cgi.parse_response(lines + b"\nbody").headers) == count + 1
    flood = lines + b"X-A: b\n" * 10
    with pytest.raises(cgi.CgiError, match="CGI header block over 65536 bytes") as caught:
        cgi.parse_response(flood + b"\nbody")
    assert caught.value.status == 502
    with pytest.raises(cgi.CgiError, match="printed no CGI header block"):
        cgi.parse_response(flood)  # no empty line at all
