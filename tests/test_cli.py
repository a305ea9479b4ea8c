"""The `wagi` commands besides `serve`, run as a user runs them."""

from __future__ import annotations

import pytest

from conftest import run_wagi


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
