"""pytest fixtures for module authors: `wagi_client`, and `wagi_manifest` to pick the app.

Installing wagi registers this plugin (the `pytest11` entry point), so a test can say

    def test_hello(wagi_client):
        assert wagi_client.get("/hello").text == "Hello!\\n"

and get a client for the app whose `spin.toml` (or `modules.toml`) is nearest above the
test file. To test another app, override the fixture in a conftest.py or the test module:

    @pytest.fixture
    def wagi_manifest():
        return Path(__file__).parent / "apps" / "spin.toml"
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .config import ConfigError, find_manifest

if TYPE_CHECKING:
    from .testing import Client


@pytest.fixture
def wagi_manifest(request: pytest.FixtureRequest) -> Path:
    """The app under test: the nearest spin.toml or modules.toml at or above the test."""
    root = Path(request.config.rootpath)
    folder = Path(request.path).parent
    for candidate in (folder, *folder.parents):
        try:
            return find_manifest(candidate)
        except ConfigError:
            if candidate == root:
                break
    pytest.fail(
        f"no spin.toml or modules.toml from {folder} up to {root}: "
        "define a `wagi_manifest` fixture that returns the manifest's path"
    )


@pytest.fixture
def wagi_client(wagi_manifest: Path) -> Iterator[Client]:
    """A client for the app, served in-process by the real gateway; closed after the test."""
    from .testing import wagi_client as make_client  # the gateway loads only when used

    with make_client(wagi_manifest) as client:
        yield client
