"""Domain errors of the server.

Services raise these; the API layer maps them to HTTP statuses in one table
(:mod:`tinker_server.api.errors`). No domain code knows about HTTP.

::

    ServiceError                  base; the message is shown to the user as is
     ├── InvalidRequest           the request is wrong (bad id, bad name, bad value)
     ├── NotAuthenticated         no or empty X-API-Key
     ├── AccessDenied             a signed URL is tampered with or expired
     ├── NotFound                 unknown id, or one that belongs to another tenant
     ├── Gone                     the object exists but is no longer usable
     │                            (session expired, model unloaded, server restarted)
     ├── Overloaded               queue full; the client retries later
     └── Unavailable              the server cannot do it now (model failed to load)
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "Gone",
    "InvalidRequest",
    "NotAuthenticated",
    "NotFound",
    "Overloaded",
    "ServiceError",
    "Unavailable",
]


class ServiceError(Exception):
    """Base of every error the server raises on purpose; ``str(err)`` is the user message.
    ``param`` names the request parameter at fault where one is (the OpenAI-compatible
    endpoints report it)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(ServiceError):
    pass


class NotAuthenticated(ServiceError):
    pass


class AccessDenied(ServiceError):
    pass


class NotFound(ServiceError):
    pass


class Gone(ServiceError):
    pass


class Overloaded(ServiceError):
    pass


class Unavailable(ServiceError):
    pass
