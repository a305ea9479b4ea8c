"""Where guests run: first on the event loop for one short slice, then on worker threads.

Most guests finish in well under a millisecond, and handing each request to a thread
costs more than that in CPython (the GIL has to travel twice). So a guest starts right
on the event loop, with an epoch deadline a tick or two away; if it is still running
when the deadline comes, it yields, and a worker thread polls it from then on. A slow
guest therefore holds up the event loop for at most one slice, and runs in parallel
with everything else after that (wasm runs with the GIL released).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading

from .config import EngineSettings
from .engine import Engine, GuestCall, Invocation, LoadError, Outcome
from .pool import InstancePool, Refiller

log = logging.getLogger("wagi.executor")


class Executor:
    """Runs guest calls; owns the epoch ticker, the worker threads and the pool refiller."""

    def __init__(self, engine: Engine, threads: int) -> None:
        self.engine = engine
        settings: EngineSettings = engine.settings
        self._first_slice = settings.inline_ticks
        self._slice = settings.check_ticks
        self._tick = settings.epoch_tick
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = threading.Event()
        self.refiller = Refiller()
        self._threads = [
            threading.Thread(target=self._ticker, name="epoch-ticker", daemon=True),
            *(threading.Thread(target=self._worker, name=f"guest-{n}", daemon=True)
              for n in range(threads)),
        ]  # fmt: skip
        for thread in self._threads:
            thread.start()

    async def run(self, pool: InstancePool, entrypoint: str, invocation: Invocation) -> Outcome:
        """Run one request's guest and return what it produced."""
        try:
            instance = pool.take()
        except LoadError as error:
            return Outcome(b"", b"", error=str(error))
        self.refiller.want(pool)
        call = instance.start(entrypoint, invocation, self._first_slice, self._slice)
        if call.poll():
            return call.finish()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._calls.put((call, loop, future))
        return await future

    def _worker(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            call, loop, future = item
            outcome = self._finish(call)
            loop.call_soon_threadsafe(_resolve, future, outcome)

    def _finish(self, call: GuestCall) -> Outcome:
        while not call.poll():
            if self._stopped.is_set():
                return call.cancel()
        return call.finish()

    def _ticker(self) -> None:
        while not self._stopped.wait(self._tick):
            self.engine.tick()

    def close(self) -> None:
        """Stop the threads; calls still running are dropped."""
        self._stopped.set()
        for _ in self._threads:
            self._calls.put(None)
        self.refiller.stop()


def _resolve(future: asyncio.Future, outcome: Outcome) -> None:
    if not future.done():  # the request may have been cancelled meanwhile
        future.set_result(outcome)
