"""The HTTP layer: one ``httpx.AsyncClient``, the 0.5.1 headers, retry layer A.

This is the only module that catches httpx and pydantic exceptions; it turns
them into the tree of ``_exceptions``. Everything above it sees ``APIError``s.

Layer A retries a call up to ``max_retries`` times on transport errors and on
408/409/429/5xx (``x-should-retry`` overrides the decision), waiting what the
server asks for (``retry-after-ms`` / ``retry-after``, up to 60 s) or
``min(0.5 * 2**n, 10)`` seconds times a jitter factor in (0.75, 1].
"""

from __future__ import annotations

import email.utils
import json
import platform
import random
import time
import uuid
from typing import Any, TypeVar

import httpx
import pydantic

from . import _env
from ._constants import DEFAULT_BASE_URL, DEFAULT_CONNECTION_LIMITS, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    TinkerError,
    status_error_class,
)
from ._timings import Timings
from ._types import NOT_GIVEN, NotGiven, Omit, RequestOptions
from ._version import __version__

__all__ = ["HTTPClient", "make_status_error", "parse_response", "platform_headers", "response_json", "validate"]

M = TypeVar("M", bound=pydantic.BaseModel)

_NO_BODY: Any = object()


def _os_name() -> str:
    system = platform.system().lower()
    return {"darwin": "MacOS", "linux": "Linux", "windows": "Windows", "freebsd": "FreeBSD"}.get(
        system, f"Other:{system}" if system else "Unknown"
    )


def _arch_name() -> str:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x64"
    if machine in ("arm64", "aarch64"):
        return "arm64"
    if machine in ("i386", "i686", "x86"):
        return "x32"
    return f"other:{machine}" if machine else "unknown"


def platform_headers() -> dict[str, str]:
    return {
        "X-Stainless-Package-Version": __version__,
        "X-Stainless-OS": _os_name(),
        "X-Stainless-Arch": _arch_name(),
        "X-Stainless-Runtime": platform.python_implementation(),
        "X-Stainless-Runtime-Version": platform.python_version(),
        "X-Stainless-Async": "async:asyncio",
    }


def _seconds(value: float | None) -> str:
    if value is None:
        return "None"
    return str(int(value)) if float(value).is_integer() else str(value)


def _retry_after(response: httpx.Response, now: float) -> float | None:
    """The wait the server asks for, if it lies in (0, 60] seconds."""
    delay: float | None = None
    raw_ms = response.headers.get("retry-after-ms")
    raw = response.headers.get("retry-after")
    try:
        if raw_ms is not None:
            delay = float(raw_ms) / 1000
        elif raw is not None:
            delay = float(raw)
    except ValueError:
        delay = None
    if delay is None and raw is not None:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is not None:
            delay = email.utils.mktime_tz(parsed) - now
    if delay is not None and 0 < delay <= 60:
        return delay
    return None


def _should_retry(response: httpx.Response) -> bool:
    override = response.headers.get("x-should-retry")
    if override == "true":
        return True
    if override == "false":
        return False
    code = response.status_code
    return code in (408, 409, 429) or code >= 500


def _body_of(response: httpx.Response) -> tuple[str, object]:
    """(message, body) of an error response, as the 0.5.1 client words them."""
    text = response.text.strip()
    try:
        body: object = json.loads(text)
    except ValueError:
        return (text or f"Error code: {response.status_code}"), (text or None)
    return f"Error code: {response.status_code} - {body}", body


def make_status_error(response: httpx.Response) -> APIStatusError:
    message, body = _body_of(response)
    return status_error_class(response.status_code)(message, response=response, body=body)


