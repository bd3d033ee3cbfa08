"""The exceptions of the SDK.

Foreign exceptions (httpx, pydantic) are translated into this tree in exactly
one place, the HTTP layer (``_http.py``)::

    TinkerError                      root; also raised for a missing API key
    ├── APIError                     .message, .request, .body
    │   ├── APIStatusError           non-2xx response; .response, .status_code
    │   │   ├── BadRequestError              400
    │   │   ├── AuthenticationError          401
    │   │   ├── PermissionDeniedError        403
    │   │   ├── NotFoundError                404
    │   │   ├── ConflictError                409
    │   │   ├── UnprocessableEntityError     422
    │   │   ├── RateLimitError               429
    │   │   └── InternalServerError          >= 500
    │   ├── APIConnectionError       transport failure ("Connection error.")
    │   │   └── APITimeoutError      HTTP timeout ("Request timed out.")
    │   └── APIResponseValidationError   a response that fails its schema
    └── RequestFailedError           a future resolved to {"error": ...}

``RetryableException`` (``tinker.lib.retryable_exception``) is not part of the
tree: it marks a failure (an expired future, HTTP 410) that a retry may cure.
"""

from __future__ import annotations

from typing import Any

import httpx

from .types._training import RequestErrorCategory

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestFailedError",
    "RetryableException",
    "TinkerError",
    "UnprocessableEntityError",
    "status_error_class",
]


class TinkerError(Exception):
    """Root of every error raised by the SDK."""


class APIError(TinkerError):
    """An error tied to one HTTP request."""

    message: str
    request: httpx.Request
    body: object | None

    def __init__(self, message: str, request: httpx.Request, *, body: object | None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.body = body


class APIStatusError(APIError):
    """The server answered with a non-success status code."""

    response: httpx.Response
    status_code: int

    def __init__(self, message: str, *, response: httpx.Response, body: object | None) -> None:
        super().__init__(message, response.request, body=body)
        self.response = response
        self.status_code = response.status_code


class BadRequestError(APIStatusError):
    status_code: int = 400


class AuthenticationError(APIStatusError):
    status_code: int = 401


class PermissionDeniedError(APIStatusError):
    status_code: int = 403


class NotFoundError(APIStatusError):
    status_code: int = 404


class ConflictError(APIStatusError):
    status_code: int = 409


class UnprocessableEntityError(APIStatusError):
    status_code: int = 422


class RateLimitError(APIStatusError):
    status_code: int = 429


class InternalServerError(APIStatusError):
    pass


class APIConnectionError(APIError):
    """The request never got a response (DNS, refused connection, reset, ...)."""

    def __init__(self, *, message: str = "Connection error.", request: httpx.Request) -> None:
        super().__init__(message, request, body=None)


class APITimeoutError(APIConnectionError):
    """The request timed out."""

    def __init__(self, request: httpx.Request) -> None:
        super().__init__(message="Request timed out.", request=request)


class APIResponseValidationError(APIError):
    """A response body that does not match the expected schema."""

    response: httpx.Response
    status_code: int

    def __init__(self, response: httpx.Response, body: object | None, *, message: str | None = None) -> None:
        super().__init__(message or "Data returned by API invalid for expected schema.", response.request, body=body)
        self.response = response
        self.status_code = response.status_code


class RequestFailedError(TinkerError):
    """The server resolved a future with ``{"error": ..., "category": ...}``."""

    def __init__(
        self,
        message: str,
        request_id: str,
        category: RequestErrorCategory,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.category = category
        self.details = details or {}


class RetryableException(Exception):
    """A failure that a fresh attempt of the whole operation may cure."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The exception class for a non-success HTTP status."""
    if status_code >= 500:
        return InternalServerError
    return _STATUS_ERRORS.get(status_code, APIStatusError)
