"""Only loopback targets: the harness refuses any URL whose host is not 127.0.0.0/8 or ::1."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


class NotLoopbackError(ValueError):
    """The target is not a loopback address."""


def require_loopback(url: str) -> str:
    """Return `url` without a trailing slash if its host is a loopback IP (or 'localhost'), else raise.

    Names other than 'localhost' are refused without a DNS lookup: a name could resolve anywhere.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise NotLoopbackError(f"--url must be http://127.0.0.1:PORT (got scheme {parts.scheme or 'none'!r})")
    host = parts.hostname or ""
    if host != "localhost":
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise NotLoopbackError(f"refusing {url}: host {host!r} is not a loopback IP address") from None
        if not ip.is_loopback:
            raise NotLoopbackError(f"refusing {url}: {host} is not a loopback address (127.0.0.0/8, ::1)")
    return url.rstrip("/")
