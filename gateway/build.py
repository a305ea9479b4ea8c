"""Run components' build commands (`[component.X.build]`): `wagi build` and `serve --build`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from .config import ConfigError
from .manifest import Build, Component, Manifest


class BuildError(Exception):
    """A build command failed; `exit_code` is its exit status."""

    def __init__(self, component: str, command: str, exit_code: int, output: str = "") -> None:
        super().__init__(
            f"building component `{component}` failed: `{command}` exited with status {exit_code}"
        )
        self.component = component
        self.exit_code = exit_code
        self.output = output  # what the command printed, when it was captured


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
    component: Component, echo: Callable[[str], None] = say, capture: bool = False
) -> BuildResult:
    """Run a component's build commands in its workdir; raise BuildError on failure.

    The commands print to this process's output, or with `capture` into the BuildError.
    """
    assert component.build is not None
    started = time.perf_counter()
    env = build_environment()
    for command in component.build.commands:
        echo(f"Building component {component.id} with `{command}`")
        completed = subprocess.run(
            command,
            shell=True,
            cwd=component.build.workdir,
            env=env,
            capture_output=capture,
            text=True,
            errors="replace",  # a compiler's output need not be UTF-8
            check=False,
        )
        if completed.returncode != 0:
            output = (completed.stdout or "") + (completed.stderr or "")
            raise BuildError(component.id, command, completed.returncode, output.strip())
    seconds = time.perf_counter() - started
    echo(f"Finished building {component.id} in {seconds:.1f}s")
    return BuildResult(component.id, seconds)


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
