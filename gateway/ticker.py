"""The epoch ticker: advances wasmtime's epoch, but only while guests are running.

Guest time slices and deadlines are counted in epoch ticks, so something must tick.
A Python thread would have to take the GIL for every tick, which costs the event loop
more than the guests do. On Linux the ticks come from a POSIX timer that calls
`wasmtime_engine_increment_epoch(engine)` from a native thread: `SIGEV_THREAD` calls a
`void (*)(union sigval)` function, and a `union sigval` holding a pointer is passed
exactly like that pointer. No Python runs for a tick.

The timer is armed when a guest starts and disarmed once no guest has run for a while
(`disarm_if_idle`, called from the event loop), so an idle gateway does no work at all;
arming per request would cost two timer syscalls each. Where there are no POSIX timers,
a Python thread ticks instead.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import threading
import time
from ctypes import POINTER, Structure, Union, byref, c_int, c_long, c_void_p

from . import native

log = logging.getLogger("wagi.ticker")

_SIGEV_THREAD = 2
_CLOCK_MONOTONIC = 1


class _SigVal(Union):
    _fields_ = [("sival_int", c_int), ("sival_ptr", c_void_p)]


class _SigEvent(Structure):
    # Linux's struct sigevent (64 bytes) with its SIGEV_THREAD member.
    _fields_ = [
        ("sigev_value", _SigVal),
        ("sigev_signo", c_int),
        ("sigev_notify", c_int),
        ("sigev_notify_function", c_void_p),
        ("sigev_notify_attributes", c_void_p),
        ("_padding", ctypes.c_byte * 32),
    ]


class _TimeSpec(Structure):
    _fields_ = [("tv_sec", c_long), ("tv_nsec", c_long)]


class _ITimerSpec(Structure):
    _fields_ = [("it_interval", _TimeSpec), ("it_value", _TimeSpec)]


class EpochTicker:
    """Ticks an engine's epoch every `interval` seconds while guests are running."""

    # How long the ticker keeps ticking after the last guest, so that steady traffic
    # does not arm and disarm it for every request.
    LINGER = 0.1

    def __init__(self, engine_address: int, interval: float) -> None:
        self._engine_address = engine_address
        self._interval = interval
        self._running = 0
        self._last_stop = 0.0
        self.armed = False
        self._lock = threading.Lock()
        self._timer = _posix_timer(engine_address)
        seconds, fraction = divmod(interval, 1)
        period = _TimeSpec(int(seconds), int(fraction * 1e9))
        self._periodic = _ITimerSpec(period, period)
        self._stopped = _ITimerSpec()
        self._ticking = threading.Event()
        self._closed = False
        if self._timer is None:
            thread = threading.Thread(target=self._tick_in_python, daemon=True, name="epoch-ticker")
            thread.start()
        atexit.register(self.close)  # no tick may reach an engine that is gone

    def guest_started(self) -> None:
        """A guest starts running: make sure the epoch advances."""
        with self._lock:
            self._running += 1
            if not self.armed:
                self._arm(True)

    def guest_stopped(self) -> None:
        """A guest stopped running."""
        with self._lock:
            self._running -= 1
            self._last_stop = time.monotonic()

    def disarm_if_idle(self) -> bool:
        """Stop ticking if no guest has run for a while; True once disarmed."""
        with self._lock:
            idle = time.monotonic() - self._last_stop >= self.LINGER
            if self.armed and not self._running and idle:
                self._arm(False)
            return not self.armed

    def _arm(self, on: bool) -> None:
        if self._closed:
            return
        self.armed = on
        if self._timer is None:
            (self._ticking.set if on else self._ticking.clear)()
        else:
            spec = self._periodic if on else self._stopped
            _libc.timer_settime(self._timer, 0, byref(spec), None)

    def _tick_in_python(self) -> None:
        while not self._closed:
            self._ticking.wait()
            while self._ticking.is_set() and not self._closed:
                native.wasmtime_engine_increment_epoch(self._engine_address)
                time.sleep(self._interval)

    def close(self) -> None:
        """Stop ticking for good."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            atexit.unregister(self.close)
            if self._timer is not None:
                _libc.timer_delete(self._timer)
            self._ticking.set()


_libc = ctypes.CDLL(None, use_errno=True)


def _posix_timer(engine_address: int) -> c_void_p | None:
    """A disarmed timer whose expirations tick the engine, or None if unavailable."""
    create = getattr(_libc, "timer_create", None)
    if create is None:
        return None
    create.argtypes = [c_int, POINTER(_SigEvent), POINTER(c_void_p)]
    _libc.timer_settime.argtypes = [c_void_p, c_int, POINTER(_ITimerSpec), c_void_p]
    _libc.timer_delete.argtypes = [c_void_p]
    event = _SigEvent()
    event.sigev_notify = _SIGEV_THREAD
    event.sigev_value.sival_ptr = engine_address
    increment = ctypes.cast(native.wasmtime_engine_increment_epoch, c_void_p)
    event.sigev_notify_function = increment.value
    timer = c_void_p()
    if create(_CLOCK_MONOTONIC, byref(event), byref(timer)) != 0:
        log.warning("timer_create failed (errno %d); ticking from a thread", ctypes.get_errno())
        return None
    return timer
