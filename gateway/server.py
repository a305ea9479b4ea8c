"""Run the gateway under hypercorn: `wagi serve`, in one process or several.

With `--workers N`, the parent compiles every module once (into the compiled cache),
opens a listening socket per worker on the one address (SO_REUSEPORT, so that the kernel
spreads connections over them), and starts N worker processes that load the app from
the cache and serve each on its socket. A worker that dies is replaced, and its
successor takes over its socket with the connections waiting there.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import ctypes
import functools
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import hypercorn.asyncio
import hypercorn.config
from hypercorn.utils import LifespanFailureError

from . import http2
from .app import Gateway
from .config import GRACE_BACKSTOP, MAX_HEAD_SIZE, ConfigError, Settings
from .engine import Engine, LoadError
from .executor import Executor
from .loader import LoadedApp, check_routes, load_app
from .logs import setup_logging
from .manifest import Manifest, ManifestError, load_manifest
from .metrics import MULTIPROCESS_FOLDER

if TYPE_CHECKING:
    import multiprocessing

    import wasmtime

log = logging.getLogger("wagi")


def hypercorn_config(settings: Settings) -> hypercorn.config.Config:
    """The hypercorn settings that follow from ours."""
    config = hypercorn.config.Config()
    config.bind = [settings.listen]
    config.accesslog = None  # the gateway writes its own access log
    config.include_server_header = False  # a guest may name its own `Server`
    config.errorlog = logging.getLogger("hypercorn.error")
    config.h11_max_incomplete_size = MAX_HEAD_SIZE
    config.h2_max_header_list_size = MAX_HEAD_SIZE
    # A client that sends nothing for this long is disconnected: a second after the
    # gateway's own body timeout at least, so that a body that stops coming gets its 408
    # first, and no sooner than an idle keep-alive connection is closed anyway.
    config.keep_alive_timeout = settings.keep_alive_timeout
    config.read_timeout = max(round(settings.client_timeout) + 1, settings.keep_alive_timeout)
    # The gateway ends requests at the grace period itself (`Gateway._end_requests`);
    # hypercorn's own deadline, a little later, is a backstop for connections alone.
    config.graceful_timeout = settings.grace_period + GRACE_BACKSTOP
    if settings.tls_cert is not None:
        config.certfile = str(settings.tls_cert)
        config.keyfile = str(settings.tls_key)
    return config


def serve(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM; with several workers, supervise them."""
    # A reload (SIGHUP) asked for while starting waits until the gateway can reload,
    # instead of killing it: `Gateway.until_stopped` and `Supervisor.run` unblock it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    if settings.workers <= 1:
        _serve_in_process(settings)
        return
    # The supervisor loads the whole app once before any worker starts: every error
    # shows here, and every module lands in the compiled cache, so no worker compiles.
    engine = Engine(settings.cache_dir, settings.engine)
    manifest, modules = _load_and_close(settings, engine)
    config = hypercorn_config(settings)
    sockets = worker_sockets(config, settings.workers)
    _announce(settings, manifest, sockets[0])
    _share_metrics_between_workers()
    # A worker tried again after failing to start gets a socket that listens only once
    # it serves: it may fail again, and then it would reset what waited on it.
    reopen = functools.partial(reuse_port_socket, config, _address(sockets[0][0]), listen=False)
    supervisor = Supervisor(_worker_main, sockets, (settings, manifest), reopen)
    reloads = WorkerReloads(settings, engine, supervisor, modules)
    supervisor.on_reload = reloads.on_signal
    if settings.watch:
        reloads.watch()
    supervisor.run()
    if supervisor.failed:
        raise LoadError("the workers could not start; see the log above")


def listening_sockets(config: hypercorn.config.Config) -> list[socket.socket]:
    """Open the sockets of `config.bind` (bound; asyncio or `worker_sockets` listens)."""
    try:
        sockets = config.create_sockets()
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise ConfigError(f"cannot listen on {', '.join(config.bind)}: {reason}") from None
    return sockets.insecure_sockets + sockets.secure_sockets


