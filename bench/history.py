"""The range of each headline figure over every kept benchmark run.

    python bench/history.py

Reads bench/results.md (the latest run of bench/run.py) and the earlier runs kept in
bench/history/, and prints, per figure, the lowest and highest value and from how many
runs. Keep a run by copying its results.md into bench/history/ before the next one.
"""

from __future__ import annotations

import re
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RUNS = [*sorted((BENCH / "history").glob("*.md")), BENCH / "results.md"]


def figures(text: str) -> dict[str, float]:
    """The headline figures of one results.md."""
    found: dict[str, float] = {}
    for target in ("A hello", "B plain", "C cgi", "A env", "A page"):
        for workers in (1, 2):
            row = re.search(rf"^\| {target}, {workers}w \| (\d+) \|", text, re.MULTILINE)
            if row:
                found[f"{target}, {workers}w, req/s"] = float(row.group(1))
    for workers in (1, 2):
        row = re.search(rf"^\| {workers} \| ([\d.]+) \| ([\d.]+) \|$", text, re.MULTILINE)
        if row:
            found[f"A/B, {workers}w"] = float(row.group(1))
            found[f"A/C, {workers}w"] = float(row.group(2))
    replay = re.search(r"^\| D replay, 1w \| (\d+) \|", text, re.MULTILINE)
    if replay:  # runs since the replay target was added
        found["D replay, 1w, req/s"] = float(replay.group(1))
    ceiling = re.search(r"^D/B = ([\d.]+)", text, re.MULTILINE)
    if ceiling:
        found["D/B, 1w"] = float(ceiling.group(1))
    logged = re.search(r"^The access log .* L/N = ([\d.]+)", text, re.MULTILINE)
    if logged:  # runs since the twin access-log targets were added
        found["L/N: the access log, hello, 1w"] = float(logged.group(1))
    scaling = re.search(r"hello: ([\d.]+)x \(plain ASGI: ([\d.]+)x\)", text)
    if scaling:
        found["2w / 1w, hello"] = float(scaling.group(1))
        found["2w / 1w, plain ASGI"] = float(scaling.group(2))
    cold = re.search(r"^\| hello \| (\d+) \| (\d+) \|(?: (\d+) \|)?$", text, re.MULTILINE)
    if cold:
        found["cold start, hello, warm cache, ms"] = float(cold.group(2))
        if cold.group(3):  # timed beside the starts since the run after 2026-11-25-g
            found["cold start, import floor, ms"] = float(cold.group(3))
    floor = re.search(r"^Of which .* take (\d+) ms", text, re.MULTILINE)
    if floor:  # timed apart from the starts, until 2026-11-25-g
        found["cold start, import floor, ms"] = float(floor.group(1))
    large = re.search(r"compiled in (\d+) ms, loaded from the compiled cache in ([\d.]+) ms", text)
    if large:
        found["large module, compile ms"] = float(large.group(1))
        found["large module, cache load ms"] = float(large.group(2))
    memory = re.search(r"to the last: ([+-][\d.]+)%; over the second half .*: ([+-][\d.]+)%", text)
    if memory:
        found["RSS change over all requests, %"] = float(memory.group(1))
        found["RSS change over the second half, %"] = float(memory.group(2))
    return found


def main() -> None:
    values: dict[str, list[float]] = {}
    for run in RUNS:
        for name, value in figures(run.read_text()).items():
            values.setdefault(name, []).append(value)
    print(f"Over {len(RUNS)} runs: {', '.join(run.name for run in RUNS)}\n")
    print("| figure | lowest | highest | runs |\n|---|---|---|---|")
    for name, found in values.items():
        print(f"| {name} | {min(found):g} | {max(found):g} | {len(found)} |")


if __name__ == "__main__":
    main()
