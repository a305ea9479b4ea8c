"""Profile a gateway under load: where does the event loop's time go?

    python bench/loop_profile.py [--seconds 8] [--path /hello]

Starts `wagi serve` (one worker) on the benchmark's modules, loads it with wrk, and
samples it with py-spy (`--gil`: only the thread holding the GIL, which is the event loop
thread here). Prints the share of samples by area (the gateway's own code, hypercorn and
h11, asyncio) and the gateway functions with the most time of their own.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import tempfile
import time
from pathlib import Path

from run import OUT, manifest, prepare, start_target

AREAS = [("gateway/", "the gateway (gateway/)"), ("hypercorn/", "hypercorn"),
         ("h11/", "h11 (HTTP/1.1)"), ("asyncio/", "asyncio"), ("ctypes/", "ctypes")]  # fmt: skip


def summarize(raw: Path) -> str:
    own: collections.Counter = collections.Counter()
    areas: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        samples = int(count)
        total += samples
        leaf = stack.split(";")[-1]
        area = next((name for marker, name in AREAS if marker in leaf), "other Python")
        areas[area] += samples
        if "gateway/" in leaf:
            function = leaf.split(" (")[0]
            own[function] += samples
    lines = [f"{total} samples of the thread holding the GIL", "", "| where | share |",
             "|---|---|"]  # fmt: skip
    lines += [f"| {area} | {samples / total:.1%} |" for area, samples in areas.most_common()]
    lines += ["", "| gateway function (own time) | share |", "|---|---|"]
    lines += [f"| `{name}` | {samples / total:.1%} |" for name, samples in own.most_common(15)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--path", default="/hello")
    args = parser.parse_args()
    modules = prepare()
    routes = manifest(modules, ["hello", "env", "page"], OUT / "profile.toml")
    with tempfile.TemporaryDirectory() as cache:
        server = start_target("A", 1, routes, Path(cache), modules)
        load = subprocess.Popen(["wrk", "-t2", "-c64", f"-d{args.seconds + 4}s",
                                 server.url(args.path)], stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(2)
            raw = OUT / "profile.txt"
            subprocess.run(["py-spy", "record", "--pid", str(server.process.pid), "--gil",
                            "--duration", str(args.seconds), "--rate", "400", "--format", "raw",
                            "--output", str(raw)], check=True, capture_output=True)  # fmt: skip
        finally:
            load.wait()
            server.stop()
    print(summarize(raw))


if __name__ == "__main__":
    main()
