"""Only loopback targets: the harness refuses any URL whose host is not 127.0.0.0/8 or ::1."""

from __future__ import annotations

import ipaddress
import urllib.error
import urllib.request
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


def require_answering(url: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError unless GET `url`/healthz answers 200 (checked before a run starts)."""
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        with opener.open(f"{url}/healthz", timeout=timeout) as r:
            if r.status == 200:
                return
            raise ConnectionError(f"{url}/healthz answered {r.status}")
    except urllib.error.HTTPError as exc:
        raise ConnectionError(f"{url}/healthz answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"no server answering at {url} ({reason})") from None
