"""`wagi check`: find what is wrong with an app without serving it.

Each problem is one line that names the manifest line and the component, says what is
wrong and, where the fix is obvious, what to do. The checks run in the order the gateway
loads an app, and a check only runs on what the ones before it found sound: a module that
is missing is not also reported as failing to compile.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from .config import Settings
from .engine import WASI_MODULE, Engine, LoadError, Program
from .loader import load_app
from .manifest import Component, Manifest, ManifestError, Trigger, close_match, load_manifest
from .routing import BUILT_IN_PATHS, RoutePattern, RouteSyntaxError


@dataclass(frozen=True)
class Problem:
    """Something that keeps the app from working as written."""

    origin: str  # `file:line`
    message: str
    component: str = ""
    fix: str = ""
    # A warning: the app works, but likely not as its author meant.
    warning: bool = False

    def __str__(self) -> str:
        who = f"component `{self.component}`: " if self.component else ""
        kind = "warning: " if self.warning else ""
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.origin}: {who}{kind}{self.message}{fix}"


@dataclass(frozen=True)
class Report:
    """What `wagi check` found: the manifest (if it loaded) and the problems."""

    manifest: Manifest | None
    problems: list[Problem]
    # Routes served, those that WAGI modules declare with `_routes` included.
    routes: int = 0

    @property
    def errors(self) -> list[Problem]:
        """The problems that keep the app from loading or a route from answering."""
        return [problem for problem in self.problems if not problem.warning]

    @property
    def warnings(self) -> list[Problem]:
        """The problems of an app that works, though likely not as meant."""
        return [problem for problem in self.problems if problem.warning]

    @property
    def ok(self) -> bool:
        """Whether the app would load and serve every route as written."""
        return self.manifest is not None and not self.errors


def check_app(path: Path, cache_dir: Path | None) -> Report:
    """Load a manifest and its modules as `serve` would, collecting every problem."""
    try:
        manifest = load_manifest(path, check_sources=False)
    except ManifestError as error:
        return Report(None, [Problem(error.origin, _key_message(error))])
    problems = _missing_sources(manifest) + _empty_patterns(manifest) + _route_problems(manifest)
    engine = Engine(cache_dir)
    loaded: dict[str, wasmtime.Module] = {}  # by digest: the full load reuses them
    programs, module_problems = _programs(manifest, engine, loaded)
    problems += module_problems
    problems += _entrypoint_problems(manifest, programs)
    problems += _outbound_problems(manifest, programs)
    routes = len(manifest.triggers)
    if not any(not problem.warning for problem in problems):
        load_problems, routes = _full_load(manifest, engine, loaded)
        problems += load_problems
    return Report(manifest, problems, routes)


def _key_message(error: ManifestError) -> str:
    return f"{error.key}: {error.message}" if error.key else error.message


# --------------------------------------------------------------------------- files


def _missing_sources(manifest: Manifest) -> list[Problem]:
    problems = []
    for component in manifest.components.values():
        if component.source.is_file():
            continue
        if component.build is not None:
            fix = "build it: `wagi build` (or `wagi serve --build`)"
        else:
            fix = f"`source` is relative to the manifest's folder, {manifest.folder}"
        problems.append(
            Problem(
                component.origin, f"module file not found: {component.source}", component.id, fix
            )
        )
    return problems


def _empty_patterns(manifest: Manifest) -> list[Problem]:
    return [
        Problem(
            component.origin,
            f"`files` pattern {pattern!r} matches no file",
            component.id,
            f"patterns are relative to {manifest.folder}; `**` also matches subfolders",
            warning=True,
        )
        for component in manifest.components.values()
        for pattern in component.empty_patterns
    ]


# --------------------------------------------------------------------------- routes


def _route_problems(manifest: Manifest) -> list[Problem]:
    problems: list[Problem] = []
    parsed: list[tuple[Trigger, RoutePattern]] = []
    for trigger in manifest.triggers:
        try:
            parsed.append((trigger, RoutePattern.parse(trigger.route)))
        except RouteSyntaxError as error:
            problems.append(Problem(trigger.origin, str(error), trigger.component))
    for index, (trigger, pattern) in enumerate(parsed):
        earlier = parsed[:index]
        problem = _clash(trigger, pattern, earlier) or _built_in(trigger, pattern)
        if problem is None and manifest.kind == "wagi":
            problem = _shadowed_in_wagi(trigger, pattern, earlier)
        if problem is not None:
            problems.append(problem)
    return problems


def _clash(
    trigger: Trigger, pattern: RoutePattern, earlier: list[tuple[Trigger, RoutePattern]]
) -> Problem | None:
    for other, other_pattern in earlier:
        if other_pattern.shape() == pattern.shape():
            return Problem(
                trigger.origin,
                f"route {pattern.text} clashes with route {other_pattern.text} of component "
                f"`{other.component}` ({other.origin}): both match the same paths",
                trigger.component,
                "give one of them another route",
            )
    return None


def _built_in(trigger: Trigger, pattern: RoutePattern) -> Problem | None:
    if pattern.is_built_in():
        return Problem(
            trigger.origin,
            f"route {pattern.text} is never reached: the gateway answers {pattern.text} itself",
            trigger.component,
            "choose another route",
        )
    if pattern.wildcard and pattern.prefix in BUILT_IN_PATHS:
        return Problem(
            trigger.origin,
            f"route {pattern.text} does not get {pattern.prefix}: the gateway answers it itself",
            trigger.component,
            "choose another route",
            warning=True,
        )
    return None


def _shadowed_in_wagi(
    trigger: Trigger, pattern: RoutePattern, earlier: list[tuple[Trigger, RoutePattern]]
) -> Problem | None:
    """WAGI tried routes in file order: a route after one that covers it never answered."""
    for other, other_pattern in earlier:
        if other_pattern.covers(pattern):
            return Problem(
                trigger.origin,
                f"route {pattern.text} comes after {other_pattern.text} ({other.origin}), "
                "which matches all its paths: WAGI, going in file order, never reached it "
                "(this gateway picks the most specific route, so it does)",
                trigger.component,
                f"move it above {other_pattern.text}, so that the file means the same to both",
                warning=True,
            )
    return None


# --------------------------------------------------------------------------- modules


def _programs(
    manifest: Manifest, engine: Engine, loaded: dict[str, wasmtime.Module]
) -> tuple[dict[str, Program], list[Problem]]:
    """Compile and link each module that exists, once, for the components using it; the
    modules go into `loaded`."""
    by_source: dict[Path, Program] = {}
    problems: list[Problem] = []
    for source, component in manifest.modules.items():
        if source.is_file():
            program, problem = _program(component, engine, loaded)
            if program is not None:
                by_source[source] = program
            if problem is not None:
                problems.append(problem)
    programs = {
        c.id: by_source[c.source] for c in manifest.components.values() if c.source in by_source
    }
    return programs, problems


def _program(
    component: Component, engine: Engine, loaded: dict[str, wasmtime.Module]
) -> tuple[Program | None, Problem | None]:
    def problem(message: str, fix: str = "") -> tuple[None, Problem]:
        return None, Problem(component.origin, message, component.id, fix)

    try:
        module_file = engine.load(component.source, loaded)
    except LoadError as error:
        return problem(str(error))
    module = loaded[module_file.digest] = module_file.module
    try:
        program = engine.link(module_file, component.source.name)
    except LoadError as error:
        foreign = {item.module for item in module.imports if item.module != WASI_MODULE}
        if foreign:
            return problem(str(error), _import_fix(foreign))
        return problem(str(error), "the module was built for another WASI version or host")
    if not isinstance(program.exports.get("memory"), wasmtime.MemoryType):
        return problem(
            f"{component.source.name} does not export its memory as `memory`, "
            "which WASI needs to pass it data",
            "build it as a WASI command (e.g. `-target wasm32-wasi`)",
        )
    return program, None


# Import namespaces of modules built for Spin's own executor (its SDKs' host interfaces).
_SPIN_NAMESPACES = ("spin", "fermyon:", "wasi:", "wasi-outbound-http", "outbound-", "key-value")
# Import namespaces of modules built for a browser (wasm-bindgen, Emscripten's JS glue).
_BROWSER_NAMESPACES = ("__wbindgen", "wbg", "./", "emscripten")


def _import_fix(namespaces: set[str]) -> str:
    if "wasi_unstable" in namespaces:
        return "it uses the old WASI snapshot 0: rebuild it with a current WASI toolchain"
    if any(n.startswith(_SPIN_NAMESPACES) for n in namespaces):
        return "it is a Spin SDK module: run it with Spin's own executor, not as a WAGI module"
    if any(n.startswith(_BROWSER_NAMESPACES) for n in namespaces):
        return (
            "it was built for a browser (JavaScript glue): build a WASI command instead, "
            "e.g. `cargo build --target wasm32-wasip1`"
        )
    if "env" in namespaces:
        return (
            "functions it calls were left for the host to provide: build it as a "
            "self-contained WASI command (e.g. `-target wasm32-wasi`; with Emscripten, "
            "`-sSTANDALONE_WASM`), and link with `-Wl,--no-undefined` to find them"
        )
    return (
        "a WAGI module may import only WASI preview 1 functions and WAGI's outbound HTTP "
        "(`wasi_experimental_http`: req, header_get, headers_get_all, body_read, close)"
    )


def _entrypoint_problems(manifest: Manifest, programs: dict[str, Program]) -> list[Problem]:
    problems = []
    for trigger in manifest.triggers:
        program = programs.get(trigger.component)
        if program is None:
            continue
        reason = program.entrypoint_problem(trigger.entrypoint)
        if reason is not None:
            problems.append(
                Problem(
                    trigger.origin,
                    f"route {trigger.route} will answer 500: {reason}",
                    trigger.component,
                    _entrypoint_fix(manifest, trigger, program),
                )
            )
    return problems


def _outbound_problems(manifest: Manifest, programs: dict[str, Program]) -> list[Problem]:
    key = "allowed_hosts" if manifest.kind == "wagi" else "allowed_outbound_hosts"
    return [
        Problem(
            component.origin,
            f"{component.source.name} makes outbound HTTP requests, but no host is allowed: "
            "every one will be refused",
            component.id,
            f'list the hosts it may reach in `{key}`, e.g. ["https://api.example.com"]',
            warning=True,
        )
        for component in manifest.components.values()
        if component.id in programs
        and programs[component.id].makes_requests
        and not component.allowed_outbound_hosts
    ]


def _entrypoint_fix(manifest: Manifest, trigger: Trigger, program: Program) -> str:
    functions = sorted(
        name
        for name, kind in program.exports.items()
        if isinstance(kind, wasmtime.FuncType) and not kind.params and not kind.results
    )
    if trigger.entrypoint == "_start" and "_initialize" in program.exports:
        return "it is a WASI reactor (a library, no `main`): build it as a command, with a `main`"
    if not functions:
        return "it exports no function without parameters: build it as a WASI command"
    setting = (
        'entrypoint = "NAME" in its [[module]]'
        if manifest.kind == "wagi"
        else 'executor = { type = "wagi", entrypoint = "NAME" } on its trigger'
    )
    close = close_match(trigger.entrypoint, functions)
    hint = f"did you mean `{close}`? " if close else ""
    return f"{hint}it exports {', '.join(f'`{f}`' for f in functions)}; set {setting}"


# --------------------------------------------------------------------------- the rest


def _full_load(
    manifest: Manifest, engine: Engine, modules: dict[str, wasmtime.Module]
) -> tuple[list[Problem], int]:
    """Load the app as `serve` does, for what only a real load finds (`_routes`, sizes);
    if that finds a problem, load each component alone too, since a load stops at its
    first: every component's problem is reported. Also returns the routes served."""
    together, routes = _load_problems(manifest, engine, modules)
    if not together or len(manifest.components) == 1:
        return together, routes
    alone = []
    for component in manifest.components.values():
        one = dataclasses.replace(
            manifest,
            components={component.id: component},
            triggers=tuple(t for t in manifest.triggers if t.component == component.id),
        )
        alone += _load_problems(one, engine, modules)[0]
    return alone or together, routes  # none alone: routes that `_routes` declared clash


def _load_problems(
    manifest: Manifest, engine: Engine, modules: dict[str, wasmtime.Module]
) -> tuple[list[Problem], int]:
    """What loading the app finds, and how many routes it serves (0 if it fails)."""
    try:
        # One instance per component shows whether it instantiates; more would be waste.
        settings = Settings(manifest=manifest.path, pool_size=1)
        loaded = load_app(manifest, settings, engine, modules)
    except ManifestError as error:
        return [Problem(error.origin, _key_message(error))], 0
    except LoadError as error:
        return [Problem(error.origin, error.message)], 0
    try:
        # The manifest's own routes passed `_entrypoint_problems`: these were declared
        # by `_routes`.
        return [
            Problem(
                handler.origin,
                f"route {handler.pattern.text}, declared by its `_routes`, will answer 500: "
                f"{handler.problem}",
                handler.component.id,
                "make `_routes` print an entrypoint the module exports",
            )
            for handler in loaded.broken_routes()
        ], len(loaded.routes.routes)
    finally:
        loaded.close()
