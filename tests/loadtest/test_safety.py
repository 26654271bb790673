"""Only loopback targets are ever called."""

from __future__ import annotations

import pytest

from loadtest.safety import NotLoopbackError, require_loopback


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://127.9.8.7:1/", "http://[::1]:8080", "http://localhost:80"])
def test_loopback_is_accepted(url: str) -> None:
    assert require_loopback(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1:8080", "http://0.0.0.0:8080", "http://example.com", "http://192.168.1.2", "ftp://127.0.0.1",
            "http://[2001:db8::1]:80", "127.0.0.1:8080", "http://127.0.0.1.evil.com"],
)
def test_other_hosts_are_refused(url: str) -> None:
    with pytest.raises(NotLoopbackError):
        require_loopback(url)
