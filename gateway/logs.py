"""The gateway's log (readable text or JSON lines), and one file per component for its
guest's stderr.

Log records may carry structured fields (`extra={"fields": {...}}`): the access log's
request id, status, duration and so on. The text format shows the message; the JSON
format writes every field as a key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("wagi")
guest_log = logging.getLogger("wagi.guest")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's fields."""

    def __init__(self, worker: str = "") -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        document = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker:
            document["worker"] = self.worker
        document.update(getattr(record, "fields", {}))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL [worker N] logger: message`, the time formatted once a second."""

    def __init__(self, worker: str = "") -> None:
        tag = f"[{worker}] " if worker else ""
        super().__init__(f"%(asctime)s %(levelname)-7s {tag}%(name)s: %(message)s", "%H:%M:%S")
        self._second = -1
        self._time = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The record's time; the access log writes many lines a second."""
        second = int(record.created)
        if second != self._second:
            self._second, self._time = second, super().formatTime(record, datefmt)
        return self._time


def setup_logging(level: str = "info", prefix: str = "", log_format: str = "text") -> None:
    """Send the gateway's log to stderr, one line per event."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(prefix) if log_format == "json" else TextFormatter(prefix))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Neither format shows the caller, thread or process, which every record would
    # otherwise look up; these are the switches the logging HOWTO gives for that
    # ("Optimization"). With the cached time, an access-log line costs ~7.1 us, not ~9.8.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


# Stderr logged per request: logging is done on the event loop, line by line (~15 us a
# line), so a guest that prints thousands of lines would hold up every other request.
MAX_STDERR_LOGGED = 64 * 1024
MAX_STDERR_LINES = 100


class ComponentLog:
    """Appends a component's guest stderr to `<log_dir>/<component>.log`."""

    def __init__(self, log_dir: Path | None, component_id: str) -> None:
        self.component_id = component_id
        self._file = None
        self._failing = False  # the last write to the file failed (and was warned of)
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(log_dir / f"{component_id}.log", "a", encoding="utf-8")  # noqa: SIM115

    def write(self, request_id: str, stderr: bytes) -> None:
        """Record a run's stderr, each line tagged with the component and request id; beyond
        MAX_STDERR_LINES lines or MAX_STDERR_LOGGED bytes, one line says what was left out."""
        lines = _first_lines(stderr)
        for line in lines:
            guest_log.info(
                "[%s %s] %s",
                self.component_id,
                request_id,
                line,
                extra={
                    "fields": {
                        "component": self.component_id,
                        "request_id": request_id,
                        "stderr": line,
                    }
                },
            )
        if self._file is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            self._append(f"{stamp} {request_id} {line}\n" for line in lines)

    def _append(self, lines: Iterable[str]) -> None:
        """Write to the file; a full or failing disk is warned of once, and never fails
        the request (its stderr is in the gateway's log all the same)."""
        assert self._file is not None
        try:
            self._file.writelines(lines)
            self._file.flush()
        except OSError as error:
            if not self._failing:
                log.warning("cannot write %s: %s; stderr goes on to the gateway's log",
                            self._file.name, error.strerror or error)  # fmt: skip
            self._failing = True
        else:
            if self._failing:
                log.info("writing %s again", self._file.name)
            self._failing = False

    def close(self) -> None:
        """Close the log file."""
        if self._file is not None:
            with contextlib.suppress(OSError):  # what the disk could not take is lost
                self._file.close()
            self._file = None


def _first_lines(stderr: bytes) -> list[str]:
    """The lines of `stderr` to log: whole lines within the bounds, then what was left out."""
    logged = stderr[:MAX_STDERR_LOGGED]
    end = -1
    for _ in range(MAX_STDERR_LINES):
        end = logged.find(b"\n", end + 1)
        if end < 0:
            break
    if end >= 0:  # as many lines as may be logged: up to the last of them
        logged = logged[: end + 1]
    elif len(logged) < len(stderr):  # cut within the bytes allowed: whole lines, if any
        logged = logged[: logged.rfind(b"\n") + 1 or None]
    # Lines end at `\n` alone, as counted above (splitlines would also split at `\r`).
    lines = [line.removesuffix("\r") for line in logged.decode("utf-8", "replace").split("\n")]
    if lines[-1] == "":
        lines.pop()  # what the last `\n` ends
    if len(logged) < len(stderr):
        lines.append(f"... {len(stderr) - len(logged)} more bytes of stderr not logged")
    return lines
