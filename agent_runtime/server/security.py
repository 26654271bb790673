"""Bearer-token auth, CORS, Host checks, bounded JSON and JSON errors for the call server."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from agent_runtime.errors import ConfigError
from agent_runtime.json_limits import JSONTooDeep as JSONTooDeep  # re-exported for handlers
from agent_runtime.json_limits import loads

log = logging.getLogger("agent_runtime.server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, **headers: str) -> web.Response:
    """An error answer: `{"error": message}` with the given HTTP status."""
    return web.Response(
        status=status, text=json.dumps({"error": message}), content_type="application/json", headers=headers
    )


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_json(raw: str | bytes, max_depth: int) -> Any:
    """A request body as JSON; ValueError (JSONTooDeep when nested over `max_depth`) otherwise."""
    return loads(raw, max_depth)


def host_name(value: str) -> str:
    """A Host header's name without the port, lower-case: `[::1]:8080` -> `::1`, `Example.com.` -> `example.com`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def host_middleware(bind_host: str, allowed_hosts: list[str]) -> Callable:
    """Refuse requests for names this server does not serve (421): the defence against DNS rebinding.

    A loopback bind answers only loopback names (localhost, 127.0.0.1, [::1]) and `allowed_hosts`: a
    page on evil.example whose name resolves to 127.0.0.1 gets 421. Other binds check the Host only
    when `allowed_hosts` is set (then it, the bind address and loopback names are accepted).
    """
    loopback = is_loopback_host(host_name(bind_host))
    check = loopback or bool(allowed_hosts)
    allowed = {host_name(h) for h in allowed_hosts}  # a listed port is ignored, like the request's
    if not loopback:
        allowed.add(host_name(bind_host))
    fix = "add it to server.allowed_hosts to serve it"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        value = request.headers.get("Host")
        if not check or value is None or is_loopback_host(host_name(value)) or host_name(value) in allowed:
            return await handler(request)
        return json_error(421, f"host {value[:100]!r} is not served here (DNS-rebinding protection); {fix}")

    return middleware


class AuthConfig(Protocol):
    """What `resolve_token` reads: `server:` or `tts_server:` (`ServerConfig`, `TTSServerConfig`)."""

    @property
    def auth(self) -> str: ...

    @property
    def auth_token_env(self) -> str: ...


def resolve_token(config: AuthConfig, host: str, environ: dict[str, str]) -> str | None:
    """The token signaling requires, or None when auth is off. Raises ConfigError if it is missing."""
    required = config.auth == "on" or (config.auth == "auto" and not is_loopback_host(host))
    if not required:
        return None
    token = environ.get(config.auth_token_env, "").strip()
    if not token:
        why = "server.auth is on" if config.auth == "on" else f"the server binds to non-loopback address {host}"
        raise ConfigError(
            f"{why}, so signaling needs a bearer token: set the environment variable {config.auth_token_env} "
            "(or server.auth: off to run without one, only behind your own auth proxy)"
        )
    return token


def token_matches(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def unauthorized() -> web.Response:
    return json_error(
        401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')", **{"WWW-Authenticate": "Bearer"}
    )


def _same_origin(request: web.Request, origin: str) -> bool:
    return origin == f"{request.scheme}://{request.host}"


def cors_middleware(allowed: list[str]) -> Callable:
    """Only same-origin pages and `allowed` origins may call the API; preflights are answered here."""
    allowed_set = set(allowed)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or _same_origin(request, origin):
            return await handler(request)
        if origin not in allowed_set:
            if request.method in ("GET", "HEAD") and request.headers.get("Upgrade", "").lower() != "websocket":
                return await handler(request)  # the browser withholds the response: no CORS headers
            return json_error(403, f"origin {origin} is not allowed (server.cors_origins)")
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if request.method == "OPTIONS":
            cors |= {
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
            }
            return web.Response(status=204, headers=cors)
        response = await handler(request)
        response.headers.update(cors)
        return response

    return middleware


def error_middleware(max_body_bytes: int) -> Callable:
    """HTTP errors as JSON with a clear message; unexpected errors as a logged 500."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, f"request body too large (limit {max_body_bytes} bytes, server.max_body_bytes)")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return json_error(exc.status, exc.reason)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return json_error(500, "internal server error")

    return middleware
