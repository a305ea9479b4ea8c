"""Route patterns and the route table: which handler answers a request path.

Patterns follow Spin: `/foo` (exact), `/foo/...` (the folder and everything below it),
`/...` (everything) and `:name` segments (`/users/:id`). Precedence follows Spin too,
whatever the order in the file: exact routes beat wildcards, then the longest prefix
wins; at the first segment where two patterns differ, a literal beats a `:name`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import unquote

Target = TypeVar("Target")

WILDCARD = "..."

# Paths the gateway answers itself, before any route of the app.
LIVENESS_PATHS = frozenset({"/healthz", "/.well-known/spin/health"})
READINESS_PATH = "/.well-known/wagi/ready"
METRICS_PATH = "/.well-known/wagi/metrics"
INFO_PATH = "/.well-known/wagi/info"
BUILT_IN_PATHS = (*sorted(LIVENESS_PATHS), READINESS_PATH, METRICS_PATH, INFO_PATH)
_PARAM = re.compile(r"^:([A-Za-z_][A-Za-z0-9_]*)$")
_FORBIDDEN = re.compile(r"[\s?#]")


class RouteSyntaxError(ValueError):
    """A route pattern is not valid; the message says why."""


class RouteClash(ValueError):
    """Two routes have the same pattern (parameter names aside)."""

    def __init__(self, existing: Route, duplicate: Route) -> None:
        super().__init__(f"route {duplicate.pattern.text} clashes with {existing.pattern.text}")
        self.existing = existing
        self.duplicate = duplicate


class BadPath(ValueError):
    """A request path that no route may see (dot segments, NUL, bad encoding)."""


@dataclass(frozen=True)
class RoutePattern:
    """A parsed route: literal and `:name` segments, optionally ending in `/...`."""

    text: str
    segments: tuple[str, ...]
    wildcard: bool

    @classmethod
    def parse(cls, text: str) -> RoutePattern:
        """Parse and check a route as written in a manifest."""
        if not text.startswith("/"):
            raise RouteSyntaxError(f"route {text!r} must start with `/`")
        if _FORBIDDEN.search(text):
            raise RouteSyntaxError(f"route {text!r} must not contain spaces, `?` or `#`")
        parts = text[1:].split("/")
        wildcard = parts[-1] == WILDCARD
        if wildcard:
            parts = parts[:-1]
        names = set()
        for index, part in enumerate(parts):
            parts[index] = _segment(text, part)
            if WILDCARD in part:
                raise RouteSyntaxError(
                    f"route {text!r}: `...` is only allowed as the last segment, as in `/files/...`"
                )
            if part.startswith(":"):
                param = _PARAM.match(part)
                if not param:
                    raise RouteSyntaxError(
                        f"route {text!r}: bad parameter {part!r} "
                        "(use `:name` with letters, digits, `_`)"
                    )
                if param.group(1) in names:
                    raise RouteSyntaxError(f"route {text!r}: parameter {part} appears twice")
                names.add(param.group(1))
        return cls(text, tuple(parts), wildcard)

    @property
    def prefix(self) -> str:
        """The route without its `/...`."""
        return self.text[: -len("/" + WILDCARD)] if self.wildcard else self.text

    @property
    def has_params(self) -> bool:
        """Whether any segment is a `:name` parameter."""
        return any(s.startswith(":") for s in self.segments)

    def shape(self) -> tuple[tuple[str, ...], bool]:
        """What makes two patterns the same route (parameter names do not count)."""
        return tuple(":" if s.startswith(":") else s for s in self.segments), self.wildcard

    def covers(self, other: RoutePattern) -> bool:
        """Whether this pattern matches every path that `other` matches."""
        count = len(self.segments)
        if self.wildcard:
            if len(other.segments) < count:
                return False
        elif other.wildcard or len(other.segments) != count:
            return False
        return all(
            mine == theirs or (mine.startswith(":") and theirs != "")
            for mine, theirs in zip(self.segments, other.segments, strict=False)
        )

    def is_built_in(self) -> bool:
        """Whether the gateway answers this route's only path itself (`BUILT_IN_PATHS`)."""
        return not self.wildcard and not self.has_params and self.text in BUILT_IN_PATHS

    def rank(self) -> tuple:
        """Sort key: non-wildcards first, then longer prefixes, then literals before params."""
        return (self.wildcard, -len(self.segments), tuple(s.startswith(":") for s in self.segments))


