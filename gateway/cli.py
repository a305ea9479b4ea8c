"""The `wagi` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .config import (
    LIMIT_NAMES,
    ConfigError,
    EngineSettings,
    Limits,
    Settings,
    default_cache_dir,
    find_manifest,
    human_size,
    parse_duration,
    parse_env_file,
    parse_env_pair,
    parse_limit,
    parse_listen,
)
from .engine import Engine, LoadError
from .logs import setup_logging
from .manifest import ManifestError, load_manifest
from .proxy import TrustedProxies
from .scaffold import DEFAULT_TEMPLATE, create_app, template_names

log = logging.getLogger("wagi")

# Errors that are the user's to fix: reported in one line, without a traceback.
USER_ERRORS = (ConfigError, ManifestError, LoadError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `wagi` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    setup_logging(args.log_level, log_format=getattr(args, "log_format", "text"))
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wagi", description="Serve WebAssembly (WASI) modules as CGI-style HTTP handlers."
    )
    parser.add_argument("--version", action="version", version=f"wagi {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve an app",
        description="Serve the app a manifest describes.",
    )
    _add_manifest_option(serve)
    serve.add_argument(
        "-l",
        "--listen",
        default="127.0.0.1:3000",
        metavar="HOST:PORT",
        help="address to listen on (default: %(default)s)",
    )
    serve.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for every module (repeatable)",
    )
    serve.add_argument(
        "--env-file",
        type=Path,
        metavar="FILE",
        help="file of NAME=VALUE lines for every module (--env wins)",
    )
    serve.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="write each component's stderr to DIR/<component>.log",
    )
    _add_cache_option(serve)
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="TLS certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="TLS private key (PEM)")
    serve.add_argument(
        "--forwarded-allow-ips",
        metavar="ADDRESSES",
        default="",
        help="proxies (addresses or networks, comma-separated, or *) whose "
        "X-Forwarded-For/-Proto/-Host and Forwarded headers are believed "
        "(default: none)",
    )
    serve.add_argument(
        "--build", action="store_true", help="run the components' build commands first"
    )
    serve.add_argument(
        "--watch",
        action="store_true",
        help="reload when the manifest, a module, a mounted file or the env "
        "file changes; rebuild a component when its build.watch files change",
    )
    serve.add_argument(
        "--watch-debounce",
        metavar="SECONDS",
        default="0.1",
        help="changes this close together make one reload (default: %(default)s)",
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="worker processes (default: %(default)s)",
    )
    serve.add_argument(
        "--pool-size",
        type=_non_negative,
        default=Settings.pool_size,
        metavar="N",
        help="instances kept ready per component "
        "(default: %(default)s; a component's tool.wagi.pool_size wins)",
    )
    serve.add_argument(
        "--max-instances",
        type=_positive,
        default=EngineSettings.max_instances,
        metavar="N",
        help="instances that may exist at once per worker (default: %(default)s)",
    )
    limits = serve.add_argument_group(
        "limits",
        "Per request; a component may set its own in [component.NAME.tool.wagi] "
        "(spin.toml) or in its [[module]] (modules.toml), with the same names in snake_case.",
    )
    defaults = Limits()
    limits.add_argument(
        "--request-timeout",
        metavar="SECONDS",
        default=defaults.request_timeout,
        help="wall-clock time a guest may run; 504 after (default: %(default)s)",
    )
    limits.add_argument(
        "--max-memory",
        metavar="SIZE",
        default=_size(defaults.max_memory),
        help="linear memory a guest may grow to (default: %(default)s)",
    )
    limits.add_argument(
        "--max-body-size",
        metavar="SIZE",
        default=_size(defaults.max_body_size),
        help="request body size; 413 beyond (default: %(default)s)",
    )
    limits.add_argument(
        "--max-output-size",
        metavar="SIZE",
        default=_size(defaults.max_output_size),
        help="stdout and stderr a guest may write; 502 beyond (default: %(default)s)",
    )
    limits.add_argument(
        "--max-concurrency",
        metavar="N",
        default=defaults.max_concurrency,
        help="guests of one component running at once per worker; more "
        "wait briefly, then 503 (default: %(default)s, twice the cores)",
    )
    limits.add_argument(
        "--client-timeout",
        metavar="SECONDS",
        default=30,
        help="time a client may take to send its body, then 408 (default: %(default)s)",
    )
    limits.add_argument(
        "--keep-alive-timeout",
        metavar="SECONDS",
        default=5,
        help="how long an idle keep-alive connection stays open; a load balancer in front "
        "must close its idle ones sooner, or raise this above its idle timeout "
        "(default: %(default)s)",
    )
    limits.add_argument(
        "--grace-period",
        metavar="SECONDS",
        default=30,
        help="on SIGTERM, how long requests in flight may still take (default: %(default)s)",
    )
    _add_log_option(serve)
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="gateway log lines as readable text or JSON (default: %(default)s)",
    )
    serve.set_defaults(run=_serve)

    build = commands.add_parser(
        "build",
        help="build components",
        description="Run the build command of each component (or of the named ones).",
    )
    _add_manifest_option(build)
    build.add_argument(
        "components",
        nargs="*",
        metavar="COMPONENT",
        help="components to build (default: all that have a build command)",
    )
    _add_log_option(build)
    build.set_defaults(run=_build)

    compile_ = commands.add_parser(
        "compile",
        help="fill the compiled-module cache",
        description="Compile every module of the app into the compiled-module cache, so that "
        "`wagi serve` (a container, say) starts without compiling.",
    )
    _add_manifest_option(compile_)
    _add_cache_option(compile_)
    _add_log_option(compile_)
    compile_.set_defaults(run=_compile)

    check = commands.add_parser(
        "check",
        help="check an app without serving it",
        description="Load the manifest and every module as `serve` would, and report each "
        "problem on one line: where, which component, what, and the fix if it is obvious. "
        "Exits 0 when the app is sound (warnings aside, unless --strict), 1 when not.",
    )
    _add_manifest_option(check)
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too (for CI, say)")
    _add_cache_option(check)
    _add_log_option(check, default="warning")  # the report, not the load's progress
    check.set_defaults(run=_check)

    new = commands.add_parser(
        "new",
        help="start a new app from a template",
        description="Write a new app folder NAME: a module's source, a spin.toml that "
        "builds and routes it, and tests that use wagi's test kit.",
    )
    new.add_argument("name", metavar="NAME", help="the app's name, and its folder's")
    new.add_argument(
        "-t",
        "--template",
        choices=template_names(),
        default=DEFAULT_TEMPLATE,
        help="a module in C (built with zig's clang) or in WebAssembly text (default: %(default)s)",
    )
    _add_log_option(new)
    new.set_defaults(run=_new)
    return parser


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def _add_manifest_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="manifest: spin.toml (v1 or v2) or modules.toml, or a folder holding one "
        "(default: ./spin.toml, else ./modules.toml)",
    )


def _add_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        default=default_cache_dir(),
        help="compiled-module cache (default: %(default)s)",
    )


def _add_log_option(parser: argparse.ArgumentParser, default: str = "info") -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=["debug", "info", "warning", "error"],
        help="gateway log level (default: %(default)s)",
    )


def _manifest_path(args: argparse.Namespace) -> Path:
    if args.config is None:
        return find_manifest(Path.cwd())
    if args.config.is_dir():  # as `spin up -f FOLDER` takes the app's folder
        return find_manifest(args.config)
    if not args.config.is_file():
        raise ConfigError(f"manifest not found: {args.config}")
    return args.config


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Check the `serve` options and gather them into one Settings object."""
    parse_listen(args.listen)
    if args.env_file:
        parse_env_file(args.env_file)  # a broken env file fails now, not at load
    env = [parse_env_pair(pair) for pair in args.env]
    TrustedProxies(args.forwarded_allow_ips)  # refuse a bad address list now
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            raise ConfigError(f"file not found: {path}")
    if args.tls_cert is not None:
        _check_tls_files(args.tls_cert, args.tls_key)
    return Settings(
        manifest=_manifest_path(args).absolute(),
        listen=args.listen,
        env=tuple(env),
        env_file=args.env_file,
        log_dir=args.log_dir,
        cache_dir=args.cache_dir,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        workers=args.workers,
        pool_size=args.pool_size,
        log_level=args.log_level,
        log_format=args.log_format,
        engine=EngineSettings(max_instances=args.max_instances),
        limits=_limits(args),
        client_timeout=_duration(args, "client_timeout"),
        watch=args.watch,
        forwarded_allow_ips=args.forwarded_allow_ips,
        watch_debounce=_duration(args, "watch_debounce"),
        grace_period=_duration(args, "grace_period"),
        keep_alive_timeout=_duration(args, "keep_alive_timeout"),
    )


