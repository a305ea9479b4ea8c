"""Where guests run: first on the event loop for one short slice, then on worker threads.

Most guests finish in well under a millisecond, and handing each request to a thread
costs more than that in CPython (the GIL has to travel twice). So a guest starts right
on the event loop, with an epoch deadline one slice away (`inline_ticks` epoch
intervals: 2 ms; see `ticker`); if it is still running when the deadline comes, it
yields, and a worker thread polls it from then on. A slow guest thus holds up the event
loop for at most one slice, and runs in parallel with everything else after that (wasm
runs with the GIL released).

Epoch deadlines cannot interrupt a guest inside a host call. The host calls that can
block for long are WASI's `poll_oneoff` (sleeping) and outbound HTTP's `req`, so a module
that imports either always runs on a worker thread. Both end by the request's deadline
(`wasi`, `outbound`), so the thread is free again then; the event loop answers at the
deadline either way.

A guest holds its thread while it sleeps or waits for a response, so a fixed number of
threads would let a few such components starve every other one: their guests would wait
for a thread until their own deadline. So the threads grow, one at a time when none is
idle, up to as many guests as admission lets run at once (`reserve`); the ones made stay
for later bursts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time

from .config import Limits
from .engine import (
    SHUTTING_DOWN,
    Engine,
    Failure,
    GuestCall,
    Invocation,
    LoadError,
    NoInstanceSlot,
    Outcome,
    timeout_message,
)
from .pool import InstancePool

log = logging.getLogger("wagi.executor")


class Executor:
    """Runs guest calls: first on the event loop, then on its worker threads."""

    def __init__(self, engine: Engine, threads: int) -> None:
        settings = engine.settings
        self._slice = settings.check_ticks
        self.ticker = engine.ticker
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._most_threads = threads
        # Threads free for another call: waiting, or about to once they hand in an
        # outcome. A call handed off takes one at once, so two calls in a row cannot
        # both count on the same thread.
        self._idle = 0
        self._waiting = 0  # calls queued with no thread free for them
        self._idle_lock = threading.Lock()
        for _ in range(threads):
            self._add_thread()
            self._idle += 1

    def reserve(self, guests: int) -> None:
        """Let the threads grow to `guests`: as many as may run at once."""
        self._most_threads = max(self._most_threads, guests)

    def _add_thread(self) -> None:
        thread = threading.Thread(
            target=self._worker, name=f"guest-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _hand_off(self, item: tuple) -> None:
        """Queue a call for a worker thread, adding one if none is free."""
        with self._idle_lock:
            add = False
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._most_threads:
                add = True  # a thread for this call
            else:
                self._waiting += 1  # for the first thread to come free
        if add:
            self._add_thread()
        self._calls.put(item)

    async def run(
        self, pool: InstancePool, entrypoint: str, invocation: Invocation, limits: Limits
    ) -> Outcome:
        """Run one request's guest within `limits`; return what it produced."""
        started = time.monotonic()
        deadline = started + limits.request_timeout
        outcome = await self._run(pool, entrypoint, invocation, limits, deadline)
        outcome.seconds = time.monotonic() - started
        return outcome

    async def _run(
        self,
        pool: InstancePool,
        entrypoint: str,
        invocation: Invocation,
        limits: Limits,
        deadline: float,
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        if self._stopped.is_set():  # no worker thread would take a guest that runs long
            return Outcome(b"", b"", failure=Failure.CANCELLED, error=SHUTTING_DOWN)
        try:
            instance = pool.take()
            if instance is None:  # a miss: made now, within the request's time
                async with asyncio.timeout(deadline - time.monotonic()):
                    instance = await pool.make()
        except NoInstanceSlot as error:
            return Outcome(b"", b"", failure=Failure.BUSY, error=str(error))
        except LoadError as error:
            return Outcome(b"", b"", failure=Failure.START, error=str(error))
        except TimeoutError:
            return _timed_out(limits.request_timeout)
        if self._stopped.is_set():  # stopped while a start function ran on a thread
            instance.close()
            return Outcome(b"", b"", failure=Failure.CANCELLED, error=SHUTTING_DOWN)
        pool.refill_soon(loop)
        may_block = pool.program.may_block  # then straight to a thread (see above)
        first_slice = self._slice if may_block else 1
        call = instance.start(
            entrypoint, invocation, first_slice, self._slice, limits.max_output_size
        )
        if may_block:
            self.ticker.thread_started()
        elif self._first_slice(call):
            return call.finish()
        future = loop.create_future()
        self._hand_off((call, loop, future, deadline, limits.request_timeout))
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                return await future
        except TimeoutError:
            # The worker thread drops the guest as soon as it has it back.
            return _timed_out(limits.request_timeout)

    def _first_slice(self, call: GuestCall) -> bool:
        """Run `call` on the event loop until it returns (True) or its first slice ends
        (False: it goes on off the loop, and the ticker ticks steadily for it)."""
        # The guest's deadline (one tick ahead) is set before its tick is armed: a
        # start slower than the slice (a large body to copy, say) would otherwise miss
        # the tick, and the guest would run on the event loop unstopped.
        ticks = self.ticker.inline_started()
        try:
            if ticks > 1:
                call.set_deadline(ticks)
            done = call.poll()
            if not done:
                self.ticker.thread_started()
        finally:
            self.ticker.inline_stopped()
        return done

    def _worker(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            call, loop, future, deadline, timeout = item
            try:
                outcome = call.run_to_end(deadline, timeout, self._stopped)
            except Exception as error:  # a bug of ours: this thread must go on serving
                log.exception("running a guest failed")
                outcome = _dropped(call, error)
            finally:
                self.ticker.thread_stopped()
            # If the loop has closed, nobody is waiting for this answer any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future, outcome)
            # Hold nothing of this call while waiting for the next one.
            del item, call, outcome
            with self._idle_lock:
                if self._waiting:
                    self._waiting -= 1  # this thread takes one of them next
                else:
                    self._idle += 1

    def close(self) -> None:
        """Stop the threads; guests still running are dropped."""
        self._stopped.set()
        for _ in self._threads:
            self._calls.put(None)
        # A thread can be stuck in a guest's WASI sleep; do not wait for it for long.
        deadline = time.monotonic() + 2
        for thread in self._threads:
            thread.join(timeout=max(0, deadline - time.monotonic()))


def _timed_out(timeout: float) -> Outcome:
    return Outcome(b"", b"", failure=Failure.TIMEOUT, error=timeout_message(timeout))


def _dropped(call: GuestCall, error: Exception) -> Outcome:
    """The outcome of a call that failed in the gateway, dropped as well as it can be."""
    message = f"the gateway failed to run the guest: {error}"
    with contextlib.suppress(Exception):
        return call.cancel(Failure.START, message)
    return Outcome(b"", b"", failure=Failure.START, error=message)


def _resolve(future: asyncio.Future, outcome: Outcome) -> None:
    if not future.done():  # the request may have been answered or cancelled meanwhile
        future.set_result(outcome)
