"""Load Spin (`spin.toml` v2 and v1) and WAGI (`modules.toml`) manifests into one model.

Everything a manifest can get wrong is found here, at load time, and reported as a
`ManifestError` naming the file, the line, the key and the problem. The rest of the
gateway only reads the frozen dataclasses this module returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DEFAULT_PORTS, LIMIT_NAMES, ConfigError, parse_limit
from .tomlkeys import KeyLines, KeyPath

DEFAULT_ARGV = "${SCRIPT_NAME} ${ARGS}"
ARGV_VARIABLES = ("${SCRIPT_NAME}", "${ARGS}")
DEFAULT_ENTRYPOINT = "_start"


class ManifestError(Exception):
    """A manifest cannot be loaded; the message says where and why."""

    def __init__(self, origin: str, key: str, message: str) -> None:
        self.origin = origin
        self.key = key
        self.message = message
        super().__init__(f"{origin}: {key}: {message}" if key else f"{origin}: {message}")


@dataclass(frozen=True)
class Mount:
    """A host directory the guest sees, read-only, at `guest_path`."""

    guest_path: str
    host_path: Path


@dataclass(frozen=True)
class IncludedFile:
    """A single host file the guest sees at `guest_path` (staged at load)."""

    guest_path: str
    host_path: Path


@dataclass(frozen=True)
class Build:
    """How `wagi build` (and `--watch`) rebuilds a component's module."""

    commands: tuple[str, ...]
    workdir: Path
    watch: tuple[str, ...] = ()


@dataclass(frozen=True)
class AllowedHost:
    """One entry of a component's outbound allowlist: a URL's scheme, host and port.

    `*` stands for any scheme, host or port; a host `*.example.com` for its subdomains. A
    port of None is the scheme's default (80 or 443).
    """

    scheme: str
    host: str
    port: int | str | None = None

    def allows(self, scheme: str, host: str, port: int) -> bool:
        """Whether a request to `scheme://host:port` may go out."""
        if self.scheme not in ("*", scheme):
            return False
        if self.host.startswith("*."):
            if not host.endswith(self.host[1:]) or ":" in host:  # not an IPv6 literal
                return False
        elif self.host not in ("*", host):
            return False
        if self.port == "*":
            return True
        return port == (DEFAULT_PORTS[scheme] if self.port is None else self.port)


# WAGI's and Spin 1's way of allowing every destination.
ALLOW_ALL = "insecure:allow-all"


@dataclass(frozen=True)
class Component:
    """A WASI module and what it may see: environment, files, outbound hosts."""

    id: str
    source: Path
    origin: str
    environment: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    files: tuple[IncludedFile, ...] = ()
    # Patterns from `files` that matched nothing: not an error, but `wagi check` says so.
    empty_patterns: tuple[str, ...] = ()
    # Where its outbound HTTP requests may go (`wasi_experimental_http`); none by default.
    allowed_outbound_hosts: tuple[AllowedHost, ...] = ()
    # How many responses it may hold open at once (WAGI's `http_max_concurrency`).
    http_max_concurrency: int | None = None
    build: Build | None = None
    # Gateway settings (`[component.NAME.tool.wagi]`, or keys of a WAGI `[[module]]`).
    pool_size: int | None = None
    # Limits this component sets for itself (the others come from the command line).
    limits: dict[str, float | int] = field(default_factory=dict)


@dataclass(frozen=True)
class Trigger:
    """An HTTP route bound to a component, with how to invoke it (WAGI executor)."""

    route: str
    component: str
    origin: str
    entrypoint: str = DEFAULT_ENTRYPOINT
    argv: str = DEFAULT_ARGV


@dataclass(frozen=True)
class Manifest:
    """One application: its components and the routes that reach them."""

    path: Path
    kind: str  # "spin-v2", "spin-v1" or "wagi"
    name: str
    components: dict[str, Component]
    triggers: tuple[Trigger, ...]
    base: str = "/"
    # Components reachable only from inside (Spin's `route = { private = true }`).
    private: tuple[str, ...] = ()

    @property
    def folder(self) -> Path:
        """The folder that relative paths in the manifest start from."""
        return self.path.parent

    @property
    def modules(self) -> dict[Path, Component]:
        """Each module file once, with the first component that runs it."""
        first: dict[Path, Component] = {}
        for component in self.components.values():
            first.setdefault(component.source, component)
        return first


