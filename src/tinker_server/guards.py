"""Guards at the HTTP edge: body size caps, the ``Host`` check, private file modes.

* :class:`BodyLimit` (ASGI middleware): a request body larger than its route's cap is
  refused with 413 and a sentence: at once when ``Content-Length`` says so (nothing is
  read), else as soon as the streamed body passes the cap (the route reading it gets
  the 413 instead). Heavy routes (:data:`HEAVY_ROUTES`) may carry ``max_body_bytes``,
  every other route (``create_session``, ``telemetry``, saves, ...) ``max_small_body_bytes``.
* :class:`HostCheck` (ASGI middleware): while the server listens on a loopback address,
  a request whose ``Host`` is not a loopback name or address, ``public_base_url``'s host
  or one of ``allowed_hosts`` gets 421. A web page a browser loaded from another site
  cannot then reach the laptop's server through a DNS name rebound to 127.0.0.1.
* :func:`private_files`: the process's umask becomes 077 and the home, its database
  files and checkpoints lose any group/other access, so one tenant's metadata and
  weights are readable by the server's user only. Worker processes inherit the umask.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import pathlib
import re
import urllib.parse
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .settings import Settings

__all__ = [
    "HEAVY_ROUTES",
    "BodyLimit",
    "HostCheck",
    "RedactTokens",
    "body_too_large",
    "install_log_redaction",
    "private_files",
    "redact",
]

log = logging.getLogger(__name__)

# Routes whose bodies carry tokens and tensors; every other route takes small bodies.
HEAVY_ROUTES = frozenset(
    {
        "/api/v1/forward",
        "/api/v1/forward_backward",
        "/api/v1/asample",
        "/oai/api/v1/completions",
        "/oai/api/v1/chat/completions",
        "/api/v1/console/playground/sample",
    }
)
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def body_limit(settings: Settings, path: str) -> int:
    """The largest body (bytes) a request to ``path`` may carry."""
    return settings.max_body_bytes if path.rstrip("/") in HEAVY_ROUTES else settings.max_small_body_bytes


def body_too_large(limit: int) -> str:
    return (
        f"the request body is larger than this route accepts ({limit} bytes); "
        "send smaller requests (split the batch) or ask the operator to raise the limit"
    )


def _request_id(scope: Scope) -> str | None:
    state = scope.get("state")
    rid = state.get("request_id") if isinstance(state, dict) else None
    return rid if isinstance(rid, str) else None


async def _answer(scope: Scope, send: Send, status: int, detail: str) -> None:
    body: dict[str, Any] = {"detail": detail}
    headers = [(b"content-type", b"application/json")]
    rid = _request_id(scope)
    if rid is not None:
        body["request_id"] = rid
    data = json.dumps(body).encode()
    headers.append((b"content-length", str(len(data)).encode()))
    if status == 413:
        headers.append((b"connection", b"close"))  # the unread body is not drained
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """413 for bodies over the route's cap (see the module docs)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self._settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(self._settings, scope.get("path", ""))
        for name, value in scope.get("headers", ()):
            if name.lower() == b"content-length":
                text = value.decode("latin-1").strip()
                if not text.isdigit():
                    await _answer(scope, send, 400, f"Content-Length {text!r} is not a whole number of bytes")
                    return
                if int(text) > limit:
                    await _answer(scope, send, 413, body_too_large(limit))
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, body_too_large(limit))
            return message

        await self.app(scope, limited, send)


def _host_name(value: str) -> str:
    """The host part of a ``Host`` header (no port, no brackets), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_loopback(host: str) -> bool:
    host = _host_name(host) if not host.startswith("[") else host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostCheck:
    """421 for a foreign ``Host`` while the server listens on loopback (see the module docs).

    The check applies when ``settings.host`` is a loopback address and the request came in
    on a loopback socket (``scope["server"]``); a server bound to a public address
    (``--host 0.0.0.0``) is reachable under any name its operator gives it."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self._enabled = is_loopback(settings.host)
        allowed = set(LOOPBACK_NAMES) | {h.strip().lower() for h in settings.allowed_hosts}
        if settings.public_base_url:
            host = urllib.parse.urlsplit(settings.public_base_url).hostname
            if host:
                allowed.add(host.lower())
        self._allowed = frozenset(allowed)

    def _applies(self, scope: Scope) -> bool:
        server = scope.get("server")
        if not self._enabled or not server:
            return False
        try:
            return ipaddress.ip_address(str(server[0])).is_loopback
        except ValueError:
            return False  # an in-process test client, a Unix socket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self._applies(scope):
            await self.app(scope, receive, send)
            return
        host = HTTPConnection(scope).headers.get("host", "")
        name = _host_name(host)
        if name in self._allowed or is_loopback(name):
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _answer(
            scope,
            send,
            421,
            f"this server listens on a loopback address and answers only requests addressed to it "
            f"(Host 127.0.0.1, localhost or ::1), not {name or 'an empty Host'!r}; an operator can "
            "allow more names with the allowed_hosts setting (TINKER_ALLOWED_HOSTS) or public_base_url",
        )


# -- logs --------------------------------------------------------------------------------

# Signed-link tokens in paths, and credential-like query parameters.
_PATH_TOKEN = re.compile(r"(/(?:archives|external_files)/)[^/?#\s\"]+")
_QUERY_TOKEN = re.compile(r"([?&](?:token|key|api_key|signature|sig)=)[^&#\s\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with download-link tokens and credential query values replaced."""
    return _QUERY_TOKEN.sub(r"\1<redacted>", _PATH_TOKEN.sub(r"\1<redacted>", text))


class RedactTokens(logging.Filter):
    """Rewrites string arguments (uvicorn's access line: the raw path) through :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install_log_redaction() -> None:
    """Put :class:`RedactTokens` on uvicorn's access logger (once)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in logger.filters):
        logger.addFilter(RedactTokens())


# -- files -------------------------------------------------------------------------------


def _chmod(path: pathlib.Path, mode: int) -> None:
    try:
        if path.exists() and not path.is_symlink():
            os.chmod(path, mode)
    except OSError as exc:
        log.warning("could not restrict the permissions of %s: %s", path, exc)


def private_files(settings: Settings) -> None:
    """umask 077 for everything the server (and its worker processes) creates from now on;
    the home (0700), its SQLite files and the checkpoints (folders 0700, files 0600) lose
    group/other access. Called once at startup, before the database is opened."""
    os.umask(0o077)
    home = settings.home
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    _chmod(home, 0o700)
    for name in ("tinker.db", "tinker.db-wal", "tinker.db-shm", "archive_secret"):
        _chmod(home / name, 0o600)
    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        db = pathlib.Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm", "-journal"):
            _chmod(db.with_name(db.name + suffix), 0o600)
    checkpoints = settings.checkpoints_dir
    if checkpoints.is_dir():
        for folder, dirs, files in os.walk(checkpoints):
            if os.stat(folder).st_mode & 0o077:
                _chmod(pathlib.Path(folder), 0o700)
            for name in files:
                path = pathlib.Path(folder) / name
                if not path.is_symlink() and path.stat().st_mode & 0o077:
                    _chmod(path, 0o600)
            dirs[:] = [d for d in dirs if not (pathlib.Path(folder) / d).is_symlink()]
