"""`wagi new`: a new app folder from a template, ready to build, serve and test."""

from __future__ import annotations

import importlib.util
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError

TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_TEMPLATE = "hello-c"
# An app name is also its component id, its module's file name and a TOML key.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# Template files whose names become the app's own.
_RENAMED = {
    "app.c": "{name}.c",
    "app.wat": "{name}.wat",
    "gitignore": ".gitignore",
    "test_app.py": "test_{module}.py",
}


@dataclass(frozen=True)
class NewApp:
    """What `create_app` wrote, and what to do next."""

    folder: Path
    files: list[Path]
    next_steps: list[str]
    notes: list[str]


def template_names() -> list[str]:
    """The templates `wagi new --template` accepts."""
    return sorted(
        path.name for path in TEMPLATES.iterdir() if path.is_dir() and path.name != "__pycache__"
    )


def create_app(name: str, template: str = DEFAULT_TEMPLATE, parent: Path | None = None) -> NewApp:
    """Write the folder `parent/name` from a template; refuse to touch an existing one."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"app name {name!r}: use letters, digits, `-` and `_`, starting with a letter"
        )
    source = TEMPLATES / template
    if template not in template_names():
        raise ConfigError(f"no template {template!r} (there are: {', '.join(template_names())})")
    folder = (parent or Path.cwd()) / name
    if folder.exists():
        raise ConfigError(f"{folder} already exists; choose another name or remove it")
    try:
        written = _write(source, folder, name)
    except OSError as error:
        shutil.rmtree(folder, ignore_errors=True)  # no half-made app to trip over later
        raise ConfigError(f"cannot create {folder}: {error.strerror or error}") from None
    builds = template.endswith("-c")
    steps = [f"cd {name}", "wagi build && wagi serve" if builds else "wagi serve", "pytest"]
    notes = []
    if builds and importlib.util.find_spec("ziglang") is None:
        notes.append("`wagi build` compiles C with zig's clang: pip install ziglang")
    if importlib.util.find_spec("pytest") is None:
        notes.append("the tests it came with run with pytest: pip install pytest")
    return NewApp(folder, written, steps, notes)


def _write(source: Path, folder: Path, name: str) -> list[Path]:
    folder.mkdir(parents=True)
    values = _values(name)
    written = []
    # Files only: an installed package has the templates' test_app.py byte-compiled
    # into a `__pycache__` folder beside it.
    for path in sorted(p for p in source.iterdir() if p.is_file()):
        renamed = _RENAMED.get(path.name, path.name)
        target = folder / renamed.format(name=name, module=name.replace("-", "_"))
        target.write_text(_render(path.read_text(), values))
        written.append(target)
    return written


def _values(name: str) -> dict[str, str]:
    response = f"Content-Type: text/plain; charset=utf-8\n\nHello from {name}!\n"
    return {
        "name": name,
        # For WebAssembly text: the response as a string literal, and its length.
        "response": response.replace("\n", "\\n"),
        "response_length": str(len(response.encode())),
    }


def _render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text