class HTTPClient:
    """Async JSON client for the Tinker API; safe to use from the background loop only."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | httpx.URL | None = None,
        timeout: float | httpx.Timeout | NotGiven | None = NOT_GIVEN,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: dict[str, str] | None = None,
        default_query: dict[str, Any] | None = None,
        http_client: httpx.AsyncClient | None = None,
        timings: Timings | None = None,
    ) -> None:
        api_key = api_key if api_key is not None else _env.api_key()
        if api_key is None:
            raise TinkerError(
                "The api_key client option must be set either by passing api_key to the client "
                "or by setting the TINKER_API_KEY environment variable"
            )
        self.api_key = api_key
        url = str(base_url if base_url is not None else _env.base_url() or DEFAULT_BASE_URL)
        self.base_url = httpx.URL(url if url.endswith("/") else url + "/")
        self.timeout: httpx.Timeout | None = DEFAULT_TIMEOUT if isinstance(timeout, NotGiven) else _as_timeout(timeout)
        self.max_retries = max_retries
        self.default_headers = dict(default_headers or {})
        self.default_query = dict(default_query or {})
        self.timings = timings or Timings()
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(
            timeout=self.timeout, limits=DEFAULT_CONNECTION_LIMITS, follow_redirects=True
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def url(self, path: str) -> httpx.URL:
        return httpx.URL(str(self.base_url) + path.lstrip("/"))

    def _headers(
        self,
        method: str,
        *,
        retries_taken: int,
        timeout: httpx.Timeout | None,
        idempotency_key: str | None,
        extra: dict[str, str | Omit],
        extra_lines: list[tuple[str, str]],
    ) -> httpx.Headers:
        merged: dict[str, str | Omit] = {
            "Accept": "application/json",
            "User-Agent": f"AsyncTinker/Python {__version__}",
            **platform_headers(),
            "X-API-Key": self.api_key,
        }
        if method in ("POST", "DELETE", "PUT", "PATCH"):
            merged["Content-Type"] = "application/json"
        if idempotency_key is not None:
            merged["X-Idempotency-Key"] = idempotency_key
        merged.update(self.default_headers)
        merged.update(extra)
        lower = {k.lower() for k in merged}
        if "x-stainless-retry-count" not in lower:
            merged["x-stainless-retry-count"] = str(retries_taken)
        if "x-stainless-read-timeout" not in lower and timeout is not None and timeout.read is not None:
            merged["x-stainless-read-timeout"] = _seconds(timeout.read)
        lines = [(k, v) for k, v in merged.items() if not isinstance(v, Omit)]
        return httpx.Headers(lines + extra_lines)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = _NO_BODY,
        options: RequestOptions | None = None,
        extra_header_lines: list[tuple[str, str]] | None = None,
    ) -> httpx.Response:
        """Send one logical call (with layer-A retries); return the successful response.

        Raises ``APIStatusError`` (by status), ``APITimeoutError`` or ``APIConnectionError``.
        A 3xx comes back as a response when ``follow_redirects`` is False.
        """
        opts: RequestOptions = options or {}
        timeout = _as_timeout(opts["timeout"]) if "timeout" in opts else self.timeout
        max_retries = opts.get("max_retries", self.max_retries)
        idempotency_key = None
        if method != "GET":
            idempotency_key = opts.get("idempotency_key") or f"stainless-python-retry-{uuid.uuid4()}"
        params = {**self.default_query, **opts.get("params", {})}
        content = None if body is _NO_BODY else json.dumps(body).encode()
        follow = opts.get("follow_redirects", True)
        retries_taken = 0
        while True:
            headers = self._headers(
                method,
                retries_taken=retries_taken,
                timeout=timeout,
                idempotency_key=idempotency_key,
                extra=opts.get("headers", {}),
                extra_lines=extra_header_lines or [],
            )
            request = self._client.build_request(
                method, self.url(path), headers=headers, content=content, params=params or None, timeout=timeout
            )
            retries_left = max_retries - retries_taken
            try:
                response = await self._client.send(request, follow_redirects=follow)
            except httpx.TimeoutException as exc:
                if retries_left > 0:
                    await self._backoff(retries_taken, None)
                    retries_taken += 1
                    continue
                raise APITimeoutError(request) from exc
            except httpx.HTTPError as exc:  # transport failures, redirect loops, bad encodings
                if retries_left > 0:
                    await self._backoff(retries_taken, None)
                    retries_taken += 1
                    continue
                raise APIConnectionError(request=request) from exc
            if response.status_code < 400:
                return response
            if retries_left > 0 and _should_retry(response):
                await response.aclose()
                await self._backoff(retries_taken, response)
                retries_taken += 1
                continue
            await response.aread()
            raise make_status_error(response)

    async def _backoff(self, retries_taken: int, response: httpx.Response | None) -> None:
        delay = _retry_after(response, time.time()) if response is not None else None
        if delay is None:
            delay = min(self.timings.http_retry_initial * 2.0**retries_taken, self.timings.http_retry_max)
            delay *= 1 - 0.25 * random.random()
        await self.timings.sleep(delay)

    async def call(
        self,
        method: str,
        path: str,
        cast_to: type[M],
        *,
        body: Any = _NO_BODY,
        options: RequestOptions | None = None,
    ) -> M:
        """``request`` and validate the JSON body as ``cast_to``."""
        response = await self.request(method, path, body=body, options=options)
        return parse_response(response, cast_to)


def _as_timeout(value: float | httpx.Timeout | None) -> httpx.Timeout | None:
    if value is None or isinstance(value, httpx.Timeout):
        return value
    return httpx.Timeout(value)


def response_json(response: httpx.Response) -> object:
    """The JSON body, or ``APIResponseValidationError`` when there is none."""
    try:
        result: object = json.loads(response.content)
    except ValueError as exc:
        content_type = response.headers.get("content-type", "")
        raise APIResponseValidationError(
            response, response.text, message=f"Expected a JSON response, got content-type {content_type!r}"
        ) from exc
    return result


def validate(response: httpx.Response, body: object, cast_to: type[M]) -> M:
    """Validate an already-decoded body; schema errors become ``APIResponseValidationError``."""
    try:
        return cast_to.model_validate(body)
    except pydantic.ValidationError as exc:
        raise APIResponseValidationError(response, body, message=f"{cast_to.__name__}: {exc}") from exc


def parse_response(response: httpx.Response, cast_to: type[M]) -> M:
    return validate(response, response_json(response), cast_to)
