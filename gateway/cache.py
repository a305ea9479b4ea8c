"""The on-disk cache of compiled modules, so a restart does not compile again.

Compiled code is only valid for the wasmtime version and engine settings that made it,
so entries live under a folder named by a fingerprint of both, and are named by the
SHA-256 of the module's bytes. Writes are atomic (temp file, then rename), which makes
the cache safe to share between worker processes and between gateways.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import wasmtime

log = logging.getLogger("wagi.cache")


class ModuleCache:
    """Compiled-module files under `root/<engine fingerprint>/<module sha256>.cwasm`."""

    def __init__(self, root: Path | None, fingerprint: str) -> None:
        self.folder = root / fingerprint if root is not None else None

    def entry(self, digest: str) -> Path | None:
        """Where a module's compiled form lives, by its SHA-256 (None when caching is off)."""
        if self.folder is None:
            return None
        return self.folder / f"{digest}.cwasm"

    def load(self, engine: wasmtime.Engine, entry: Path) -> wasmtime.Module | None:
        """The cached module, or None if absent or unusable (then it is removed)."""
        if not entry.is_file():
            return None
        try:
            return wasmtime.Module.deserialize_file(engine, str(entry))
        except wasmtime.WasmtimeError as error:
            log.warning("ignoring unusable compiled-cache entry %s: %s", entry, error)
            entry.unlink(missing_ok=True)
            return None

    def store(self, module: wasmtime.Module, entry: Path) -> None:
        """Save a compiled module; a cache that cannot be written is only a warning."""
        temporary = None
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
            with os.fdopen(handle, "wb") as file:
                file.write(module.serialize())
            os.replace(temporary, entry)
        except OSError as error:
            log.warning("cannot write compiled cache %s: %s", entry, error)
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)
