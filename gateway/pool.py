"""Warm instance pools: instances made ahead of time, so no request waits for one.

Each component keeps a few instances ready. A request takes one (a hit) and the pool is
topped up again in the background; when a burst empties it, the request makes its own
instance on the spot (a miss): slower, never an error. Every instance serves exactly
one request.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from .engine import Instance, LoadError, Program

log = logging.getLogger("wagi.pool")


class InstancePool:
    """Ready instances of one program."""

    def __init__(self, program: Program, size: int, name: str) -> None:
        self.program = program
        self.size = size
        self.name = name
        self._ready: deque[Instance] = deque()
        self.hits = 0
        self.misses = 0
        self.closed = False
        self.queued = False  # waiting for the refiller

    def take(self) -> Instance:
        """A ready instance, or a new one if none is ready."""
        try:
            instance = self._ready.popleft()
        except IndexError:
            self.misses += 1
            return self.program.instantiate()
        self.hits += 1
        return instance

    @property
    def missing(self) -> int:
        """How many instances the pool lacks."""
        return 0 if self.closed else self.size - len(self._ready)

    def fill(self) -> None:
        """Make instances until the pool is full (or closed)."""
        while self.missing > 0:
            instance = self.program.instantiate()
            if self.closed:
                instance.close()
                return
            self._ready.append(instance)

    def close(self) -> None:
        """Free every ready instance; the pool makes no more."""
        self.closed = True
        while self._ready:
            self._ready.popleft().close()


class Refiller:
    """A background thread that tops up pools after requests take from them."""

    def __init__(self) -> None:
        self._wanted: deque[InstancePool] = deque()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="pool-refill", daemon=True)
        self._thread.start()

    def want(self, pool: InstancePool) -> None:
        """Ask for `pool` to be topped up soon."""
        if not pool.queued:
            pool.queued = True
            self._wanted.append(pool)
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait()
            self._wake.clear()
            while self._wanted and not self._stopped:
                pool = self._wanted.popleft()
                pool.queued = False
                try:
                    pool.fill()
                except LoadError as error:
                    log.error("pool %s: cannot make an instance: %s", pool.name, error)

    def stop(self) -> None:
        """Stop the thread (pools already filled stay as they are)."""
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=5)
