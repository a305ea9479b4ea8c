"""The WASI calls the gateway implements: fd_write (output capture: exact bytes, hostile
pointers refused) and poll_oneoff (sleeps that end by the call's deadline)."""

from __future__ import annotations

import ctypes
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import POLL_AND_WRITE, link_wat, wat_string
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


def test_a_write_with_one_bad_iovec_keeps_none_of_it(engine, tmp_path):
    # the first iovec is good, the second points past the end: EFAULT, as a whole
    prelude = "(i32.store (i32.const 8) (i32.const 65534)) (i32.store (i32.const 12) (i32.const 5))"
    outcome = run_wat(engine, tmp_path, fd_write_guest(1, 0, 2, 200, prelude=prelude))
    assert outcome.exit_code == 21
    assert outcome.stdout == b""


def test_a_write_past_the_limit_is_refused_before_it_is_copied(engine, tmp_path, monkeypatch):
    copied = []
    string_at = ctypes.string_at
    monkeypatch.setattr(ctypes, "string_at", lambda a, n: copied.append(n) or string_at(a, n))
    prelude = "(i32.store (i32.const 4) (i32.const 60000))"  # one 60,000-byte iovec
    outcome = run_wat(
        engine, tmp_path, fd_write_guest(1, 0, 1, 200, prelude=prelude), output_limit=10
    )
    assert outcome.failure == "output"
    assert 60000 not in copied  # a guest's 200 MB write cost 200 MB before
    assert 8 in copied  # the iovec itself was read through the same function


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


# ------------------------------------------------------------------------ poll_oneoff


def subscription(userdata: int, tag: int, clock_or_fd: int = 0, timeout_ns=0, flags=0) -> bytes:
    return struct.pack("<QB7xI4xQQH6x", userdata, tag, clock_or_fd, timeout_ns, 0, flags)


def poll_guest(subscriptions: bytes, count: int, events_at: int = 1024) -> str:
    """A guest that polls once, then prints the errno, the event count and the events."""
    return f"""
    (module {POLL_AND_WRITE}
      (data (i32.const 0) "{wat_string(subscriptions)}")
      (func (export "_start")
        (i32.store (i32.const 2000)
          (call $poll (i32.const 0) (i32.const {events_at}) (i32.const {count}) (i32.const 2004)))
        (i32.store (i32.const 3000) (i32.const 2000))
        (i32.store (i32.const 3004) (i32.const 8))
        (i32.store (i32.const 3008) (i32.const 1024))
        (i32.store (i32.const 3012) (i32.const 256))
        (drop (call $write (i32.const 1) (i32.const 3000) (i32.const 2) (i32.const 3016)))))
    """


def poll(engine, tmp_path, subscriptions: bytes, count: int, **guest):
    """(errno, events as (userdata, error, type)) of one poll_oneoff call."""
    stdout = run_wat(engine, tmp_path, poll_guest(subscriptions, count, **guest)).stdout
    errno, nevents = struct.unpack_from("<II", stdout)
    events = [struct.unpack_from("<QHB", stdout, 8 + 32 * n) for n in range(nevents)]
    return errno, events


def test_a_sleep_sleeps_for_its_time(engine, tmp_path):
    started = time.monotonic()
    errno, events = poll(engine, tmp_path, subscription(7, 0, 1, 50_000_000), 1)
    assert time.monotonic() - started >= 0.05
    assert (errno, events) == (0, [(7, 0, 0)])


def test_an_absolute_sleep_in_the_past_returns_at_once(engine, tmp_path):
    started = time.monotonic()
    errno, events = poll(engine, tmp_path, subscription(1, 0, 0, 10**9, flags=1), 1)  # 1970
    assert time.monotonic() - started < 1
    assert (errno, events) == (0, [(1, 0, 0)])


def test_fd_subscriptions_are_ready_without_waiting_for_the_clock(engine, tmp_path):
    subscriptions = (
        subscription(1, 0, 1, 60 * 10**9) + subscription(2, 1, 0) + subscription(3, 2, 1)
    )
    started = time.monotonic()
    assert poll(engine, tmp_path, subscriptions, 3) == (0, [(2, 0, 1), (3, 0, 2)])
    assert time.monotonic() - started < 1


def test_bad_subscriptions_get_an_errno_not_a_crash(engine, tmp_path):
    assert poll(engine, tmp_path, b"", 0)[0] == 28  # EINVAL: nothing to wait for
    assert poll(engine, tmp_path, subscription(5, 0, 99), 1) == (0, [(5, 28, 0)])  # no clock
    assert poll(engine, tmp_path, subscription(5, 0, 1), 1, events_at=65530)[0] == 21  # EFAULT


def test_a_sleep_ends_by_the_calls_deadline(engine, tmp_path):
    instance = link_wat(engine, tmp_path, poll_guest(subscription(1, 0, 1, 60 * 10**9), 1))
    call = instance.instantiate().start("_start", Invocation(["guest"], {}), 1, 1)
    started = time.monotonic()
    engine.ticker.thread_started()  # the executor's worker threads tick like this
    try:
        outcome = call.run_to_end(started + 0.2, 0.2)
    finally:
        engine.ticker.thread_stopped()
    assert time.monotonic() - started < 5  # not the 60 s it asked for
    assert (outcome.failure, outcome.error) == ("timeout", "ran longer than its limit of 0.2 s")
    assert outcome.stdout == b""  # it did not go on as if it had slept its fill
