"""The future protocol (spec §1.7): poll ``/api/v1/retrieve_future`` until a result.

Polls follow each other with no pause (the server long-polls). HTTP 408 and
5xx mean "not yet"; 410 means the promise is gone (``RetryableException``);
any other 4xx is a ``ValueError``; transport errors back off ``min(2**k, 30)``
seconds. A 200 body with an ``error`` key is a ``RequestFailedError``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TypeVar

import pydantic

from ._exceptions import APIConnectionError, APIError, APIStatusError, RequestFailedError, RetryableException
from ._futures import InternalFuture
from ._http import response_json, validate
from ._sync import submit
from .types import RequestErrorCategory

if TYPE_CHECKING:
    from ._holder import ClientHolder

__all__ = ["QueueState", "QueueStateLogger", "RequestType", "poll_future", "start_polling"]

logger = logging.getLogger("tinker")

M = TypeVar("M", bound=pydantic.BaseModel)

RequestType = Literal[
    "CreateModel",
    "Forward",
    "ForwardBackward",
    "OptimStep",
    "SaveWeights",
    "LoadWeights",
    "SaveWeightsForSampler",
    "Sample",
]
QueueState = Literal["active", "paused_rate_limit", "paused_capacity", "unknown"]


class QueueStateLogger:
    """Logs "paused" queue states of one client, at most once per minute."""

    def __init__(self, what: str, rate_limit_reason: str) -> None:
        self._what = what
        self._rate_limit_reason = rate_limit_reason
        self._last_logged: float | None = None

    def __call__(self, state: QueueState) -> None:
        if state == "active":
            return
        now = time.monotonic()
        if self._last_logged is not None and now - self._last_logged < 60:
            return
        self._last_logged = now
        reason = {
            "paused_rate_limit": self._rate_limit_reason,
            "paused_capacity": "out of capacity",
        }.get(state, "unknown")
        logger.warning("%s is paused. Reason: %s", self._what, reason)


def _queue_state(body: object) -> QueueState:
    state = body.get("queue_state") if isinstance(body, dict) else None
    if state == "active":
        return "active"
    if state == "paused_rate_limit":
        return "paused_rate_limit"
    if state == "paused_capacity":
        return "paused_capacity"
    return "unknown"


def _category(value: object) -> RequestErrorCategory:
    for category in RequestErrorCategory:
        if value == category.value:
            return category
    return RequestErrorCategory.Unknown


async def poll_future(
    holder: ClientHolder,
    request_id: str,
    cast_to: type[M],
    request_type: RequestType,
    *,
    submit_started: float | None = None,
    on_queue_state: Callable[[QueueState], None] | None = None,
) -> M:
    """Poll until the future ``request_id`` resolves; return it validated as ``cast_to``."""
    timings = holder.timings
    roundtrip = time.monotonic() - submit_started if submit_started is not None else 0.0
    iteration = 0
    connection_errors = 0
    while True:
        headers: dict[str, str] = {
            "X-Tinker-Request-Iteration": str(iteration),
            "X-Tinker-Request-Type": request_type,
            "X-Stainless-Raw-Response": "raw",
        }
        if iteration == 0:
            headers["X-Tinker-Create-Promise-Roundtrip-Time"] = str(roundtrip)
        iteration += 1
        try:
            response = await holder.http.request(
                "POST",
                "api/v1/retrieve_future",
                body={"request_id": request_id},
                options={"timeout": 45, "max_retries": 0, "headers": dict(headers)},
            )
        except APIStatusError as exc:
            connection_errors = 0
            if exc.status_code == 408:
                if on_queue_state is not None:
                    on_queue_state(_queue_state(exc.body))
                continue
            if exc.status_code >= 500:
                continue
            if exc.status_code == 410:
                raise RetryableException(f"Promise expired/broken for request {request_id}: {exc.message}") from exc
            raise ValueError(f"Error retrieving result: {exc} with status code {exc.status_code}") from exc
        except APIConnectionError:
            await timings.sleep(min(2.0**connection_errors, timings.poll_error_delay_max))
            connection_errors += 1
            continue
        try:
            body = response_json(response)
        except APIError as exc:
            raise ValueError(f"Error retrieving result: {exc}") from exc
        if isinstance(body, dict):
            if "error" in body:
                raise RequestFailedError(
                    f"Request failed: {body['error']} for self.request_id={request_id!r} "
                    f"and expected type self.model_cls={cast_to!r}",
                    request_id,
                    _category(body.get("category")),
                    details=body,
                )
            if body.get("type") == "try_again":
                logger.warning("Request %s is not ready yet (try_again); polling again", request_id)
                continue
        try:
            return validate(response, body, cast_to)
        except APIError as exc:
            raise ValueError(f"Error retrieving result: {exc}") from exc


def start_polling(
    holder: ClientHolder,
    request_id: str,
    cast_to: type[M],
    request_type: RequestType,
    *,
    submit_started: float | None = None,
    on_queue_state: Callable[[QueueState], None] | None = None,
) -> InternalFuture[M]:
    """Start polling now (on the background loop) and return the future of the result."""

    async def run() -> M:
        try:
            return await poll_future(
                holder,
                request_id,
                cast_to,
                request_type,
                submit_started=submit_started,
                on_queue_state=on_queue_state,
            )
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:
            holder.report_exception(exc)
            raise

    return InternalFuture(submit(run()))
