"""What the epoch ticker costs: a periodic timer's CPU, and a one-shot's arm and disarm.

    python bench/ticker_cost.py [--seconds 3]

glibc runs every expiration of a SIGEV_THREAD timer on a new thread, so a periodic
timer costs CPU whether or not a guest waits for its ticks; a guest on the event loop
is given one tick by a one-shot timer instead, at the price of two `timer_settime`
calls. This prints both, measured on this machine.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.engine import Engine
from gateway.ticker import EpochTicker


def cpu_seconds() -> float:
    """CPU time of this process, every thread included (exited ones too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def periodic_share(engine: Engine, interval: float, seconds: float) -> float:
    """The share of one core a periodic timer takes, while nothing else runs."""
    ticker = EpochTicker(engine.address, interval)
    try:
        before = cpu_seconds()
        ticker.thread_started()
        time.sleep(seconds)
        ticker.thread_stopped()
        return (cpu_seconds() - before) / seconds
    finally:
        ticker.close()


def one_shot_cost(engine: Engine, calls: int) -> float:
    """Microseconds to start and stop one guest's one-shot tick (no tick is made)."""
    ticker = EpochTicker(engine.address, 0.001)
    try:
        started = time.perf_counter()
        for _ in range(calls):
            ticker.inline_started()
            ticker.inline_stopped()
        return (time.perf_counter() - started) / calls * 1e6
    finally:
        ticker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    engine = Engine(Path(tempfile.mkdtemp(prefix="wagi-bench-ticker-")))
    idle = cpu_seconds()
    time.sleep(args.seconds)
    print(f"idle process:               {(cpu_seconds() - idle) / args.seconds:6.1%} of a core")
    for interval in (0.001, 0.002, 0.005):
        share = periodic_share(engine, interval, args.seconds)
        print(f"periodic timer, {interval * 1000:g} ms ticks: {share:6.1%} of a core")
    cost = min(one_shot_cost(engine, 100_000) for _ in range(3))
    print(f"one-shot tick, armed and disarmed: {cost:.1f} us per guest")


if __name__ == "__main__":
    main()
