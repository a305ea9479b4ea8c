"""Forwarding headers: believed from trusted proxies only, read from the nearest hop."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError
from gateway.proxy import Forwarded, TrustedProxies


def headers(**values: str) -> list[tuple[bytes, bytes]]:
    return [(name.replace("_", "-").encode(), value.encode()) for name, value in values.items()]


CASES = [
    # (trusted, peer, headers, expected)
    ("", "10.0.0.1", headers(x_forwarded_for="1.2.3.4"), None),  # trust nobody by default
    ("10.0.0.1", "10.9.9.9", headers(x_forwarded_for="1.2.3.4"), None),  # untrusted peer
    (
        "10.0.0.1",
        "10.0.0.1",
        headers(x_forwarded_for="1.2.3.4", x_forwarded_proto="https", x_forwarded_host="ex.com"),
        Forwarded(("1.2.3.4", 0), "https", "ex.com"),
    ),
    (
        "10.0.0.0/8",
        "10.0.0.1",
        headers(x_forwarded_for="6.6.6.6, 1.2.3.4, 10.0.0.7"),
        Forwarded(("1.2.3.4", 0), None, None),
    ),  # a forged left entry is not the client
    (
        "10.0.0.0/8",
        "10.0.0.1",
        headers(x_forwarded_for="10.0.0.9, 10.0.0.7"),
        Forwarded(("10.0.0.9", 0), None, None),
    ),  # all proxies: the leftmost
    ("*", "192.0.2.1", headers(x_forwarded_proto="http, https"), Forwarded(None, "https", None)),
    (
        "*",
        "192.0.2.1",
        headers(x_forwarded_proto="gopher", x_forwarded_host="bad host/x"),
        Forwarded(None, None, None),
    ),  # nonsense values are ignored
    (
        "127.0.0.1",
        "127.0.0.1",
        headers(forwarded='for=198.51.100.17;proto=https;host="shop.example:8443"'),
        Forwarded(("198.51.100.17", 0), "https", "shop.example:8443"),
    ),
    (
        "127.0.0.1",
        "127.0.0.1",
        headers(
            forwarded='for="[2001:db8::1]:4711", for=127.0.0.1;proto=http',
            x_forwarded_for="9.9.9.9",
        ),
        Forwarded(("2001:db8::1", 4711), "http", None),
    ),  # Forwarded wins over X-Forwarded-*
    ("127.0.0.1", "127.0.0.1", headers(forwarded="for=unknown"), Forwarded(None, None, None)),
    (
        "*",
        "192.0.2.1",
        headers(x_forwarded_for="1.2.3.4:" + "9" * 5000),
        Forwarded(("1.2.3.4", 0), None, None),
    ),  # a port too long to be one is none
]


@pytest.mark.parametrize(("trusted", "peer", "sent", "expected"), CASES)
def test_forwarding_headers(trusted, peer, sent, expected):
    assert TrustedProxies(trusted).resolve(peer, sent) == expected


def test_a_star_in_a_list_trusts_any_peer():
    sent = headers(x_forwarded_for="1.2.3.4")
    assert TrustedProxies("10.0.0.1, *").resolve("10.9.9.9", sent).client == ("1.2.3.4", 0)


def test_a_bad_address_list_is_refused():
    with pytest.raises(ConfigError, match=r"not an address or network: 'proxy\.local'"):
        TrustedProxies("10.0.0.1, proxy.local")


def test_forwarded_values_reach_the_cgi_environment(serve, example_apps):
    import httpx

    server = serve("-c", str(example_apps), "--forwarded-allow-ips", "127.0.0.1")
    text = httpx.get(
        f"{server.url}/env/x?q=1",
        timeout=10,
        headers={
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "www.example.org",
        },
    ).text
    assert "REMOTE_ADDR=203.0.113.9\n" in text
    assert "HTTPS=on\n" in text
    assert "SERVER_NAME=www.example.org\nSERVER_PORT=443\n" in text
    assert "X_FULL_URL=https://www.example.org:443/env/x?q=1\n" in text
    untrusted = serve("-c", str(example_apps))  # the default trusts nobody
    text = httpx.get(
        f"{untrusted.url}/env", timeout=10, headers={"X-Forwarded-For": "203.0.113.9"}
    ).text
    assert "REMOTE_ADDR=127.0.0.1\n" in text
    assert "HTTP_X_FORWARDED_FOR=203.0.113.9\n" in text  # passed on, not believed
