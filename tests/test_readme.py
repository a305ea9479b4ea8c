"""The README's examples work as printed."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from conftest import ROOT, run_wagi
from gateway.testing import cgi_environment, run_module

README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks in `language`."""
    return re.findall(rf"^```{language}\n(.*?)^```$", README, re.MULTILINE | re.DOTALL)


def test_the_webassembly_text_example_answers(tmp_path):
    (example,) = blocks("wat")
    (tmp_path / "hello.wat").write_text(example)
    result = run_module(tmp_path / "hello.wat")
    assert result.exit_code == 0
    assert result.response.status_code == 200
    assert result.response.text == "Hello!\n"


def test_the_c_example_compiles_and_answers(tmp_path):
    (example,) = blocks("c")
    (tmp_path / "hello.c").write_text(example)
    command = f"{sys.executable} -m ziglang cc -target wasm32-wasi -O2 -s hello.c -o hello.wasm"
    assert command.split(" ", 1)[1] in README  # the compile command the README gives
    subprocess.run(command.split(), cwd=tmp_path, check=True, timeout=300)
    result = run_module(tmp_path / "hello.wasm", env=cgi_environment("GET", "/a/b"))
    assert result.response.text == "Hello! You asked for /a/b\n"


def test_the_manifest_reference_examples_load(tmp_path):
    """Each TOML example is a manifest this gateway accepts (modules may be missing)."""
    examples = [text for text in blocks("toml") if "route" in text]
    assert len(examples) == 3
    for number, text in enumerate(examples):
        tomllib.loads(text)
        folder = tmp_path / str(number)
        folder.mkdir()
        for name in ("cart", "data", "static"):
            (folder / name).mkdir()
        (folder / "static" / "style.css").write_text("")
        name = "modules.toml" if "[[module]]" in text else "spin.toml"
        (folder / name).write_text(text)
        result = run_wagi("check", "-c", str(folder / name), "--cache-dir", str(tmp_path))
        assert "module file not found" in result.stdout, result.stdout
        assert all("module file not found" in line for line in result.stdout.splitlines()[:-1])