def _segment(route: str, part: str) -> str:
    """A route segment as request segments are matched: percent-decoded. One that no
    request could reach (a dot segment, also behind an encoded `/`) is refused, and so is
    an encoded `:` or `...`, which would read as a parameter or a wildcard."""
    literal = part
    if "%" in part:
        try:
            literal = unquote(part, errors="strict")
        except UnicodeDecodeError:
            raise RouteSyntaxError(
                f"route {route!r}: not valid UTF-8 once percent-decoded"
            ) from None
        if literal.startswith(":") or WILDCARD in literal:
            raise RouteSyntaxError(f"route {route!r}: {part!r} would read as `{literal}`")
    if any(piece in (".", "..") for piece in literal.split("/")):
        raise RouteSyntaxError(
            f"route {route!r}: a `.` or `..` segment never matches (requests with one are refused)"
        )
    return literal


@dataclass(frozen=True)
class Route(Generic[Target]):
    """A pattern and what it leads to."""

    pattern: RoutePattern
    target: Target


@dataclass(slots=True)  # not frozen: made per request, and a frozen __init__ costs 4x
class Match(Generic[Target]):
    """A request path matched to a route, split the CGI way (read only: exact routes
    share theirs)."""

    route: Route[Target] | None
    script_name: str
    path_info: str
    raw_path_info: str
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RequestPath:
    """A request target: its path split into raw (percent-encoded) and decoded segments,
    and its query."""

    raw: str
    raw_segments: tuple[str, ...]
    segments: tuple[str, ...]
    query: str = ""

    @classmethod
    def parse(cls, raw_path: str, query: str = "") -> RequestPath:
        """Split and decode a raw request path; refuse what no handler should see."""
        if not raw_path.startswith("/"):
            raise BadPath("path must start with `/`")
        if "#" in raw_path:
            raise BadPath("path must not contain `#` (clients do not send a fragment)")
        if "\x00" in query:
            raise BadPath("query must not contain NUL")
        raw_segments = tuple(raw_path[1:].split("/"))
        if "%" not in raw_path:
            segments = raw_segments
        else:
            try:
                segments = tuple(unquote(s, errors="strict") for s in raw_segments)
            except UnicodeDecodeError:
                raise BadPath("path is not valid UTF-8 once percent-decoded") from None
        for segment in segments:
            # An encoded slash must not smuggle a dot segment past this check.
            parts = segment.split("/") if "/" in segment else (segment,)
            if any(part in (".", "..") for part in parts):
                raise BadPath("path must not contain `.` or `..` segments")
            if "\x00" in segment:
                raise BadPath("path must not contain NUL")
        return cls(raw_path, raw_segments, segments, query)


class RouteTable(Generic[Target]):
    """All routes of an app, ordered for matching."""

    def __init__(self, routes: list[Route[Target]]) -> None:
        # An exact route always matches the same way: its Match is made once, here.
        self._exact: dict[tuple[str, ...], Match[Target]] = {}
        self._ordered: list[Route[Target]] = []
        shapes: dict[tuple, Route[Target]] = {}
        for route in routes:
            existing = shapes.setdefault(route.pattern.shape(), route)
            if existing is not route:
                raise RouteClash(existing, route)
            pattern = route.pattern
            if not pattern.wildcard and not pattern.has_params:
                script_name = "/".join(("", *pattern.segments))
                self._exact[pattern.segments] = Match(route, script_name, "", "")
            else:
                self._ordered.append(route)
        self._ordered.sort(key=lambda r: r.pattern.rank())
        self.routes = tuple(routes)

    def match(self, path: RequestPath) -> Match[Target] | None:
        """Find the route for a request path, or None (a 404)."""
        exact = self._exact.get(path.segments)
        if exact is not None:
            return exact
        for route in self._ordered:
            found = _match(route, path)
            if found is not None:
                return found
        return None


def _match(route: Route[Target], path: RequestPath) -> Match[Target] | None:
    pattern = route.pattern
    count = len(pattern.segments)
    segments = path.segments
    if len(segments) < count or (not pattern.wildcard and len(segments) != count):
        return None
    params = []
    for expected, actual in zip(pattern.segments, segments, strict=False):
        if expected.startswith(":"):
            if not actual:
                return None
            params.append((expected[1:], actual))
        elif expected != actual:
            return None
    script_name = "/".join(("", *segments[:count])) if count else ""
    rest = segments[count:]
    raw_rest = path.raw_segments[count:]
    path_info = "/".join(("", *rest)) if rest else ""
    raw_path_info = "/".join(("", *raw_rest)) if raw_rest else ""
    return Match(route, script_name, path_info, raw_path_info, tuple(params))
