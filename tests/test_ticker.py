"""The epoch ticker runs only while guests need ticks, and guests always get them."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SPIN, cgi_guest, link_wat, sleeper
from gateway import native, ticker
from gateway.config import Limits
from gateway.engine import Engine, Failure, GuestCall, Instance, Invocation
from gateway.executor import Executor
from gateway.pool import InstancePool
from gateway.ticker import EpochTicker

INTERVAL = 0.001
INVOCATION = Invocation(argv=["guest"], env={})

# A guest that counts down a loop long enough to outlast its first slice (tens of ms).
SLOW = """
(module (memory (export "memory") 1)
  (func (export "_start") (local $n i32)
    (local.set $n (i32.const 100000000))
    (loop $l (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))))
"""


@pytest.fixture
def epoch_ticker(engine: Engine) -> Iterator[EpochTicker]:
    epoch_ticker = EpochTicker(engine.address, INTERVAL, inline_ticks=2)
    yield epoch_ticker
    epoch_ticker.close()


def test_a_guest_on_the_event_loop_gets_one_tick_and_none_after(epoch_ticker):
    assert epoch_ticker.timer_setting() == (0, 0)
    assert epoch_ticker.inline_started() == 1
    next_tick, period = epoch_ticker.timer_setting()
    assert 0 < next_tick <= 2 * INTERVAL and period == 0  # one-shot, inline_ticks away
    epoch_ticker.inline_stopped()
    assert epoch_ticker.timer_setting() == (0, 0)


def test_guests_on_threads_keep_the_timer_periodic_until_the_last_stops(epoch_ticker):
    epoch_ticker.thread_started()
    epoch_ticker.thread_started()
    assert epoch_ticker.timer_setting()[1] == pytest.approx(INTERVAL)
    # The event loop's guest counts its slice from the periodic ticks, which go on.
    assert epoch_ticker.inline_started() == 2
    assert epoch_ticker.timer_setting()[1] == pytest.approx(INTERVAL)
    epoch_ticker.inline_stopped()
    epoch_ticker.thread_stopped()
    assert epoch_ticker.timer_setting()[1] == pytest.approx(INTERVAL)
    epoch_ticker.thread_stopped()
    assert epoch_ticker.timer_setting() == (0, 0)


def test_the_event_loops_guest_keeps_its_ticks_when_the_last_thread_stops(epoch_ticker):
    epoch_ticker.thread_started()
    epoch_ticker.inline_started()
    epoch_ticker.thread_stopped()
    assert epoch_ticker.timer_setting()[1] == pytest.approx(INTERVAL)  # else it may run on
    epoch_ticker.inline_stopped()
    assert epoch_ticker.timer_setting() == (0, 0)


@contextlib.contextmanager
def rescue_after(engine: Engine, seconds: float) -> Iterator[list[bool]]:
    """If a guest is stuck for want of ticks after `seconds`, tick the epoch from here
    so that it yields: the test then fails instead of hanging."""
    done = threading.Event()
    rescued: list[bool] = []

    def watch() -> None:
        if done.wait(seconds):
            return
        rescued.append(True)
        while not done.is_set():
            native.wasmtime_engine_increment_epoch(engine.address)
            time.sleep(INTERVAL)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield rescued
    finally:
        done.set()
        watcher.join()


@pytest.fixture
def executor(engine: Engine) -> Iterator[Executor]:
    executor = Executor(engine, threads=2)
    yield executor
    executor.close()


@pytest.fixture
def pools(engine: Engine, tmp_path: Path) -> Iterator[dict[str, InstancePool]]:
    guests = {"fast": cgi_guest(b"fast"), "slow": SLOW, "spin": SPIN, "sleep": sleeper(0.01)}
    pools = {name: InstancePool(link_wat(engine, tmp_path, wat, name), 2, name)
             for name, wat in guests.items()}  # fmt: skip
    yield pools
    for pool in pools.values():
        pool.close()


def run(executor: Executor, pool: InstancePool, timeout: float = 30.0):
    return executor.run(pool, "_start", INVOCATION, Limits(request_timeout=timeout))


def test_the_executor_stops_the_ticker_when_its_guests_are_done(executor, pools):
    async def scenario() -> None:
        quick = await run(executor, pools["fast"])
        assert quick.stdout == b"fast" and not executor.ticker.ticking
        long_run = asyncio.ensure_future(run(executor, pools["slow"]))
        await asyncio.sleep(0)  # its first step runs its first slice, then it goes to a thread
        assert not long_run.done() and executor.ticker.ticking
        meanwhile = await run(executor, pools["fast"])
        assert meanwhile.stdout == b"fast" and executor.ticker.ticking
        assert (await long_run).ok
        assert not executor.ticker.ticking
        assert (await run(executor, pools["sleep"])).ok  # straight to a thread, and back
        assert not executor.ticker.ticking

    asyncio.run(scenario())


def test_a_guest_that_never_returns_is_stopped_at_its_deadline(engine, executor, pools):
    with rescue_after(engine, 3) as rescued:
        outcome = asyncio.run(run(executor, pools["spin"], timeout=0.2))
    assert not rescued, "the guest got no tick: it ran on the event loop until rescued"
    assert outcome.failure == Failure.TIMEOUT


def test_a_guest_slow_to_start_still_gets_its_tick(engine, executor, pools, monkeypatch):
    """Attaching WASI can outlast the first slice (copying a large body, say); the tick
    must still come after the guest's deadline was set."""
    attach = Instance._attach_wasi

    def slow_attach(instance: Instance, invocation: Invocation) -> str | None:
        problem = attach(instance, invocation)
        time.sleep(10 * INTERVAL)
        return problem

    monkeypatch.setattr(Instance, "_attach_wasi", slow_attach)
    with rescue_after(engine, 3) as rescued:
        outcome = asyncio.run(run(executor, pools["spin"], timeout=0.2))
    assert not rescued, "the guest got no tick: it ran on the event loop until rescued"
    assert outcome.failure == Failure.TIMEOUT


