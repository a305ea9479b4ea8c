"""Turn a manifest into a runnable app: modules compiled and linked, files staged, routes built.

Everything that can be done before the first request is done here, so the request path
only reads the `LoadedApp` this returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from . import cgi
from .admission import Admission
from .config import Limits, Settings, human_size
from .engine import (
    WASM_PAGE,
    Engine,
    FixedEnvironment,
    Invocation,
    LoadedModule,
    LoadError,
    Program,
)
from .logs import ComponentLog
from .manifest import Component, Manifest, ManifestError, Trigger
from .mounts import StagedFiles, guest_mounts
from .outbound import DEFAULT_MAX_OPEN, OutboundPolicy
from .pool import InstancePool
from .routing import Route, RouteClash, RoutePattern, RouteSyntaxError, RouteTable

log = logging.getLogger("wagi.loader")

# Modules this big take a noticeable time to compile: say so before starting.
LARGE_MODULE = 1 << 20


@dataclass
class ComponentRuntime:
    """A component ready to run: its linked program and the context every run gets."""

    id: str
    source: Path
    module: LoadedModule
    program: Program
    pool: InstancePool
    limits: Limits
    admission: Admission
    env: dict[str, str]
    mounts: list[tuple[str, str]]
    log: ComponentLog
    staged: StagedFiles | None
    # What its outbound HTTP requests may do; None if its module makes none.
    outbound: OutboundPolicy | None = None

    def close(self) -> None:
        """Release the pooled instances, the staged files and the log file."""
        self.pool.close()
        if self.staged is not None:
            self.staged.close()
        self.log.close()


@dataclass(frozen=True)
class Handler:
    """What a route leads to: a component and how to invoke it."""

    component: ComponentRuntime
    pattern: RoutePattern
    entrypoint: str
    argv: str
    base_path: str
    origin: str
    # The environment every request to this route gets, prepared at load.
    fixed_env: FixedEnvironment
    # Configured variables that a request's own variables may replace (`HTTP_*`, ...).
    optional_env: dict[str, str]
    # Why the entrypoint cannot run (the module does not export it): every request to
    # this route answers 500 without starting a guest.
    problem: str | None = None


def make_handler(
    component: ComponentRuntime,
    pattern: RoutePattern,
    entrypoint: str,
    argv: str,
    base_path: str,
    origin: str,
) -> Handler:
    """A handler, with the part of its environment that no request changes prepared."""
    constants = cgi.RouteConstants.of(pattern.text, base_path)
    fixed, optional = cgi.fixed_environment(constants, component.env)
    return Handler(
        component,
        pattern,
        entrypoint,
        argv,
        base_path,
        origin,
        FixedEnvironment(fixed),
        optional,
        component.program.entrypoint_problem(entrypoint),
    )


class LoadedApp:
    """An app as loaded from one manifest: components and the route table.

    While the gateway reloads, two versions can be live: the old one keeps the requests
    it already has, and is closed when the last of them ends.
    """

    def __init__(
        self,
        manifest: Manifest,
        components: dict[str, ComponentRuntime],
        routes: RouteTable[Handler],
    ) -> None:
        self.manifest = manifest
        self.components = components
        self.routes = routes
        self.version = 0
        self.loaded_at = time.time()
        self.requests = 0  # in flight on this version
        self.retired = False
        self._closed = False

    def broken_routes(self) -> list[Handler]:
        """The routes whose entrypoint cannot run: they answer 500."""
        return [route.target for route in self.routes.routes if route.target.problem]

    def most_guests(self) -> int:
        """How many guests admission lets run at once, over all components."""
        return sum(c.limits.max_concurrency for c in self.components.values())

    def modules(self) -> dict[str, wasmtime.Module]:
        """This version's compiled modules, by digest, for the next version to reuse."""
        return {c.module.digest: c.module.module for c in self.components.values()}

    def retire(self) -> None:
        """A newer version took over: close once no request uses this one."""
        self.retired = True
        if self.requests == 0:
            self.close()

    def request_done(self) -> None:
        """A request that used this version has been answered."""
        self.requests -= 1
        if self.retired and self.requests == 0:
            self.close()

    def close(self) -> None:
        """Release every component's resources (idempotent)."""
        if not self._closed:
            self._closed = True
            for component in self.components.values():
                component.close()


def load_app(
    manifest: Manifest,
    settings: Settings,
    engine: Engine,
    known: Mapping[str, wasmtime.Module] | None = None,
) -> LoadedApp:
    """Compile, link and prepare every component, then build the route table.

    Modules whose digest is in `known` (a previous version's, say) are reused as they are.
    """
    patterns = check_routes(manifest)
    pool_sizes = _pool_sizes(manifest, settings)
    _check_capacity(manifest, settings, sum(pool_sizes.values()))
    environment = settings.global_environment()
    known = known or {}
    components: dict[str, ComponentRuntime] = {}
    try:
        modules: dict[Path, LoadedModule] = {}
        for component in manifest.components.values():
            components[component.id] = _prepare(
                component, pool_sizes[component.id], settings, engine, modules, known, environment
            )
        handlers = [
            make_handler(
                components[trigger.component],
                pattern,
                trigger.entrypoint,
                trigger.argv,
                manifest.base,
                trigger.origin,
            )
            for trigger, pattern in zip(manifest.triggers, patterns, strict=True)
        ]
        if manifest.kind == "wagi":
            handlers = _expand_wagi_routes(handlers)
        routes = _route_table(handlers)
    except BaseException:
        for runtime in components.values():
            runtime.close()
        raise
    return LoadedApp(manifest, components, routes)


