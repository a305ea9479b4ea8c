"""Routes: the reference's table of patterns, Spin's precedence, and paths refused outright."""

from __future__ import annotations

import pytest

from gateway.routing import (
    BadPath,
    RequestPath,
    Route,
    RouteClash,
    RoutePattern,
    RouteSyntaxError,
    RouteTable,
)


def table(*patterns: str) -> RouteTable[str]:
    return RouteTable([Route(RoutePattern.parse(p), p) for p in patterns])


def match(routes: RouteTable[str], path: str):
    return routes.match(RequestPath.parse(path))


# The reference's route table: (pattern, path, SCRIPT_NAME, PATH_INFO).
MATCHES = [
    ("/foo", "/foo", "/foo", ""),
    ("/foo/...", "/foo", "/foo", ""),
    ("/foo/...", "/foo/", "/foo", "/"),
    ("/foo/...", "/foo/a/b", "/foo", "/a/b"),
    ("/...", "/", "", "/"),
    ("/...", "/anything/at/all", "", "/anything/at/all"),
    ("/users/:id", "/users/42", "/users/42", ""),
    ("/users/:id/...", "/users/42/posts/7", "/users/42", "/posts/7"),
    ("/", "/", "/", ""),
]


@pytest.mark.parametrize(("pattern", "path", "script_name", "path_info"), MATCHES)
def test_reference_route_table(pattern, path, script_name, path_info):
    found = match(table(pattern), path)
    assert found is not None
    assert (found.script_name, found.path_info) == (script_name, path_info)


NON_MATCHES = [
    ("/foo", "/foo/"),  # `/foo/` is another route
    ("/foo", "/foobar"),
    ("/foo/...", "/foobar"),
    ("/users/:id", "/users/42/x"),  # one segment only
    ("/users/:id", "/users/"),
    ("/users/:id", "/users"),
]


@pytest.mark.parametrize(("pattern", "path"), NON_MATCHES)
def test_patterns_do_not_match_beyond_their_shape(pattern, path):
    assert match(table(pattern), path) is None


def test_parameters_are_captured_and_decoded():
    found = match(table("/users/:id/:tab"), "/users/a%20b/posts")
    assert found.params == (("id", "a b"), ("tab", "posts"))


def test_path_info_is_decoded_and_the_raw_form_kept():
    found = match(table("/files/..."), "/files/a%20b/c%2Fd")
    assert found.path_info == "/a b/c/d"
    assert found.raw_path_info == "/a%20b/c%2Fd"


def test_an_encoded_slash_does_not_separate_segments():
    assert match(table("/a/b"), "/a%2Fb") is None


PRECEDENCE = [
    # (patterns in file order, path, winner)
    (["/...", "/foo"], "/foo", "/foo"),  # exact beats wildcard, whatever the order
    (["/foo/...", "/foo"], "/foo", "/foo"),
    (["/...", "/foo/...", "/foo/bar/..."], "/foo/bar/baz", "/foo/bar/..."),  # longest prefix
    (["/foo/bar/...", "/foo/...", "/..."], "/foo/x", "/foo/..."),
    (["/users/...", "/users/:id"], "/users/42", "/users/:id"),  # not a wildcard: wins
    (["/users/:id", "/users/me"], "/users/me", "/users/me"),  # literal beats parameter
    (["/:a/x/...", "/y/:b/..."], "/y/x/z", "/y/:b/..."),  # literal first, left to right
]


@pytest.mark.parametrize(("patterns", "path", "winner"), PRECEDENCE)
def test_spin_precedence(patterns, path, winner):
    assert match(table(*patterns), path).route.target == winner


def test_identical_routes_clash_even_with_different_parameter_names():
    with pytest.raises(RouteClash):
        table("/users/:id", "/users/:name")
    with pytest.raises(RouteClash):
        table("/a/...", "/a/...")


@pytest.mark.parametrize(
    "pattern",
    ["foo", "/a/.../b", "/a...", "/a/:", "/a/:b/:b", "/a b", "/a?x", "/a/:1x", "/a/../x",
     "/./y", "/%ff", "/%2E%2E/x", "/a%2F..", "/%3Aid", "/a/%2E%2E%2E"],
)  # fmt: skip
def test_invalid_patterns_are_refused(pattern):
    with pytest.raises(RouteSyntaxError):
        RoutePattern.parse(pattern)


@pytest.mark.parametrize(
    "path",
    [
        "/a/../b",
        "/a/./b",
        "/..",
        "/a/%2e%2e/b",
        "/a/%2E/b",
        "/a%2F..%2Fb",
        "/a/%00",
        "/a/%ff",
        "relative",
    ],
)
def test_paths_no_handler_should_see_are_refused(path):
    with pytest.raises(BadPath):
        RequestPath.parse(path)


def test_a_query_holding_nul_is_refused_and_others_are_kept_as_sent():
    with pytest.raises(BadPath, match="query must not contain NUL"):
        RequestPath.parse("/a", "x=\x00")
    assert RequestPath.parse("/a", "x=%00&y").query == "x=%00&y"


def test_unmatched_path_is_none():
    assert match(table("/a", "/b/..."), "/c") is None


def test_a_percent_encoded_route_matches_the_path_it_encodes():
    routes = table("/p%20q", "/c%2Fd/...")
    assert match(routes, "/p%20q").route.target == "/p%20q"
    found = match(routes, "/c%2fd/more")
    assert (found.route.target, found.script_name) == ("/c%2Fd/...", "/c/d")