def test_without_posix_timers_a_python_thread_ticks(tmp_path, monkeypatch):
    monkeypatch.setattr(ticker, "_posix_timer", lambda address: None)
    engine = Engine(tmp_path / "cache")  # its ticker is made now, without a POSIX timer
    pools = {name: InstancePool(link_wat(engine, tmp_path, wat, name), 2, name)
             for name, wat in (("fast", cgi_guest(b"fast")), ("spin", SPIN))}  # fmt: skip
    executor = Executor(engine, threads=2)
    moved = []
    to_thread = executor.ticker.thread_started
    monkeypatch.setattr(executor.ticker, "thread_started", lambda: moved.append(1) or to_thread())

    async def fast_guests() -> list:
        return [await run(executor, pools["fast"]) for _ in range(50)]

    try:
        assert all(outcome.ok for outcome in asyncio.run(fast_guests()))
        assert len(moved) < 10  # a fast guest stays on the event loop
        with rescue_after(engine, 3) as rescued:
            outcome = asyncio.run(run(executor, pools["spin"], timeout=0.2))
        assert not rescued and outcome.failure == Failure.TIMEOUT
    finally:
        executor.close()
        for pool in pools.values():
            pool.close()
        engine.close()


def test_a_failure_running_a_guest_on_a_thread_is_answered_and_the_thread_goes_on(
    executor, pools, monkeypatch
):
    run_to_end = GuestCall.run_to_end
    failures = ["boom"]

    def failing_once(call: GuestCall, *args, **kwargs):
        if failures:
            raise RuntimeError(failures.pop())
        return run_to_end(call, *args, **kwargs)

    monkeypatch.setattr(GuestCall, "run_to_end", failing_once)

    async def scenario() -> None:
        failed = await run(executor, pools["sleep"])
        assert failed.failure == Failure.START and "boom" in failed.error
        for _ in range(3):  # more than there are threads: none was lost
            assert (await run(executor, pools["sleep"])).ok
        assert not executor.ticker.ticking

    asyncio.run(scenario())


def test_a_guest_is_not_started_once_the_executor_is_closed(engine, pools):
    executor = Executor(engine, threads=1)
    executor.close()
    outcome = asyncio.run(run(executor, pools["spin"]))
    assert outcome.failure == Failure.CANCELLED and "shutting down" in outcome.error


def test_a_load_time_run_ticks_with_the_engines_ticker(engine, tmp_path):
    """`_routes` probes at load run beside the executor's guests: one ticker per engine,
    or the executor's guests would see ticks they did not ask for."""
    spin = link_wat(engine, tmp_path, SPIN, "spin")
    outcomes = []
    probe = threading.Thread(
        target=lambda: outcomes.append(spin.run_once("_start", INVOCATION, Limits(0.3)))
    )
    probe.start()
    wait = time.monotonic() + 5
    while not engine.ticker.ticking and time.monotonic() < wait:
        time.sleep(0.01)
    assert engine.ticker.timer_setting()[1] == pytest.approx(INTERVAL)  # periodic, for it
    probe.join()
    assert outcomes[0].failure == Failure.TIMEOUT
    assert not engine.ticker.ticking


def test_no_late_tick_reaches_an_engine_that_is_gone():
    # glibc starts a thread per tick and nothing waits for it: a tick made just before
    # the timer stopped could reach an engine freed right after (a crash, now and then).
    script = """
import gc, time
from gateway.engine import Engine
for _ in range(100):
    engine = Engine(None)
    engine.ticker.thread_started()
    time.sleep(0.003)
    engine.ticker.thread_stopped()
    del engine  # dropped without close, as a short-lived command did
    gc.collect()
print("done")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "done\n"), result.stderr
