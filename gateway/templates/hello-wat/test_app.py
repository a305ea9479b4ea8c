"""Tests of {{name}}, through the real gateway: run them with `pytest`."""

from gateway.testing import run_module


def test_it_says_hello(wagi_client):
    response = wagi_client.get("/")
    assert response.status_code == 200
    assert response.text == "Hello from {{name}}!\n"


def test_every_path_reaches_it(wagi_client):
    assert wagi_client.get("/any/path?x=1").status_code == 200


def test_the_module_alone(wagi_manifest):
    result = run_module(wagi_manifest.parent / "{{name}}.wat")
    assert result.exit_code == 0 and result.stderr == b""
    assert result.stdout.startswith(b"Content-Type: text/plain")
