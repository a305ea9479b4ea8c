"""Tests of {{name}}, through the real gateway: run `wagi build`, then `pytest`."""

from gateway.testing import cgi_environment, run_module


def test_it_says_hello(wagi_client):
    response = wagi_client.get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.text.startswith("Hello from {{name}}!\n")


def test_it_sees_the_path(wagi_client):
    assert "You asked for POST /some/page" in wagi_client.post("/some/page").text


def test_the_module_alone(wagi_manifest):
    env = cgi_environment("GET", "/", env={"GREETING": "Howdy"})
    result = run_module(wagi_manifest.parent / "{{name}}.wasm", env=env)
    assert result.exit_code == 0
    assert result.response.text.startswith("Howdy from {{name}}!")
