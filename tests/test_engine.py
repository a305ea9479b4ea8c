"""The wasm runner: compile (with the on-disk cache), link, instantiate and run guests."""

from __future__ import annotations

import pytest

from conftest import ROOT, cgi_guest, link_wat
from gateway.engine import Engine, Invocation, LoadError


def run(prog, entrypoint="_start", **invocation):
    invocation.setdefault("argv", ["guest"])
    invocation.setdefault("env", {})
    return prog.instantiate().run(entrypoint, Invocation(**invocation))


def test_stdout_and_stderr_are_captured(engine, tmp_path):
    outcome = run(link_wat(engine, tmp_path, cgi_guest(b"out\n", b"err\n")))
    assert outcome.ok
    assert (outcome.stdout, outcome.stderr) == (b"out\n", b"err\n")


def test_exit_zero_is_success(engine, tmp_path):
    outcome = run(link_wat(engine, tmp_path, cgi_guest(b"x", exit_code=0)))
    assert outcome.ok and outcome.exit_code == 0  # fix: WAGI 0.8 answers 500 to exit(0)


def test_non_zero_exit_is_reported_with_its_output(engine, tmp_path):
    outcome = run(link_wat(engine, tmp_path, cgi_guest(b"partial", exit_code=3)))
    assert not outcome.ok
    assert (outcome.exit_code, outcome.failure, outcome.stdout) == (3, "exit", b"partial")


def test_a_trap_is_reported(engine, tmp_path):
    outcome = run(link_wat(engine, tmp_path, cgi_guest(b"x", trap=True)))
    assert not outcome.ok
    assert "unreachable" in outcome.error


def test_a_trap_with_causes_is_one_line_without_the_backtrace(engine, tmp_path):
    out_of_bounds = """(module (memory 1) (func (export "_start")
        (drop (i32.load (i32.const 99999999)))))"""
    outcome = run(link_wat(engine, tmp_path, out_of_bounds))
    assert outcome.error == (
        "memory fault at wasm address 0x5f5e0ff in linear memory of size 0x10000: "
        "wasm trap: out of bounds memory access"
    )


def test_a_start_function_runs_when_an_instance_is_made(engine, tmp_path):
    # `_start` traps unless the start function has set the global first
    wat = """(module (global $started (mut i32) (i32.const 0))
        (func $init (global.set $started (i32.const 1))) (start $init)
        (func (export "_start") (if (i32.eqz (global.get $started)) (then unreachable))))"""
    program = link_wat(engine, tmp_path, wat)
    assert program.has_start_function
    assert run(program).ok


def test_a_start_function_that_runs_on_is_stopped(engine, tmp_path):
    wat = '(module (func $spin (loop $l (br $l))) (start $spin) (func (export "_start")))'
    program = link_wat(engine, tmp_path, wat)
    with pytest.raises(LoadError, match="its start function ran longer than"):
        program.instantiate()
    assert not engine.ticker.ticking  # and the ticker it needed has stopped again
    assert engine.ticker.timer_setting() == (0.0, 0.0)  # the kernel's timer too


def test_each_run_starts_with_empty_output(engine, tmp_path):
    prog = link_wat(engine, tmp_path, cgi_guest(b"same"))
    assert [run(prog).stdout for _ in range(3)] == [b"same"] * 3


def test_argv_environment_and_stdin_reach_the_guest(engine, example_apps):
    prog = engine.link(engine.load(ROOT / "apps" / "env" / "env.wasm"), "env")
    outcome = run(prog, argv=["/env", "a=1"], env={"GREETING": "hé"}, stdin=b"the body")
    text = outcome.stdout.decode()
    assert "argv[0]=/env\nargv[1]=a=1\n" in text
    assert "GREETING=hé\n" in text
    assert text.endswith("## stdin\nthe body")


def test_a_missing_entrypoint_is_an_error_not_a_crash(engine, tmp_path):
    prog = link_wat(engine, tmp_path, cgi_guest(b"x"))
    assert prog.entrypoint_problem("main") == "the module does not export `main`"
    outcome = run(prog, "main")
    assert not outcome.ok and "does not export a function `main`" in outcome.error


