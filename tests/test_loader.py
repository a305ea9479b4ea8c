"""Loading an app: WAGI `_routes`, route clashes, and what components are prepared with."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from conftest import cgi_guest, routes_guest, spin_toml
from gateway.config import EngineSettings, Settings
from gateway.engine import Engine, LoadError
from gateway.loader import load_app
from gateway.manifest import ManifestError, load_manifest
from gateway.routing import RequestPath


def load(
    tmp_path: Path,
    manifest_text: str,
    modules: dict[str, str],
    name: str = "modules.toml",
    env: tuple[tuple[str, str], ...] = (),
):
    for module, wat in modules.items():
        (tmp_path / module).write_text(wat)
    path = tmp_path / name
    path.write_text(manifest_text)
    settings = Settings(manifest=path, cache_dir=tmp_path / "cache", env=env)
    return load_app(load_manifest(path), settings, Engine(settings.cache_dir))


def target(app, path: str):
    found = app.routes.match(RequestPath.parse(path))
    return None if found is None else (found.route.pattern.text, found.route.target.entrypoint)


def test_routes_are_joined_onto_the_parent_and_beat_it(tmp_path):
    app = load(
        tmp_path,
        '[[module]]\nroute = "/app/..."\nmodule = "m.wat"\n',
        {"m.wat": routes_guest(b"/a a\n/b/... b\n/... _start\n")},
    )
    assert target(app, "/app/a") == ("/app/a", "a")
    assert target(app, "/app/b/x") == ("/app/b/...", "b")
    assert target(app, "/app/other") == ("/app/...", "_start")
    app.close()


@pytest.mark.parametrize(
    ("printed", "trap", "message"),
    [
        (b"/a a extra\n", False, "expected `<path> <entrypoint>`"),
        (b"\n\n", False, "`_routes` printed no routes"),
        (b"", True, "`_routes` failed"),
        (b"nope a\n", False, "must start with `/`"),
        (b"/caf\xe9 a\n", False, "printed bytes that are not UTF-8 (at byte 4)"),
        (b"/a a\n" * 1001, False, "printed 1001 routes; at most 1000 are taken"),
    ],
)
def test_bad_routes_output_is_a_load_error_naming_the_module(tmp_path, printed, trap, message):
    with pytest.raises(LoadError, match=r"component `m` \(m.wat\)") as caught:
        load(
            tmp_path,
            '[[module]]\nroute = "/app/..."\nmodule = "m.wat"\n',
            {"m.wat": routes_guest(printed, trap)},
        )
    assert message in str(caught.value)


def test_routes_is_held_to_the_components_output_limit(tmp_path):
    printed = b"/a a\n" * 8  # 40 bytes
    with pytest.raises(LoadError, match="wrote more than its limit of 16 bytes"):
        load(
            tmp_path,
            '[[module]]\nroute = "/app/..."\nmodule = "m.wat"\nmax_output_size = 16\n',
            {"m.wat": routes_guest(printed)},
        )


def test_routes_is_not_called_for_spin_manifests(tmp_path):
    manifest = spin_toml({"/app/...": "m"})
    app = load(tmp_path, manifest, {"m.wat": routes_guest(b"/a a\n")}, "spin.toml")
    assert target(app, "/app/a") == ("/app/...", "_start")
    app.close()


def test_a_route_clash_names_both_routes_and_components(tmp_path):
    manifest = (
        '[[module]]\nroute = "/users/:id"\nmodule = "a.wat"\n'
        '[[module]]\nroute = "/users/:name"\nmodule = "b.wat"\n'
    )
    with pytest.raises(ManifestError) as caught:
        load(tmp_path, manifest, {"a.wat": cgi_guest(), "b.wat": cgi_guest()})
    message = str(caught.value)
    assert message.startswith(
        f"{tmp_path / 'modules.toml'}:5: route /users/:name clashes with route /users/:id "
        "of component `a`"
    )
    assert message.endswith("; fix: give one of them another route")


def test_a_missing_entrypoint_is_found_at_load(tmp_path):
    app = load(
        tmp_path,
        '[[module]]\nroute = "/"\nmodule = "m.wat"\nentrypoint = "nope"\n',
        {"m.wat": cgi_guest()},
    )
    (broken,) = app.broken_routes()
    assert (broken.pattern.text, broken.problem) == ("/", "the module does not export `nope`")
    app.close()


def test_global_environment_comes_before_the_components(tmp_path):
    manifest = '[[module]]\nroute = "/"\nmodule = "m.wat"\nenvironment = { A = "mine" }\n'
    app = load(tmp_path, manifest, {"m.wat": cgi_guest()}, env=(("A", "g"), ("B", "g")))
    assert app.components["m"].env == {"A": "mine", "B": "g"}
    app.close()


def test_staged_files_are_removed_on_close(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    manifest = spin_toml({"/": "m"}, 'files = ["f.txt"]\n')
    app = load(tmp_path, manifest, {"m.wat": cgi_guest()}, "spin.toml")
    staged = Path(app.components["m"].mounts[0][0])
    assert (staged / "f.txt").read_text() == "x"
    app.close()
    assert not staged.exists()


def test_a_load_that_fails_late_gives_back_its_instances_and_staged_files(tmp_path):
    (tmp_path / "m.wat").write_text(cgi_guest())
    (tmp_path / "f.txt").write_text("x")
    path = tmp_path / "spin.toml"
    path.write_text(spin_toml({"/": "m"}, 'files = ["f.txt"]\n'))
    (tmp_path / "not-a-folder").write_text("")
    engine_settings = EngineSettings(max_instances=16)
    engine = Engine(tmp_path / "cache", engine_settings)
    staging_before = set(Path(tempfile.gettempdir()).glob("wagi-m-*"))
    broken = Settings(manifest=path, log_dir=tmp_path / "not-a-folder" / "logs",
                      pool_size=4, engine=engine_settings)  # fmt: skip
    for _ in range(5):  # 5 x 4 instances: more than the 16 slots, unless given back
        with pytest.raises(LoadError, match=r"component `m`: cannot write .*not-a-folder"):
            load_app(load_manifest(path), broken, engine)
    assert set(Path(tempfile.gettempdir()).glob("wagi-m-*")) == staging_before
    working = Settings(manifest=path, pool_size=4, engine=engine_settings)
    load_app(load_manifest(path), working, engine).close()


def test_a_component_no_route_reaches_keeps_no_instances(tmp_path):
    manifest = spin_toml({"/": "m"}) + (
        '[[trigger.http]]\nroute = { private = true }\ncomponent = "hidden"\n'
        'executor = { type = "wagi" }\n[component.hidden]\nsource = "m.wat"\n'
    )
    app = load(tmp_path, manifest, {"m.wat": cgi_guest()}, "spin.toml")
    assert (app.components["m"].pool.size, app.components["hidden"].pool.size) == (8, 0)
    app.close()
