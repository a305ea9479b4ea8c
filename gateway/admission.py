"""Admission: a cap on how many guests of one component run at once, with a short queue.

A request over the cap waits in a bounded queue for a moment; if no slot frees up in
time, or the queue is full, it is refused (503 with Retry-After), so one slow component
can hold at most its own share of the worker threads, never all of them.

Used from the event loop thread only, so there is no locking.
"""

from __future__ import annotations

import asyncio
from collections import deque

# A request waits this long, at most, for a free slot of its component (then 503).
QUEUE_TIMEOUT = 1.0
# And at most this many requests per slot wait at once (then 503 at once). A burst of
# fast requests must queue rather than be refused: a guest that was descheduled
# mid-slice holds its slot from a worker thread for a moment, and under load on a
# busy machine several do. The time limit above is what bounds the wait.
QUEUE_PER_SLOT = 16


class Admission:
    """Up to `capacity` holders at once; up to QUEUE_PER_SLOT more per slot wait, each
    for QUEUE_TIMEOUT at most."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.queue_size = capacity * QUEUE_PER_SLOT
        self.running = 0
        self._waiting: deque[asyncio.Future] = deque()

    def try_enter(self) -> bool:
        """Take a slot if one is free right now."""
        if self.running < self.capacity and not self._waiting:
            self.running += 1
            return True
        return False

    async def enter(self) -> bool:
        """Take a slot, waiting for one if need be; False if refused."""
        if self.try_enter():
            return True
        if len(self._waiting) >= self.queue_size:
            return False
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            async with asyncio.timeout(QUEUE_TIMEOUT):
                await turn
            return True
        except TimeoutError:
            # The slot may have been handed over in the same instant the wait timed out.
            return turn.done() and not turn.cancelled()
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.leave()  # the slot was handed over just as the request went away
            raise
        finally:
            if turn in self._waiting:
                self._waiting.remove(turn)

    def leave(self) -> None:
        """Give a slot back: to the next waiter, if any."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes on; `running` stays the same
                return
        self.running -= 1
