"""The epoch ticker: advances wasmtime's epoch, but only while guests are running.

Guest time slices and deadlines are counted in epoch ticks, so something must tick.
A Python thread would have to take the GIL for every tick, which costs the event loop
more than the guests do. On Linux the ticks come from a POSIX timer that calls
`wasmtime_engine_increment_epoch(engine)` from a native thread: `SIGEV_THREAD` calls a
`void (*)(union sigval)` function, and a `union sigval` holding a pointer is passed
exactly like that pointer. No Python runs for a tick.

The timer runs only while guests do (see `EpochTicker`), so an idle gateway does no
work at all. Where there are no POSIX timers, a Python thread ticks instead.
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
    """Ticks an engine's epoch, only while guests run, as cheaply as each case allows.

    A guest starting on the event loop gets one tick, `inline_ticks` intervals away,
    from a one-shot timer that is disarmed when the guest returns; most return long
    before, so they cost two `timer_settime` calls and no tick. Guests off the event
    loop (on worker threads) need steady ticks: the timer runs periodically from the
    first such guest to the last. Each tick of a POSIX timer costs a thread in glibc
    (`SIGEV_THREAD` starts one per expiration), so ticks nobody waits for are not made.

    One event loop uses a ticker: at most one guest runs on it at a time.
    """

    def __init__(self, engine_address: int, interval: float, inline_ticks: int = 2) -> None:
        if interval <= 0 or inline_ticks < 1:
            raise ValueError("the epoch interval must be positive, and inline_ticks >= 1")
        # The ticks go to a handle of the ticker's own, deleted only once no tick can
        # come any more: glibc starts a thread per tick and nothing waits for it, so a
        # tick could otherwise reach an engine freed meanwhile (that crashed the process).
        self._engine_address = native.wasmtime_engine_clone(engine_address)
        self._interval = interval
        self._inline_ticks = inline_ticks
        self._threads = 0  # guests running off the event loop
        self._inline = False  # a guest is running on the event loop
        self._mode = _STOPPED
        self._lock = threading.Lock()
        self._timer = _posix_timer(self._engine_address)
        self._specs = [  # by mode, ready to pass
            byref(_ITimerSpec()),
            byref(_ITimerSpec(_TimeSpec(), _timespec(interval * inline_ticks))),
            byref(_ITimerSpec(_timespec(interval), _timespec(interval))),
        ]
        self._ticking = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        if self._timer is None:
            self._thread = threading.Thread(
                target=self._tick_in_python, daemon=True, name="epoch-ticker"
            )
            self._thread.start()
        atexit.register(self.close)  # no tick may reach an engine that is gone

    def inline_started(self) -> int:
        """A guest starts on the event loop, its epoch deadline set one tick ahead:
        make that tick come. Returns how many ticks the guest may run instead, if the
        caller wants to move its deadline out (more than one when the timer ticks
        steadily anyway).

        The deadline must be set before this call: it counts from the epoch when set,
        and a tick made before that would not reach it.
        """
        with self._lock:
            if self._mode != _PERIODIC:
                self._arm(_ONCE)
            self._inline = True
            return self._inline_ticks if self._mode == _PERIODIC else 1

    def inline_stopped(self) -> None:
        """The event loop's guest returned, or yielded and went on off the loop."""
        with self._lock:
            self._inline = False
            if not self._threads:
                self._arm(_STOPPED)

    def thread_started(self) -> None:
        """A guest runs (or goes on) off the event loop: tick steadily until it stops."""
        with self._lock:
            if self._mode != _PERIODIC:
                self._arm(_PERIODIC)
            self._threads += 1

    def thread_stopped(self) -> None:
        """A guest running off the event loop stopped."""
        with self._lock:
            self._threads -= 1
            if not self._threads and not self._inline:
                self._arm(_STOPPED)

    @property
    def ticking(self) -> bool:
        """Whether a tick is due: some guest is running."""
        return self._mode != _STOPPED

    def timer_setting(self) -> tuple[float, float]:
        """The POSIX timer as the kernel has it: (seconds to its next expiration, its
        period), both 0 when disarmed; for tests and diagnostics."""
        if self._timer is None or self._closed:
            return (0.0, 0.0)
        setting = _ITimerSpec()
        _libc.timer_gettime(self._timer, byref(setting))
        return (_seconds(setting.it_value), _seconds(setting.it_interval))

    def _arm(self, mode: int) -> None:
        if self._closed:
            return
        if self._timer is None:
            (self._ticking.clear if mode == _STOPPED else self._ticking.set)()
        elif _libc.timer_settime(self._timer, 0, self._specs[mode], None) != 0:
            log.error("timer_settime failed (errno %d)", ctypes.get_errno())
        self._mode = mode  # after the timer: `ticking` never runs ahead of the kernel

    def _tick_in_python(self) -> None:
        # Without POSIX timers a one-shot ticks like a periodic timer, one interval
        # after it is armed, then every interval.
        while not self._closed:
            self._ticking.wait()
            time.sleep(self._interval)
            if self._ticking.is_set() and not self._closed:
                native.wasmtime_engine_increment_epoch(self._engine_address)

    def close(self) -> None:
        """Stop ticking for good, and let go of the engine."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._mode = _STOPPED
            atexit.unregister(self.close)
            if self._timer is not None:
                _libc.timer_delete(self._timer)
                # A tick already on its way runs in a thread glibc has just started:
                # give it time to finish before its engine handle goes.
                time.sleep(_LATE_TICK_GRACE)
            self._ticking.set()
        if self._thread is not None:
            self._thread.join()
        native.wasm_engine_delete(self._engine_address)


_STOPPED, _ONCE, _PERIODIC = 0, 1, 2
_LATE_TICK_GRACE = 0.02  # seconds


def _timespec(seconds: float) -> _TimeSpec:
    whole, fraction = divmod(seconds, 1)
    return _TimeSpec(int(whole), int(fraction * 1e9))


def _seconds(spec: _TimeSpec) -> float:
    return spec.tv_sec + spec.tv_nsec / 1e9


_libc = ctypes.CDLL(None, use_errno=True)


def _posix_timer(engine_address: int) -> c_void_p | None:
    """A disarmed timer whose expirations tick the engine, or None if unavailable."""
    create = getattr(_libc, "timer_create", None)
    if create is None:
        return None
    create.argtypes = [c_int, POINTER(_SigEvent), POINTER(c_void_p)]
    _libc.timer_settime.argtypes = [c_void_p, c_int, POINTER(_ITimerSpec), c_void_p]
    _libc.timer_delete.argtypes = [c_void_p]
    _libc.timer_gettime.argtypes = [c_void_p, POINTER(_ITimerSpec)]
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
