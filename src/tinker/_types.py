"""Small types of the public configuration surface.

``NOT_GIVEN`` marks an argument the caller did not pass, as distinct from an
explicit ``None`` (which, for a timeout, means "no timeout").
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import httpx
from typing_extensions import override

__all__ = ["NOT_GIVEN", "NotGiven", "Omit", "RequestOptions", "Timeout"]

Timeout = httpx.Timeout


class NotGiven:
    """Sentinel for "argument not passed"; falsy, so ``x or default`` works."""

    def __bool__(self) -> Literal[False]:
        return False

    @override
    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = NotGiven()


class Omit:
    """Sentinel that removes a default header from one request: ``{"X-Foo": Omit()}``."""

    def __bool__(self) -> Literal[False]:
        return False

    @override
    def __repr__(self) -> str:
        return "Omit()"


class RequestOptions(TypedDict, total=False):
    """Per-call overrides of the HTTP client's defaults."""

    headers: dict[str, str | Omit]
    max_retries: int
    timeout: float | Timeout | None
    params: dict[str, Any]
    idempotency_key: str
    follow_redirects: bool
