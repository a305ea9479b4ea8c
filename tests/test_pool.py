"""Instance pools, pool sizes, and serving with several worker processes."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import http.client
import os
import re
import signal
import threading
from pathlib import Path

import httpx

from conftest import (
    cgi_guest,
    get,
    link_wat,
    run_wagi,
    spin_toml,
    wait_for_log,
    workers_of,
)
from gateway.config import Limits
from gateway.engine import Engine, Invocation
from gateway.executor import Executor
from gateway.pool import InstancePool

HELLO = cgi_guest(b"Content-Type: text/plain\n\nhi\n")


def program(tmp_path: Path):
    return link_wat(Engine(tmp_path / "cache"), tmp_path, HELLO)


def test_ready_instances_are_hits_and_an_empty_pool_still_serves(tmp_path):
    pool = InstancePool(program(tmp_path), size=2, name="guest")
    pool.fill()

    async def takes() -> list:
        return [pool.take() or await pool.make() for _ in range(5)]

    instances = asyncio.run(takes())
    assert pool.take_counts() == (2, 3)
    assert pool.take_counts() == (0, 0)  # counted once
    for instance in instances:  # every one of them runs, pooled or not
        assert instance.run("_start", Invocation(["g"], {})).stdout.endswith(b"hi\n")
    pool.close()


START = '(module (func $init) (start $init) (func (export "_start")))'


def gated(program, gate: threading.Event) -> None:
    """Make `program`'s instances wait for `gate`, as a long start function would: on the
    event loop, that wait could never end, since the loop is what opens the gate."""
    instantiate = program.instantiate

    def waiting(memory_limit: int = -1):
        assert gate.wait(5), "instantiated on the event loop, which opens the gate"
        return instantiate(memory_limit)

    program.instantiate = waiting


def test_instances_whose_start_function_runs_are_made_off_the_event_loop(engine, tmp_path):
    # a start function may run for a quarter of a second, every request's time
    program = link_wat(engine, tmp_path, START)
    assert program.has_start_function
    gate = threading.Event()
    gated(program, gate)
    pool = InstancePool(program, size=2, name="starts")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        making = asyncio.create_task(pool.make())  # a miss
        pool.refill_soon(loop)
        await asyncio.sleep(0.05)  # the loop goes on meanwhile
        gate.set()
        (await making).close()
        while len(pool) < 2:
            await asyncio.sleep(0.001)

    asyncio.run(scenario())
    assert pool.take_counts() == (0, 1)
    pool.close()


def test_a_miss_is_made_within_the_requests_time_and_not_after_a_stop(engine, tmp_path):
    program = link_wat(engine, tmp_path, START)
    gate = threading.Event()
    gated(program, gate)
    executor = Executor(engine, threads=1)
    try:
        pool = InstancePool(program, size=0, name="starts")

        async def hurried():
            outcome = await executor.run(
                pool, "_start", Invocation(["g"], {}), Limits(request_timeout=0.05)
            )
            gate.set()  # its instance is made after all, and closed
            return outcome

        assert asyncio.run(hurried()).failure == "timeout"  # the wait for an instance counts
        gate.clear()

        async def stopped_meanwhile():
            running = asyncio.create_task(
                executor.run(pool, "_start", Invocation(["g"], {}), Limits())
            )
            await asyncio.sleep(0.05)  # it is making its instance on a thread
            executor.close()
            gate.set()
            return await running

        assert asyncio.run(stopped_meanwhile()).failure == "cancelled"
    finally:
        gate.set()
        executor.close()


def test_the_pool_is_refilled_from_the_event_loop(tmp_path):
    pool = InstancePool(program(tmp_path), size=3, name="guest")

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        pool.refill_soon(loop)
        sizes = []
        for _ in range(5):
            await asyncio.sleep(0)
            sizes.append(len(pool._ready))
        return sizes

    sizes = asyncio.run(scenario())
    assert sizes == [1, 2, 3, 3, 3]  # one instance per callback, up to the size
    pool.close()
    assert len(pool._ready) == 0


def test_a_burst_larger_than_the_pool_is_served_without_errors(serve, tmp_path):
    (tmp_path / "hello.wat").write_text(HELLO)
    (tmp_path / "modules.toml").write_text(
        '[[module]]\nroute = "/"\nmodule = "hello.wat"\npool_size = 2\n'
    )
    server = serve("-c", str(tmp_path / "modules.toml"))
    with httpx.Client(timeout=30) as client, concurrent.futures.ThreadPoolExecutor(32) as threads:
        statuses = list(threads.map(lambda _: client.get(server.url).status_code, range(200)))
    assert statuses == [200] * 200
    assert "component hello: 2 instances ready" in server.log()


def test_pool_sizes_come_from_the_flag_and_from_tool_wagi(serve, tmp_path):
    (tmp_path / "a.wat").write_text(HELLO)
    (tmp_path / "b.wat").write_text(HELLO)
    (tmp_path / "spin.toml").write_text(
        spin_toml({"/a": "a", "/b": "b"}, "[component.a.tool.wagi]\npool_size = 1\n")
    )
    server = serve("-c", str(tmp_path / "spin.toml"), "--pool-size", "5")
    log = server.log()
    assert "component a: 1 instances ready" in log
    assert "component b: 5 instances ready" in log


def test_pools_may_not_take_more_than_half_the_instance_slots(tmp_path):

    (tmp_path / "a.wat").write_text(HELLO)
    (tmp_path / "modules.toml").write_text('[[module]]\nroute = "/"\nmodule = "a.wat"\n')
    result = run_wagi("serve", "-c", str(tmp_path / "modules.toml"), "--pool-size", "60",
                      "--max-instances", "100", "-l", "127.0.0.1:0",
                      "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert result.returncode == 1
    assert "the instance pools hold 60 instances, more than half of the 100" in result.stderr


def test_workers_compile_once_and_all_serve(serve, example_apps):
    server = serve("-c", str(example_apps), "--workers", "2")
    wait_for_log(server, "wagi: ready", count=2)  # the readiness path answers at the first

    def fresh_connection_get(_: int) -> httpx.Response:
        return httpx.get(f"{server.url}/hello", timeout=30)  # a new connection each time

    with concurrent.futures.ThreadPoolExecutor(16) as threads:
        responses = list(threads.map(fresh_connection_get, range(300)))
    assert {r.status_code for r in responses} == {200}
    log = server.log().splitlines()
    by_workers = [line for line in log if "[worker " in line]
    by_supervisor = [line for line in log if "[worker " not in line]
    assert sum(" compiled in " in line for line in by_supervisor) == 3  # compiled once
    assert not [line for line in by_workers if " compiled in " in line]  # never again
    assert sum("loaded from the compiled cache" in line for line in by_workers) == 6
    served_by = set(re.findall(r"\[(worker \d)\] wagi\.access", "\n".join(log)))
    assert served_by == {"worker 1", "worker 2"}, "both workers answered requests"


def test_connections_opened_at_once_are_spread_over_the_workers(serve, example_apps):
    # A burst of long-lived connections (a client's pool, a balancer's, wrk's) must not
    # all land on the worker that happened to wake first, which then serves them alone.
    server = serve("-c", str(example_apps), "--workers", "2")
    wait_for_log(server, "wagi: ready", count=2)
    connections = [http.client.HTTPConnection("127.0.0.1", server.port) for _ in range(40)]
    for connection in connections:
        connection.connect()
    try:
        for connection in connections:  # one request each, on the connection it opened
            connection.request("GET", "/hello")
            assert connection.getresponse().read() == b"Hello from WebAssembly!\n"
    finally:
        for connection in connections:
            connection.close()
    log = wait_for_log(server, "GET /hello 200", count=40)
    served = collections.Counter(re.findall(r"\[(worker \d)\] wagi\.access", log))
    # The kernel spreads connections by a hash: with 40 over 2 workers, fewer than 8 on
    # one happens about once in 24,000 runs. One shared socket failed this in 3 runs of 5.
    assert min(served["worker 1"], served["worker 2"]) >= 8, served


def served_by_successor(log: str) -> int:
    """Requests answered by the last worker started in place of one that exited."""
    restart = list(re.finditer(r"worker (\d) exited with status \S+; starting a new one", log))[-1]
    return log[restart.end() :].count(f"[worker {restart.group(1)}] wagi.access")


def test_connections_waiting_on_a_dead_worker_are_served_by_its_successor(serve, example_apps):
    server = serve("-c", str(example_apps), "--workers", "2")
    wait_for_log(server, "wagi: ready", count=2)
    os.kill(workers_of(server)[0], signal.SIGKILL)
    # Half of these land on the dead worker's socket, which the supervisor keeps open:
    # they wait there for the worker that replaces it, instead of being refused or reset.
    with concurrent.futures.ThreadPoolExecutor(20) as threads:
        responses = list(threads.map(lambda _: get(server, "/hello"), range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert served_by_successor(server.log()) > 0


def test_a_successor_that_cannot_load_leaves_the_waiting_connections_to_the_next(serve, tmp_path):
    module = tmp_path / "hi.wat"
    module.write_text(cgi_guest(b"Content-Type: text/plain\n\nhi\n"))
    (tmp_path / "modules.toml").write_text('[[module]]\nroute = "/hi"\nmodule = "hi.wat"\n')
    server = serve("-c", str(tmp_path / "modules.toml"), "--workers", "2")
    wait_for_log(server, "wagi: ready", count=2)
    good = module.read_text()
    module.write_text("(module (func")  # the next worker to start cannot load it
    os.kill(workers_of(server)[0], signal.SIGKILL)
    with concurrent.futures.ThreadPoolExecutor(20) as threads:
        pending = [threads.submit(get, server, "/hi") for _ in range(20)]
        wait_for_log(server, "exited with status 1; starting a new one")
        module.write_text(good)  # for the one after it
        responses = [future.result() for future in pending]
    assert [r.status_code for r in responses] == [200] * 20  # none reset by the one that failed
    assert served_by_successor(server.log()) > 0
