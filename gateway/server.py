"""Run the gateway under hypercorn: `wagi serve`."""

from __future__ import annotations

import asyncio
import logging

import hypercorn.asyncio
import hypercorn.config

from .app import Gateway
from .config import Settings
from .engine import Engine
from .executor import Executor
from .loader import LoadedApp, load_app
from .manifest import load_manifest

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
    """Load the app, then serve it until SIGINT or SIGTERM."""
    engine = Engine(settings.cache_dir, settings.engine)
    loaded = load_app(load_manifest(settings.manifest), settings, engine)
    _announce(settings, loaded)
    gateway = Gateway(settings, loaded, Executor(engine, settings.guest_threads))
    asyncio.run(hypercorn.asyncio.serve(gateway, hypercorn_config(settings)))


def _announce(settings: Settings, loaded: LoadedApp) -> None:
    scheme = "https" if settings.tls_cert else "http"
    log.info(
        "serving %s (%s) from %s", loaded.manifest.name, loaded.manifest.kind, loaded.manifest.path
    )
    for route in loaded.routes.routes:
        handler = route.target
        log.info(
            "  %-12s %s://%s%s", handler.component.id, scheme, settings.listen, route.pattern.text
        )
