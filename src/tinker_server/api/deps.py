"""Dependencies shared by the routers, declared once as named aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from ..auth import Identity
from ..runtime import Runtime

__all__ = [
    "Caller",
    "Limit",
    "Offset",
    "Owner",
    "RuntimeDep",
    "get_runtime",
    "remember_owner",
    "require_identity",
    "require_owner",
]

# Where a request's owner is kept for the access log (observability.py): the ASGI scope's state.
OWNER_STATE = "tinker_owner"


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    runtime.ensure_started()
    return runtime


def remember_owner(request: Request, owner: str) -> None:
    """Note the request's owner for the access log."""
    setattr(request.state, OWNER_STATE, owner)


def require_identity(
    request: Request,
    runtime: Annotated[Runtime, Depends(get_runtime)],
    x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None,
) -> Identity:
    """The caller, by its key, in the server's mode (``auth.py``); 401 otherwise. The key
    is looked up on every request, so a revoked key fails on its next one."""
    identity = runtime.auth.identify(x_api_key)
    remember_owner(request, identity.owner)
    return identity


def require_owner(identity: Annotated[Identity, Depends(require_identity)]) -> str:
    return identity.owner


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
Caller = Annotated[Identity, Depends(require_identity)]
Owner = Annotated[str, Depends(require_owner)]
# Paging query parameters; each endpoint gives its own default (``limit: Limit = 20``).
# At most 2**63 - 1 (what the database takes): larger values are a 400, not an overflow.
Limit = Annotated[int, Query(le=2**63 - 1)]
Offset = Annotated[int, Query(le=2**63 - 1)]
