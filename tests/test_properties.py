"""Property-based tests over arbitrary bytes: parsers never raise anything unplanned."""

from __future__ import annotations

import re

import h11
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gateway import cgi, native
from gateway.routing import BadPath, Match, RequestPath

TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9a-z]+$")

# Header lines built from pieces CGI output is made of, so the parser's paths get used.
header_names = st.sampled_from(
    [
        b"Content-Type",
        b"Status",
        b"Location",
        b"Set-Cookie",
        b"X-Thing",
        b"Content-Length",
        b"Connection",
        b"Bad Name",
        b"",
        b"\xff",
    ]
)
header_values = st.one_of(
    st.sampled_from([b"text/plain", b"404 Not Found", b"abc", b"/x", b"200", b"99"]),
    st.binary(max_size=40),
)
line_ends = st.sampled_from([b"\n", b"\r\n", b"\r", b""])
header_lines = st.builds(
    lambda name, sep, value, end: name + sep + value + end,
    header_names,
    st.sampled_from([b": ", b":", b" ", b""]),
    header_values,
    line_ends,
)
cgi_outputs = st.one_of(
    st.binary(max_size=500),
    st.builds(
        lambda lines, blank, body: b"".join(lines) + blank + body,
        st.lists(header_lines, max_size=6),
        st.sampled_from([b"\n", b"\r\n", b""]),
        st.binary(max_size=100),
    ),
    # Nearly valid: a good first line and consistent line ends, so that the accepting
    # path, and what it lets through, is exercised too.
    st.builds(
        lambda end, pairs, body: (
            b"Content-Type: text/plain"
            + end
            + b"".join(name + b": " + value + end for name, value in pairs)
            + end
            + body
        ),
        st.sampled_from([b"\n", b"\r\n"]),
        st.lists(st.tuples(header_names, header_values), max_size=4),
        st.binary(max_size=100),
    ),
)


@settings(max_examples=1500, deadline=None)
@given(cgi_outputs)
def test_the_cgi_parser_yields_a_sendable_response_or_a_clean_error(output):
    try:
        response = cgi.parse_response(output)
    except cgi.CgiError as error:
        event("refused")
        assert error.status in (500, 502)
        assert error.reason and "\n" not in error.reason
        return
    event("accepted")
    assert 200 <= response.status <= 599
    for name, value in response.headers:
        assert TOKEN.match(name), name
        assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value), value
        assert name not in cgi.DROPPED_RESPONSE_HEADERS
    assert output.endswith(response.body)
    # Whatever the parser accepts, an HTTP/1.1 server can send as it is.
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    server.next_event()
    server.send(h11.Response(status_code=response.status, headers=response.headers))


# Output a CGI program may well print: always accepted, and passed on as written.
visible_values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30
).map(str.encode)
# Headers that may repeat; Content-Type and Location come at most once (twice is a 502).
header_names_used = [b"X-Thing", b"Set-Cookie", b"cache-control"]
well_formed_headers = st.lists(
    st.tuples(st.sampled_from(header_names_used), visible_values), max_size=5
)


@settings(max_examples=500, deadline=None)
@given(
    well_formed_headers,
    st.none() | st.integers(200, 599),
    st.sampled_from([b"\n", b"\r\n"]),
    st.binary(max_size=100),
    st.none() | visible_values,
)
def test_well_formed_cgi_output_is_passed_on_as_written(headers, status, end, body, location):
    headers = [(b"Content-Type", b"text/plain"), *headers]
    if location is not None:
        headers.insert(len(headers) // 2 + 1, (b"Location", location))
    lines = [name + b": " + value for name, value in headers]
    if status is not None:
        lines.insert(len(lines) // 2, b"Status: %d Whatever" % status)
    response = cgi.parse_response(end.join(lines) + end + end + body)
    assert response.headers == [(name.lower(), value) for name, value in headers]
    has_location = any(name == b"Location" for name, _ in headers)
    assert response.status == (status or (302 if has_location else 200))
    assert response.body == body


request_headers = st.lists(
    st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=60)), max_size=8
)


@settings(max_examples=800, deadline=None)
@given(
    request_headers,
    st.text(max_size=40),
    st.text(max_size=40),
    st.sampled_from(["http", "https"]),
    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
)
def test_the_environment_builder_always_yields_what_wasi_accepts(
    headers, path, query, scheme, configured
):
    configured = {
        k: v
        for k, v in configured.items()
        if k and "=" not in k and "\x00" not in k and "\x00" not in v
    }
    try:
        target = RequestPath.parse("/" + path, query)
    except BadPath:
        return  # refused before routing: no environment is ever built for it
    request = cgi.Request(
        method="GET",
        raw_path=target.raw,
        query=target.query,
        headers=headers,
        scheme=scheme,
        client=("10.0.0.1", 1234),
    )
    route = cgi.RouteConstants.of("/...")
    match = Match(None, "", "/" + path, "/" + path)
    env = cgi.environment(request, route, match, configured)
    for name, value in env.items():
        assert isinstance(name, str) and isinstance(value, str)
        assert name and "=" not in name and "\x00" not in name
        assert "\x00" not in value
    _keep, pointers = native.string_table([*env, *env.values()])  # what the engine hands WASI
    assert len(pointers) == 2 * len(env)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.text(max_size=60), st.from_regex(r"/[a-z%0-9./]{0,30}", fullmatch=True)))
def test_request_paths_parse_or_are_refused_cleanly(text):
    try:
        path = RequestPath.parse(text)
    except BadPath:
        return
    assert path.raw == text
    for segment in path.segments:
        assert "\x00" not in segment
        assert not {".", ".."} & set(segment.split("/"))