def test_an_entrypoint_must_take_and_return_nothing(engine, tmp_path):
    prog = link_wat(engine, tmp_path, '(module (func (export "f") (param i32)))')
    assert "not a function without parameters or results" in prog.entrypoint_problem("f")


def test_reactors_are_initialised_before_a_custom_entrypoint(engine, tmp_path):
    wat = """
    (module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (global $ready (mut i32) (i32.const 0))
      (func (export "_initialize") (global.set $ready (i32.const 1)))
      (func (export "handler")
        (if (i32.eqz (global.get $ready)) (then (call $exit (i32.const 9))))))
    """
    assert run(link_wat(engine, tmp_path, wat), "handler").ok


def test_compiled_modules_come_from_the_cache_the_second_time(tmp_path):
    source = tmp_path / "guest.wat"
    source.write_text(cgi_guest(b"cached"))
    first = Engine(tmp_path / "cache").load(source)
    restarted = Engine(tmp_path / "cache")
    second = restarted.load(source)
    assert (first.how, second.how) == ("compiled", "cached")
    assert run(restarted.link(second, "g")).stdout == b"cached"


def test_a_corrupt_cache_entry_is_replaced(tmp_path):
    source = tmp_path / "guest.wat"
    source.write_text(cgi_guest(b"ok"))
    engine = Engine(tmp_path / "cache")
    engine.load(source)
    (entry,) = (tmp_path / "cache").rglob("*.cwasm")
    entry.write_bytes(b"garbage")
    reloaded = Engine(tmp_path / "cache").load(source)
    assert reloaded.how == "compiled"
    assert entry.read_bytes() != b"garbage"


def test_a_module_that_is_not_webassembly_is_a_load_error(engine, tmp_path):
    path = tmp_path / "bad.wasm"
    path.write_bytes(b"\x00asm\x01\x00\x00\x00\x05")
    with pytest.raises(LoadError, match="not a valid WebAssembly module"):
        engine.load(path)


def test_imports_the_gateway_does_not_provide_are_named(engine, tmp_path):
    wat = '(module (import "env" "magic" (func)) (import "spin" "kv" (func)))'
    with pytest.raises(LoadError, match="imports env::magic, spin::kv, which this gateway"):
        link_wat(engine, tmp_path, wat)


def test_mounts_are_read_only(engine, tmp_path):
    # path_open(preopen fd 3, "new.txt", O_CREAT, rights with FD_WRITE) must fail.
    wat = """
    (module
      (import "wasi_snapshot_preview1" "path_open"
        (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 100) "new.txt")
      (func (export "_start")
        (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 7)
                                (i32.const 1) (i64.const 64) (i64.const 64) (i32.const 0)
                                (i32.const 200)))))
    """
    folder = tmp_path / "mounted"
    folder.mkdir()
    outcome = run(link_wat(engine, tmp_path, wat), mounts=[(str(folder), "/data")])
    assert outcome.exit_code == 63  # WASI errno `perm`: the mount is read-only
    assert not (folder / "new.txt").exists()


def test_a_start_function_may_call_wasi_before_any_request(engine, tmp_path):
    # wasmtime aborted the whole process: its WASI functions need a context on the store
    wat = """(module
        (import "wasi_snapshot_preview1" "args_sizes_get"
            (func $sizes (param i32 i32) (result i32)))
        (memory (export "memory") 1)
        (global $args (mut i32) (i32.const -1))
        (func $init (drop (call $sizes (i32.const 0) (i32.const 4)))
            (global.set $args (i32.load (i32.const 0))))
        (start $init)
        (func (export "_start")
            ;; the start function saw no argv; the request sees its own
            (if (i32.ne (global.get $args) (i32.const 0)) (then unreachable))
            (drop (call $sizes (i32.const 0) (i32.const 4)))
            (if (i32.ne (i32.load (i32.const 0)) (i32.const 2)) (then unreachable))))"""
    outcome = run(link_wat(engine, tmp_path, wat), argv=["guest", "one"])
    assert outcome.ok, outcome.error
