"""The test kit itself: single-module runs, the in-process client, the pytest plugin."""

from __future__ import annotations

import re
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, SPIN, cgi_guest, spin_toml
from gateway.engine import LoadError
from gateway.manifest import ManifestError
from gateway.testing import (
    Headers,
    InvalidCgiResponse,
    ModuleFailed,
    Response,
    cgi_environment,
    run_module,
    wagi_client,
)

pytest_plugins = ["pytester"]


def guest(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def app(tmp_path: Path, **guests: str) -> Path:
    """A spin.toml routing `/<name>` to each guest's WAT text."""
    for name, text in guests.items():
        guest(tmp_path, f"{name}.wat", text)
    (tmp_path / "spin.toml").write_text(spin_toml({f"/{name}": name for name in guests}))
    return tmp_path / "spin.toml"


# --------------------------------------------------------------------------- run_module


def test_run_module_shows_raw_output_and_the_parsed_response(tmp_path):
    module = guest(
        tmp_path,
        "m.wat",
        cgi_guest(b"Status: 201\nX-One: 1\nX-One: 2\n\ncreated", stderr=b"a note\n"),
    )
    result = run_module(module)
    assert (result.exit_code, result.failure) == (0, None)
    assert result.stdout == b"Status: 201\nX-One: 1\nX-One: 2\n\ncreated"
    assert result.stderr_text == "a note\n"
    response = result.response
    assert response.status_code == 201
    assert response.headers["x-one"] == "1, 2"
    assert response.headers.get_all("X-ONE") == ["1", "2"]
    assert response.content == b"created"


def test_run_module_reports_exit_codes_and_traps(tmp_path):
    exited = run_module(guest(tmp_path, "e.wat", cgi_guest(b"x", exit_code=3)))
    assert (exited.exit_code, exited.failure) == (3, "exit")
    trapped = run_module(guest(tmp_path, "t.wat", cgi_guest(b"", trap=True)))
    assert trapped.failure == "trap" and "unreachable" in trapped.error
    assert trapped.exit_code is None  # it never exited: `exit_code == 0` cannot pass


def test_the_response_of_a_failed_run_is_not_taken_for_a_success(tmp_path):
    printed = b"Content-Type: text/plain\n\nall fine\n"
    result = run_module(guest(tmp_path, "e.wat", cgi_guest(printed, exit_code=3)))
    assert result.stdout == printed  # still there to look at
    with pytest.raises(ModuleFailed, match=r"failed \(exit: exit status 3\).*would answer 500"):
        _ = result.response


def test_output_that_is_no_cgi_response_says_why(tmp_path):
    result = run_module(guest(tmp_path, "n.wat", cgi_guest(b"just text, no header block")))
    assert result.exit_code == 0
    with pytest.raises(InvalidCgiResponse, match="no CGI header block"):
        _ = result.response


def test_run_module_applies_limits(tmp_path):
    result = run_module(guest(tmp_path, "s.wat", SPIN), request_timeout="0.2s")
    assert result.failure == "timeout"
    assert 0.2 <= result.seconds < 5
    with pytest.raises(TypeError, match="unknown option 'timeout'"):
        run_module(guest(tmp_path, "s.wat", SPIN), timeout=1)


def test_run_module_passes_env_stdin_args_and_mounts(tmp_path, c_guest, example_apps):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "note.txt").write_text("mounted")
    result = run_module(
        c_guest("files"),
        env={"QUERY_STRING": "read=/data/note.txt"},
        mounts={"/data": tmp_path / "data"},
    )
    assert result.response.text == "mounted"
    env_app = ROOT / "apps" / "env" / "env.wasm"  # built by `example_apps`
    shown = run_module(env_app, env={"A": "1"}, stdin=b"in", args=["prog", "x"]).response.text
    assert "argv[0]=prog\nargv[1]=x\n" in shown and "\nA=1\n" in shown
    assert shown.endswith("## stdin\nin")


def test_cgi_environment_is_what_the_gateway_gives(tmp_path):
    env = cgi_environment(
        "POST",
        "/users/42/photos",
        query="size=large",
        headers={"Content-Type": "image/png", "Host": "example.org:8080"},
        body=b"12345",
        route="/users/:id/...",
    )
    assert env["REQUEST_METHOD"] == "POST"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/users/42", "/photos")
    assert env["X_PATH_MATCH_ID"] == "42"
    assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("image/png", "5")
    assert env["X_FULL_URL"] == "http://example.org:8080/users/42/photos?size=large"
    with pytest.raises(ValueError, match="does not match"):
        cgi_environment("GET", "/other", route="/users/:id")
    assert cgi_environment("GET", "/a?x=1")["QUERY_STRING"] == "x=1"
    assert cgi_environment("GET", "/a?x=1")["PATH_INFO"] == "/a"
    with pytest.raises(ValueError, match="not in both"):
        cgi_environment("GET", "/a?x=1", query="y=2")