def worker_sockets(config: hypercorn.config.Config, count: int) -> list[list[socket.socket]]:
    """A listening socket for each of `count` workers, all on `config.bind`'s address.

    With one shared socket, whichever worker wakes first accepts a whole burst of
    connections and keeps them: in a benchmark, all 64 of wrk's connections went to one
    of two workers in one run of five. With SO_REUSEPORT the kernel spreads them evenly.
    The supervisor keeps every socket open, so the connections waiting on a dead worker's
    socket are served by its successor instead of being reset.
    """
    # A plain socket first: it fails on an address in use, even one held by another
    # process with SO_REUSEPORT (which would otherwise silently share our port).
    with listening_sockets(config)[0] as probe:
        address = _address(probe)  # the port the system chose, for `HOST:0`
    sockets: list[list[socket.socket]] = []
    try:
        for _ in range(count):
            sockets.append(reuse_port_socket(config, address))
    except ConfigError:
        for made in sockets:
            made[0].close()
        raise
    return sockets


def reuse_port_socket(
    config: hypercorn.config.Config, address: str, listen: bool = True
) -> list[socket.socket]:
    """One more socket on `address` (already ours) with SO_REUSEPORT; listening now, or
    (`listen=False`) only once its worker serves, so that none of its connections is
    reset if the worker fails to start: the kernel gives them to the other workers."""
    shared = copy.copy(config)
    shared.bind = [address]
    shared.workers = 2  # hypercorn then makes its sockets with SO_REUSEPORT
    sockets = listening_sockets(shared)  # a ConfigError if taken meanwhile
    if not listen:
        return sockets  # asyncio listens when the worker starts serving
    try:
        sockets[0].listen(config.backlog)  # connections wait here while its worker starts
    except OSError as error:
        sockets[0].close()
        raise ConfigError(f"cannot listen on {address}: {error.strerror or error}") from None
    return sockets


