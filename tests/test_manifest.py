"""Manifests: the three formats load into one model; every mistake is located and named."""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT
from gateway.manifest import DEFAULT_ARGV, AllowedHost, ManifestError, Mount, load_manifest

HELLO = '(module (func (export "_start")))'


def write(folder: Path, text: str, name: str = "spin.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def one_component(folder: Path, lines: str) -> Path:
    """A spin.toml whose one WAGI component, `c`, runs hello.wat; `lines` add to it."""
    return write(
        folder,
        'spin_manifest_version = 2\n[application]\nname = "demo"\n[[trigger.http]]\n'
        'route = "/"\ncomponent = "c"\nexecutor = { type = "wagi" }\n[component.c]\n'
        f'source = "hello.wat"\n{lines}',
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """An app folder with a module and some files to mount."""
    (tmp_path / "hello.wat").write_text(HELLO)
    static = tmp_path / "static"
    (static / "css").mkdir(parents=True)
    (static / "index.html").write_text("<h1>hi</h1>")
    (static / "css" / "site.css").write_text("body{}")
    (static / "secret.key").write_text("no")
    (tmp_path / "content").mkdir()
    return tmp_path


def test_the_three_example_formats_describe_the_same_app():
    spin2 = load_manifest(ROOT / "spin.toml.example", check_sources=False)
    spin1 = load_manifest(ROOT / "apps" / "spin-v1.toml", check_sources=False)
    wagi = load_manifest(ROOT / "apps" / "modules.toml", check_sources=False)
    assert (spin2.kind, spin1.kind, wagi.kind) == ("spin-v2", "spin-v1", "wagi")

    def shape(manifest):
        components = {
            c.id: (c.source, c.environment, c.mounts, c.files) for c in manifest.components.values()
        }
        routes = [(t.route, t.component, t.entrypoint, t.argv) for t in manifest.triggers]
        return components, routes

    assert shape(spin2) == shape(spin1) == shape(wagi)
    guestbook = spin2.components["guestbook"]
    assert guestbook.mounts == (Mount("/static", ROOT / "apps" / "guestbook" / "static"),)


def test_spin_v2_fields_and_defaults(app: Path):
    path = write(
        app,
        """
        spin_manifest_version = 2
        [application]
        name = "demo"
        [[trigger.http]]
        route = "/env/..."
        component = "env"
        executor = { type = "wagi", argv = "${ARGS} x", entrypoint = "main" }
        [[trigger.http]]
        route = "/hello"
        component = "hello"
        executor = { type = "wagi" }
        [[trigger.http]]
        route = { private = true }
        component = "hidden"
        executor = { type = "wagi" }
        [component.env]
        source = "hello.wat"
        environment = { GREETING = "hi" }
        allowed_outbound_hosts = ["https://example.com"]
        [component.hello]
        source = "hello.wat"
        description = "says hello"
        [component.hidden]
        source = "hello.wat"
        [component.env.tool.other-tool]
        anything = 1
    """,
    )
    manifest = load_manifest(path)
    assert manifest.name == "demo"
    env_trigger, hello_trigger = manifest.triggers
    assert (env_trigger.route, env_trigger.entrypoint, env_trigger.argv) == (
        "/env/...",
        "main",
        "${ARGS} x",
    )
    assert (hello_trigger.entrypoint, hello_trigger.argv) == ("_start", DEFAULT_ARGV)
    assert manifest.private == ("hidden",)
    env = manifest.components["env"]
    assert env.source == app / "hello.wat"
    assert env.environment == (("GREETING", "hi"),)
    assert env.allowed_outbound_hosts == (AllowedHost("https", "example.com"),)


def test_paths_are_relative_to_the_manifest_not_the_working_directory(
    app, monkeypatch, tmp_path_factory
):
    path = write(
        app,
        """
        spin_manifest_version = 2
        [application]
        name = "demo"
        [[trigger.http]]
        route = "/"
        component = "c"
        executor = { type = "wagi" }
        [component.c]
        source = "hello.wat"
    """,
    )
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert load_manifest(path).components["c"].source == app / "hello.wat"


def test_spin_files_globs_folders_excludes_and_mappings(app: Path):
    path = write(
        app,
        """
        spin_manifest_version = 2
        [application]
        name = "demo"
        [[trigger.http]]
        route = "/"
        component = "c"
        executor = { type = "wagi" }
        [component.c]
        source = "hello.wat"
        files = ["static/**/*", { source = "content", destination = "/./data//" },
                 { source = "static/index.html", destination = "/index.html" }, "none/*.txt"]
        exclude_files = ["static/*.key"]
    """,
    )
    component = load_manifest(path).components["c"]
    assert {f.guest_path for f in component.files} == {
        "/static/index.html",
        "/static/css/site.css",
        "/index.html",
    }
    assert component.mounts == (Mount("/data", app / "content"),)
    assert component.empty_patterns == ("none/*.txt",)


def test_files_reached_through_symlinks_keep_their_own_names(app: Path, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.txt"
    outside.write_text("no")
    static = app / "static"
    (static / "current.css").symlink_to("css/site.css")  # staged at its target's name before
    (static / "latest").symlink_to("css")
    (static / "loop").symlink_to(".")  # a glob's ** followed it, again and again
    (static / "css" / "back").symlink_to("..")  # with two, exponentially
    (static / "alias.txt").symlink_to("secret.key")  # excluded, whatever leads to it
    (static / "escape.txt").symlink_to(outside)
    path = one_component(
        app,
        'files = ["static/**/*", { source = "static/current.css", destination = "/c.css" }]\n'
        'exclude_files = ["static/*.key"]\n',
    )
    files = {f.guest_path: f.host_path for f in load_manifest(path).components["c"].files}
    site = static / "css" / "site.css"
    assert files == {
        "/static/index.html": static / "index.html",
        "/static/css/site.css": site,
        "/static/current.css": site,
        "/static/latest/site.css": site,
        "/c.css": site,
    }


SPECIAL_FILES = {
    "a named pipe": os.mkfifo,
    "a socket": lambda path: socket.socket(socket.AF_UNIX).bind(str(path)),
}


@pytest.mark.parametrize("kind", SPECIAL_FILES)
@pytest.mark.parametrize("form", ["spin", "wagi"])
def test_a_mounted_folder_with_a_pipe_socket_or_device_is_refused(app: Path, kind, form):
    # a guest opening a named pipe blocked in a WASI call, where no deadline reaches it
    (app / "content" / "deep").mkdir()
    SPECIAL_FILES[kind](app / "content" / "deep" / "odd")
    if form == "spin":
        path = one_component(app, 'files = [{ source = "content", destination = "/data" }]\n')
    else:
        text = '[[module]]\nroute = "/"\nmodule = "hello.wat"\nvolumes = { "/data" = "content" }\n'
        path = write(app, text, "modules.toml")
    for check_sources in (True, False):  # serve; check and build
        with pytest.raises(ManifestError, match=f"deep/odd is {kind}: a guest that opened it"):
            load_manifest(path, check_sources=check_sources)


def test_a_pipe_named_as_a_file_is_not_called_missing(app: Path):
    os.mkfifo(app / "pipe")
    path = one_component(app, 'files = [{ source = "pipe", destination = "/pipe" }]\n')
    with pytest.raises(ManifestError, match="not a regular file or folder"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            '{ source = "static/index.html", destination = "/data/index.html" }, '
            '{ source = "content", destination = "/data" }',
            "the file /data/index.html is inside the folder mounted at /data",
        ),
        ('"static/index.html", { source = "content", destination = "/" }', "mounted at /"),
        (
            '{ source = "content", destination = "/data" }, '
            '{ source = "static", destination = "/data/" }',
            "are both mounted at /data: the guest would see only one of them",
        ),
    ],
)
def test_mounts_that_would_hide_each_other_are_refused(app: Path, files: str, message: str):
    path = one_component(app, f"files = [{files}]\n")
    with pytest.raises(ManifestError, match=message):
        load_manifest(path)


def test_nested_folder_mounts_are_fine(app: Path):
    path = one_component(
        app,
        'files = [{ source = "static", destination = "/s" }, '
        '{ source = "content", destination = "/s/more" }]\n',
    )
    assert len(load_manifest(path).components["c"].mounts) == 2


def test_spin_v1_base_is_joined_onto_routes(app: Path):
    path = write(
        app,
        """
        spin_manifest_version = "1"
        name = "demo"
        trigger = { type = "http", base = "/api" }
        [[component]]
        id = "c"
        source = "hello.wat"
        [component.trigger]
        route = "/hello"
        executor = { type = "wagi" }
    """,
    )
    manifest = load_manifest(path)
    assert manifest.base == "/api"
    assert manifest.triggers[0].route == "/api/hello"


def test_spin_v2_inline_component(app: Path):
    path = write(
        app,
        """
        spin_manifest_version = 2
        [application]
        name = "demo"
        [[trigger.http]]
        route = "/x"
        component = { source = "hello.wat" }
        executor = { type = "wagi" }
    """,
    )
    manifest = load_manifest(path)
    assert manifest.triggers[0].component in manifest.components


def test_wagi_modules_accept_file_urls_volumes_and_environment(app: Path):
    path = write(
        app,
        f"""
        [[module]]
        route = "/a"
        module = "file://{app}/hello.wat"
        volumes = {{ "/data" = "content" }}
        environment = {{ A = "1" }}
        allowed_hosts = ["https://api.example.com"]
        http_max_concurrency = 4
        [[module]]
        route = "/b"
        module = "hello.wat"
        entrypoint = "other"
        argv = "${{SCRIPT_NAME}}"
    """,
        name="modules.toml",
    )
    manifest = load_manifest(path)
    first, second = manifest.components.values()
    assert first.id == "hello" and second.id == "hello-2"
    assert first.mounts == (Mount("/data", app / "content"),)
    assert first.environment == (("A", "1"),)
    assert manifest.triggers[1].entrypoint == "other"


SPIN_V2_HEAD = """\
spin_manifest_version = 2
[application]
name = "demo"
[[trigger.http]]
route = "/"
component = "c"
executor = { type = "wagi" }
[component.c]
source = "hello.wat"
"""

# (manifest text, line the error must point at, text the error must contain)
ERRORS = [
    pytest.param(
        SPIN_V2_HEAD + "sorce = 'x'\n",
        10,
        "component.c.sorce: unknown key (did you mean `source`?)",
        id="unknown-key-with-suggestion",
    ),
    pytest.param(
        SPIN_V2_HEAD + "environment = { A = 1 }\n",
        10,
        "component.c.environment.A: value must be a string, got an integer (1)",
        id="wrong-type-in-table",
    ),
    pytest.param(
        SPIN_V2_HEAD.replace('route = "/"', "route = 7"),
        5,
        "trigger.http[0].route: expected a string",
        id="wrong-type-route",
    ),
    pytest.param(
        SPIN_V2_HEAD.replace("hello.wat", "missing.wasm"),
        9,
        "component.c.source: module file not found",
        id="missing-module",
    ),
    pytest.param(
        SPIN_V2_HEAD.replace('executor = { type = "wagi" }', 'executor = { type = "spin" }'),
        7,
        "executor `spin` runs Spin SDK components",
        id="not-wagi-executor",
    ),
    pytest.param(
        SPIN_V2_HEAD.replace('executor = { type = "wagi" }\n', ""),
        6,
        "has no executor",
        id="no-executor",
    ),
    pytest.param(
        SPIN_V2_HEAD.replace('component = "c"', 'component = "d"'),
        6,
        "no component named `d`",
        id="unknown-component",
    ),
    pytest.param(
        SPIN_V2_HEAD.replace('{ type = "wagi" }', '{ type = "wagi", argv = "${X}" }'),
        7,
        "unknown variable ${X}",
        id="bad-argv-variable",
    ),
    pytest.param(
        SPIN_V2_HEAD.replace(
            'source = "hello.wat"', 'source = { url = "https://x/y.wasm", digest = "d" }'
        ),
        9,
        "remote sources (url, registry) are not supported",
        id="remote-source",
    ),
    pytest.param(
        SPIN_V2_HEAD + 'files = ["../outside/*"]\n',
        10,
        "outside the application folder",
        id="files-outside-app",
    ),
    pytest.param(
        SPIN_V2_HEAD
        + "files = [{ source = 'static/index.html', destination = '/../../tmp/x.html' }]\n",
        10,
        "destination: must not contain `..`",
        id="files-destination-climbs",
    ),
    pytest.param(
        SPIN_V2_HEAD + "files = [{ source = 'static/index.html', destination = '/' }]\n",
        10,
        "destination: a file's destination must name a file",
        id="files-destination-root",
    ),
    pytest.param(
        SPIN_V2_HEAD + "files = [{ source = 'static/index.html', destination = '/a' },\n"
        "         { source = 'static/index.html', destination = '/a/b' }]\n",
        10,
        "files: `/a` would be both a file and a folder",
        id="files-file-and-folder",
    ),
    pytest.param(
        SPIN_V2_HEAD.replace('source = "hello.wat"', 'sorce = "hello.wat"'),
        8,
        "missing required key `source` (is `sorce` a misspelling of it?)",
        id="missing-key-misspelt",
    ),
    pytest.param(
        SPIN_V2_HEAD + '[component.c.tool.wagi]\nmax_memroy = "1M"\n',
        11,
        "max_memroy: unknown key (did you mean `max_memory`?)",
        id="misspelt-limit",
    ),
    pytest.param(
        SPIN_V2_HEAD.replace('{ type = "wagi" }', '{ type = "wagii" }'),
        7,
        'unknown executor `wagii`: this gateway runs `{ type = "wagi" }`',
        id="unknown-executor",
    ),
    pytest.param(
        SPIN_V2_HEAD.replace('source = "hello.wat"', 'source = "static"'),
        9,
        "is a folder, not a module file",
        id="source-is-a-folder",
    ),
    pytest.param(
        SPIN_V2_HEAD + "[component.c.tool.wagi]\nrequest_timeout = true\n",
        11,
        "request_timeout: expected seconds, got true",
        id="toml-bool-as-written",
    ),
    pytest.param(
        SPIN_V2_HEAD + "key_value_stores = ['default']\n",
        10,
        "not supported",
        id="spin-host-service",
    ),
    pytest.param(
        SPIN_V2_HEAD + "[component.c.tool.wagi]\nfrobnicate = 1\n",
        11,
        "component.c.tool.wagi.frobnicate: unknown key",
        id="unknown-wagi-tool-key",
    ),
    pytest.param("spin_manifest_version = 3\n", 1, "unsupported version 3", id="bad-version"),
    pytest.param(
        "spin_manifest_version = 2\n[application\n", 2, "not valid TOML", id="toml-syntax"
    ),
    pytest.param(
        '[[module]]\nroute = "/"\nmodule = "hello.wat"\nvolums = {}\n',
        4,
        "module[0].volums: unknown key (did you mean `volumes`?)",
        id="wagi-unknown-key",
    ),
    pytest.param(
        '[[module]]\nroute = "/"\n',
        1,
        "missing required key `module`",
        id="wagi-missing-module-key",
    ),
    pytest.param(
        '[[module]]\nroute = "/"\nmodule = "oci://x/y"\n',
        3,
        "only local files are supported",
        id="wagi-remote-module",
    ),
    pytest.param(
        'spin_manifest_version = "1"\nname = "x"\ntrigger = { type = "redis" }\n'
        "[[component]]\nid = 'c'\nsource = 'hello.wat'\n",
        3,
        "only HTTP triggers are supported",
        id="spin-v1-redis",
    ),
    pytest.param(
        SPIN_V2_HEAD.replace('"c"', '"c.d"').replace("[component.c]", '[component."c.d"]'),
        8,
        'component."c.d": component id may use letters, digits',
        id="spin-v2-bad-component-id",
    ),
    pytest.param(
        'spin_manifest_version = "1"\nname = "x"\ntrigger = { type = "http" }\n'
        "[[component]]\nid = 'c d'\nsource = 'hello.wat'\n"
        "[component.trigger]\nroute = '/'\nexecutor = { type = 'wagi' }\n",
        5,
        "component[0].id: component id may use letters, digits",
        id="spin-v1-bad-component-id",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), ERRORS)
def test_load_errors_name_file_line_key_and_problem(app: Path, text: str, line: int, message: str):
    path = app / "spin.toml"
    path.write_text(text)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    error = str(caught.value)
    assert error.startswith(f"{path}:{line}: "), error
    assert message in error


def test_a_manifest_nested_too_deeply_is_an_error_not_a_crash(app: Path):
    path = write(app, "spin_manifest_version = 2\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ManifestError, match="not valid TOML: nested too deeply"):
        load_manifest(path)


def test_a_manifest_that_is_neither_format_is_refused(app: Path):
    path = write(app, 'title = "not a manifest"\n')
    with pytest.raises(ManifestError, match="not a known manifest"):
        load_manifest(path)


def test_sources_may_be_missing_when_only_building(app: Path):
    path = app / "spin.toml"
    path.write_text(SPIN_V2_HEAD.replace("hello.wat", "later.wasm"))
    assert load_manifest(path, check_sources=False).components["c"].source == app / "later.wasm"


def test_application_tool_wagi_sets_every_components_defaults(app: Path):
    path = write(
        app,
        """
        spin_manifest_version = 2
        [application]
        name = "demo"
        [application.tool.wagi]
        request_timeout = "5s"
        max_memory = "32M"
        pool_size = 3
        [application.tool.other-tool]
        anything = 1
        [[trigger.http]]
        route = "/a"
        component = "a"
        executor = { type = "wagi" }
        [[trigger.http]]
        route = "/b"
        component = "b"
        executor = { type = "wagi" }
        [component.a]
        source = "hello.wat"
        [component.b]
        source = "hello.wat"
        [component.b.tool.wagi]
        request_timeout = "1s"
        pool_size = 0
    """,
    )
    components = load_manifest(path).components
    assert components["a"].limits == {"request_timeout": 5.0, "max_memory": 32 << 20}
    assert components["a"].pool_size == 3
    assert components["b"].limits == {"request_timeout": 1.0, "max_memory": 32 << 20}
    assert components["b"].pool_size == 0


def test_a_misspelt_application_tool_wagi_key_is_an_error(app: Path):
    path = write(
        app,
        SPIN_V2_HEAD.replace("[[trigger", "[application.tool.wagi]\npool_sise = 2\n[[trigger", 1),
    )
    with pytest.raises(ManifestError, match=r"pool_sise.*pool_size"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("entry", "allowed", "refused"),
    [
        (
            "https://api.example.com",
            ["https://api.example.com:443"],
            ["http://api.example.com:80", "https://api.example.com:8443",
             "https://example.com:443", "https://api.example.com.evil.net:443"],
        ),
        ("http://127.0.0.1:8080", ["http://127.0.0.1:8080"], ["http://127.0.0.1:80"]),
        (
            "*://*.example.com:*",
            ["http://a.example.com:1", "https://b.a.example.com:443"],
            ["https://example.com:443", "https://aexample.com:443",
             "http://::1%25.example.com:80"],
        ),
        ("api.example.com", ["http://api.example.com:80", "https://api.example.com:443"],
         ["http://api.example.com:8080", "https://other.example.com:443"]),
        ("insecure:allow-all", ["http://anything:1", "https://x.y:443"], []),
    ],
)  # fmt: skip
def test_allowed_outbound_hosts_match_scheme_host_and_port(app: Path, entry, allowed, refused):
    path = write(
        app, f'[[module]]\nroute = "/"\nmodule = "hello.wat"\nallowed_hosts = ["{entry}"]\n'
    )
    rules = load_manifest(path).components["hello"].allowed_outbound_hosts

    def allows(url: str) -> bool:
        scheme, rest = url.split("://")
        host, port = rest.rsplit(":", 1)
        return any(rule.allows(scheme, host, int(port)) for rule in rules)

    assert [url for url in allowed + refused if allows(url)] == allowed


@pytest.mark.parametrize(
    "entry",
    ["ftp://example.com", "https://", "https://a b", "https://x:70000",
     "example.com"],  # Spin 2 wants a scheme
)  # fmt: skip
def test_a_bad_allowed_host_is_a_load_error(app: Path, entry):
    path = write(app, SPIN_V2_HEAD + f'allowed_outbound_hosts = ["{entry}"]\n')
    with pytest.raises(ManifestError, match="is not a URL like"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("entry", "where"),
    [
        ('files = [{ source = "static", destination = "/a\\u0000b" }]', "files[0].destination"),
        ('files = ["static/in\\u0000dex.html"]', "files[0]"),
        ('environment = { "A\\u0000" = "b" }', 'environment."A\x00"'),
        ('source = "hel\\u0000lo.wat"', "component.hello.source"),
    ],
)
def test_a_nul_anywhere_is_refused_with_its_place(app: Path, entry: str, where: str):
    # it reached the file system as "embedded null byte", a traceback
    source = "" if entry.startswith("source") else 'source = "hello.wat"\n'
    path = write(
        app,
        'spin_manifest_version = 2\n[application]\nname = "demo"\n'
        '[[trigger.http]]\nroute = "/..."\ncomponent = "hello"\n'
        f"[component.hello]\n{source}{entry}\n",
    )
    with pytest.raises(ManifestError, match="must not hold a NUL character") as raised:
        load_manifest(path)
    assert where in str(raised.value) and "spin.toml:" in str(raised.value)


def test_a_nul_check_copes_with_keys_nested_deep(tmp_path: Path):
    # tomllib reads dotted keys without recursing; a recursive check hit RecursionError
    path = write(
        tmp_path,
        "spin_manifest_version = 2\n" + ".".join(f"k{i}" for i in range(1200)) + ' = "x"\n',
    )
    with pytest.raises(ManifestError, match="missing required key `application`"):
        load_manifest(path)  # the NUL check went through it all


def test_a_nul_in_a_wagi_volume_is_refused(app: Path):
    path = write(
        app,
        '[[module]]\nroute = "/"\nmodule = "hello.wat"\nvolumes = { "/d\\u0000" = "static" }\n',
        "modules.toml",
    )
    with pytest.raises(ManifestError, match="must not hold a NUL character"):
        load_manifest(path)