def _check_capacity(manifest: Manifest, settings: Settings, pooled: int) -> None:
    """Pools hold instance slots; leave at least as many again for requests."""
    slots = settings.engine.max_instances
    if settings.engine.pooling and pooled * 2 > slots:
        raise LoadError(
            f"the instance pools hold {pooled} instances, more than half of the {slots} "
            "instance slots (--max-instances); raise it or lower pool sizes",
            str(manifest.path),
        )


def _pool_sizes(manifest: Manifest, settings: Settings) -> dict[str, int]:
    """Instances kept ready for each component: its own `pool_size`, else `--pool-size`;
    none for a component no route reaches (a Spin `private` one)."""
    routed = {trigger.component for trigger in manifest.triggers}
    sizes = {}
    for component in manifest.components.values():
        size = settings.pool_size if component.pool_size is None else component.pool_size
        sizes[component.id] = size if component.id in routed else 0
    return sizes


def _prepare(
    component: Component,
    pool_size: int,
    settings: Settings,
    engine: Engine,
    modules: dict[Path, LoadedModule],
    known: Mapping[str, wasmtime.Module],
    environment: list[tuple[str, str]],
) -> ComponentRuntime:
    loaded = modules.get(component.source)
    if loaded is None:
        loaded = modules[component.source] = _load_module(component, engine, known)
    try:
        program = engine.link(loaded, f"component `{component.id}` ({component.source.name})")
    except LoadError as error:
        raise LoadError(str(error), component.origin) from None
    limits = settings.limits.merged(component.limits)
    if settings.engine.pooling and limits.max_memory > settings.engine.instance_memory:
        raise LoadError(
            f"component `{component.id}`: max_memory {limits.max_memory} is more than an "
            f"instance slot holds ({settings.engine.instance_memory} bytes)",
            component.origin,
        )
    memory = program.exports.get("memory")
    initial = memory.limits.min * WASM_PAGE if isinstance(memory, wasmtime.MemoryType) else 0
    if initial > limits.max_memory:
        raise LoadError(
            f"component `{component.id}`: its memory starts at {human_size(initial)}, "
            f"more than its max_memory of {human_size(limits.max_memory)}: raise max_memory",
            component.origin,
        )
    pool = InstancePool(program, pool_size, component.id, limits.max_memory)
    staged = None
    try:
        pool.fill()
        staged = StagedFiles(component) if component.files else None
        component_log = ComponentLog(settings.log_dir, component.id)
    except (LoadError, OSError) as error:
        pool.close()  # the instance slots it holds would otherwise be lost for good
        if staged is not None:
            staged.close()
        reason = str(error) if isinstance(error, LoadError) else _os_problem(error)
        raise LoadError(f"component `{component.id}`: {reason}", component.origin) from None
    log.info("component %s: %d instances ready", component.id, pool_size)
    admission = Admission(limits.max_concurrency)
    env = dict(environment)
    env.update(component.environment)
    return ComponentRuntime(
        id=component.id,
        source=component.source,
        module=loaded,
        program=program,
        pool=pool,
        limits=limits,
        admission=admission,
        env=env,
        mounts=guest_mounts(component, staged),
        log=component_log,
        staged=staged,
        outbound=_outbound_policy(component, program, limits),
    )


def _outbound_policy(
    component: Component, program: Program, limits: Limits
) -> OutboundPolicy | None:
    if not program.makes_requests:
        return None
    if not component.allowed_outbound_hosts:
        log.warning(
            "component %s: its module makes outbound HTTP requests, but no host is allowed "
            "(allowed_outbound_hosts, or allowed_hosts in modules.toml): all are refused",
            component.id,
        )
    return OutboundPolicy(
        component.id,
        component.allowed_outbound_hosts,
        component.http_max_concurrency or DEFAULT_MAX_OPEN,
        limits.max_output_size,
    )


def _os_problem(error: OSError) -> str:
    """`cannot write /srv/logs/app.log: Permission denied`, say."""
    where = f" {error.filename}" if error.filename else ""
    return f"cannot write{where}: {error.strerror or error}"


