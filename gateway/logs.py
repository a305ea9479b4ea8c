"""The gateway log, and one log file per component for its guest's stderr."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

guest_log = logging.getLogger("wagi.guest")


def setup_logging(level: str = "info", prefix: str = "") -> None:
    """Send the gateway's log to stderr, one readable line per event."""
    handler = logging.StreamHandler(sys.stderr)
    tag = f"[{prefix}] " if prefix else ""
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)-7s {tag}%(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class ComponentLog:
    """Appends a component's guest stderr to `<log_dir>/<component>.log`."""

    def __init__(self, log_dir: Path | None, component_id: str) -> None:
        self.component_id = component_id
        self._file = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(log_dir / f"{component_id}.log", "a", encoding="utf-8")  # noqa: SIM115

    def write(self, request_id: str, stderr: bytes) -> None:
        """Record a run's stderr, each line tagged with the request id."""
        text = stderr.decode("utf-8", "replace")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        lines = text.splitlines()
        for line in lines:
            guest_log.info("[%s %s] %s", self.component_id, request_id, line)
        if self._file is not None:
            self._file.writelines(f"{stamp} {request_id} {line}\n" for line in lines)
            self._file.flush()

    def close(self) -> None:
        """Close the log file."""
        if self._file is not None:
            self._file.close()
            self._file = None
