"""Output capture through the replaced fd_write: exact bytes, and hostile pointers refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import link_wat
from gateway.engine import Engine, Invocation


def run_wat(engine: Engine, tmp_path: Path, wat: str, **start):
    instance = link_wat(engine, tmp_path, wat).instantiate()
    call = instance.start("_start", Invocation(["guest"], {}), **start)
    while not call.poll():
        pass
    return call.finish()


def fd_write_guest(
    fd: int, iovs: int, count: int, written_at: int, prelude: str = "", exit_with_count=False
) -> str:
    """A guest making one fd_write call of "hello", then exiting with the errno it got
    back, or with the count of bytes written that it reads back from `written_at`."""
    call = f"""(call $fd_write (i32.const {fd}) (i32.const {iovs}) (i32.const {count})
                               (i32.const {written_at}))"""
    ending = (
        f"(drop {call}) (call $exit (i32.load (i32.const {written_at})))"
        if exit_with_count
        else f"(call $exit {call})"
    )
    return f"""
    (module
      (import "wasi_snapshot_preview1" "fd_write"
        (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 100) "hello")
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 100))
        (i32.store (i32.const 4) (i32.const 5))
        {prelude}
        {ending}))
    """


def test_a_write_reports_its_length_and_lands_in_stdout(engine, tmp_path):
    wat = fd_write_guest(1, 0, 1, 200, exit_with_count=True)
    outcome = run_wat(engine, tmp_path, wat)
    assert outcome.stdout == b"hello"
    assert outcome.exit_code == 5  # the guest read back nwritten = 5


@pytest.mark.parametrize(
    ("fd", "iovs", "count", "written_at", "errno"),
    [
        (1, 0, 1, 65534, 21),  # nwritten would cross the end of memory: EFAULT
        (1, 65530, 1, 200, 21),  # the iovec array crosses the end: EFAULT
        (1, 0, 100000, 200, 21),  # absurdly many iovecs: EFAULT
        (5, 0, 1, 200, 8),  # not stdout or stderr: EBADF
        (0, 0, 1, 200, 8),  # stdin: EBADF
    ],
)
def test_bad_arguments_get_an_errno_not_a_crash(
    engine, tmp_path, fd, iovs, count, written_at, errno
):
    outcome = run_wat(engine, tmp_path, fd_write_guest(fd, iovs, count, written_at))
    assert outcome.exit_code == errno
    assert outcome.stdout == b""


def test_an_iovec_pointing_outside_memory_is_refused(engine, tmp_path):
    prelude = "(i32.store (i32.const 0) (i32.const 65534))"  # 5 bytes from 65534: too far
    outcome = run_wat(engine, tmp_path, fd_write_guest(1, 0, 1, 200, prelude=prelude))
    assert outcome.exit_code == 21
    assert outcome.stdout == b""


def test_output_beyond_the_limit_traps_the_guest(engine, tmp_path):
    wat = fd_write_guest(1, 0, 1, 200)
    outcome = run_wat(engine, tmp_path, wat, output_limit=3)
    assert not outcome.ok
    assert outcome.failure == "output"
    assert "wrote more than its limit of 3 bytes" in outcome.error
    assert outcome.stdout == b""


def test_many_small_writes_keep_their_order(engine, tmp_path):
    wat = """
    (module
      (import "wasi_snapshot_preview1" "fd_write"
        (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start") (local $i i32)
        (loop $next
          (i32.store8 (i32.const 100) (i32.add (i32.const 48) (i32.rem_u (local.get $i)
                                                                          (i32.const 10))))
          (i32.store (i32.const 0) (i32.const 100))
          (i32.store (i32.const 4) (i32.const 1))
          (drop (call $fd_write (i32.add (i32.const 1) (i32.and (local.get $i) (i32.const 1)))
                                (i32.const 0) (i32.const 1) (i32.const 200)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $next (i32.lt_u (local.get $i) (i32.const 1000))))))
    """
    outcome = run_wat(engine, tmp_path, wat)
    digits = "".join(str(i % 10) for i in range(1000))
    assert outcome.stdout.decode() == digits[0::2]  # even i went to fd 1
    assert outcome.stderr.decode() == digits[1::2]  # odd i went to fd 2


def test_the_interpreter_exits_cleanly_after_running_guests(tmp_path):
    # wasmtime-py's stdout_custom callbacks crashed the interpreter at exit; ours must not.
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from conftest import cgi_guest
from gateway.engine import Engine, Invocation
path = Path({str(tmp_path)!r}) / "g.wat"
path.write_text(cgi_guest(b"out", b"err"))
engine = Engine(None)
program = engine.link(engine.load(path), "g")
for _ in range(50):
    assert program.instantiate().run("_start", Invocation(["g"], {{}})).stdout == b"out"
print("done")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    assert "panicked" not in result.stderr