# --------------------------------------------------------------------------- reading


class _Context:
    """The file being read: resolves key paths to lines for error messages."""

    def __init__(self, path: Path, text: str, check_sources: bool) -> None:
        self.path = path
        self.folder = path.parent
        self.lines = KeyLines(text)
        self.check_sources = check_sources

    def origin(self, key_path: KeyPath) -> str:
        line = self.lines.line_of(key_path)
        return f"{self.path}:{line}" if line else str(self.path)

    def error(self, key_path: KeyPath, message: str) -> ManifestError:
        return ManifestError(self.origin(key_path), _dotted(key_path), message)


def _dotted(key_path: KeyPath) -> str:
    text = ""
    for part in key_path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + (part if re.match(r"^[\w-]+$", part) else f'"{part}"')
    return text


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "an array",
    dict: "a table",
}


class _Table:
    """One TOML table being read: typed `take`s, then `finish` rejects unknown keys."""

    def __init__(self, ctx: _Context, data: Any, key_path: KeyPath) -> None:
        if not isinstance(data, dict):
            raise ctx.error(key_path, f"expected a table, got {_describe(data)}")
        self.ctx = ctx
        self.data = data
        self.key_path = key_path
        self._seen: set[str] = set()

    def path(self, key: str | int) -> KeyPath:
        return (*self.key_path, key)

    def error(self, key: str, message: str) -> ManifestError:
        return self.ctx.error(self.path(key), message)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        self._seen.add(key)
        return self.data.get(key)

    def take(self, key: str, kind: type, *, required: bool = False, default: Any = None) -> Any:
        self._seen.add(key)
        if key not in self.data:
            if required:
                raise self.missing(key)
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}")
        return value

    def missing(self, key: str) -> ManifestError:
        """`missing required key`, naming an unknown key that may be it misspelt."""
        unknown = [name for name in self.data if name not in self._seen]
        hint = close_match(key, unknown)
        typo = f" (is `{hint}` a misspelling of it?)" if hint else ""
        return self.ctx.error(self.key_path or (key,), f"missing required key `{key}`{typo}")

    def strings(self, key: str) -> tuple[str, ...]:
        items = self.take(key, list, default=[])
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise self.ctx.error(
                    self.path(key), f"item {index} must be a string, got {_describe(item)}"
                )
        return tuple(items)

    def string_table(self, key: str) -> tuple[tuple[str, str], ...]:
        """A table of environment variables: string names and string values."""
        table = self.take(key, dict, default={})
        for name, value in table.items():
            where = (*self.path(key), name)
            if not isinstance(value, str):
                raise self.ctx.error(where, f"value must be a string, got {_describe(value)}")
            if not name or "=" in name:
                raise self.ctx.error(where, "a variable name must not be empty or hold `=`")
        return tuple(table.items())

    def sub(self, key: str, *, required: bool = False) -> _Table | None:
        value = self.take(key, dict, required=required)
        return None if value is None else _Table(self.ctx, value, self.path(key))

    def ignore(self, *keys: str) -> None:
        """Accept keys that are valid in the format but mean nothing to this gateway."""
        self._seen.update(keys)

    def finish(self) -> None:
        for key in self.data:
            if key not in self._seen:
                raise self.error(key, f"unknown key{_did_you_mean(key, sorted(self._seen))}")


def _describe(value: Any) -> str:
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return f"{name} ({value!r})" if kind in (str, int, bool) else name
    return type(value).__name__


# --------------------------------------------------------------------------- loading


