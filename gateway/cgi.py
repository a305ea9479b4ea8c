"""CGI (RFC 3875) both ways: a request becomes argv and environment; stdout becomes a response.

The behaviour follows WAGI and Spin's WAGI executor, except where both are wrong (see
`docs/compatibility.md`): CONTENT_TYPE is filled in, repeated request headers are joined,
repeated response headers are all kept, an empty query adds no argument, and `exit(0)`
is a success.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .config import DEFAULT_PORTS, parse_port
from .manifest import DEFAULT_ARGV
from .routing import Match

# Request headers never passed to a guest: credentials, and `Proxy`, which would become
# HTTP_PROXY and redirect the guest's outbound requests (httpoxy, CVE-2016-5385).
HIDDEN_REQUEST_HEADERS = frozenset(
    {b"authorization", b"proxy-authorization", b"connection", b"proxy"}
)
# Hop-by-hop headers belong to one connection; Content-Length, Date and X-Request-Id
# are the server's to set.
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        b"date",
        b"x-request-id",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
    }
)


@dataclass(slots=True)
class Request:
    """What CGI needs to know about an HTTP request."""

    method: str
    raw_path: str
    query: str
    headers: list[tuple[bytes, bytes]]
    body_length: int = 0
    scheme: str = "http"
    protocol: str = "HTTP/1.1"
    client: tuple[str, int] | None = None
    # The address the server listens on: SERVER_NAME/PORT without a Host header.
    server: tuple[str, int] | None = None
    # The host a trusted proxy says the client asked for (instead of the Host header).
    forwarded_host: str | None = None


@dataclass(frozen=True)
class RouteConstants:
    """What the CGI variables say about a route, the same for every request to it."""

    matched_route: str  # as matched, the app's base included: `/shop/cart/...`
    raw_component_route: str  # as the component wrote it, without the base: `/cart/...`
    base_path: str = "/"

    @classmethod
    def of(cls, matched_route: str, base_path: str = "/") -> RouteConstants:
        """The constants of a route that has the app's base (Spin 1's `base`) in front."""
        base = base_path.rstrip("/")
        raw = matched_route[len(base) :] if matched_route.startswith(base) else matched_route
        return cls(matched_route, raw or "/", base_path)

    @property
    def component_route(self) -> str:
        """The component's route without its `/...`, as Spin trims it."""
        return self.raw_component_route.removesuffix("/...")


_LINE_BREAK_OR_NUL = re.compile(rb"[\r\n\x00]")
# Variables that depend on the request. A configured variable can never replace them.
REQUEST_VARIABLES = frozenset(
    {
        "SERVER_PROTOCOL",
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "PATH_TRANSLATED",
        "X_RAW_PATH_INFO",
        "QUERY_STRING",
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "REMOTE_ADDR",
        "REMOTE_HOST",
        "X_CLIENT_ADDR",
        "SERVER_NAME",
        "SERVER_PORT",
        "X_FULL_URL",
        "HTTPS",
    }
)
# Names a request may or may not set (a header, a route parameter, TLS).
REQUEST_PREFIXES = ("HTTP_", "X_PATH_MATCH_")


def argv(template: str, request: Request) -> list[str]:
    """Expand an argv template: `${SCRIPT_NAME}` is the path, `${ARGS}` the query's parts."""
    if template == DEFAULT_ARGV:  # nearly every route's, without the general loop
        return _default_argv(request)
    args = request.query.split("&") if request.query else []
    values = {"SCRIPT_NAME": request.raw_path, "ARGS": request.query}
    result: list[str] = []
    for token in template.split():
        if token == "${ARGS}":
            result.extend(args)
        else:  # one pass: a `${ARGS}` inside the path is the path's, not a placeholder
            result.append(_PLACEHOLDER.sub(lambda found: values[found[1]], token))
    return result


_PLACEHOLDER = re.compile(r"\$\{(SCRIPT_NAME|ARGS)\}")


def _default_argv(request: Request) -> list[str]:
    if not request.query:
        return [request.raw_path]  # fix: peers add an empty argument here
    return [request.raw_path, *request.query.split("&")]


def environment(
    request: Request, route: RouteConstants, match: Match, configured: dict[str, str]
) -> dict[str, str]:
    """The guest's whole environment: configured variables, then CGI ones, which win.

    The gateway hands it to the guest in two parts, `fixed_environment` (computed once per
    route) and `request_environment`; this joins them, for tests and tools.
    """
    fixed, optional = fixed_environment(route, configured)
    return {**fixed, **request_environment(request, match, optional)}


