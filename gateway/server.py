"""Run the gateway under hypercorn: `wagi serve`, in one process or several.

With `--workers N`, the parent compiles every module once (into the compiled cache),
opens the listening sockets, and starts N worker processes that load the app from the
cache and serve on the shared sockets. A worker that dies is replaced.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import hypercorn.asyncio
import hypercorn.config

from .app import Gateway
from .config import Settings
from .engine import Engine
from .executor import Executor
from .loader import load_app
from .logs import setup_logging
from .manifest import Manifest, load_manifest

if TYPE_CHECKING:
    import multiprocessing

log = logging.getLogger("wagi")


def hypercorn_config(settings: Settings) -> hypercorn.config.Config:
    """The hypercorn settings that follow from ours."""
    config = hypercorn.config.Config()
    config.bind = [settings.listen]
    config.accesslog = None  # the gateway writes its own access log
    config.errorlog = logging.getLogger("hypercorn.error")
    if settings.tls_cert is not None:
        config.certfile = str(settings.tls_cert)
        config.keyfile = str(settings.tls_key)
    return config


def serve(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM; with several workers, supervise them."""
    if settings.workers <= 1:
        _serve_in_process(settings)
        return
    manifest = _compile_everything(settings)
    _announce(settings, manifest)
    sockets = listening_sockets(hypercorn_config(settings))
    Supervisor(settings.workers, _worker_main, sockets, (settings,)).run()


def listening_sockets(config: hypercorn.config.Config) -> list[socket.socket]:
    """Open the sockets of `config.bind` once, for every worker to share."""
    sockets = config.create_sockets()
    return sockets.insecure_sockets + sockets.secure_sockets


def serve_on(
    app: object, config: hypercorn.config.Config, sockets: list[socket.socket] | None
) -> None:
    """Serve an ASGI app with hypercorn, on `sockets` if given, else on `config.bind`."""
    if sockets is not None:
        # hypercorn binds `fd://N` as given: the sockets the supervisor opened.
        config.bind = [f"fd://{sock.detach()}" for sock in sockets]
    asyncio.run(hypercorn.asyncio.serve(app, config))


def _serve_in_process(settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    engine = Engine(settings.cache_dir, settings.engine)
    loaded = load_app(load_manifest(settings.manifest), settings, engine)
    if sockets is None:
        _announce(settings, loaded.manifest)
    gateway = Gateway(settings, loaded, Executor(engine, settings.guest_threads))
    serve_on(gateway, hypercorn_config(settings), sockets)


def _compile_everything(settings: Settings) -> Manifest:
    """Fill the compiled cache before the workers start, so none of them compiles."""
    manifest = load_manifest(settings.manifest)
    engine = Engine(settings.cache_dir, settings.engine)
    for source in dict.fromkeys(c.source for c in manifest.components.values()):
        loaded = engine.load(source)
        how = "found in the compiled cache" if loaded.from_cache else "compiled"
        log.info(
            "%s %s for %d workers (%.1f ms)",
            source.name,
            how,
            settings.workers,
            loaded.seconds * 1000,
        )
    return manifest


def _worker_main(number: int, sockets: list[socket.socket], settings: Settings) -> None:
    setup_logging(settings.log_level, prefix=f"worker {number}")
    _serve_in_process(settings, sockets)


class Supervisor:
    """Starts worker processes, replaces any that die, and stops them on a signal.

    Each worker runs `target(number, sockets, *args)` in a fresh (spawned) interpreter.
    """

    def __init__(
        self,
        count: int,
        target: Callable[..., None],
        sockets: list[socket.socket],
        args: tuple = (),
    ) -> None:
        import multiprocessing  # only with several workers: it is slow to import

        self.count = count
        self.target = target
        self.sockets = sockets
        self.args = args
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, multiprocessing.Process] = {}
        self.stopping = False

    def run(self) -> None:
        """Run the workers until a signal stops them all."""
        from multiprocessing.connection import wait

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._stop)
        for number in range(1, self.count + 1):
            self._start(number)
        while self.workers:
            finished = wait([w.sentinel for w in self.workers.values()], timeout=1.0)
            for number, worker in list(self.workers.items()):
                if worker.sentinel in finished:
                    self._reap(number, worker)

    def _start(self, number: int) -> None:
        worker = self.context.Process(
            target=self.target,
            args=(number, self.sockets, *self.args),
            name=f"wagi-worker-{number}",
        )
        worker.start()
        self.workers[number] = worker

    def _reap(self, number: int, worker: multiprocessing.Process) -> None:
        worker.join()
        del self.workers[number]
        if self.stopping:
            return
        log.error("worker %d exited with status %s; starting a new one", number, worker.exitcode)
        time.sleep(0.5)  # do not spin if workers die at start
        self._start(number)

    def _stop(self, signum: int, _frame: object) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping %d workers (%s)", len(self.workers), signal.Signals(signum).name)
        for worker in self.workers.values():
            if worker.is_alive():
                worker.terminate()  # SIGTERM: hypercorn finishes in-flight requests


def _announce(settings: Settings, manifest: Manifest) -> None:
    scheme = "https" if settings.tls_cert else "http"
    log.info("serving %s (%s) from %s", manifest.name, manifest.kind, manifest.path)
    for trigger in manifest.triggers:
        log.info("  %-12s %s://%s%s", trigger.component, scheme, settings.listen, trigger.route)
