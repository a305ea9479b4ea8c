"""Two versions of the gateway side by side: a git revision against the working tree.

    python bench/compare.py REVISION [--modules hello env] [--workers 1] [--rounds 6]

For changes too small to see between separate runs of bench/run.py on a noisy machine.
Both gateways start at once with the same settings; wrk loads them in turn, alternating
which goes first, and the ratio (working tree / REVISION) is taken within each round.
REVISION is checked out with `git worktree` under bench/out/ (removed afterwards) and
runs on this environment's packages. Needs wrk, like bench/run.py.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from run import OUT, PYTHON, ROOT, Server, Throughput, free_port, manifest, prepare, wrk


def checkout(revision: str) -> tuple[Path, str]:
    """A worktree of `revision` under bench/out/, and its short commit id."""
    commit = git("rev-parse", "--short", f"{revision}^{{commit}}")
    tree = OUT / f"rev-{commit}"
    if tree.exists():
        git("worktree", "remove", "--force", str(tree))
    git("worktree", "add", "--detach", str(tree), commit)
    return tree, commit


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def start(name: str, tree: Path, routes: Path, args: argparse.Namespace, cache: Path) -> Server:
    """`wagi serve` from the source in `tree` (its `gateway` package comes first on the path)."""
    port = free_port()
    command = [PYTHON, "-m", "gateway.cli", "serve", "-c", str(routes),
               "--listen", f"127.0.0.1:{port}", "--workers", str(args.workers),
               "--cache-dir", str(cache), "--log-level", args.log_level]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    return Server(name, command, port, f"/{args.modules[0]}", cwd=tree, env=environment)


def compare(args: argparse.Namespace) -> str:
    """Run the rounds; return the report in Markdown."""
    modules = prepare()
    tree, commit = checkout(args.revision)
    routes = manifest(modules, args.modules, OUT / "compare.toml")
    cache = Path(tempfile.mkdtemp(prefix="wagi-bench-compare-"))
    servers: dict[str, Server] = {}
    result = Throughput({f"{module} {side}": [] for module in args.modules
                         for side in ("old", "new")})  # fmt: skip
    try:
        servers["old"] = start(f"revision {commit}", tree, routes, args, cache)
        servers["new"] = start("working tree", ROOT, routes, args, cache)
        targets = [(module, side) for module in args.modules for side in servers]
        for module, side in targets:  # warm up
            wrk(servers[side].url(f"/{module}"), 1, args.connections)
        for round_number in range(args.rounds):
            order = targets if round_number % 2 == 0 else targets[::-1]
            for module, side in order:
                load = wrk(servers[side].url(f"/{module}"), args.duration, args.connections)
                result.runs[f"{module} {side}"].append(load)
                rps = load.requests_per_second
                print(f"  round {round_number + 1} {module:6} {side}: {rps:8.0f} req/s  "
                      f"errors {load.errors}", flush=True)  # fmt: skip
        problems = {server.name: server.problems() for server in servers.values()}
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(cache, ignore_errors=True)
        git("worktree", "remove", "--force", str(tree))
    return report(args, commit, result, problems)


def report(args: argparse.Namespace, commit: str, result: Throughput, problems: dict) -> str:
    """The Markdown table: each side's medians, and the within-round ratio."""
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "gateway") else ""
    lines = [
        f"# Working tree ({git('rev-parse', '--short', 'HEAD')}{dirty}) against {commit}",
        "",
        f"Made by `python bench/compare.py {commit} --modules {' '.join(args.modules)} "
        f"--workers {args.workers} --rounds {args.rounds} --duration {args.duration} "
        f"--log-level {args.log_level}` on "
        f"{datetime.date.today()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        f"Load: `wrk -t2 -c{args.connections}`, both gateways in turn, {args.rounds} rounds.",
        "",
        f"| module | {commit} req/s | working tree req/s | new / old, median of rounds "
        "| new / old, each round |",
        "|---|---|---|---|---|",
    ]
    for module in args.modules:
        old, new = f"{module} old", f"{module} new"
        pairs = zip(result.runs[old], result.runs[new], strict=True)
        rounds = ", ".join(f"{b.requests_per_second / a.requests_per_second:.2f}" for a, b in pairs)
        lines.append(
            f"| {module} | {result.median(old, 'requests_per_second'):.0f} | "
            f"{result.median(new, 'requests_per_second'):.0f} | "
            f"{result.ratio(new, old):.3f} | {rounds} |"
        )
    errors = sum(load.errors for loads in result.runs.values() for load in loads)
    lines += ["", f"Failed requests: {errors}."]
    for name, lines_logged in problems.items():
        if lines_logged:
            lines += ["", f"{name} logged:", *(f"    {line}" for line in lines_logged[:10])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the git revision to compare with, e.g. HEAD")
    parser.add_argument("--modules", nargs="+", default=["hello"],
                        choices=["hello", "env", "page"])  # fmt: skip
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--log-level", default="warning",
                        help="the gateways' log level: `info` writes the access log")  # fmt: skip
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    text = compare(args)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