def serve_on(
    app: object,
    config: hypercorn.config.Config,
    sockets: list[socket.socket] | None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve an ASGI app with hypercorn, on `sockets` if given, else on `config.bind`."""
    http2.install()
    if sockets is not None:
        # hypercorn binds `fd://N` as given: the sockets the supervisor opened.
        config.bind = [f"fd://{sock.detach()}" for sock in sockets]

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(_quiet_cancellations)
        await hypercorn.asyncio.serve(app, config, shutdown_trigger=shutdown_trigger)

    # A failed start: the app keeps the reason (`Gateway.load_error`).
    with contextlib.suppress(LifespanFailureError):
        asyncio.run(run())


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """Python 3.11's streams report connections cancelled at shutdown as errors, with a
    traceback; they are the grace period ending, nothing more."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


def make_gateway(
    settings: Settings, manifest: Manifest, serve_while_loading: bool = True
) -> Gateway:
    """The ASGI app for `manifest`; it loads the app when its lifespan starts, and
    reloads from `settings.manifest`."""
    engine = Engine(settings.cache_dir, settings.engine)

    def load(previous: LoadedApp | None) -> LoadedApp:
        current = manifest if previous is None else load_manifest(settings.manifest)
        known = previous.modules() if previous is not None else None
        loaded = load_app(current, settings, engine, known)
        for handler in loaded.broken_routes():
            log.warning(
                "%s: route %s will answer 500: %s",
                handler.origin,
                handler.pattern.text,
                handler.problem,
            )
        return loaded

    executor = Executor(engine, settings.guest_threads)
    return Gateway(settings, executor, load, serve_while_loading=serve_while_loading)


def _serve_in_process(
    settings: Settings,
    sockets: list[socket.socket] | None = None,
    manifest: Manifest | None = None,
) -> None:
    """Serve in this process. Alone, it listens at once and loads the app meanwhile.

    A worker is given its `manifest`: the last one its supervisor found good, which the
    file may no longer be.
    """
    if manifest is None:
        manifest = load_manifest(settings.manifest)  # a broken one fails before listening
        check_routes(manifest)
    config = hypercorn_config(settings)
    supervised = sockets is not None
    if not supervised:
        sockets = listening_sockets(config)  # a port in use fails before the banner
        _announce(settings, manifest, sockets)
    # A worker that starts, or replaces one that died, loads before it accepts anything:
    # the connections waiting on its socket get answers, not "still loading" 503s.
    gateway = make_gateway(settings, manifest, serve_while_loading=not supervised)
    if supervised:
        config.startup_timeout = None  # the load is bounded by itself (compiling, start functions)
    if settings.watch and not supervised:  # with several workers, the supervisor watches
        from .reload import Reloader  # watchfiles is only needed to watch

        gateway.background.append(Reloader(settings, gateway.reload, gateway.module_digests).run)
    serve_on(gateway, config, sockets, gateway.until_stopped)
    if gateway.load_error is not None:
        raise gateway.load_error


def _load_and_close(
    settings: Settings, engine: Engine, known: Mapping[str, wasmtime.Module] | None = None
) -> tuple[Manifest, dict[str, wasmtime.Module]]:
    """Load the whole app (compiling into the cache what is not there, reusing `known`
    modules) and close it again; returns the manifest and its modules by digest."""
    manifest = load_manifest(settings.manifest)
    app = load_app(manifest, settings, engine, known)
    app.close()
    return manifest, app.modules()


def _share_metrics_between_workers() -> None:
    """Give the workers a folder for prometheus-client's multiprocess mode (unless the
    operator chose one), removed when the supervisor exits."""
    if os.environ.get(MULTIPROCESS_FOLDER):
        return
    folder = tempfile.mkdtemp(prefix="wagi-metrics-")
    os.environ[MULTIPROCESS_FOLDER] = folder  # inherited by the workers it spawns
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


class WorkerReloads:
    """With several workers, every reload (a change seen by `--watch`, or SIGHUP) is
    checked once, in the supervisor: rebuild, load the new version (which fills the
    compiled cache), and only if it is good tell the workers to reload. A worker started
    later, to replace one that died, loads that last good manifest too, so a broken file
    left on disk cannot stop replacements."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        supervisor: Supervisor,
        running: dict[str, wasmtime.Module],
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.supervisor = supervisor
        self.modules = dict(running)
        self._lock = threading.Lock()  # one reload at a time

    def reload(self, reason: str, rebuilt: Sequence[str] = ()) -> bool:
        """Load the new version; if it is good, have the workers switch to it."""
        with self._lock:
            try:
                manifest, loaded = _load_and_close(self.settings, self.engine, self.modules)
            except Exception as error:  # whatever it is, the supervisor must go on
                log.error(
                    "reload failed (%s): %s; the workers keep the running version", reason, error
                )
                return False
            self.modules = loaded
            built = f"; rebuilt {', '.join(rebuilt)}" if rebuilt else ""
            log.info("telling the workers to reload (%s)%s", reason, built)
            with self.supervisor.args_lock:  # a worker starting now gets one or the other
                self.supervisor.args = (self.settings, manifest)
                self.supervisor.signal_workers(signal.SIGHUP)
            self.supervisor.retry_now()  # a worker that could not start may now
            return True

    def on_signal(self, signum: int) -> None:
        """SIGHUP: check and reload off the signal handler (loading may compile)."""
        name = signal.Signals(signum).name
        threading.Thread(target=self.reload, args=(name,), name="reload", daemon=True).start()

    def watch(self) -> None:
        """Watch the manifest and modules in a thread of their own."""
        from .reload import Reloader  # watchfiles is only needed to watch

        async def reload(reason: str, rebuilt: Sequence[str]) -> bool:
            return await asyncio.to_thread(self.reload, reason, rebuilt)

        reloader = Reloader(self.settings, reload, lambda: set(self.modules))
        threading.Thread(
            target=asyncio.run, args=(reloader.run(),), name="watcher", daemon=True
        ).start()


def _worker_main(
    number: int, sockets: list[socket.socket], settings: Settings, manifest: Manifest
) -> None:
    setup_logging(settings.log_level, f"worker {number}", settings.log_format)
    _stop_with_parent()
    try:
        _serve_in_process(settings, sockets, manifest)
    except (ConfigError, ManifestError, LoadError) as error:
        log.error("%s", error)
        raise SystemExit(1) from None


def _stop_with_parent() -> None:
    """Have the kernel send this worker SIGTERM when its supervisor dies (Linux), so
    that a killed supervisor leaves no workers serving on its sockets."""
    import multiprocessing  # already imported: this process was spawned by it

    parent = multiprocessing.parent_process()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the supervisor still stops its workers on SIGTERM and SIGINT
    if parent is not None and os.getppid() != parent.pid:  # it died before that took effect
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


class Supervisor:
    """Starts worker processes, replaces any that die, and stops them on a signal.

    Worker `number` runs `target(number, sockets[number - 1], *args)` in a fresh
    (spawned) interpreter: one worker for each set of sockets.
    """

    # A worker that dies this soon after starting, this many times in a row while no
    # other worker serves, is not started again: the problem will not go away by itself.
    # While others serve, it is tried again later, ever less often.
    QUICK_DEATH = 5.0
    GIVE_UP_AFTER = 3
    RETRY_FIRST, RETRY_MOST = 1.0, 60.0

    def __init__(
        self,
        target: Callable[..., None],
        sockets: list[list[socket.socket]],
        args: tuple = (),
        reopen: Callable[[], list[socket.socket]] | None = None,
    ) -> None:
        """`reopen()` makes a fresh socket for a worker whose own was closed while it
        could not start; without it, its socket stays open and its connections wait."""
        import multiprocessing  # only with several workers: it is slow to import

        self.count = len(sockets)
        self.target = target
        self.sockets = sockets
        self.args = args
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, multiprocessing.Process] = {}
        self.started: dict[int, float] = {}
        self.quick_deaths = 0
        self.stopping = False
        self.failed = False
        # What SIGHUP does; by default, it is passed on to every worker.
        self.on_reload: Callable[[int], None] = self.signal_workers
        self.reopen = reopen
        # Workers that could not start while others served: when to try each again, and
        # the last wait of each (until one lives long enough).
        self.retry_at: dict[int, float] = {}
        self.retry_delay: dict[int, float] = {}
        self._retry_soon = threading.Event()  # set from a reload thread: retry now
        # Held while a worker is made from `args`, and while `args` changes and workers
        # are told to reload: a worker starting meanwhile gets the new args or the signal.
        self.args_lock = threading.Lock()

    def run(self) -> None:
        """Run the workers until a signal stops them all."""
        from multiprocessing.connection import wait

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._stop)
        signal.signal(signal.SIGHUP, self._forward)
        for number in range(1, self.count + 1):
            self._start(number)
        while self.workers or (self.retry_at and not self.stopping):
            finished = wait([w.sentinel for w in self.workers.values()], timeout=1.0)
            for number, worker in list(self.workers.items()):
                if worker.sentinel in finished:
                    self._reap(number, worker)
            self._retry_due()

    def _start(self, number: int) -> None:
        if self.stopping:  # told to stop while starting the workers: its socket is closed
            return
        with self.args_lock:
            worker = self.context.Process(
                target=self.target,
                args=(number, self.sockets[number - 1], *self.args),
                name=f"wagi-worker-{number}",
            )
            # The worker inherits SIGHUP blocked: a reload sent while it starts waits
            # until it can reload (`Gateway.until_stopped`), instead of killing it.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
            try:
                worker.start()
            except (OSError, ValueError):
                if self.stopping:  # the stop closed the socket this worker was being given
                    return
                raise
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
            self.workers[number] = worker
            self.started[number] = time.monotonic()
            if self.stopping:  # told to stop while it started: `_stop` did not see it
                worker.terminate()

    def _reap(self, number: int, worker: multiprocessing.Process) -> None:
        worker.join()
        del self.workers[number]
        if os.environ.get(MULTIPROCESS_FOLDER) and worker.pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid)  # its gauges no longer count
        if self.stopping:
            return
        lived = time.monotonic() - self.started[number]
        if lived >= self.QUICK_DEATH:
            self.quick_deaths = 0
            self.retry_delay.pop(number, None)
            self._restart(number, worker.exitcode)  # at once: connections are waiting
            return
        if self._serving():
            self._retry_later(number, worker.exitcode)
            return
        self.quick_deaths += 1
        if self.quick_deaths >= self.GIVE_UP_AFTER:
            log.error(
                "workers keep exiting as they start (last status %s); stopping", worker.exitcode
            )
            self.failed = True
            self._stop(signal.SIGTERM, None)
            return
        time.sleep(0.5)  # do not spin if workers die at start
        self._restart(number, worker.exitcode)

    def _restart(self, number: int, status: int | None) -> None:
        log.error("worker %d exited with status %s; starting a new one", number, status)
        self._start(number)

    def _serving(self) -> bool:
        """Whether some worker has been up long enough to be serving."""
        now = time.monotonic()
        return any(
            worker.is_alive() and now - self.started[number] >= self.QUICK_DEATH
            for number, worker in self.workers.items()
        )

    def _retry_later(self, number: int, status: int | None) -> None:
        """A worker could not start while others serve: they take its connections (its
        socket is closed, if it can be made again) until a later try succeeds."""
        last = self.retry_delay.get(number)
        delay = self.RETRY_FIRST if last is None else min(2 * last, self.RETRY_MOST)
        self.retry_delay[number] = delay
        self.retry_at[number] = time.monotonic() + delay
        if self.reopen is not None:
            for sock in self.sockets[number - 1]:
                sock.close()  # its waiting connections are reset; new ones go elsewhere
        log.error(
            "worker %d could not start (status %s); the other workers serve; "
            "trying again in %.0f s",
            number,
            status,
            delay,
        )

    def retry_now(self) -> None:
        """Try again soon (within a second) to start the workers that could not start."""
        self._retry_soon.set()  # the main loop acts on it: `retry_at` is its alone

    def _retry_due(self) -> None:
        now = time.monotonic()
        soon = self._retry_soon.is_set()
        self._retry_soon.clear()
        for number, when in list(self.retry_at.items()):
            if (when > now and not soon) or self.stopping:
                continue
            if self.reopen is not None and self.sockets[number - 1][0].fileno() == -1:
                try:
                    self.sockets[number - 1] = self.reopen()
                except ConfigError as error:
                    log.error("worker %d: %s", number, error)
                    self._retry_later(number, None)
                    continue
                if self.stopping:  # told to stop meanwhile: `_stop` closed the others
                    self.sockets[number - 1][0].close()
                    continue
            del self.retry_at[number]
            self._start(number)

    def _forward(self, signum: int, _frame: object) -> None:
        self.on_reload(signum)

    def signal_workers(self, signum: int) -> None:
        """Send a signal to every running worker."""
        for worker in list(self.workers.values()):
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    def _stop(self, signum: int, _frame: object) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping %d workers (%s)", len(self.workers), signal.Signals(signum).name)
        for worker in self.workers.values():
            if worker.is_alive():
                worker.terminate()  # SIGTERM: hypercorn finishes in-flight requests
        # New connections are refused from now on (a balancer tries elsewhere at once)
        # rather than queued on sockets no worker will accept from, and reset at exit.
        for sockets in self.sockets:
            for sock in sockets:
                sock.close()


def _announce(settings: Settings, manifest: Manifest, sockets: list[socket.socket]) -> None:
    scheme = "https" if settings.tls_cert else "http"
    address = _address(sockets[0])  # the port the system chose, for `--listen HOST:0`
    log.info("serving %s (%s) from %s", manifest.name, manifest.kind, manifest.path)
    for trigger in manifest.triggers:
        log.info("  %-12s %s://%s%s", trigger.component, scheme, address, trigger.route)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
