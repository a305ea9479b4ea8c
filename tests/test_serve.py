"""End to end: `wagi serve` as a subprocess, spoken to over HTTP on a real socket."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
import trustme

from conftest import (
    ROOT,
    Server,
    answers,
    cgi_guest,
    env_section,
    get,
    run_wagi,
    spin_toml,
    wait_for_log,
    wait_until,
    wat_string,
)

# ------------------------------------------------------------------- the example app


@pytest.fixture
def example(serve, example_apps):
    return serve("-c", str(example_apps))


def test_hello(example):
    response = get(example, "/hello")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "Hello from WebAssembly!\n"
    assert response.headers["content-length"] == str(len(response.content))
    assert len(response.headers["x-request-id"]) == 16


def test_env_shows_argv_environment_and_body(example):
    response = httpx.post(
        example.url + "/env/foo/bar?greet=matt&x=1",
        content=b"the body",
        headers={
            "Content-Type": "text/x-test",
            "Proxy": "http://evil",
            "Authorization": "Bearer secret",
        },
        timeout=10,
    )
    assert response.status_code == 200
    assert "argv[0]=/env/foo/bar\nargv[1]=greet=matt\nargv[2]=x=1\n" in response.text
    env = env_section(response.text)
    assert env["SCRIPT_NAME"] == "/env"
    assert env["PATH_INFO"] == "/foo/bar"
    assert env["QUERY_STRING"] == "greet=matt&x=1"
    assert env["CONTENT_TYPE"] == "text/x-test"
    assert env["CONTENT_LENGTH"] == "8"
    assert env["REQUEST_METHOD"] == "POST"
    assert env["GREETING"] == "hello"
    assert env["X_MATCHED_ROUTE"] == "/env/..."
    assert env["SERVER_PORT"] == str(example.port)
    assert env["X_FULL_URL"] == f"{example.url}/env/foo/bar?greet=matt&x=1"
    assert "HTTP_PROXY" not in env and "HTTP_AUTHORIZATION" not in env
    assert response.text.endswith("## stdin\nthe body")


def test_env_without_query_has_a_single_argument(example):
    response = get(example, "/env")
    assert "argv[0]=/env\n## env" in response.text
    assert env_section(response.text)["PATH_INFO"] == ""


def test_guestbook_form_cookies_redirect_and_static_file(example):
    with httpx.Client(base_url=example.url, timeout=10) as client:
        page = client.get("/guestbook/")
        assert page.status_code == 200
        assert "Sign the guestbook" in page.text
        assert page.headers["content-type"] == "text/html; charset=utf-8"

        signed = client.post("/guestbook/", data={"name": "Ada <L>", "note": "hi; there"})
        assert signed.status_code == 303
        assert signed.headers["location"] == "/guestbook/"
        cookies = signed.headers.get_list("set-cookie")
        assert len(cookies) == 2  # both cookies survive
        assert cookies[0].startswith("guest_name=Ada%20%3CL%3E;")
        assert cookies[1].startswith("guest_note=hi%3B%20there;")

        back = client.get(signed.headers["location"])
        assert "Welcome back, Ada &lt;L&gt;!" in back.text
        assert "<q>hi; there</q>" in back.text

        css = client.get("/guestbook/static/style.css")
        assert css.status_code == 200
        assert css.headers["content-type"] == "text/css; charset=utf-8"
        assert css.content == (ROOT / "apps/guestbook/static/style.css").read_bytes()

        assert client.get("/guestbook/static/missing.css").status_code == 404
        assert client.post("/guestbook/", data={"note": "no name"}).status_code == 400


def test_health_not_found_and_bad_paths(example):
    assert get(example, "/healthz").text == "OK\n"
    assert get(example, "/.well-known/spin/health").status_code == 200
    assert get(example, "/nothing/here").status_code == 404
    assert get(example, "/hello/").status_code == 404  # exact routes are exact
    assert get(example, "/env/%2e%2e/secret").status_code == 400


def test_head_has_headers_but_no_body(example):
    response = httpx.head(example.url + "/hello", timeout=10)
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "24"


def test_the_three_manifest_formats_serve_the_same_app(serve, example_apps):
    def responses(server):
        results = []
        for path in (
            "/hello",
            "/env/x?a=1",
            "/guestbook/",
            "/guestbook/static/style.css",
            "/missing",
        ):
            response = get(server, path)
            text = response.text.replace(str(server.port), "PORT")
            text = "\n".join(
                line
                for line in text.splitlines()
                if not line.startswith(("X_CLIENT_ADDR=", "HTTP_USER_AGENT="))
            )
            results.append((response.status_code, response.headers.get("content-type"), text))
        return results

    spin2 = responses(serve("-c", str(example_apps)))
    spin1 = responses(serve("-c", str(ROOT / "apps" / "spin-v1.toml")))
    wagi = responses(serve("-c", str(ROOT / "apps" / "modules.toml")))
    assert spin2 == spin1 == wagi


def test_a_restart_loads_modules_from_the_compiled_cache(serve, example_apps, tmp_path):
    cache = tmp_path / "shared-cache"
    first = serve("-c", str(example_apps), cache_dir=cache)
    assert first.log().count(" compiled in ") == 3
    first.stop()
    second = serve("-c", str(example_apps), cache_dir=cache)
    log = second.log()
    for component in ("hello", "env", "guestbook"):
        assert f"component {component}: " in log
    assert log.count("loaded from the compiled cache") == 3
    assert " compiled in " not in log
    assert get(second, "/hello").status_code == 200


# ------------------------------------------------------------------- apps of our own


def spin_app(folder: Path, routes: dict[str, str], extra: str = "") -> Path:
    """Write spin.toml (see conftest.spin_toml) into `folder`."""
    (folder / "spin.toml").write_text(spin_toml(routes, extra))
    return folder / "spin.toml"


GUESTS = {
    "ok": cgi_guest(b"Content-Type: text/plain\n\nfine\n", b"a warning\nsecond line\n"),
    "exits": cgi_guest(b"Content-Type: text/plain\n\npartial", exit_code=3),
    "exits0": cgi_guest(b"Content-Type: text/plain\n\nbye", exit_code=0),
    "traps": cgi_guest(b"Content-Type: text/plain\n\n", trap=True),
    "noheader": cgi_guest(b"just some text\n"),
    "badstatus": cgi_guest(b"Status: teapot\n\n"),
    "nulheader": cgi_guest(b"Content-Type: text/plain\nX-Bad: a\x00b\n\n"),
}


@pytest.fixture
def guests(serve, tmp_path):
    for name, wat in GUESTS.items():
        (tmp_path / f"{name}.wat").write_text(wat)
    manifest = spin_app(tmp_path, {f"/{name}": name for name in GUESTS})
    return serve("-c", str(manifest), "--log-dir", str(tmp_path / "logs"))


@pytest.mark.parametrize(
    ("path", "status", "body", "logged"),
    [
        ("/ok", 200, "fine\n", None),
        ("/exits0", 200, "bye", None),
        (
            "/exits",
            500,
            "Internal Server Error\n",
            "500, component exits, route /exits: exit: exit status 3",
        ),
        ("/traps", 500, "Internal Server Error\n", "500, component traps, route /traps: trap:"),
        ("/noheader", 500, "Internal Server Error\n", "module printed no CGI header block"),
        ("/badstatus", 502, "Bad Gateway\n", "invalid Status"),
        ("/nulheader", 502, "Bad Gateway\n", "control character"),
    ],
)
def test_guest_failures_get_honest_statuses_and_log_lines(guests, path, status, body, logged):
    response = get(guests, path)
    assert (response.status_code, response.text) == (status, body)
    request_id = response.headers["x-request-id"]
    if logged:

        def logged_with_id() -> bool:
            return any(logged in line for line in guests.log().splitlines() if request_id in line)

        wait_until(logged_with_id, f"{logged!r} logged for {request_id}")
        assert "Traceback" not in guests.log()


def test_stderr_goes_to_the_component_log_and_the_gateway_log(guests, tmp_path):
    response = get(guests, "/ok")
    request_id = response.headers["x-request-id"]
    component_log = (tmp_path / "logs" / "ok.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in component_log] == [
        f"{request_id} a warning",
        f"{request_id} second line",
    ]
    wait_for_log(guests, f"[ok {request_id}] a warning")


def test_a_slow_guest_does_not_block_other_requests(serve, tmp_path):
    # Counts down from a large number: about a second of pure wasm work.
    slow = """
    (module
      (import "wasi_snapshot_preview1" "fd_write"
        (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 64) "Content-Type: text/plain\\n\\nslow\\n")
      (func (export "_start") (local $n i64)
        (local.set $n (i64.const 1500000000))
        (loop $spin
          (local.set $n (i64.sub (local.get $n) (i64.const 1)))
          (br_if $spin (i64.ne (local.get $n) (i64.const 0))))
        (i32.store (i32.const 0) (i32.const 64))
        (i32.store (i32.const 4) (i32.const 31))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
    """
    (tmp_path / "slow.wat").write_text(slow)
    (tmp_path / "fast.wat").write_text(cgi_guest(b"Content-Type: text/plain\n\nfast\n"))
    server = serve("-c", str(spin_app(tmp_path, {"/slow": "slow", "/fast": "fast"})))
    slow_result = {}
    started = time.monotonic()
    worker = threading.Thread(
        target=lambda: slow_result.update(
            response=get(server, "/slow"), seconds=time.monotonic() - started
        )
    )
    worker.start()
    time.sleep(0.1)
    fast_started = time.monotonic()
    fast = get(server, "/fast")
    fast_seconds = time.monotonic() - fast_started
    worker.join()
    assert fast.text == "fast\n"
    assert slow_result["response"].text == "slow\n"
    # The fast answer did not wait for the slow guest to finish.
    assert fast_seconds < slow_result["seconds"] / 2, (fast_seconds, slow_result["seconds"])


def test_environment_precedence_env_file_then_env_then_component_then_cgi(
    serve, tmp_path, example_apps
):
    env_file = tmp_path / "vars.env"
    env_file.write_text(
        '# comment\nFROM_FILE=file\nBOTH=file\nGREETING=file\nexport QUOTED="q v"\n'
    )
    server = serve(
        "-c",
        str(example_apps),
        "--env-file",
        str(env_file),
        "-e",
        "BOTH=flag",
        "-e",
        "GREETING=flag",
        "--env",
        "REQUEST_METHOD=PUT",
    )
    env = env_section(get(server, "/env").text)
    assert (env["FROM_FILE"], env["BOTH"], env["QUOTED"]) == ("file", "flag", "q v")
    assert env["GREETING"] == "hello"  # the component's own value wins over global ones
    assert env["REQUEST_METHOD"] == "GET"  # CGI variables can never be overridden


def test_files_patterns_and_volumes_are_mounted_read_only(serve, tmp_path, c_guest):
    app = tmp_path / "app"
    (app / "public" / "sub").mkdir(parents=True)
    (app / "public" / "a.txt").write_text("A")
    (app / "public" / "sub" / "b.txt").write_text("B")
    (app / "public" / "hidden.key").write_text("K")
    (app / "data").mkdir()
    (app / "data" / "d.txt").write_text("D")
    (app / "secret.txt").write_text("not for guests")
    (app / "public" / "current.txt").symlink_to("sub/b.txt")  # seen at its own name
    (tmp_path / "outside.txt").write_text("O")
    (app / "public" / "escape.txt").symlink_to(tmp_path / "outside.txt")  # not at all
    (app / "files.wasm").write_bytes(c_guest("files").read_bytes())
    (app / "spin.toml").write_text(
        spin_toml(
            {"/...": "files.wasm"},
            'files = ["public/**/*", { source = "data", destination = "/mnt/data" }]\n'
            'exclude_files = ["public/*.key"]\n',
        )
    )
    server = serve("-c", str(app / "spin.toml"))

    def ask(query: str) -> str:
        return get(server, "/?" + query).text

    assert ask("read=/public/a.txt") == "A"
    assert ask("read=/public/sub/b.txt") == "B"
    assert ask("read=/mnt/data/d.txt") == "D"
    assert ask("read=/public/current.txt") == "B"
    assert sorted(ask("list=/public").split()) == [
        "a.txt",
        "current.txt",
        "sub",
    ]  # no excluded file
    assert ask("read=/public/hidden.key").startswith("error: read /public/hidden.key:")
    assert ask("read=/secret.txt").startswith("error:")
    assert ask("read=/public/../secret.txt").startswith("error:")
    assert ask("write=/mnt/data/new.txt").startswith("error: write /mnt/data/new.txt:")
    assert ask("write=/public/a.txt").startswith("error:")
    assert not (app / "data" / "new.txt").exists()
    assert (app / "public" / "a.txt").read_text() == "A"


def test_wagi_volumes_are_mounted_read_only(serve, tmp_path, c_guest):
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "x.txt").write_text("X")
    (tmp_path / "files.wasm").write_bytes(c_guest("files").read_bytes())
    manifest = tmp_path / "modules.toml"
    manifest.write_text(
        '[[module]]\nroute = "/..."\nmodule = "files.wasm"\nvolumes = { "/assets" = "assets" }\n'
    )
    server = serve("-c", str(manifest))
    assert get(server, "/?read=/assets/x.txt").text == "X"
    assert get(server, "/?write=/assets/y.txt").text.startswith("error:")
    assert not (tmp_path / "assets" / "y.txt").exists()


@pytest.fixture(params=["1", "2"], ids=["1 worker", "2 workers"])
def tls_server(request, serve, example_apps, tmp_path):
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(cert_path)
    certificate.private_key_pem.write_to_path(key_path)
    context = ssl.create_default_context()
    authority.configure_trust(context)
    server = serve(
        "-c",
        str(example_apps),
        "--tls-cert",
        str(cert_path),
        "--tls-key",
        str(key_path),
        "--workers",
        request.param,
        verify=context,
    )
    return server, context


def test_tls(tls_server):
    server, context = tls_server
    response = httpx.get(server.url + "/hello", verify=context, timeout=10)
    assert response.text == "Hello from WebAssembly!\n"
    assert response.http_version == "HTTP/1.1"
    text = httpx.get(server.url + "/env", verify=context, timeout=10).text
    assert "X_FULL_URL=https://127.0.0.1:" in text
    assert "HTTPS=on\n" in text


def test_http2_over_tls(tls_server):
    server, context = tls_server
    with httpx.Client(http2=True, verify=context, timeout=10) as client:
        responses = [client.get(server.url + path) for path in ("/hello", "/env", "/hello")]
    assert {r.http_version for r in responses} == {"HTTP/2"}  # negotiated with ALPN
    assert responses[0].text == "Hello from WebAssembly!\n"
    assert "SERVER_PROTOCOL=HTTP/2\n" in responses[1].text


def test_http2_in_clear_text_with_prior_knowledge(example):
    import h2.config
    import h2.connection
    import h2.events

    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    connection.send_headers(
        1,
        [
            (":method", "GET"),
            (":path", "/hello"),
            (":scheme", "http"),
            (":authority", f"127.0.0.1:{example.port}"),
        ],
        end_stream=True,
    )
    status, body = None, b""
    with socket.create_connection(("127.0.0.1", example.port), timeout=10) as sock:
        sock.sendall(connection.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                break
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    connection.acknowledge_received_data(len(event.data), event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    sock.sendall(connection.data_to_send())
                    assert (status, body) == (b"200", b"Hello from WebAssembly!\n")
                    return
            sock.sendall(connection.data_to_send())
    raise AssertionError(f"no complete HTTP/2 answer: {status!r} {body!r}")


# ------------------------------------------------------------------- the command line


def test_version_and_help():
    version = run_wagi("--version")
    assert version.returncode == 0 and version.stdout.startswith("wagi ")
    help_text = run_wagi("serve", "--help").stdout
    for flag in (
        "-c FILE, --config FILE",
        "-l HOST:PORT, --listen HOST:PORT",
        "-e NAME=VALUE, --env NAME=VALUE",
        "--env-file FILE",
        "--log-dir DIR",
        "--cache-dir DIR",
        "--tls-cert FILE",
        "--tls-key FILE",
    ):
        assert flag in help_text


def test_an_idle_connection_stays_open_for_the_keep_alive_timeout(serve, example_apps):
    server = serve("-c", str(example_apps), "--keep-alive-timeout", "2")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for pause in (0, 1):  # idle, though not for long: the same connection serves
            time.sleep(pause)
            connection.request("GET", "/hello")
            assert connection.getresponse().read() == b"Hello from WebAssembly!\n"
        idle_since = time.monotonic()
        assert connection.sock.recv(1) == b""  # then the gateway closes it
        assert 1.5 < time.monotonic() - idle_since < 6
    finally:
        connection.close()


def test_serve_finds_spin_toml_in_the_working_directory(serve, tmp_path):
    (tmp_path / "hello.wat").write_text(cgi_guest(b"Content-Type: text/plain\n\nfound\n"))
    spin_app(tmp_path, {"/": "hello"})
    server = serve(cwd=tmp_path)
    assert get(server, "/").text == "found\n"


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (
            "spin_manifest_version = 2\n[application]\nname = 'x'\n[[trigger.http]]\nroute = '/'\n"
            "component = 'c'\nexecutor = { type = 'wagi' }\n[component.c]\nsource = 'gone.wasm'\n",
            ":9: component.c.source: module file not found",
        ),
        (
            "[[module]]\nroute = '/'\nmodule = 'm.wat'\nroute_name = 1\n",
            ":4: module[0].route_name: unknown key",
        ),
        (
            "[[module]]\nroute = '/a'\nmodule = 'm.wat'\n"
            "[[module]]\nroute = '/a'\nmodule = 'm.wat'\n",
            ":5: route /a clashes with route /a of component `m`",
        ),
        ("[[module]]\nroute = 'a'\nmodule = 'm.wat'\n", ":2: route 'a' must start with `/`"),
    ],
)
def test_a_bad_manifest_exits_non_zero_with_one_clear_line(tmp_path, manifest, message):
    (tmp_path / "m.wat").write_text(cgi_guest(b"x"))
    path = tmp_path / "spin.toml"
    path.write_text(manifest)
    result = run_wagi(
        "serve", "-c", str(path), "-l", "127.0.0.1:0", "--cache-dir", str(tmp_path / "c")
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {path}{message}"), errors[0]
    assert "http://" not in result.stdout + result.stderr  # refused before listening


def test_bad_flags_are_refused_clearly(tmp_path, example_apps):
    (tmp_path / "nul.env").write_text("A=x\0y\n")
    for args, text in (
        (["-e", "no-equals"], "expected NAME=VALUE"),
        (["-e", os.fsdecode(b"A=\xff")], "A: the value is not UTF-8 text"),
        (["--env-file", str(tmp_path / "nul.env")], "A: a value must not hold a NUL"),
        (["-l", "nowhere"], "expected HOST:PORT"),
        (["-l", "http://127.0.0.1:3000/"], "not a URL: '127.0.0.1:3000'"),
        (["-l", "127.0.0.1:99999"], "port 99999 is out of range (0-65535)"),
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--env-file", str(tmp_path / "none.env")], "cannot read env file"),
        (
            ["--tls-cert", str(ROOT / "README.md"), "--tls-key", str(ROOT / "README.md")],
            "not a usable certificate and key",
        ),
        (["--request-timeout", "2000000"], "--request-timeout: duration must be at most a day"),
        (["--grace-period", "-1"], "--grace-period: not a duration"),
    ):
        result = run_wagi("serve", "-c", str(example_apps), *args)
        assert result.returncode == 1 and text in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_a_folder_given_for_the_manifest_means_the_manifest_in_it(tmp_path):
    (tmp_path / "m.wat").write_text(cgi_guest(b"Content-Type: text/plain\n\nfound\n"))
    (tmp_path / "modules.toml").write_text('[[module]]\nroute = "/"\nmodule = "m.wat"\n')
    assert run_wagi("check", "-c", str(tmp_path)).returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_wagi("check", "-c", str(empty))
    assert result.returncode == 1
    assert f"error: no spin.toml or modules.toml in {empty}" in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "SO_REUSEPORT"])
def test_a_port_in_use_is_one_clear_error(tmp_path, example_apps, workers, reuse_port):
    # Workers listen with SO_REUSEPORT, which would let them join another process that
    # holds the port with it too, and silently share its connections.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run_wagi("serve", "-c", str(example_apps), "-l", address, "--workers", workers,
                          "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"error: cannot listen on {address}: address already in use" in result.stderr


def test_the_banner_names_the_port_the_system_chose(tmp_path, example_apps):
    server = Server(["-c", str(example_apps), "--cache-dir", str(tmp_path / "c")], ROOT,
                    tmp_path / "log", port=0)  # fmt: skip
    try:
        banner = wait_for_log(server, "wagi:   hello")
        url = next(line for line in banner.splitlines() if "wagi:   hello" in line).split()[-1]
        assert url.startswith("http://127.0.0.1:") and not url.startswith("http://127.0.0.1:0/")
        wait_until(lambda: answers(url), f"nothing answers at {url}")
    finally:
        server.stop()


def test_wagi_routes_declared_by_the_module(serve, tmp_path):
    # `_routes` prints sub-routes; each maps to another export of the same module.
    routes_text = b"/hello hello\n/files/... files\n"
    wat = f"""
    (module
      (import "wasi_snapshot_preview1" "fd_write"
        (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 100) "{wat_string(routes_text)}")
      (data (i32.const 200) "Content-Type: text/plain\\n\\nmain\\n")
      (data (i32.const 300) "Content-Type: text/plain\\n\\nhello\\n")
      (data (i32.const 400) "Content-Type: text/plain\\n\\nfiles\\n")
      (func $print (param $at i32) (param $length i32)
        (i32.store (i32.const 0) (local.get $at))
        (i32.store (i32.const 4) (local.get $length))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
      (func (export "_routes") (call $print (i32.const 100) (i32.const {len(routes_text)})))
      (func (export "_start") (call $print (i32.const 200) (i32.const 31)))
      (func (export "hello") (call $print (i32.const 300) (i32.const 32)))
      (func (export "files") (call $print (i32.const 400) (i32.const 32))))
    """
    (tmp_path / "app.wat").write_text(wat)
    manifest = tmp_path / "modules.toml"
    manifest.write_text('[[module]]\nroute = "/app/..."\nmodule = "app.wat"\n')
    server = serve("-c", str(manifest))
    assert get(server, "/app/hello").text == "hello\n"
    assert get(server, "/app/files/x/y").text == "files\n"
    assert get(server, "/app/other").text == "main\n"


def test_a_route_whose_entrypoint_is_missing_is_known_at_load_and_answers_500(serve, tmp_path):
    (tmp_path / "m.wat").write_text(cgi_guest(b"Content-Type: text/plain\n\nfine\n"))
    (tmp_path / "modules.toml").write_text(
        '[[module]]\nroute = "/ok"\nmodule = "m.wat"\n\n'
        '[[module]]\nroute = "/broken"\nmodule = "m.wat"\nentrypoint = "nope"\n'
    )
    server = serve("-c", str(tmp_path / "modules.toml"))
    assert "modules.toml:6: route /broken will answer 500: the module does not export `nope`" in (
        server.log()
    )
    response = get(server, "/broken")
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    expected = f"{request_id}: 500, component m-2, route /broken: the module does not export"
    assert expected in server.log()
    assert get(server, "/ok").text == "fine\n"
