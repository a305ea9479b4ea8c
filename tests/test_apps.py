"""The example apps, tested the way a module author tests theirs: with the test kit.

`wagi_client` is the pytest plugin's fixture; the `wagi_manifest` fixture below points
it at the example app (it would otherwise find the manifest nearest the test file).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, env_section
from gateway import testing
from gateway.testing import cgi_environment, run_module


@pytest.fixture
def wagi_manifest(example_apps: Path) -> Path:
    return example_apps


def test_hello_says_hello(wagi_client):
    response = wagi_client.get("/hello")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.text == "Hello from WebAssembly!\n"


def test_env_shows_argv_environment_and_stdin(wagi_client):
    response = wagi_client.post(
        "/env/some/path?a=1&b=2", content=b"the body", headers={"X-Trace": "abc"}
    )
    assert response.status_code == 200
    argv = response.text.split("## argv\n", 1)[1].split("## env\n", 1)[0]
    assert argv.splitlines() == ["argv[0]=/env/some/path", "argv[1]=a=1", "argv[2]=b=2"]
    env = env_section(response.text)
    assert env["REQUEST_METHOD"] == "POST"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/env", "/some/path")
    assert env["QUERY_STRING"] == "a=1&b=2"
    assert env["HTTP_X_TRACE"] == "abc"
    assert env["GREETING"] == "hello"  # from the manifest
    assert env["CONTENT_LENGTH"] == "8"
    assert response.text.endswith("## stdin\nthe body")


def test_guestbook_signs_with_cookies_and_greets_back(wagi_client):
    assert "Sign the guestbook" in wagi_client.get("/guestbook/").text

    signed = wagi_client.post("/guestbook/", data={"name": "Ada <L>", "note": "hi; there"})
    assert signed.status_code == 303
    assert signed.headers["Location"] == "/guestbook/"
    cookies = signed.headers.get_all("Set-Cookie")
    assert [c.split(";")[0] for c in cookies] == [
        "guest_name=Ada%20%3CL%3E",
        "guest_note=hi%3B%20there",
    ]

    cookie = "; ".join(c.split(";")[0] for c in cookies)
    page = wagi_client.get("/guestbook/", headers={"Cookie": cookie})
    assert "Welcome back, Ada &lt;L&gt;!" in page.text  # escaped, not injected
    assert "<q>hi; there</q>" in page.text


def test_guestbook_refuses_what_it_cannot_handle(wagi_client):
    assert wagi_client.post("/guestbook/", data={"note": "no name"}).status_code == 400
    assert wagi_client.post("/guestbook/", content=b"name=x").status_code == 415
    assert wagi_client.delete("/guestbook/").status_code == 405
    assert wagi_client.get("/guestbook/static/../../etc/passwd").status_code == 400
    assert wagi_client.get("/guestbook/static/missing.css").status_code == 404


def test_guestbook_serves_its_mounted_static_files(wagi_client):
    css = wagi_client.get("/guestbook/static/style.css")
    assert css.status_code == 200
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert css.content == (ROOT / "apps/guestbook/static/style.css").read_bytes()


def test_one_component_run_directly_with_its_configured_environment(wagi_client):
    result = wagi_client.run("env", env={"EXTRA": "1"}, stdin=b"input", args=["env", "x"])
    assert result.exit_code == 0 and result.failure is None
    assert result.stdout.startswith(b"Content-Type: text/plain")
    env = env_section(result.response.text)
    assert env == {"GREETING": "hello", "EXTRA": "1"}  # nothing but what it was given
    assert result.response.text.endswith("## stdin\ninput")


def test_the_env_module_alone_with_a_request_environment(example_apps):
    env = cgi_environment(
        "GET", "/env/a%20b", query={"q": "1 2"}, headers={"Accept": "*/*"}, route="/env/..."
    )
    result = run_module(ROOT / "apps/env/env.wasm", env=env, args=["/env/a%20b", "q=1+2"])
    assert result.exit_code == 0 and result.stderr == b""
    shown = env_section(result.response.text)
    assert shown["PATH_INFO"] == "/a b" and shown["X_RAW_PATH_INFO"] == "/a%20b"
    assert shown["QUERY_STRING"] == "q=1+2"
    assert shown["HTTP_ACCEPT"] == "*/*"
    assert shown["X_MATCHED_ROUTE"] == "/env/..."


def test_a_spin_1_base_is_in_the_matched_route_and_not_in_the_components(
    example_apps: Path, tmp_path: Path
):
    """Spin 1's documented example: base `/test`, route `/hello/...`."""
    (tmp_path / "env.wasm").write_bytes((ROOT / "apps/env/env.wasm").read_bytes())
    (tmp_path / "spin.toml").write_text(
        'spin_manifest_version = "1"\nname = "shop"\n'
        'trigger = { type = "http", base = "/test" }\n'
        '[[component]]\nid = "env"\nsource = "env.wasm"\n'
        '[component.trigger]\nroute = "/hello/..."\nexecutor = { type = "wagi" }\n'
    )
    with testing.wagi_client(tmp_path / "spin.toml", cache_dir=tmp_path / "cache") as client:
        response = client.get("/test/hello/abc/def?foo=bar")
    env = env_section(response.text)
    assert env["X_MATCHED_ROUTE"] == "/test/hello/..."
    assert env["X_RAW_COMPONENT_ROUTE"] == "/hello/..."
    assert env["X_COMPONENT_ROUTE"] == "/hello"
    assert env["X_BASE_PATH"] == "/test"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/test/hello", "/abc/def")
