"""Dependencies shared by the routers, declared once as named aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from ..auth import owner_for_key
from ..runtime import Runtime

__all__ = ["Limit", "Offset", "Owner", "RuntimeDep", "get_runtime", "require_owner"]


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    runtime.ensure_started()
    return runtime


def require_owner(x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None) -> str:
    return owner_for_key(x_api_key)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
Owner = Annotated[str, Depends(require_owner)]
# Paging query parameters; each endpoint gives its own default (``limit: Limit = 20``).
Limit = Annotated[int, Query()]
Offset = Annotated[int, Query()]