# --------------------------------------------------------------------------- the client


def test_the_client_answers_as_the_gateway_does(tmp_path):
    manifest = app(
        tmp_path,
        ok=cgi_guest(b'Content-Type: application/json\n\n{"n": 1}'),
        bad=cgi_guest(b"no header block"),
        spin=SPIN,
    )
    with wagi_client(manifest, request_timeout="0.3s") as client:
        ok = client.get("/ok")
        assert (ok.status_code, ok.json()) == (200, {"n": 1})
        assert re.fullmatch("[0-9a-f]{16}", ok.headers["X-Request-Id"])  # the gateway's own
        assert client.head("/ok").content == b""
        assert client.get("/bad").status_code == 500
        assert client.get("/spin").status_code == 504
        assert client.get("/nowhere").status_code == 404
        assert client.get("/healthz").text == "OK\n"


def test_the_client_sends_paths_and_headers_as_a_real_client_does(example_apps):
    with wagi_client(example_apps) as client:
        text = client.get("/env/caf\u00e9 au lait?q=a b&r=%41", headers=[(b"X-Raw", b"1")]).text
    assert "argv[0]=/env/caf%C3%A9%20au%20lait\n" in text
    assert "\nPATH_INFO=/caf\u00e9 au lait\n" in text
    assert "\nX_RAW_PATH_INFO=/caf%C3%A9%20au%20lait\n" in text
    assert "\nQUERY_STRING=q=a%20b&r=%41\n" in text
    assert "\nHTTP_X_RAW=1\n" in text
    with pytest.raises(ValueError, match="starts with `/`"):
        client.get("http://example.org/env")


def test_a_closed_client_and_a_slow_answer_say_what_happened(tmp_path):
    manifest = app(tmp_path, spin=SPIN)
    client = wagi_client(manifest, request_timeout="5s")
    client._answer_timeout = lambda: 0.2  # the test waits less than the guest may run
    with pytest.raises(TimeoutError, match=r"GET /spin: no answer within 0\.2 s"):
        client.get("/spin")
    client.close()
    with pytest.raises(RuntimeError, match="this client is closed"):
        client.get("/spin")


def test_the_client_waits_as_long_as_a_component_may_take(tmp_path):
    manifest = app(tmp_path, spin=SPIN)
    text = manifest.read_text() + '[component.spin.tool.wagi]\nrequest_timeout = "1.5s"\n'
    manifest.write_text(text)
    with wagi_client(manifest, request_timeout="0.1s") as client:
        started = time.monotonic()
        status = client.get("/spin").status_code
        took = time.monotonic() - started
    assert status == 504  # the component's 1.5 s limit ran out, not the client's patience
    assert took >= 1.4, f"answered after {took:.2f} s: the 1.5 s component limit was not used"


def test_the_client_shuts_the_gateway_down(tmp_path):
    before = threading.active_count()
    with wagi_client(app(tmp_path, ok=cgi_guest(b"Content-Type: text/plain\n\nok"))) as client:
        assert client.get("/ok").text == "ok"
    assert threading.active_count() == before


def test_a_broken_app_fails_the_client_at_once(tmp_path):
    (tmp_path / "spin.toml").write_text('spin_manifest_version = 2\n[application]\nnam = "x"\n')
    with pytest.raises(ManifestError, match="nam"):
        wagi_client(tmp_path / "spin.toml")
    manifest = app(tmp_path, broken="(module (func")
    with pytest.raises(LoadError, match="broken"):
        wagi_client(manifest)


def test_client_run_names_the_components_it_has(tmp_path):
    with wagi_client(app(tmp_path, one=cgi_guest(b"Content-Type: text/plain\n\n1"))) as client:
        assert client.run("one").response.text == "1"
        with pytest.raises(KeyError, match="the app has: one"):
            client.run("two")


# --------------------------------------------------------------------------- the plugin


def test_the_plugin_finds_the_app_above_the_test(pytester, tmp_path):
    app(pytester.path, hello=cgi_guest(b"Content-Type: text/plain\n\nhello"))
    pytester.mkdir("tests")
    (pytester.path / "tests" / "test_hello.py").write_text(
        textwrap.dedent(
            """
            def test_hello(wagi_client):
                assert wagi_client.get("/hello").text == "hello"

            def test_the_manifest(wagi_manifest):
                assert wagi_manifest.name == "spin.toml"
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_plugin_says_how_to_name_the_app(pytester):
    pytester.makepyfile("def test_x(wagi_client):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no spin.toml or modules.toml*define a `wagi_manifest` fixture*"])


def test_a_response_text_in_an_unknown_charset_reads_as_utf8():
    headers = Headers([("Content-Type", "text/plain; charset=bogus-42")])
    assert Response(200, headers, "héllo".encode()).text == "héllo"
