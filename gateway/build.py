"""Run components' build commands (`[component.X.build]`): `wagi build` and `serve --build`."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from .config import ConfigError
from .manifest import Build, Component, Manifest

# How often a build that can be stopped looks whether it should be.
_STOP_POLL_SECONDS = 0.1
# How long a stopped build's processes have to exit on SIGTERM before SIGKILL.
_KILL_GRACE_SECONDS = 1.0
# The builds that can be stopped run in sessions of their own, out of reach of a signal to
# this process's group (Ctrl-C in a terminal): those still running at exit are stopped.
_detached: dict[subprocess.Popen, threading.Event] = {}


class BuildError(Exception):
    """A build command failed; `exit_code` is its exit status."""

    def __init__(self, component: str, command: str, exit_code: int, output: str = "") -> None:
        super().__init__(
            f"building component `{component}` failed: `{command}` exited with status {exit_code}"
        )
        self.component = component
        self.exit_code = exit_code
        self.output = output  # what the command printed, when it was captured


class BuildStopped(Exception):
    """A build was stopped (its `stop` event set) before it finished."""


@dataclass(frozen=True)
class BuildResult:
    """One component built: how long it took."""

    component: str
    seconds: float


def buildable(manifest: Manifest, only: list[str] | None = None) -> list[Component]:
    """The components to build, in manifest order; `only` names a subset."""
    if only:
        unknown = [name for name in only if name not in manifest.components]
        if unknown:
            raise ConfigError(f"{manifest.path} has no component named `{unknown[0]}`")
        chosen = [manifest.components[name] for name in only]
        unbuildable = [c.id for c in chosen if c.build is None]
        if unbuildable:
            raise ConfigError(
                f"component `{unbuildable[0]}` has no build command "
                f"([component.{unbuildable[0]}.build] in {manifest.path})"
            )
    else:
        chosen = list(manifest.components.values())
    return [component for component in chosen if component.build is not None]


def build_environment() -> dict[str, str]:
    """The environment of build commands: `python` is the interpreter running wagi."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def say(line: str) -> None:
    """Print a progress line now, before the output of the command it announces."""
    print(line, flush=True)


def build_component(
    component: Component,
    echo: Callable[[str], None] = say,
    capture: bool = False,
    stop: threading.Event | None = None,
) -> BuildResult:
    """Run a component's build commands in its workdir; raise BuildError on failure.

    The commands print to this process's output, or with `capture` into the BuildError.
    Setting `stop` kills the command running, with all it started: BuildStopped is raised.
    """
    assert component.build is not None
    started = time.perf_counter()
    env = build_environment()
    for command in component.build.commands:
        if stop is not None and stop.is_set():
            raise BuildStopped
        echo(f"Building component {component.id} with `{command}`")
        workdir = component.build.workdir
        if stop is None:
            status, output = _run(command, workdir, env, capture)
        else:
            status, output = _run_stoppable(command, workdir, env, capture, stop)
        if status != 0:
            raise BuildError(component.id, command, status, output.strip())
    seconds = time.perf_counter() - started
    echo(f"Finished building {component.id} in {seconds:.1f}s")
    return BuildResult(component.id, seconds)


def _run(command: str, workdir: Path, env: dict[str, str], capture: bool) -> tuple[int, str]:
    """Run a command to its end: its exit status, and its output if captured."""
    completed = subprocess.run(
        command,
        shell=True,
        cwd=workdir,
        env=env,
        capture_output=capture,
        text=True,
        errors="replace",  # a compiler's output need not be UTF-8
        check=False,
    )
    return completed.returncode, (completed.stdout or "") + (completed.stderr or "")


def _run_stoppable(
    command: str, workdir: Path, env: dict[str, str], capture: bool, stop: threading.Event
) -> tuple[int, str]:
    """Run a command as `_run` does, in a session of its own: setting `stop` kills it with
    all it started (a shell's children too), and raises BuildStopped."""
    pipe = subprocess.PIPE if capture else None
    with subprocess.Popen(
        command,
        shell=True,
        cwd=workdir,
        env=env,
        stdout=pipe,
        stderr=pipe,
        text=True,
        errors="replace",
        start_new_session=True,
    ) as process:
        _detached[process] = stop
        try:
            stdout, stderr = _communicate_until(process, stop)
        except BaseException:  # stopped, or anything else: nothing it started stays
            _kill_group(process)
            raise
        finally:
            _detached.pop(process, None)
    return process.returncode, (stdout or "") + (stderr or "")


def _communicate_until(process: subprocess.Popen, stop: threading.Event) -> tuple[str, str]:
    """The process's output once it exits; BuildStopped if `stop` is set first."""
    while True:
        try:
            output = process.communicate(timeout=_STOP_POLL_SECONDS)
        except subprocess.TimeoutExpired:
            if stop.is_set():
                raise BuildStopped from None
            continue
        if stop.is_set():  # it may have ended because it was killed (at exit)
            raise BuildStopped
        return output


def _kill_group(process: subprocess.Popen) -> None:
    """End a process that leads a session of its own, and all in it: SIGTERM, then
    SIGKILL after a grace period for what ignored it or outlived the leader."""
    _signal_group(process, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(_KILL_GRACE_SECONDS)
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(process.pid, signum)


@atexit.register
def _kill_detached() -> None:
    """Stop the builds still running in sessions of their own as this process exits."""
    for process, stop in list(_detached.items()):
        stop.set()
        _kill_group(process)


def watches(build: Build, path: Path) -> bool:
    """Whether a `build.watch` pattern matches `path`, as `Path.glob` from the workdir
    finds files: `**` is any number of folders (none included), and each other name is
    matched by `fnmatch` (`*`, `?` and `[...]` stay within one name)."""
    parts = Path(os.path.relpath(path, build.workdir)).parts
    return any(_matches(parts, _names(pattern)) for pattern in build.watch)


def _names(pattern: str) -> tuple[str, ...]:
    return tuple(name for name in pattern.split("/") if name not in ("", "."))


def _matches(parts: tuple[str, ...], names: tuple[str, ...]) -> bool:
    if not names:
        return not parts
    if names[0] == "**":
        return any(_matches(parts[skip:], names[1:]) for skip in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], names[0]) and _matches(parts[1:], names[1:])


def is_up_to_date(component: Component) -> bool:
    """Whether the module exists and is newer than every file its build watches."""
    if component.build is None or not component.source.is_file():
        return component.build is None
    built = component.source.stat().st_mtime
    for pattern in component.build.watch:
        if _names(pattern)[-1:] == ("**",):
            pattern += "/*"  # files too: Python 3.11's glob finds only folders for `**`
        for path in component.build.workdir.glob(pattern):
            if path.is_file() and path.stat().st_mtime > built:
                return False
    return True
