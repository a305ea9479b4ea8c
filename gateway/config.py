"""The gateway's settings: one object, built by the CLI, read by every part.

Values that come from users (sizes, durations, `NAME=VALUE` pairs, env files, listen
addresses) are parsed and checked here, so that a mistake is reported once, clearly,
before anything starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# The request line and headers together may not exceed this (431 beyond).
MAX_HEAD_SIZE = 16 * 1024

# The port a URL's scheme implies.
DEFAULT_PORTS = {"http": 80, "https": 443}

# Seconds hypercorn waits for connections after the grace period has ended requests.
GRACE_BACKSTOP = 2.0
# Seconds the answer to a request the grace period ended may wait for its client (HTTP/2
# flow control can hold it): it must be over before the backstop, whose cancellation
# hypercorn 0.18 does not survive while a request is still sending.
GRACE_ANSWER_SECONDS = GRACE_BACKSTOP / 2


class ConfigError(Exception):
    """A setting given on the command line or in an env file is not valid."""


_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """Parse a byte size such as `64M`, `1G`, `512K` or `1048576` (units are powers of 2)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"size must not be negative: {text}")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ConfigError(f"not a size: {text!r} (use a number of bytes, or 64K, 64M, 1G)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def human_size(size: int) -> str:
    """`812 B`, `36 KiB`, `3.3 MiB`."""
    if size < 1024:
        return f"{size} B"
    if size < 1 << 20:
        return f"{size // 1024} KiB"
    return f"{size / (1 << 20):.1f} MiB"


def parse_duration(text: str | int | float) -> float:
    """Parse seconds given as `30`, `2.5`, `500ms`, `30s` or `2m`."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$", str(text))
        if not match:
            raise ConfigError(f"not a duration: {text!r} (use seconds, or 500ms, 30s, 2m)")
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]
        seconds = float(match.group(1)) * scale
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"duration must be positive and finite: {text!r}")
    if seconds > MAX_DURATION:
        raise ConfigError(f"duration must be at most a day ({MAX_DURATION:g} s): {text!r}")
    return seconds


MAX_DURATION = 24 * 3600.0  # longer is a mistake, and would overflow some timers


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_env_pair(text: str) -> tuple[str, str]:
    """Parse one `NAME=VALUE` pair as given to `--env`."""
    name, sep, value = text.partition("=")
    if not sep or not _ENV_NAME.match(name):
        raise ConfigError(f"expected NAME=VALUE, got {text!r}")
    if "\x00" in value:
        raise ConfigError(f"{name}: a value must not hold a NUL character")
    try:
        value.encode("utf-8")  # an argument's bytes that are not UTF-8 come as surrogates
    except UnicodeEncodeError:
        raise ConfigError(f"{name}: the value is not UTF-8 text") from None
    return name, value


def parse_env_file(path: Path) -> list[tuple[str, str]]:
    """Read `NAME=VALUE` lines (blank lines, `#` comments and `export ` allowed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read env file: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: env file is not UTF-8 text") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        try:
            name, value = parse_env_pair(line)
        except ConfigError as error:
            raise ConfigError(f"{path}:{number}: {error}") from None
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        pairs.append((name, value))
    return pairs


def parse_listen(text: str) -> tuple[str, int]:
    """Parse `HOST:PORT` (IPv6 hosts in brackets: `[::1]:3000`)."""
    if "://" in text:
        address = text.split("://", 1)[1].rstrip("/")
        raise ConfigError(f"--listen takes HOST:PORT, not a URL: {address!r}, not {text!r}")
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    port = parse_port(port_text)
    if sep and host and port is None and port_text.isdigit():
        raise ConfigError(f"--listen {text!r}: port {port_text} is out of range (0-65535)")
    if not sep or not host or port is None:
        raise ConfigError(f"expected HOST:PORT for --listen, got {text!r}")
    return host, port


def parse_port(text: str) -> int | None:
    """A TCP port written in ASCII digits (0-65535), or None for anything else."""
    if text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535:
        return int(text)
    return None


def default_cache_dir() -> Path:
    """The per-user cache folder: `$XDG_CACHE_HOME/wagi`, else `~/.cache/wagi`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wagi"


def find_manifest(folder: Path) -> Path:
    """Pick `spin.toml`, else `modules.toml`, in `folder`."""
    for name in ("spin.toml", "modules.toml"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no spin.toml or modules.toml in {folder}; name a manifest with -c FILE")


@dataclass(frozen=True)
class Limits:
    """What one request may cost. Global defaults; a component may set its own."""

    # Wall-clock seconds a guest may run (504 after that).
    request_timeout: float = 30.0
    # Bytes of linear memory an instance may grow to (its allocations fail beyond).
    max_memory: int = 256 << 20
    # Bytes of request body (413 beyond, before the guest runs).
    max_body_size: int = 10 << 20
    # Bytes a guest may write to stdout and stderr together (502 beyond).
    max_output_size: int = 64 << 20
    # Guests of one component running at once, per worker process: half the guest
    # threads, so that one slow component leaves the other half to the rest.
    max_concurrency: int = field(default_factory=lambda: 2 * (os.cpu_count() or 2))

    def merged(self, overrides: dict[str, object]) -> Limits:
        """These limits with a component's own values in place."""
        return dataclasses.replace(self, **overrides)


LIMIT_NAMES = tuple(limit.name for limit in dataclasses.fields(Limits))


def _shown(value: object) -> str:
    """A value as it was written in TOML (`true`, not Python's `True`)."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def parse_limit(name: str, value: object) -> float | int:
    """Check one limit's value: a duration, a size, or a count, as its name says."""
    if name == "request_timeout":
        if not isinstance(value, int | float | str) or isinstance(value, bool):
            raise ConfigError(f"expected seconds, got {_shown(value)}")
        return parse_duration(value)
    if name == "max_concurrency":
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"expected a whole number of at least 1, got {_shown(value)}")
        return value
    if not isinstance(value, int | str) or isinstance(value, bool):
        raise ConfigError(f"expected a size such as 64M, got {_shown(value)}")
    size = parse_size(value)
    if size == 0:
        raise ConfigError("must be more than 0")
    return size


@dataclass(frozen=True)
class EngineSettings:
    """How wasmtime is tuned (see docs/performance.md for the measurements behind these)."""

    # The pooling allocator reserves instance slots up front and reuses them.
    pooling: bool = True
    # Instances (pooled, running, or both) that may exist at once in one process.
    max_instances: int = 1000
    # The largest linear memory one instance may grow to (the size of a pooling slot).
    instance_memory: int = 4 << 30
    # How much of a used slot's memory is reset by memset rather than by madvise.
    keep_resident: int = 64 << 10
    # Map a module's initial memory copy-on-write instead of copying it per instance.
    copy_on_write: bool = True
    # Seconds between epoch ticks; guest time slices and deadlines count in ticks.
    epoch_tick: float = 0.001
    # Epoch intervals a guest may run on the event loop before it moves to a worker thread.
    inline_ticks: int = 2
    # Ticks between the checks a worker thread makes on a guest it runs (deadline, output).
    check_ticks: int = 10

    def fingerprint_items(self) -> dict[str, object]:
        """The settings compiled code depends on, for the compiled-cache key."""
        return {
            "pooling": self.pooling,
            "instance_memory": self.instance_memory,
            "copy_on_write": self.copy_on_write,
        }


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to know, besides the manifest's own content."""

    manifest: Path
    listen: str = "127.0.0.1:3000"
    # Global environment for every module: the `--env-file` (read at each load), then
    # these `--env` pairs, which win.
    env: tuple[tuple[str, str], ...] = ()
    env_file: Path | None = None
    log_dir: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Processes serving requests, each with its own event loop and instance pools.
    workers: int = 1
    log_level: str = "info"
    log_format: str = "text"  # or "json": one JSON object per line
    # Threads that run guests past their first slice (wasm runs with the GIL released).
    # More than the cores, so that slow guests of one component leave room for others.
    guest_threads: int = field(default_factory=lambda: 4 * (os.cpu_count() or 2))
    # Instances kept ready per component (a component's `tool.wagi.pool_size` wins).
    pool_size: int = 8
    engine: EngineSettings = field(default_factory=EngineSettings)
    limits: Limits = field(default_factory=Limits)
    # Seconds a client may take to send its request body, and to send anything at all.
    client_timeout: float = 30.0
    # Seconds a SIGTERM waits for requests in flight before the process exits anyway.
    grace_period: float = 30.0
    # Seconds an idle keep-alive connection stays open (hypercorn's default). A load
    # balancer in front must close idle connections sooner, or this must be raised above
    # its idle timeout: else it may send a request on a connection the gateway is just
    # closing, and it retries only a GET. Longer costs memory: hypercorn keeps a connection
    # the client closed mid-request until this timer runs out.
    keep_alive_timeout: float = 5.0
    # Proxies whose X-Forwarded-*/Forwarded headers are believed: addresses, networks, `*`.
    forwarded_allow_ips: str = ""
    # Reload when the manifest, modules, mounted files or the env file change.
    watch: bool = False
    # Changes that come within this many seconds of each other make one reload.
    watch_debounce: float = 0.1

    def global_environment(self) -> list[tuple[str, str]]:
        """`--env-file` (read now, so a reload sees its changes), then `--env`."""
        from_file = parse_env_file(self.env_file) if self.env_file else []
        return [*from_file, *self.env]
