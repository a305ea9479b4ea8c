"""The `wagi` commands besides `serve`, run as a user runs them."""

from __future__ import annotations

import compileall
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import wasmtime

from conftest import run_wagi
from gateway import scaffold
from gateway.config import ConfigError
from gateway.scaffold import create_app


def test_compile_fills_the_cache_that_serve_then_reads(serve, example_apps, tmp_path):
    cache = tmp_path / "cache"
    first = run_wagi("compile", "-c", str(example_apps), "--cache-dir", str(cache))
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    for name in ("hello.wat", "env.wasm", "guestbook.wasm"):
        (line,) = [line for line in lines if line.startswith(name)]
        assert "compiling... done in" in line
    assert lines[-1].startswith("3 modules, 3 compiled, in ")

    again = run_wagi("compile", "-c", str(example_apps), "--cache-dir", str(cache))
    assert again.returncode == 0, again.stderr
    assert [line.split()[-1] for line in again.stdout.splitlines()[:3]] == ["cached"] * 3
    assert again.stdout.splitlines()[-1].startswith("3 modules, 0 compiled")

    server = serve("-c", str(example_apps), cache_dir=cache)
    assert server.log().count("loaded from the compiled cache") == 3
    assert " compiled in " not in server.log()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("bad.wasm", b"\0asm\x01\0\0\0 not really", "unexpected end-of-file (at offset 0xa)"),
        ("bad.wat", b"(module\n  (bogus))\n", "expected valid module field (line 2, column 4)"),
        (
            "bad.wat",
            b'(module (func (export "_start") (i32.add)))',
            "type mismatch: expected i32 but nothing on stack",
        ),
    ],
)
def test_compile_names_the_component_whose_module_is_broken(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    (tmp_path / "spin.toml").write_text(
        'spin_manifest_version = 2\n[application]\nname = "broken"\n'
        '[[trigger.http]]\nroute = "/"\ncomponent = "bad"\nexecutor = { type = "wagi" }\n'
        f'[component.bad]\nsource = "{name}"\n'
    )
    result = run_wagi("compile", "-c", str(tmp_path / "spin.toml"), "--cache-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stdout.startswith(name) and result.stdout.endswith("failed\n")
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {tmp_path / 'spin.toml'}:9: component `bad`: ")
    assert "not a valid WebAssembly module: " in line and line.endswith(reason)


def test_compile_without_a_manifest_says_so(tmp_path):
    result = run_wagi("compile", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


@pytest.mark.parametrize("template", ["hello-c", "hello-wat"])
def test_a_new_app_builds_checks_passes_its_tests_and_serves(serve, tmp_path, template):
    created = run_wagi("new", "my-app", "--template", template, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    folder = tmp_path / "my-app"
    assert f"Created my-app/ from the {template} template:" in created.stdout
    assert (folder / "spin.toml").is_file() and (folder / "test_my_app.py").is_file()

    built = run_wagi("build", cwd=folder, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    checked = run_wagi("check", "--cache-dir", str(tmp_path / "cache"), cwd=folder)
    assert checked.returncode == 0, checked.stdout
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout
    assert "3 passed" in tests.stdout

    server = serve(cwd=folder)
    response = httpx.get(f"{server.url}/")
    assert response.status_code == 200
    assert response.text.startswith("Hello from my-app!\n")


def test_new_ignores_the_bytecode_an_installed_package_has(tmp_path, monkeypatch):
    # pip byte-compiles every .py of a package, the templates' test_app.py included.
    templates = tmp_path / "templates"
    shutil.copytree(scaffold.TEMPLATES, templates, ignore=shutil.ignore_patterns("__pycache__"))
    assert compileall.compile_dir(templates, quiet=1)
    monkeypatch.setattr(scaffold, "TEMPLATES", templates)
    assert scaffold.template_names() == ["hello-c", "hello-wat"]
    created = create_app("my-app", "hello-c", tmp_path)
    names = sorted(path.name for path in created.files)
    assert names == [".gitignore", "my-app.c", "spin.toml", "test_my_app.py"]


def test_new_refuses_a_bad_name_and_an_existing_folder(tmp_path):
    bad = run_wagi("new", "my app", cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: app name 'my app': use letters, digits")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    taken = run_wagi("new", "taken", cwd=tmp_path)
    assert taken.returncode == 1 and "already exists" in taken.stderr
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]


def build_app(folder: Path) -> Path:
    """Three components built by shell commands; the second one fails with status 7."""
    (folder / "spin.toml").write_text(
        'spin_manifest_version = 2\n[application]\nname = "b"\n'
        + "".join(
            f'[[trigger.http]]\nroute = "/{name}"\ncomponent = "{name}"\n'
            'executor = { type = "wagi" }\n'
            for name in ("first", "second", "third", "plain")
        )
        + '[component.first]\nsource = "first.wasm"\n'
        '[component.first.build]\ncommand = ["echo compiling first", "touch first.wasm"]\n'
        '[component.second]\nsource = "second.wasm"\n'
        '[component.second.build]\ncommand = "echo broken >&2; exit 7"\n'
        '[component.third]\nsource = "third.wasm"\n'
        '[component.third.build]\ncommand = "touch third.wasm"\n'
        '[component.plain]\nsource = "plain.wasm"\n'
    )
    return folder / "spin.toml"


def test_build_shows_each_step_and_stops_at_the_first_failure(tmp_path):
    build_app(tmp_path)
    result = run_wagi("build", cwd=tmp_path)
    assert result.returncode == 7
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "Building component first with `echo compiling first`",
        "compiling first",
        "Building component first with `touch first.wasm`",
    ]
    assert re.fullmatch(r"Finished building first in \d+\.\ds", lines[3])
    assert lines[4] == "Building component second with `echo broken >&2; exit 7`"
    assert result.stderr.splitlines() == [
        "broken",
        "error: building component `second` failed: `echo broken >&2; exit 7` exited with status 7",
    ]
    assert (tmp_path / "first.wasm").exists() and not (tmp_path / "third.wasm").exists()


def test_build_only_the_named_components(tmp_path):
    build_app(tmp_path)
    result = run_wagi("build", "third", "first", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "second" not in result.stdout
    assert re.search(r"^Built 2 components in \d+\.\ds$", result.stdout, re.MULTILINE)
    assert (tmp_path / "third.wasm").exists()
    for name, message in [("nope", "has no component named `nope`"), ("plain", "no build")]:
        refused = run_wagi("build", name, cwd=tmp_path)
        assert refused.returncode == 1 and message in refused.stderr


def test_serve_says_when_a_large_module_is_being_compiled(serve, tmp_path):
    megabyte = "a" * (1 << 20)
    wat = f'(module (memory (export "memory") 17) (data (i32.const 0) "{megabyte}")'
    (tmp_path / "big.wasm").write_bytes(wasmtime.wat2wasm(wat + ' (func (export "_start")))'))
    (tmp_path / "modules.toml").write_text('[[module]]\nroute = "/big"\nmodule = "big.wasm"\n')
    log = serve("-c", str(tmp_path / "modules.toml")).log()
    announced = log.index("component big: compiling big.wasm (1.0 MiB), this may take a while")
    assert announced < log.index("component big: big.wasm (1.0 MiB) compiled in")


def test_new_refuses_a_name_that_ends_in_a_newline(tmp_path):
    result = run_wagi("new", "app\n", cwd=tmp_path)
    assert result.returncode == 1 and "app name" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_new_where_no_folder_can_be_made_says_so_and_leaves_nothing(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"cannot create .*/file/app: Not a directory"):
        create_app("app", parent=tmp_path / "file")
    assert (tmp_path / "file").read_text() == "not a folder"


def test_compile_fails_when_the_cache_cannot_be_written(tmp_path):
    (tmp_path / "hello.wat").write_text(
        '(module (memory (export "memory") 1) (func (export "_start")))'
    )
    (tmp_path / "modules.toml").write_text('[[module]]\nroute = "/"\nmodule = "hello.wat"\n')
    (tmp_path / "cache").write_text("a file, not a folder")
    result = run_wagi("compile", "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("error: cannot write the compiled cache in ")


def test_new_says_what_its_next_steps_need_that_is_missing(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    missing = {"pytest", "ziglang"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name in missing else real_find_spec(name)
    )
    app = create_app("demo", "hello-c", tmp_path)
    assert app.notes == [
        "`wagi build` compiles C with zig's clang: pip install ziglang",
        "the tests it came with run with pytest: pip install pytest",
    ]
