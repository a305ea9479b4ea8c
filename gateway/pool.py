"""Warm instance pools: instances made ahead of time, so no request waits for one.

Each component keeps a few instances ready. A request takes one (a hit) and the pool is
topped up again afterwards, off the request's path; when a burst empties it, the request
makes its own instance on the spot (a miss): slower, never an error. Every instance
serves exactly one request.

Refills run on the event loop, one instance per callback, between other work. A refill
thread would have to take the GIL from the event loop for every instance, and measured
far more expensive than making the instance itself (see docs/performance.md). Modules
with a wasm start function are the exception: making one of their instances runs it,
for up to a quarter of a second, so those are made on a thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque

from .engine import Instance, LoadError, Program

log = logging.getLogger("wagi.pool")


class InstancePool:
    """Ready instances of one program."""

    def __init__(self, program: Program, size: int, name: str, memory_limit: int = -1) -> None:
        self.program = program
        self.size = size
        self.name = name
        self.memory_limit = memory_limit
        self._ready: deque[Instance] = deque()
        self._refill_scheduled = False
        self._hits = 0  # takes since the last `take_counts()`
        self._misses = 0
        self.closed = False

    def __len__(self) -> int:
        """How many instances are ready now."""
        return len(self._ready)

    def take(self) -> Instance | None:
        """A ready instance (a hit), or None if none is ready: then see `make`."""
        try:
            instance = self._ready.popleft()
        except IndexError:
            return None
        self._hits += 1
        return instance

    async def make(self) -> Instance:
        """A new instance, for a request that found the pool empty (a miss)."""
        self._misses += 1
        if not self.program.has_start_function:
            return self.program.instantiate(self.memory_limit)
        # Its start function may run for up to START_FUNCTION_LIMIT: not on the event loop.
        made = asyncio.get_running_loop().run_in_executor(
            None, self.program.instantiate, self.memory_limit
        )
        try:
            return await asyncio.shield(made)
        except asyncio.CancelledError:
            made.add_done_callback(_close_unused)
            raise

    def take_counts(self) -> tuple[int, int]:
        """Takes since the last call: (hits, misses)."""
        counts = (self._hits, self._misses)
        self._hits = self._misses = 0
        return counts

    def fill(self) -> None:
        """Make instances until the pool is full (at load time)."""
        while self._missing():
            self._ready.append(self.program.instantiate(self.memory_limit))

    def refill_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Top the pool up from the event loop, after the current callback."""
        if not self._refill_scheduled and self._missing():
            self._refill_scheduled = True
            loop.call_soon(self._refill_step, loop)

    def _refill_step(self, loop: asyncio.AbstractEventLoop) -> None:
        self._refill_scheduled = False
        if not self._missing():
            return
        if self.program.has_start_function:  # see `make`; one thread at a time
            self._refill_scheduled = True
            made = loop.run_in_executor(None, self._instantiate)
            made.add_done_callback(functools.partial(self._refilled_from_thread, loop))
            return
        self._keep(loop, self._instantiate())

    def _instantiate(self) -> Instance | None:
        try:
            return self.program.instantiate(self.memory_limit)
        except LoadError as error:
            log.error("pool %s: cannot make an instance: %s", self.name, error)
            return None

    def _refilled_from_thread(self, loop: asyncio.AbstractEventLoop, made: asyncio.Future) -> None:
        self._refill_scheduled = False
        if not made.cancelled():
            self._keep(loop, made.result())

    def _keep(self, loop: asyncio.AbstractEventLoop, instance: Instance | None) -> None:
        if instance is None:
            return
        if self.closed:  # closed while the instance was being made
            instance.close()
            return
        self._ready.append(instance)
        self.refill_soon(loop)

    def _missing(self) -> bool:
        return not self.closed and len(self._ready) < self.size

    def close(self) -> None:
        """Free every ready instance; the pool makes no more."""
        self.closed = True
        while self._ready:
            self._ready.popleft().close()


def _close_unused(made: asyncio.Future) -> None:
    """Close an instance made for a request that was cancelled meanwhile."""
    if not made.cancelled() and made.exception() is None:
        made.result().close()
