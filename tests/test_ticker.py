"""The epoch ticker runs only while guests need ticks, and guests still get them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import SPIN, cgi_guest
from gateway.config import Limits
from gateway.engine import Engine, Failure, Invocation
from gateway.executor import Executor
from gateway.pool import InstancePool
from gateway.ticker import EpochTicker

# A guest that counts down a loop long enough to outlast the first slice (tens of ms).
SLOW = """
(module (memory (export "memory") 1)
  (func (export "_start") (local $n i32)
    (local.set $n (i32.const 100000000))
    (loop $l (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))))
"""


@pytest.fixture
def ticker(engine: Engine):
    ticker = EpochTicker(engine.address, 0.001, inline_ticks=2)
    yield ticker
    ticker.close()


def test_a_guest_on_the_event_loop_gets_one_tick_and_none_after(ticker):
    assert not ticker.ticking
    assert ticker.inline_started() == 1  # a one-shot timer, `inline_ticks` intervals away
    assert ticker.ticking
    ticker.inline_stopped()
    assert not ticker.ticking


def test_guests_on_threads_keep_the_timer_running_until_the_last_stops(ticker):
    ticker.thread_started()
    ticker.thread_started()
    # With the periodic timer running, the event loop's guest counts its ticks from it.
    assert ticker.inline_started() == 2
    ticker.inline_stopped()
    ticker.thread_stopped()
    assert ticker.ticking
    ticker.thread_stopped()
    assert not ticker.ticking


def test_the_event_loops_guest_keeps_its_ticks_when_the_last_thread_stops(ticker):
    ticker.thread_started()
    ticker.inline_started()
    ticker.thread_stopped()
    assert ticker.ticking  # else the guest on the event loop could run unstopped
    ticker.inline_stopped()
    assert not ticker.ticking


def program(engine: Engine, tmp_path: Path, wat: str, name: str):
    path = tmp_path / f"{name}.wat"
    path.write_text(wat)
    return engine.link(engine.load(path).module, name)


def test_the_executor_stops_the_ticker_when_its_guests_are_done(engine, tmp_path):
    fast = InstancePool(program(engine, tmp_path, cgi_guest(b"fast"), "fast"), 2, "fast")
    slow = InstancePool(program(engine, tmp_path, SLOW, "slow"), 1, "slow")
    executor = Executor(engine, threads=2)
    invocation = Invocation(argv=["guest"], env={})

    async def scenario() -> None:
        quick = await executor.run(fast, "_start", invocation, Limits())
        assert quick.stdout == b"fast" and not executor.ticker.ticking
        long_run = asyncio.ensure_future(executor.run(slow, "_start", invocation, Limits()))
        await asyncio.sleep(0.005)  # it has left the event loop for a thread by now
        assert not long_run.done() and executor.ticker.ticking
        meanwhile = await executor.run(fast, "_start", invocation, Limits())
        assert meanwhile.stdout == b"fast" and executor.ticker.ticking
        assert (await long_run).ok
        assert not executor.ticker.ticking

    try:
        asyncio.run(scenario())
    finally:
        executor.close()
        fast.close()
        slow.close()


def test_a_guest_that_never_returns_is_still_stopped_at_its_deadline(engine, tmp_path):
    pool = InstancePool(program(engine, tmp_path, SPIN, "spin"), 1, "spin")
    executor = Executor(engine, threads=1)
    limits = Limits(request_timeout=0.2)
    try:
        outcome = asyncio.run(
            executor.run(pool, "_start", Invocation(argv=["guest"], env={}), limits)
        )
        assert outcome.failure == Failure.TIMEOUT
        assert 0.2 <= outcome.seconds < 5
    finally:
        executor.close()
        pool.close()