def fixed_environment(
    route: RouteConstants, configured: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The variables every request to `route` gets, and the configured ones a request
    may replace (names like `HTTP_*`), which `request_environment` adds when it does not.
    """
    fixed: dict[str, str] = {}
    optional: dict[str, str] = {}
    for name, value in configured.items():
        if name.startswith(REQUEST_PREFIXES) or name == "HTTPS":
            optional[name] = value
        elif name not in REQUEST_VARIABLES:
            fixed[name] = value
    fixed.update(
        {
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_SOFTWARE": "WAGI/1",
            "AUTH_TYPE": "",
            "REMOTE_USER": "",
            "X_MATCHED_ROUTE": route.matched_route,
            "X_COMPONENT_ROUTE": route.component_route,
            "X_RAW_COMPONENT_ROUTE": route.raw_component_route,
            "X_BASE_PATH": route.base_path,
        }
    )
    return fixed, optional


def request_environment(request: Request, match: Match, optional: dict[str, str]) -> dict[str, str]:
    """The variables that depend on the request, `HTTP_*` headers included.

    The request target holds no NUL: `RequestPath.parse` refused it before routing.
    """
    env, host, content_type = _header_variables(request.headers)
    server_name, server_port = _server_address(request, request.forwarded_host or host)
    client_host, client_port = request.client or ("", 0)
    query = request.query
    env["SERVER_PROTOCOL"] = request.protocol
    env["REQUEST_METHOD"] = request.method
    env["SCRIPT_NAME"] = match.script_name
    env["PATH_INFO"] = env["PATH_TRANSLATED"] = match.path_info
    env["X_RAW_PATH_INFO"] = match.raw_path_info
    env["QUERY_STRING"] = query
    env["CONTENT_LENGTH"] = str(request.body_length)
    env["CONTENT_TYPE"] = content_type
    env["REMOTE_ADDR"] = env["REMOTE_HOST"] = client_host
    env["X_CLIENT_ADDR"] = f"{client_host}:{client_port}"
    env["SERVER_NAME"] = server_name
    env["SERVER_PORT"] = str(server_port)
    env["X_FULL_URL"] = f"{request.scheme}://{server_name}:{server_port}{request.raw_path}" + (
        f"?{query}" if query else ""
    )
    if request.scheme == "https":
        env["HTTPS"] = "on"
    for name, value in match.params:
        env[f"X_PATH_MATCH_{name.upper()}"] = value
    for name, value in optional.items():
        env.setdefault(name, value)
    return env


def _header_variables(headers: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], str, str]:
    """`HTTP_*` variables, and the Host and Content-Type headers.

    A repeated header is joined with `, ` (RFC 3875 4.1.18).
    """
    variables: dict[str, str] = {}
    host = content_type = ""
    for name, value in headers:
        key = _variable_name(name)
        if key is None:
            continue
        text = _text(value)
        if text is None:
            continue
        if key in variables:
            # Cookies repeat in HTTP/2 (one per crumb) and rejoin with `; ` (RFC 9113).
            separator = "; " if key == "HTTP_COOKIE" else ", "
            variables[key] = variables[key] + separator + text
            continue
        variables[key] = text
        if key == "HTTP_HOST":
            host = text
        elif key == "HTTP_CONTENT_TYPE":
            content_type = text
    return variables, host, content_type


@functools.lru_cache(maxsize=1024)
def _variable_name(header: bytes) -> str | None:
    """`HTTP_ACCEPT_LANGUAGE` for `accept-language`; None for headers never passed on."""
    if header.lower() in HIDDEN_REQUEST_HEADERS or not _TOKEN.match(header):
        return None  # HTTP parsers refuse names that are not tokens; never pass one on
    if b"_" in header:
        # `X_Forwarded_For` would pass as (or join onto) `X-Forwarded-For`'s variable;
        # nginx and Apache drop such headers too.
        return None
    return "HTTP_" + header.decode("latin-1").upper().replace("-", "_")


def _text(value: bytes) -> str | None:
    """A header value as text for the environment: UTF-8 if it is, else Latin-1."""
    if _LINE_BREAK_OR_NUL.search(value):
        return None  # HTTP parsers refuse these already; an environment cannot hold them
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _server_address(request: Request, host: str) -> tuple[str, int]:
    if host:
        name, port = _split_host(host)
        if port is not None:
            return name, port
        return name, DEFAULT_PORTS.get(request.scheme, 80)
    if request.server:
        return request.server
    return "localhost", DEFAULT_PORTS.get(request.scheme, 80)


def _split_host(host: str) -> tuple[str, int | None]:
    if host.startswith("["):  # [IPv6]:port
        end = host.find("]")
        name, rest = host[: end + 1], host[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port_text = host.partition(":")
    return name, parse_port(port_text)


# --------------------------------------------------------------------------- response

# Like a proxy's header buffer: no real response needs more, and parsing is bounded.
MAX_HEADER_BLOCK = 64 * 1024
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Header values may hold visible ASCII, spaces, tabs and obs-text; no other controls.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class CgiError(Exception):
    """The guest's output is not a usable CGI response."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Response:
    """A parsed CGI response."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def parse_response(output: bytes) -> Response:
    """Parse CGI output: header lines, an empty line, then the body byte for byte."""
    header_end, body_start = _find_header_end(output)
    if header_end <= 0:
        raise CgiError(500, f"module printed no CGI header block ({_why_no_headers(output)})")
    status: int | None = None
    has_content_type = has_location = False
    headers: list[tuple[bytes, bytes]] = []
    lines = output[:header_end].split(b"\n")
    crlf = lines[0].endswith(b"\r")
    for line in lines:
        if line.endswith(b"\r") != crlf:
            # A CR that ends one line of an LF block came from inside a value: whatever
            # follows it would become a header of its own (header injection).
            raise CgiError(502, "module printed header lines ending in both LF and CRLF")
        name, value = _header_line(line[:-1] if crlf else line)
        lower = name.lower()
        if lower == b"status":
            if status is not None:
                raise CgiError(502, "module printed Status twice")
            status = _status(value)
            continue
        if lower == b"content-type":
            if has_content_type:
                raise CgiError(502, "module printed Content-Type twice")
            has_content_type = True
        elif lower == b"location":
            if has_location or not value:
                raise CgiError(502, "module printed an empty Location, or two")
            has_location = True
        if lower not in DROPPED_RESPONSE_HEADERS:
            headers.append((lower, value))
    if status is None and not has_content_type and not has_location:
        raise CgiError(
            500, "module printed no CGI header block (no Content-Type, Status or Location)"
        )
    if status is None:
        status = 302 if has_location else 200
    return Response(status, headers, output[body_start:])


def _why_no_headers(output: bytes) -> str:
    if not output:
        return "it printed nothing"
    if output.startswith((b"\n", b"\r\n")):
        return "its output starts with an empty line"
    return "no empty line ends its headers"


def _find_header_end(output: bytes) -> tuple[int, int]:
    """Where the header block ends and the body starts; (-1, -1) without an empty line.

    An empty line first of all gives (0, ...): a body with no header block. Only the
    first MAX_HEADER_BLOCK bytes are searched, so a flood of header lines costs little.
    """
    if output.startswith((b"\n", b"\r\n")):
        return 0, 1 if output[0] == 10 else 2
    limit = MAX_HEADER_BLOCK + 3  # room for the empty line that ends a full block
    lf = output.find(b"\n\n", 0, limit)
    # An empty CRLF line before the first empty LF one (whose own end bounds the search).
    crlf = output.find(b"\n\r\n", 0, lf + 2 if lf >= 0 else limit)
    if crlf >= 0:
        return crlf, crlf + 3
    if lf >= 0:
        return lf, lf + 2
    if len(output) > MAX_HEADER_BLOCK and (b"\n\n" in output or b"\n\r\n" in output):
        raise CgiError(502, f"module printed a CGI header block over {MAX_HEADER_BLOCK} bytes")
    return -1, -1


def _header_line(line: bytes) -> tuple[bytes, bytes]:
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.match(name):
        shown = line[:60].decode("latin-1").encode("unicode_escape").decode()
        raise CgiError(502, f"module printed a malformed header line: {shown!r}")
    value = value.strip(b" \t")
    if _BAD_VALUE.search(value):
        raise CgiError(
            502, f"header {name.decode()} has a control character in its value (CR, LF or NUL)"
        )
    return name, value


def _status(value: bytes) -> int:
    code = value.split(b" ", 1)[0]
    if len(code) != 3 or not code.isdigit() or not 200 <= int(code) <= 599:  # RFC 3875: 3digit
        shown = value[:40].decode("latin-1")
        raise CgiError(502, f"module printed an invalid Status: {shown!r}")
    return int(code)
