"""`wagi check`: every problem of an app on one line, with where, who, what and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import EXAMPLE, routes_guest, run_wagi
from gateway.check import check_app
from gateway.engine import START_FUNCTION_LIMIT, Engine
from gateway.routing import RoutePattern

TRIGGER = '[[trigger.http]]\nroute = "{route}"\ncomponent = "{component}"\nexecutor = {executor}\n'

GUESTS = {
    "good.wat": '(module (memory (export "memory") 1) (func (export "_start")))',
    "reactor.wat": '(module (memory (export "memory") 1) (func (export "_initialize"))'
    ' (func (export "handle")))',
    "foreign.wat": '(module (import "env" "sqrt" (func)) (import "env" "log" (func))'
    ' (memory (export "memory") 1) (func (export "_start")))',
    "snapshot0.wat": '(module (import "wasi_unstable" "fd_write" (func))'
    ' (memory (export "memory") 1) (func (export "_start")))',
    "no_memory.wat": '(module (func (export "_start")))',
    "handler.wat": '(module (memory (export "memory") 1) (func (export "handle_request")))',
    "big.wat": '(module (memory (export "memory") 100) (func (export "_start")))',
}


def spin_app(folder: Path, triggers: list[tuple[str, str, str]], components: str) -> Path:
    """A spin.toml with the guests above and the given triggers and component tables."""
    for name, text in GUESTS.items():
        (folder / name).write_text(text)
    (folder / "component.wasm").write_bytes(b"\0asm\x0d\x00\x01\x00")
    head = 'spin_manifest_version = 2\n[application]\nname = "app"\n\n'
    body = "".join(
        TRIGGER.format(route=route, component=component, executor=executor)
        for route, component, executor in triggers
    )
    (folder / "spin.toml").write_text(head + body + "\n" + components)
    return folder / "spin.toml"


def check(manifest: Path) -> tuple[int, list[str]]:
    result = run_wagi("check", "-c", manifest.name, "--cache-dir", "cache", cwd=manifest.parent)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout.splitlines()


def at(manifest: Path, text: str, occurrence: int = 1) -> str:
    """`spin.toml:N`: where the manifest holds `text` (its n-th occurrence)."""
    numbers = [n for n, line in enumerate(manifest.read_text().splitlines(), 1) if text in line]
    return f"{manifest.name}:{numbers[occurrence - 1]}"


def line_for(lines: list[str], component: str) -> str:
    (found,) = [line for line in lines if f"component `{component}`:" in line]
    return found


WAGI = '{ type = "wagi" }'


def test_the_example_apps_are_sound(example_apps):
    result = run_wagi("check", "-c", str(EXAMPLE))
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith("ok: 3 routes, 3 components, 3 modules")


def test_every_problem_is_reported_on_its_own_line(tmp_path):
    manifest = spin_app(
        tmp_path,
        [
            ("/missing", "missing", WAGI),
            ("/reactor", "reactor", WAGI),
            ("/foreign", "foreign", WAGI),
            ("/old", "snapshot0", WAGI),
            ("/no-memory", "no-memory", WAGI),
            ("/component", "component", WAGI),
            ("/typo", "typo", '{ type = "wagi", entrypoint = "handle_requst" }'),
        ],
        '[component.missing]\nsource = "build/app.wasm"\nfiles = ["static/*.png"]\n'
        '[component.missing.build]\ncommand = "make"\n'
        '[component.reactor]\nsource = "reactor.wat"\n'
        '[component.foreign]\nsource = "foreign.wat"\n'
        '[component.snapshot0]\nsource = "snapshot0.wat"\n'
        '[component.no-memory]\nsource = "no_memory.wat"\n'
        '[component.component]\nsource = "component.wasm"\n'
        '[component.typo]\nsource = "handler.wat"\n',
    )
    status, lines = check(manifest)
    assert status == 1
    assert lines[-1] == "7 problems; 1 warning in spin.toml"
    missing = [line for line in lines if "component `missing`:" in line]
    assert missing == [
        f"{at(manifest, 'build/app.wasm')}: component `missing`: module file not found: "
        "build/app.wasm; "
        "fix: build it: `wagi build` (or `wagi serve --build`)",
        f"{at(manifest, 'build/app.wasm')}: component `missing`: warning: `files` pattern "
        "'static/*.png' matches no file; "
        f"fix: patterns are relative to {tmp_path}; `**` also matches subfolders",
    ]
    assert line_for(lines, "reactor").startswith(
        f"{at(manifest, '/reactor')}: component `reactor`: route /reactor will answer 500: "
        "the module does not export `_start`; fix: it is a WASI reactor"
    )
    assert "imports env::sqrt, env::log, which this gateway does not provide" in line_for(
        lines, "foreign"
    )
    assert "-Wl,--no-undefined" in line_for(lines, "foreign")
    assert "old WASI snapshot 0" in line_for(lines, "snapshot0")
    assert "does not export its memory as `memory`" in line_for(lines, "no-memory")
    assert "is a WebAssembly component (WASI 0.2)" in line_for(lines, "component")
    assert line_for(lines, "typo").endswith(
        "the module does not export `handle_requst`; fix: did you mean `handle_request`? "
        'it exports `handle_request`; set executor = { type = "wagi", entrypoint = "NAME" } '
        "on its trigger"
    )


def test_clashing_and_built_in_routes(tmp_path):
    manifest = spin_app(
        tmp_path,
        [
            ("/users/:id", "one", WAGI),
            ("/users/:name", "two", WAGI),
            ("/.well-known/wagi/ready", "three", WAGI),
            ("/healthz/...", "four", WAGI),
        ],
        '[component.one]\nsource = "good.wat"\n[component.two]\nsource = "good.wat"\n'
        '[component.three]\nsource = "good.wat"\n[component.four]\nsource = "good.wat"\n',
    )
    status, lines = check(manifest)
    assert status == 1
    assert line_for(lines, "two") == (
        f"{at(manifest, '/users/:name')}: component `two`: route /users/:name clashes with "
        f"route /users/:id of component `one` ({at(manifest, '/users/:id')}): "
        "both match the same paths; "
        "fix: give one of them another route"
    )
    assert line_for(lines, "three") == (
        f"{at(manifest, '/.well-known/wagi/ready')}: component `three`: "
        "route /.well-known/wagi/ready is never reached: "
        "the gateway answers /.well-known/wagi/ready itself; fix: choose another route"
    )
    assert line_for(lines, "four") == (
        f"{at(manifest, '/healthz/...')}: component `four`: warning: route /healthz/... does "
        "not get /healthz: the gateway answers it itself; fix: choose another route"
    )


def test_routes_wagi_would_have_shadowed_by_file_order_are_warnings(tmp_path):
    (tmp_path / "good.wat").write_text(GUESTS["good.wat"])
    modules = "".join(
        f'[[module]]\nroute = "{route}"\nmodule = "good.wat"\n\n'
        for route in ("/...", "/static/...", "/hello")
    )
    manifest = tmp_path / "modules.toml"
    manifest.write_text(modules)
    status, lines = check(manifest)
    assert status == 0  # this gateway serves them all
    assert lines[-1] == "modules.toml: ok: 3 routes, 3 components, 1 module; 2 warnings"
    assert lines[0].startswith(
        f"{at(manifest, '/static/...')}: component `good-2`: warning: route /static/... comes "
        f"after /... ({at(manifest, '/...')})"
    )
    assert lines[0].endswith("fix: move it above /..., so that the file means the same to both")
    strict = run_wagi("check", "--strict", "-c", str(manifest), "--cache-dir", str(tmp_path))
    assert strict.returncode == 1

    # In the order WAGI needs, the same routes are sound.
    reordered = "".join(
        f'[[module]]\nroute = "{route}"\nmodule = "good.wat"\n\n'
        for route in ("/hello", "/static/...", "/...")
    )
    manifest.write_text(reordered)
    assert check(manifest) == (0, ["modules.toml: ok: 3 routes, 3 components, 1 module"])


def test_a_module_that_makes_requests_with_no_host_allowed_is_a_warning(tmp_path):
    (tmp_path / "fetch.wat").write_text(
        '(module (import "wasi_experimental_http" "close" (func (param i32) (result i32)))'
        ' (memory (export "memory") 1) (func (export "_start")))'
    )
    manifest = tmp_path / "modules.toml"
    manifest.write_text('[[module]]\nroute = "/f"\nmodule = "fetch.wat"\n')
    status, lines = check(manifest)
    assert status == 0
    assert lines[0] == (
        f"{at(manifest, 'fetch.wat')}: component `fetch`: warning: fetch.wat makes outbound "
        "HTTP requests, but no host is allowed: every one will be refused; fix: list the "
        'hosts it may reach in `allowed_hosts`, e.g. ["https://api.example.com"]'
    )
    manifest.write_text(
        '[[module]]\nroute = "/f"\nmodule = "fetch.wat"\nallowed_hosts = ["https://a.example"]\n'
    )
    assert check(manifest) == (0, ["modules.toml: ok: 1 route, 1 component, 1 module"])


def test_sub_routes_declared_by_routes_are_checked(tmp_path):
    (tmp_path / "routes.wat").write_text(routes_guest(b"/one a\n/two missing\n"))
    (tmp_path / "modules.toml").write_text(
        '[[module]]\nroute = "/app/..."\nmodule = "routes.wat"\n'
    )
    status, lines = check(tmp_path / "modules.toml")
    assert status == 1
    assert lines[0] == (
        "modules.toml:2: component `routes`: route /app/two, declared by its `_routes`, will "
        "answer 500: the module does not export `missing`; "
        "fix: make `_routes` print an entrypoint the module exports"
    )


def test_the_summary_counts_the_routes_declared_by_routes(tmp_path):
    (tmp_path / "routes.wat").write_text(routes_guest(b"/one a\n/two a\n"))
    (tmp_path / "modules.toml").write_text(
        '[[module]]\nroute = "/app/..."\nmodule = "routes.wat"\n'
    )
    # /app/one and /app/two, besides /app/... itself
    assert check(tmp_path / "modules.toml") == (
        0, ["modules.toml: ok: 3 routes, 1 component, 1 module"]
    )  # fmt: skip


def test_a_routes_export_that_never_returns_is_stopped(tmp_path):
    spin = '(module (memory (export "memory") 1) (func (export "_start"))'
    (tmp_path / "loop.wat").write_text(spin + ' (func (export "_routes") (loop $l (br $l))))')
    (tmp_path / "modules.toml").write_text(
        '[[module]]\nroute = "/app/..."\nmodule = "loop.wat"\nrequest_timeout = "0.3s"\n'
    )
    status, lines = check(tmp_path / "modules.toml")
    assert status == 1
    assert lines[0].endswith("`_routes` failed: ran longer than its limit of 0.3 s")


def test_a_start_function_that_never_returns_is_stopped(tmp_path):
    # wasm's start function runs whenever an instance is made, outside any request
    (tmp_path / "loop.wat").write_text(
        '(module (memory (export "memory") 1) (func $spin (loop $l (br $l))) (start $spin)'
        ' (func (export "_start")))'
    )
    (tmp_path / "modules.toml").write_text('[[module]]\nroute = "/"\nmodule = "loop.wat"\n')
    status, lines = check(tmp_path / "modules.toml")
    assert status == 1
    assert lines[0].endswith(
        f"cannot instantiate: its start function ran longer than {START_FUNCTION_LIMIT:g} s"
    )


def test_a_schema_error_is_one_line_with_its_line_number(tmp_path):
    manifest = spin_app(
        tmp_path,
        [("/", "app", WAGI)],
        '[component.app]\nsource = "good.wat"\nenviroment = { A = "1" }\n',
    )
    status, lines = check(manifest)
    assert status == 1
    assert lines == [
        f"{at(manifest, 'enviroment')}: component.app.enviroment: unknown key "
        "(did you mean `environment`?)",
        "1 problem in spin.toml",
    ]


def test_what_only_loading_finds_is_reported_too(tmp_path):
    """A module whose memory starts larger than its limit cannot be instantiated."""
    manifest = spin_app(
        tmp_path,
        [("/", "big", WAGI)],
        '[component.big]\nsource = "big.wat"\n[component.big.tool.wagi]\nmax_memory = "1M"\n',
    )
    status, lines = check(manifest)
    assert status == 1
    assert lines[0] == (
        f"{at(manifest, 'big.wat')}: component `big`: its memory starts at 6.2 MiB, "
        "more than its max_memory of 1.0 MiB: raise max_memory"
    )


def test_what_only_loading_finds_is_reported_for_every_component(tmp_path):
    limit = '[component.{0}.tool.wagi]\nmax_memory = "1M"\n'
    manifest = spin_app(
        tmp_path,
        [("/a", "a", WAGI), ("/b", "b", WAGI)],
        '[component.a]\nsource = "big.wat"\n'
        + limit.format("a")
        + '[component.b]\nsource = "big.wat"\n'
        + limit.format("b"),
    )
    status, lines = check(manifest)
    assert status == 1
    assert [line.split(": ")[1] for line in lines[:2]] == ["component `a`", "component `b`"]
    assert lines[-1] == "2 problems in spin.toml"


def test_check_app_returns_problems_as_data(tmp_path):
    manifest = spin_app(tmp_path, [("/", "app", WAGI)], '[component.app]\nsource = "nope.wat"\n')
    report = check_app(manifest, tmp_path / "cache")
    assert not report.ok
    (problem,) = report.problems
    assert (problem.component, problem.origin) == (
        "app",
        f"{manifest.parent}/{at(manifest, 'nope')}",
    )
    assert problem.fix.startswith("`source` is relative to the manifest's folder")


def test_check_compiles_each_module_once(tmp_path, monkeypatch):
    # The checks and the full load share the compiled modules (no cache to fall back on).
    compiled = []
    compile_module = Engine._compile

    def counting(self, source, module_bytes):
        compiled.append(source.name)
        return compile_module(self, source, module_bytes)

    monkeypatch.setattr(Engine, "_compile", counting)
    components = '[component.a]\nsource = "good.wat"\n[component.b]\nsource = "handler.wat"\n'
    triggers = [("/a", "a", WAGI), ("/b", "b", '{ type = "wagi", entrypoint = "handle_request" }')]
    report = check_app(spin_app(tmp_path, triggers, components), cache_dir=None)
    assert report.ok, report.problems
    assert sorted(compiled) == ["good.wat", "handler.wat"]


@pytest.mark.parametrize(
    ("outer", "inner", "covers"),
    [
        ("/...", "/anything/...", True),
        ("/a/...", "/a", True),
        ("/a/...", "/ab", False),
        ("/:x", "/a", True),
        ("/:x", "/a/b", False),
        ("/a/:x/...", "/a/b/c", True),
        ("/a", "/a/...", False),
        ("/a/:x", "/a/", False),  # a parameter never matches an empty segment
    ],
)
def test_route_covering(outer, inner, covers):
    assert RoutePattern.parse(outer).covers(RoutePattern.parse(inner)) is covers