def _duration(args: argparse.Namespace, name: str) -> float:
    try:
        return parse_duration(getattr(args, name))
    except ConfigError as error:
        raise ConfigError(f"--{name.replace('_', '-')}: {error}") from None


def _limits(args: argparse.Namespace) -> Limits:
    values = {}
    for name in LIMIT_NAMES:
        try:
            values[name] = parse_limit(name, _number(getattr(args, name)))
        except ConfigError as error:
            raise ConfigError(f"--{name.replace('_', '-')}: {error}") from None
    return Limits(**values)


def _check_tls_files(cert: Path, key: Path) -> None:
    """Load the certificate and key once now, so a bad pair fails before serving."""
    import ssl  # only needed with TLS

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as error:
        reason = getattr(error, "reason", None) or error.strerror or str(error)
        raise ConfigError(
            f"--tls-cert {cert} and --tls-key {key}: not a usable certificate and key ({reason})"
        ) from None


def _number(text: object) -> object:
    """Command-line values are text; a limit parser wants numbers as numbers."""
    if isinstance(text, str) and text.isdigit():
        return int(text)
    return text


def _size(size: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def _serve(args: argparse.Namespace) -> int:
    from .server import serve  # hypercorn is only needed to serve

    settings = settings_from_args(args)
    if args.build:
        status = _build_all(settings.manifest, [])
        if status:
            return status
    serve(settings)
    return 0


def _compile(args: argparse.Namespace) -> int:
    manifest = load_manifest(_manifest_path(args))
    engine = Engine(args.cache_dir)
    modules = manifest.modules  # built on each access
    width = max(len(source.name) for source in modules)
    compiled = 0
    for source, component in modules.items():
        size = human_size(source.stat().st_size)
        print(f"{source.name:<{width}}  {size:>9}  ", end="", flush=True)
        try:
            loaded = engine.load(
                source, compiling=lambda *_: print("compiling... ", end="", flush=True)
            )
        except LoadError as error:
            print("failed")
            raise LoadError(f"component `{component.id}`: {error}", component.origin) from None
        print(f"done in {_seconds(loaded.seconds)}" if loaded.how == "compiled" else "cached")
        entry = engine.cache.entry(loaded.digest)
        if entry is None or not entry.is_file():
            raise ConfigError(f"cannot write the compiled cache in {engine.cache.folder}")
        compiled += loaded.how == "compiled"
    print(f"{len(modules)} modules, {compiled} compiled, in {engine.cache.folder}")
    return 0


def _seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _check(args: argparse.Namespace) -> int:
    from .check import check_app  # only `wagi check` needs it: `serve` starts sooner

    path = _manifest_path(args)
    report = check_app(path, args.cache_dir)
    for problem in report.problems:
        print(_shorter(str(problem)))
    where = _shorter(str(path))
    warnings = f"; {_count(len(report.warnings), 'warning')}" if report.warnings else ""
    if not report.ok:
        print(f"{_count(len(report.errors), 'problem')}{warnings} in {where}")
        return 1
    manifest = report.manifest
    modules = len(manifest.modules)
    print(
        f"{where}: ok: {_count(report.routes, 'route')}, "
        f"{_count(len(manifest.components), 'component')}, {_count(modules, 'module')}"
        f"{warnings}"
    )
    return 1 if args.strict and report.warnings else 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _shorter(text: str) -> str:
    """Paths under the current folder, written relative to it."""
    return text.replace(f"{Path.cwd()}{os.sep}", "")


def _new(args: argparse.Namespace) -> int:
    app = create_app(args.name, args.template)
    print(f"Created {_shorter(str(app.folder))}/ from the {args.template} template:")
    for path in app.files:
        print(f"  {_shorter(str(path))}")
    for note in app.notes:
        print(f"Note: {note}")
    print("Next:")
    for step in app.next_steps:
        print(f"  {step}")
    return 0


def _build(args: argparse.Namespace) -> int:
    return _build_all(_manifest_path(args), args.components)


def _build_all(manifest_path: Path, only: list[str]) -> int:
    from .build import BuildError, build_component, buildable  # runs subprocesses

    manifest = load_manifest(manifest_path, check_sources=False)
    components = buildable(manifest, only)
    if not components:
        print(f"nothing to build: no component in {manifest_path} has a build command")
    results = []
    try:
        for component in components:
            results.append(build_component(component))
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    if len(results) > 1:
        seconds = sum(result.seconds for result in results)
        print(f"Built {len(results)} components in {seconds:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