def load_manifest(path: Path, *, check_sources: bool = True) -> Manifest:
    """Read, detect and validate a manifest of any supported format.

    `check_sources=False` accepts modules that do not exist yet (for `wagi build`).
    """
    path = Path(path).absolute()
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ManifestError(str(path), "", f"cannot read manifest: {error.strerror}") from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise ManifestError(str(path), "", "manifest is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise _toml_error(path, error) from None
    except RecursionError:  # tomllib recurses once per level of nested arrays or tables
        raise ManifestError(str(path), "", "not valid TOML: nested too deeply") from None
    ctx = _Context(path, text, check_sources)
    _refuse_nul(ctx, data)
    version = data.get("spin_manifest_version")
    if version is None and "module" in data:
        return _load_wagi(ctx, data)
    if version == 2:
        return _load_spin_v2(ctx, data)
    if version in ("1", 1):
        return _load_spin_v1(ctx, data)
    if version is not None:
        raise ctx.error(("spin_manifest_version",), f"unsupported version {version!r} (use 2)")
    raise ManifestError(
        str(path),
        "",
        "not a known manifest: expected `spin_manifest_version` (spin.toml) "
        "or `[[module]]` entries (modules.toml)",
    )


def _refuse_nul(ctx: _Context, data: dict) -> None:
    """No key or string may hold NUL: paths, names and values all reach C strings."""
    pending: list[tuple[KeyPath, Any]] = [((), data)]  # a stack: dotted keys nest deep
    while pending:
        key_path, value = pending.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if (isinstance(key, str) and "\x00" in key) or (
                isinstance(item, str) and "\x00" in item
            ):
                raise ctx.error((*key_path, key), "must not hold a NUL character")
            if isinstance(item, (dict, list)):
                pending.append(((*key_path, key), item))


def _toml_error(path: Path, error: tomllib.TOMLDecodeError) -> ManifestError:
    # tomllib puts the position at the end of its message: "(at line 2, column 13)".
    message = str(error)
    where = re.search(r"\(at line (\d+), column (\d+)\)$", message)
    if where is None:
        return ManifestError(str(path), "", f"not valid TOML: {message}")
    message = message[: where.start()].rstrip()
    return ManifestError(
        f"{path}:{where.group(1)}", "", f"not valid TOML: {message} (column {where.group(2)})"
    )


# Component ids appear in log file names and metrics labels.
_COMPONENT_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
# Spin keys for capabilities this gateway does not provide to WAGI modules.
_UNSUPPORTED_SPIN_KEYS = (
    "key_value_stores",
    "sqlite_databases",
    "ai_models",
    "variables",
    "dependencies",
    "dependencies_inherit_configuration",
    "config",
)


def _load_spin_v2(ctx: _Context, data: dict) -> Manifest:
    top = _Table(ctx, data, ())
    top.take("spin_manifest_version", int)
    application = top.sub("application", required=True)
    name = application.take("name", str, required=True)
    application.take("version", str)
    application.take("description", str)
    application.strings("authors")
    app_trigger = application.sub("trigger")
    if app_trigger is not None:
        http = app_trigger.sub("http")
        if http is not None:
            http.take("base", str)  # Spin 2 ignores it too: routes are absolute.
            http.finish()
        app_trigger.ignore(*(k for k in app_trigger.data if k != "http"))
        app_trigger.finish()
    app_options = _tool_tables(application)  # every component's, unless it sets its own
    application.finish()
    if top.has("variables"):
        raise top.error(
            "variables",
            "Spin application variables are not supported by WAGI "
            "modules; use `environment` on the component",
        )

    components: dict[str, Component] = {}
    component_tables = top.take("component", dict, default={})
    for component_id, table in component_tables.items():
        key_path = ("component", component_id)
        component = _spin_component(_Table(ctx, table, key_path), component_id)
        components[component_id] = _with_app_options(component, app_options)

    triggers, private = _spin_v2_triggers(ctx, top, components)
    top.finish()
    return _finish(ctx, "spin-v2", name, components, triggers, "/", private)


def _spin_v2_triggers(
    ctx: _Context, top: _Table, components: dict[str, Component]
) -> tuple[list[Trigger], list[str]]:
    trigger_table = top.sub("trigger", required=True)
    entries = trigger_table.take("http", list, required=True)
    for other in trigger_table.data:
        if other != "http":
            raise trigger_table.error(other, "only HTTP triggers are supported")
    trigger_table.finish()
    triggers: list[Trigger] = []
    private: list[str] = []
    for index, entry in enumerate(entries):
        table = _Table(ctx, entry, ("trigger", "http", index))
        table.take("id", str)
        component_ref = table.raw("component")
        if isinstance(component_ref, dict):
            # An inline component: Spin names it after the trigger's position.
            component_id = f"inline-component-{index}"
            components[component_id] = _spin_component(
                _Table(ctx, component_ref, table.path("component")), component_id
            )
        elif isinstance(component_ref, str):
            component_id = component_ref
            if component_id not in components:
                raise table.error(
                    "component",
                    f"no component named `{component_id}`{_did_you_mean(component_id, components)}",
                )
        else:
            raise table.error(
                "component",
                "expected a component id or an inline component "
                f"table, got {_describe(component_ref)}",
            )
        route, is_private = _spin_route(table)
        entrypoint, argv = _executor(table, component_id)
        table.finish()
        if is_private:
            private.append(component_id)
            continue
        triggers.append(
            Trigger(route, component_id, ctx.origin(table.path("route")), entrypoint, argv)
        )
    return triggers, private


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    hint = close_match(name, list(known))
    return f" (did you mean `{hint}`?)" if hint else ""


def _spin_route(table: _Table) -> tuple[str, bool]:
    route = table.raw("route")
    if isinstance(route, str):
        return route, False
    if isinstance(route, dict):
        private = _Table(table.ctx, route, table.path("route"))
        if private.take("private", bool, required=True) is not True:
            raise table.error("route", "a table route must be `{ private = true }`")
        private.finish()
        return "", True
    if route is None:
        raise table.missing("route")
    raise table.error("route", f"expected a string or {{ private = true }}, got {_describe(route)}")


def _executor(table: _Table, component_id: str) -> tuple[str, str]:
    executor = table.sub("executor")
    if executor is None:
        raise table.ctx.error(
            table.path("component"),
            f"component `{component_id}` has no executor, so Spin would run it as a Spin "
            "SDK component; this gateway runs WAGI modules: add "
            'executor = { type = "wagi" } to its trigger',
        )
    kind = executor.take("type", str, required=True)
    if kind == "spin":
        raise executor.error(
            "type",
            "executor `spin` runs Spin SDK components; this gateway runs WAGI "
            'modules (executor = { type = "wagi" })',
        )
    if kind != "wagi":
        raise executor.error(
            "type", f'unknown executor `{kind}`: this gateway runs `{{ type = "wagi" }}`'
        )
    entrypoint = executor.take("entrypoint", str, default=DEFAULT_ENTRYPOINT)
    argv = executor.take("argv", str, default=DEFAULT_ARGV)
    _check_argv(executor, argv)
    _check_entrypoint(executor, entrypoint)
    executor.finish()
    return entrypoint, argv


def _check_argv(table: _Table, argv: str) -> None:
    for variable in re.findall(r"\$\{[^}]*\}", argv):
        if variable not in ARGV_VARIABLES:
            raise table.error(
                "argv", f"unknown variable {variable} (argv may use {' and '.join(ARGV_VARIABLES)})"
            )


def _check_entrypoint(table: _Table, entrypoint: str) -> None:
    if not entrypoint:
        raise table.error("entrypoint", "must not be empty")


def _spin_component(table: _Table, component_id: str) -> Component:
    ctx = table.ctx
    if not _COMPONENT_ID.match(component_id):
        # v1 names a component with its `id` key, v2 with its table's name.
        where = table.path("id") if table.has("id") else table.key_path
        raise ctx.error(where, "component id may use letters, digits, `-` and `_` only")
    table.take("description", str)
    table.take("id", str)  # v1 carries the id inside the table
    for key in _UNSUPPORTED_SPIN_KEYS:
        if table.has(key):
            raise table.error(
                key,
                "not supported: this gateway runs WAGI modules, which get no Spin host services",
            )
    source = _spin_source(table)
    environment = table.string_table("environment")
    outbound = _allowed_hosts(table, "allowed_outbound_hosts")
    outbound += _allowed_hosts(table, "allowed_http_hosts", bare_hosts=True)
    mounts, files, empty = _spin_files(table)
    build = _build(table)
    options = _tool_tables(table)
    table.finish()
    return Component(
        id=component_id,
        source=source,
        origin=ctx.origin(table.path("source")),
        environment=environment,
        mounts=mounts,
        files=files,
        empty_patterns=empty,
        allowed_outbound_hosts=outbound,
        build=build,
        **options,
    )


_ALLOWED_HOST = re.compile(
    r"^(?:(?P<scheme>[a-z*]+)://)?(?P<host>\*|(?:\*\.)?[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>\*|\d{1,5}))?/?$"
)


def _allowed_hosts(table: _Table, key: str, bare_hosts: bool = False) -> tuple[AllowedHost, ...]:
    """An outbound allowlist read from `table[key]` (see `parse_allowed_host`)."""
    hosts: list[AllowedHost] = []
    for index, text in enumerate(table.strings(key)):
        try:
            hosts.extend(parse_allowed_host(text, bare_hosts))
        except ValueError as error:
            raise table.ctx.error(table.path(key), f"item {index}: {error}") from None
    return tuple(hosts)


def parse_allowed_host(text: str, bare_hosts: bool = False) -> tuple[AllowedHost, ...]:
    """One allowlist entry: a URL such as `https://api.example.com` or `*://*.example.com:*`;
    with `bare_hosts` (WAGI, Spin 1), also a host alone, for http and https."""
    if text == ALLOW_ALL:
        return (AllowedHost("*", "*", "*"),)
    found = _ALLOWED_HOST.match(text)
    scheme = found and found["scheme"]
    port = found and found["port"]
    if (
        not found
        or (scheme is None and not bare_hosts)
        or scheme not in (None, "*", "http", "https")
        or (port not in (None, "*") and int(port) > 65535)
    ):
        raise ValueError(
            f"{text!r} is not a URL like `https://api.example.com` "
            f"(or `*://*.example.com:*`, or `{ALLOW_ALL}`)"
        )
    port_value = port if port in (None, "*") else int(port)
    host = found["host"].strip("[]").lower()
    return tuple(AllowedHost(s, host, port_value) for s in ([scheme] if scheme else DEFAULT_PORTS))


def _spin_source(table: _Table) -> Path:
    source = table.raw("source")
    if isinstance(source, dict):
        raise table.error(
            "source",
            "remote sources (url, registry) are not supported: "
            "download the module and set `source` to its path",
        )
    if not isinstance(source, str):
        if source is None:
            raise table.missing("source")
        raise table.error("source", f"expected a path, got {_describe(source)}")
    return _module_path(table, "source", source)


def _module_path(table: _Table, key: str, text: str) -> Path:
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif text.startswith("file:"):
        text = text[len("file:") :]
    elif re.match(r"^[a-z][a-z0-9+.-]*://", text):
        raise table.error(key, f"only local files are supported, not {text!r}")
    path = (table.ctx.folder / text).resolve()
    if table.ctx.check_sources and path.is_dir():
        raise table.error(key, f"{path} is a folder, not a module file")
    if table.ctx.check_sources and not path.is_file():
        hint = ""
        if table.has("build") or path.suffix == ".wasm":
            hint = " (has the app been built? try `wagi build`)"
        raise table.error(key, f"module file not found: {path}{hint}")
    return path


def _tool_tables(table: _Table) -> dict[str, Any]:
    """Check `tool` tables; return this gateway's settings from `tool.wagi`."""
    tools = table.sub("tool")
    if tools is None:
        return {}
    # Tables of other tools belong to them.
    tools.ignore(*(name for name in tools.data if name != "wagi"))
    wagi = tools.sub("wagi")
    options = {} if wagi is None else _gateway_options(wagi)
    tools.finish()
    return options


def _with_app_options(component: Component, app_options: dict[str, Any]) -> Component:
    """`component` with the app's settings (`[application.tool.wagi]`) where it has none."""
    if not app_options:
        return component
    pool_size = component.pool_size
    if pool_size is None:
        pool_size = app_options.get("pool_size")
    limits = {**app_options.get("limits", {}), **component.limits}
    return dataclasses.replace(component, pool_size=pool_size, limits=limits)


def _gateway_options(table: _Table) -> dict[str, Any]:
    """The per-component settings of this gateway; the table is then finished."""
    options: dict[str, Any] = {}
    pool_size = table.take("pool_size", int)
    if pool_size is not None:
        if pool_size < 0:
            raise table.error("pool_size", "must be 0 or more")
        options["pool_size"] = pool_size
    limits = {}
    for name in LIMIT_NAMES:
        value = table.raw(name)  # seen, so a misspelt limit gets "did you mean"
        if value is not None:
            try:
                limits[name] = parse_limit(name, value)
            except ConfigError as error:
                raise table.error(name, str(error)) from None
    if limits:
        options["limits"] = limits
    table.finish()
    return options


def _build(table: _Table) -> Build | None:
    build = table.sub("build")
    if build is None:
        return None
    command = build.raw("command")
    if isinstance(command, str):
        commands = (command,)
    elif isinstance(command, list) and command and all(isinstance(c, str) for c in command):
        commands = tuple(command)
    else:
        raise build.error("command", "expected a command string or an array of them")
    workdir_text = build.take("workdir", str, default=".")
    workdir = _inside_app(build, "workdir", workdir_text)
    if not workdir.is_dir():
        raise build.error("workdir", f"not a directory: {workdir}")
    watch = build.strings("watch")
    build.finish()
    return Build(commands, workdir, watch)


def _inside_app(table: _Table, key: str, relative: str) -> Path:
    """Resolve `relative` against the manifest folder; refuse paths that leave it."""
    folder = table.ctx.folder.resolve()
    path = (folder / relative).resolve()
    if path != folder and folder not in path.parents:
        raise table.error(key, f"{relative!r} is outside the application folder {folder}")
    return path


def _spin_files(
    table: _Table,
) -> tuple[tuple[Mount, ...], tuple[IncludedFile, ...], tuple[str, ...]]:
    entries = table.take("files", list, default=[])
    excludes = table.strings("exclude_files")
    folder = table.ctx.folder.resolve()
    # Excluded by name, and by the file itself, whatever symlink leads to it.
    excluded = {item for pattern in excludes for pair in _glob(folder, pattern) for item in pair}
    mounts: list[Mount] = []
    files: dict[str, IncludedFile] = {}
    empty: list[str] = []
    for index, entry in enumerate(entries):
        where = (*table.path("files"), index)
        if isinstance(entry, str):
            _inside_app(table, "files", entry.split("*")[0] or ".")
            matched = [
                (name, host)
                for name, host in _glob(folder, entry)
                if name not in excluded and host not in excluded
            ]
            if not matched:
                empty.append(entry)
            for name, host in matched:
                files["/" + name] = IncludedFile("/" + name, host)
        elif isinstance(entry, dict):
            mapping = _Table(table.ctx, entry, where)
            source_text = mapping.take("source", str, required=True)
            destination = mapping.take("destination", str, required=True)
            mapping.finish()
            guest = _guest_path(mapping, destination)
            source = _inside_app(mapping, "source", source_text)
            if source.is_dir():
                _no_special_files(mapping, "source", source)
                mounts.append(Mount(guest, source))
            elif source.is_file():
                if guest == "/" or destination.endswith("/"):
                    raise mapping.error("destination", "a file's destination must name a file")
                files[guest] = IncludedFile(guest, source)
            elif source.exists():
                raise mapping.error("source", f"not a regular file or folder: {source}")
            else:
                raise mapping.error("source", f"no such file or directory: {source}")
        else:
            raise table.ctx.error(where, "expected a path, a glob or { source, destination }")
    _no_file_inside_a_file(table, files)
    _nothing_hidden(table, "files", mounts, files)
    return tuple(mounts), tuple(files.values()), tuple(empty)


def _guest_path(mapping: _Table, destination: str) -> str:
    """A `destination` as a clean absolute guest path; `..` is refused, since staged
    files are written under it on the host."""
    if not destination.startswith("/"):
        raise mapping.error("destination", "must be an absolute guest path")
    parts = [part for part in destination.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise mapping.error("destination", "must not contain `..`")
    return "/" + "/".join(parts)


def _no_file_inside_a_file(table: _Table, files: dict[str, IncludedFile]) -> None:
    for guest in files:
        folder = guest.rpartition("/")[0]
        while folder:
            if folder in files:
                raise table.error("files", f"`{folder}` would be both a file and a folder")
            folder = folder.rpartition("/")[0]


def _glob(folder: Path, pattern: str) -> Iterator[tuple[str, Path]]:
    """Files matched by a Spin `files` pattern (a file, a directory, recursively, or a
    glob as `glob.glob` reads it: `**` is any number of folders, and `*` skips hidden
    names), each as its name in the app folder and the file it is. Symlinks are followed,
    but never out of the app folder nor round a loop; a file reached through one keeps
    the link's name."""
    names = tuple(part for part in pattern.split("/") if part not in ("", "."))
    yield from _matches(folder, "", names, frozenset())


def _matches(
    folder: Path, name: str, names: tuple[str, ...], within: frozenset[Path]
) -> Iterator[tuple[str, Path]]:
    """The files `names` (what is left of a pattern) match from `name`, a folder reached
    through the folders `within`."""
    if not names:
        yield from _files_under(folder, name, within)
        return
    here = (folder / name).resolve()
    if (here != folder and folder not in here.parents) or here in within or not here.is_dir():
        return
    first, rest, inside = names[0], names[1:], within | {here}
    if first == "**":
        yield from _matches(folder, name, rest, within)  # no folder at all
    elif not _MAGIC.search(first):
        yield from _matches(folder, _join(name, first), rest, inside)
        return
    for entry in _entries(here):
        if entry.startswith(".") and not first.startswith("."):
            continue  # as glob does: hidden names only match a pattern that says so
        if first == "**":
            yield from _matches(folder, _join(name, entry), names, inside)
        elif fnmatch.fnmatchcase(entry, first):
            yield from _matches(folder, _join(name, entry), rest, inside)


_MAGIC = re.compile(r"[*?[]")


def _join(name: str, entry: str) -> str:
    return f"{name}/{entry}" if name else entry


def _entries(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:  # not a folder after all, or unreadable: nothing in it matches
        return []


def _files_under(folder: Path, name: str, within: frozenset[Path]) -> Iterator[tuple[str, Path]]:
    path = (folder / name).resolve()
    if path != folder and folder not in path.parents:
        return  # never follow a pattern or a symlink out of the app folder
    if path.is_dir():
        if path in within:
            return  # a symlink to a folder it is in
        for entry in _entries(path):
            yield from _files_under(folder, _join(name, entry), within | {path})
    elif path.is_file():  # not a named pipe or a device
        yield os.path.normpath(name), path


def _no_special_files(table: _Table, key: str, folder: Path) -> None:
    """Refuse a folder mount holding a named pipe, socket or device: opening or reading one
    can block inside a WASI call, where no deadline stops the guest."""
    pending = [folder]
    while pending:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
                    raise table.error(
                        key,
                        f"{entry.path} is {_special_kind(entry.path)}: a guest that opened it "
                        "could block past its deadline; mount a folder without it",
                    )


def _special_kind(path: str) -> str:
    mode = os.lstat(path).st_mode
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def _nothing_hidden(
    table: _Table, key: str, mounts: Sequence[Mount], files: Mapping[str, IncludedFile]
) -> None:
    """Refuse mounts that would hide each other: the guest looks a path up in the mount
    whose guest path is the longest prefix of it, and staged files are mounted at `/`."""
    mounted: dict[str, Mount] = {}
    for mount in mounts:
        other = mounted.setdefault(mount.guest_path, mount)
        if other is not mount:
            raise table.error(
                key,
                f"{other.host_path} and {mount.host_path} are both mounted at "
                f"{mount.guest_path}: the guest would see only one of them",
            )
    for guest in files:
        for mount in mounts:
            inside = guest == mount.guest_path or guest.startswith(mount.guest_path + "/")
            if inside or mount.guest_path == "/":
                raise table.error(
                    key,
                    f"the file {guest} is inside the folder mounted at {mount.guest_path} "
                    f"({mount.host_path}), which would hide it: put it in that folder, or "
                    "mount it elsewhere",
                )


def _load_spin_v1(ctx: _Context, data: dict) -> Manifest:
    top = _Table(ctx, data, ())
    top.take("spin_manifest_version", str)
    name = top.take("name", str, required=True)
    top.take("version", str)
    top.take("description", str)
    top.strings("authors")
    trigger = top.sub("trigger", required=True)
    kind = trigger.take("type", str, required=True)
    if kind != "http":
        raise trigger.error("type", f"only HTTP triggers are supported, not `{kind}`")
    base = trigger.take("base", str, default="/")
    if not base.startswith("/"):
        raise trigger.error("base", "must start with `/`")
    trigger.finish()
    if top.has("variables") or top.has("config"):
        key = "variables" if top.has("variables") else "config"
        raise top.error(
            key,
            "Spin variables are not supported by WAGI modules; use `environment` on the component",
        )
    components: dict[str, Component] = {}
    triggers: list[Trigger] = []
    private: list[str] = []
    for index, entry in enumerate(top.take("component", list, required=True)):
        table = _Table(ctx, entry, ("component", index))
        component_id = table.take("id", str, required=True)
        if component_id in components:
            raise table.error("id", f"duplicate component id `{component_id}`")
        trigger_table = table.sub("trigger", required=True)
        route, is_private = _spin_route(trigger_table)
        entrypoint, argv = _executor(trigger_table, component_id)
        trigger_table.finish()
        components[component_id] = _spin_component(table, component_id)
        if is_private:
            private.append(component_id)
        else:
            triggers.append(
                Trigger(
                    _join_base(base, route),
                    component_id,
                    ctx.origin(trigger_table.path("route")),
                    entrypoint,
                    argv,
                )
            )
    top.finish()
    return _finish(ctx, "spin-v1", name, components, triggers, base, private)


def _join_base(base: str, route: str) -> str:
    base = base.rstrip("/")
    return base + route if route.startswith("/") else f"{base}/{route}"


def _load_wagi(ctx: _Context, data: dict) -> Manifest:
    top = _Table(ctx, data, ())
    modules = top.take("module", list, required=True)
    top.finish()
    components: dict[str, Component] = {}
    triggers: list[Trigger] = []
    for index, entry in enumerate(modules):
        table = _Table(ctx, entry, ("module", index))
        route = table.take("route", str, required=True)
        module_text = table.take("module", str, required=True)
        source = _module_path(table, "module", module_text)
        entrypoint = table.take("entrypoint", str, default=DEFAULT_ENTRYPOINT)
        _check_entrypoint(table, entrypoint)
        argv = table.take("argv", str, default=DEFAULT_ARGV)
        _check_argv(table, argv)
        mounts = _wagi_volumes(table)
        outbound = _allowed_hosts(table, "allowed_hosts", bare_hosts=True)
        http_max_concurrency = table.take("http_max_concurrency", int)
        if http_max_concurrency is not None and http_max_concurrency < 1:
            raise table.error("http_max_concurrency", "must be 1 or more")
        environment = table.string_table("environment")
        # `bindle` and `bindle_server` belonged to WAGI's remote loading.
        for key in ("bindle", "bindle_server"):
            if table.has(key):
                raise table.error(key, "bindles are not supported; use a local module")
        options = _gateway_options(table)  # also finishes the table
        component_id = _unique_id(_wagi_component_id(source), components)
        components[component_id] = Component(
            id=component_id,
            source=source,
            origin=ctx.origin(table.path("module")),
            environment=environment,
            mounts=mounts,
            allowed_outbound_hosts=outbound,
            http_max_concurrency=http_max_concurrency,
            **options,
        )
        triggers.append(
            Trigger(route, component_id, ctx.origin(table.path("route")), entrypoint, argv)
        )
    name = ctx.path.parent.name or "wagi"
    return _finish(ctx, "wagi", name, components, triggers, "/", [])


def _wagi_volumes(table: _Table) -> tuple[Mount, ...]:
    volumes = table.take("volumes", dict, default={})
    mounts = []
    for guest, host_text in volumes.items():
        where = (*table.path("volumes"), guest)
        if not isinstance(host_text, str):
            raise table.ctx.error(where, f"expected a host directory, got {_describe(host_text)}")
        if not guest.startswith("/"):
            raise table.ctx.error(where, "guest path must be absolute (start with `/`)")
        # WAGI volumes are the operator's choice and may point outside the app folder.
        host = (table.ctx.folder / host_text).resolve()
        if not host.is_dir():
            raise table.ctx.error(where, f"not a directory: {host}")
        _no_special_files(table, "volumes", host)
        mounts.append(Mount(guest.rstrip("/") or "/", host))
    _nothing_hidden(table, "volumes", mounts, {})
    return tuple(mounts)


def _wagi_component_id(source: Path) -> str:
    # WAGI modules have no names: name them after the module file, as logs need one.
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", source.stem).strip("-")
    return stem or "module"


def _unique_id(candidate: str, taken: dict) -> str:
    if candidate not in taken:
        return candidate
    number = 2
    while f"{candidate}-{number}" in taken:
        number += 1
    return f"{candidate}-{number}"


def _finish(
    ctx: _Context,
    kind: str,
    name: str,
    components: dict[str, Component],
    triggers: list[Trigger],
    base: str,
    private: list[str],
) -> Manifest:
    if not triggers and not private:
        raise ManifestError(str(ctx.path), "", "no routes: the manifest has no HTTP triggers")
    return Manifest(
        path=ctx.path,
        kind=kind,
        name=name,
        components=components,
        triggers=tuple(triggers),
        base=base,
        private=tuple(private),
    )


def close_match(word: str, candidates: list[str]) -> str | None:
    """The candidate closest to `word`, if any is close (for "did you mean" hints)."""
    import difflib  # only on the error path: it is slow to import

    matches = difflib.get_close_matches(word, candidates, n=1)
    return matches[0] if matches else None