def _load_module(
    component: Component, engine: Engine, known: Mapping[str, wasmtime.Module]
) -> LoadedModule:
    def compiling(source: Path, size: int) -> None:
        if size >= LARGE_MODULE:
            log.info(
                "component %s: compiling %s (%s), this may take a while",
                component.id,
                source.name,
                human_size(size),
            )

    try:
        loaded = engine.load(component.source, known, compiling)
    except LoadError as error:
        raise LoadError(f"component `{component.id}`: {error}", component.origin) from None
    how = {
        "compiled": "compiled",
        "cached": "loaded from the compiled cache",
        "reused": "unchanged, reused",
    }[loaded.how]
    log.info(
        "component %s: %s (%s) %s in %.1f ms",
        component.id,
        component.source.name,
        human_size(loaded.size),
        how,
        loaded.seconds * 1000,
    )
    return loaded


def check_routes(manifest: Manifest) -> list[RoutePattern]:
    """The manifest's routes, parsed, in its order; refuses one that is malformed or
    clashes. Cheap, so it can come before the server listens and before any compiling."""
    patterns = [_pattern(trigger) for trigger in manifest.triggers]
    try:
        RouteTable([Route(p, t) for p, t in zip(patterns, manifest.triggers, strict=True)])
    except RouteClash as clash:
        first, second = clash.existing.target, clash.duplicate.target
        raise _clash_error(
            second.route, second.origin, first.route, first.component, first.origin
        ) from None
    return patterns


def _pattern(trigger: Trigger) -> RoutePattern:
    try:
        return RoutePattern.parse(trigger.route)
    except RouteSyntaxError as error:
        raise ManifestError(trigger.origin, "", str(error)) from None


def _clash_error(
    route: str, origin: str, other_route: str, other_component: str, other_origin: str
) -> ManifestError:
    return ManifestError(
        origin,
        "",
        f"route {route} clashes with route {other_route} of component `{other_component}` "
        f"({other_origin}): both match the same paths; fix: give one of them another route",
    )


def _route_table(handlers: list[Handler]) -> RouteTable[Handler]:
    for handler in handlers:
        if handler.pattern.is_built_in():  # `wagi check` calls it an error; serving goes on
            text = handler.pattern.text
            log.warning(
                "%s: component %s: route %s is never reached: the gateway answers %s itself",
                handler.origin,
                handler.component.id,
                text,
                text,
            )
    try:
        return RouteTable([Route(h.pattern, h) for h in handlers])
    except RouteClash as clash:
        first, second = clash.existing.target, clash.duplicate.target
        raise _clash_error(
            second.pattern.text, second.origin, first.pattern.text, first.component.id, first.origin
        ) from None


# Sub-routes one `_routes` export may declare: WAGI apps declare a handful, and each is
# a handler, an access-log label and a startup log line (200,000 took 6 s and 415 MB).
MAX_DECLARED_ROUTES = 1000


def _expand_wagi_routes(handlers: list[Handler]) -> list[Handler]:
    """Add the sub-routes that modules exporting `_routes` declare (WAGI only)."""
    expanded: list[Handler] = []
    for handler in handlers:
        if "_routes" not in handler.component.program.exports:
            expanded.append(handler)
            continue
        subroutes = _declared_routes(handler)
        shapes = {sub.pattern.shape() for sub in subroutes}
        if handler.pattern.shape() not in shapes:
            expanded.append(handler)  # a sub-route with the parent's own shape replaces it
        expanded.extend(subroutes)
    return expanded


def _declared_routes(parent: Handler) -> list[Handler]:
    component = parent.component
    name = f"component `{component.id}` ({component.source.name})"
    try:
        outcome = component.program.run_once(
            "_routes",
            Invocation(argv=[component.source.name], env={}),
            component.limits,
        )
    except LoadError as error:
        raise LoadError(f"{name}: {error}", parent.origin) from None
    if not outcome.ok:
        raise LoadError(f"{name}: `_routes` failed: {outcome.error}", parent.origin)
    try:
        text = outcome.stdout.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LoadError(
            f"{name}: `_routes` printed bytes that are not UTF-8 (at byte {error.start})",
            parent.origin,
        ) from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise LoadError(f"{name}: `_routes` printed no routes", parent.origin)
    if len(lines) > MAX_DECLARED_ROUTES:
        raise LoadError(
            f"{name}: `_routes` printed {len(lines)} routes; at most {MAX_DECLARED_ROUTES} "
            "are taken",
            parent.origin,
        )
    base = parent.pattern.prefix.rstrip("/")
    handlers = []
    for line in lines:
        fields = line.split()
        if len(fields) != 2:
            raise LoadError(
                f"{name}: `_routes` printed {line!r}; expected `<path> <entrypoint>`",
                parent.origin,
            )
        subpath, entrypoint = fields
        if not subpath.startswith("/"):
            raise LoadError(
                f"{name}: `_routes` printed {subpath!r}: a route must start with `/`",
                parent.origin,
            )
        try:
            pattern = RoutePattern.parse(base + subpath)
        except RouteSyntaxError as error:
            raise LoadError(f"{name}: `_routes`: {error}", parent.origin) from None
        handlers.append(
            make_handler(
                component, pattern, entrypoint, parent.argv, parent.base_path, parent.origin
            )
        )
    return handlers
