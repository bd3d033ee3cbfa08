"""``RestClient``: training runs, checkpoints, sessions and samplers.

Sync methods return a ``concurrent.futures.Future`` (except
``get_weights_info_by_tinker_path`` and ``get_sampler``, which return an
``APIFuture``); ``*_async`` methods return the value. Every call but the
archive URL uses layer-B retries.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from ._exceptions import APIStatusError
from ._futures import APIFuture, InternalFuture
from ._sync import on_loop, submit, sync_only
from .types import (
    CheckpointArchiveUrlResponse,
    CheckpointsListResponse,
    GetSamplerResponse,
    GetSessionResponse,
    ListSessionsResponse,
    ParsedCheckpointTinkerPath,
    TrainingRun,
    TrainingRunsResponse,
    WeightsInfoRequest,
    WeightsInfoResponse,
)
from .types._base import to_wire

if TYPE_CHECKING:
    from ._holder import ClientHolder

__all__ = ["RestClient"]

M = TypeVar("M", bound=pydantic.BaseModel)
T = TypeVar("T")


def _expires(header: str | None) -> datetime:
    """``Expires`` as an aware UTC datetime; now + 15 min when absent or unparsable."""
    if header:
        try:
            parsed = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            parsed = None
        if parsed is not None:
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return datetime.now(UTC) + timedelta(minutes=15)


def _segment(value: str) -> str:
    """An id placed in a URL path: it must name one path segment, or the request would
    silently reach another endpoint (httpx resolves ``.``/``..``; an empty id hits the list route)."""
    if not value or value in (".", "..") or "/" in value:
        raise ValueError(f"Invalid id: {value!r}")
    return value


def _checkpoint_id(value: str) -> str:
    """``weights/<name>`` or ``sampler_weights/<name>``, with a valid name."""
    kind, _, name = value.partition("/")
    if kind not in ("weights", "sampler_weights"):
        raise ValueError(f"Invalid checkpoint id: {value!r} (expected weights/<name> or sampler_weights/<name>)")
    _segment(name)
    return value


class RestClient:
    """Queries and manages runs, checkpoints and sessions; create with ``ServiceClient.create_rest_client()``."""

    def __init__(self, holder: ClientHolder) -> None:
        self.holder = holder

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, cast_to: type[M], *, body: Any = None, params: dict[str, object] | None = None
    ) -> M:
        http = self.holder.http
        kwargs: dict[str, Any] = {"options": {"params": params} if params else None}
        if body is not None:
            kwargs["body"] = body
        return await self.holder.execute_with_retries(lambda: http.call(method, path, cast_to, **kwargs))

    async def _call_no_result(self, method: str, path: str) -> None:
        http = self.holder.http

        async def call() -> None:
            await http.request(method, path)

        await self.holder.execute_with_retries(call)

    @staticmethod
    def _future(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return submit(coro)

    # -- training runs ---------------------------------------------------------------------------

    def _get_training_run(self, training_run_id: str) -> Coroutine[Any, Any, TrainingRun]:
        return self._call("GET", f"api/v1/training_runs/{_segment(training_run_id)}", TrainingRun)

    @sync_only
    def get_training_run(self, training_run_id: str) -> concurrent.futures.Future[TrainingRun]:
        return self._future(self._get_training_run(training_run_id))

    async def get_training_run_async(self, training_run_id: str) -> TrainingRun:
        return await on_loop(self._get_training_run(training_run_id))

    @sync_only
    def get_training_run_by_tinker_path(self, tinker_path: str) -> concurrent.futures.Future[TrainingRun]:
        parsed = ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)
        return self._future(self._get_training_run(parsed.training_run_id))

    async def get_training_run_by_tinker_path_async(self, tinker_path: str) -> TrainingRun:
        parsed = ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)
        return await self.get_training_run_async(parsed.training_run_id)

    def get_weights_info_by_tinker_path(self, tinker_path: str) -> APIFuture[WeightsInfoResponse]:
        """Base model and LoRA rank of a checkpoint (works for other users' public ones)."""
        body = to_wire(WeightsInfoRequest(tinker_path=tinker_path))
        return InternalFuture(submit(self._call("POST", "api/v1/weights_info", WeightsInfoResponse, body=body)))

    def _list_training_runs(self, limit: int, offset: int) -> Coroutine[Any, Any, TrainingRunsResponse]:
        params: dict[str, object] = {"limit": limit, "offset": offset}
        return self._call("GET", "api/v1/training_runs", TrainingRunsResponse, params=params)

    @sync_only
    def list_training_runs(self, limit: int = 20, offset: int = 0) -> concurrent.futures.Future[TrainingRunsResponse]:
        return self._future(self._list_training_runs(limit, offset))

    async def list_training_runs_async(self, limit: int = 20, offset: int = 0) -> TrainingRunsResponse:
        return await on_loop(self._list_training_runs(limit, offset))

    # -- checkpoints ---------------------------------------------------------------------------------

    def _list_checkpoints(self, training_run_id: str) -> Coroutine[Any, Any, CheckpointsListResponse]:
        if not training_run_id:
            raise ValueError("training_run_id must not be empty")
        return self._call(
            "GET", f"api/v1/training_runs/{_segment(training_run_id)}/checkpoints", CheckpointsListResponse
        )

    @sync_only
    def list_checkpoints(self, training_run_id: str) -> concurrent.futures.Future[CheckpointsListResponse]:
        return self._future(self._list_checkpoints(training_run_id))

    async def list_checkpoints_async(self, training_run_id: str) -> CheckpointsListResponse:
        return await on_loop(self._list_checkpoints(training_run_id))

    def _list_user_checkpoints(self, limit: int, offset: int) -> Coroutine[Any, Any, CheckpointsListResponse]:
        params: dict[str, object] = {"limit": limit, "offset": offset}
        return self._call("GET", "api/v1/checkpoints", CheckpointsListResponse, params=params)

    @sync_only
    def list_user_checkpoints(
        self, limit: int = 100, offset: int = 0
    ) -> concurrent.futures.Future[CheckpointsListResponse]:
        """All your checkpoints across runs, newest first."""
        return self._future(self._list_user_checkpoints(limit, offset))

    async def list_user_checkpoints_async(self, limit: int = 100, offset: int = 0) -> CheckpointsListResponse:
        return await on_loop(self._list_user_checkpoints(limit, offset))

    async def _archive_url(self, training_run_id: str, checkpoint_id: str) -> CheckpointArchiveUrlResponse:
        path = f"api/v1/training_runs/{_segment(training_run_id)}/checkpoints/{_checkpoint_id(checkpoint_id)}/archive"
        response = await self.holder.http.request(
            "GET", path, options={"follow_redirects": False}, extra_header_lines=[("accept", "application/gzip")]
        )
        await response.aread()
        if response.status_code != 302 or "location" not in response.headers:
            raise APIStatusError(
                f"Expected a 302 redirect to the checkpoint archive, got {response.status_code}",
                response=response,
                body=response.text or None,
            )
        return CheckpointArchiveUrlResponse(
            url=response.headers["location"], expires=_expires(response.headers.get("expires"))
        )

    @sync_only
    def get_checkpoint_archive_url(
        self, training_run_id: str, checkpoint_id: str
    ) -> concurrent.futures.Future[CheckpointArchiveUrlResponse]:
        """A signed, expiring URL of the checkpoint's tar archive."""
        return self._future(self._archive_url(training_run_id, checkpoint_id))

    async def get_checkpoint_archive_url_async(
        self, training_run_id: str, checkpoint_id: str
    ) -> CheckpointArchiveUrlResponse:
        return await on_loop(self._archive_url(training_run_id, checkpoint_id))

    @sync_only
    def get_checkpoint_archive_url_from_tinker_path(
        self, tinker_path: str
    ) -> concurrent.futures.Future[CheckpointArchiveUrlResponse]:
        parsed = ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)
        return self._future(self._archive_url(parsed.training_run_id, parsed.checkpoint_id))

    async def get_checkpoint_archive_url_from_tinker_path_async(self, tinker_path: str) -> CheckpointArchiveUrlResponse:
        parsed = ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)
        return await on_loop(self._archive_url(parsed.training_run_id, parsed.checkpoint_id))

    def _checkpoint_action(
        self, method: str, training_run_id: str, checkpoint_id: str, suffix: str = ""
    ) -> Coroutine[Any, Any, None]:
        path = f"api/v1/training_runs/{_segment(training_run_id)}/checkpoints/{_checkpoint_id(checkpoint_id)}{suffix}"
        return self._call_no_result(method, path)

    def _from_path(self, method: str, tinker_path: str, suffix: str = "") -> Coroutine[Any, Any, None]:
        parsed = ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)
        return self._checkpoint_action(method, parsed.training_run_id, parsed.checkpoint_id, suffix)

    @sync_only
    def delete_checkpoint(self, training_run_id: str, checkpoint_id: str) -> concurrent.futures.Future[None]:
        return self._future(self._checkpoint_action("DELETE", training_run_id, checkpoint_id))

    async def delete_checkpoint_async(self, training_run_id: str, checkpoint_id: str) -> None:
        await on_loop(self._checkpoint_action("DELETE", training_run_id, checkpoint_id))

    @sync_only
    def delete_checkpoint_from_tinker_path(self, tinker_path: str) -> concurrent.futures.Future[None]:
        return self._future(self._from_path("DELETE", tinker_path))

    async def delete_checkpoint_from_tinker_path_async(self, tinker_path: str) -> None:
        await on_loop(self._from_path("DELETE", tinker_path))

    @sync_only
    def publish_checkpoint_from_tinker_path(self, tinker_path: str) -> concurrent.futures.Future[None]:
        """Make a checkpoint public (owner only)."""
        return self._future(self._from_path("POST", tinker_path, "/publish"))

    async def publish_checkpoint_from_tinker_path_async(self, tinker_path: str) -> None:
        await on_loop(self._from_path("POST", tinker_path, "/publish"))

    @sync_only
    def unpublish_checkpoint_from_tinker_path(self, tinker_path: str) -> concurrent.futures.Future[None]:
        """Make a public checkpoint private again (owner only)."""
        return self._future(self._from_path("DELETE", tinker_path, "/publish"))

    async def unpublish_checkpoint_from_tinker_path_async(self, tinker_path: str) -> None:
        await on_loop(self._from_path("DELETE", tinker_path, "/publish"))

    # -- sessions and samplers ---------------------------------------------------------------------

    def _get_session(self, session_id: str) -> Coroutine[Any, Any, GetSessionResponse]:
        return self._call("GET", f"api/v1/sessions/{_segment(session_id)}", GetSessionResponse)

    @sync_only
    def get_session(self, session_id: str) -> concurrent.futures.Future[GetSessionResponse]:
        return self._future(self._get_session(session_id))

    async def get_session_async(self, session_id: str) -> GetSessionResponse:
        return await on_loop(self._get_session(session_id))

    def _list_sessions(self, limit: int, offset: int) -> Coroutine[Any, Any, ListSessionsResponse]:
        params: dict[str, object] = {"limit": limit, "offset": offset}
        return self._call("GET", "api/v1/sessions", ListSessionsResponse, params=params)

    @sync_only
    def list_sessions(self, limit: int = 20, offset: int = 0) -> concurrent.futures.Future[ListSessionsResponse]:
        return self._future(self._list_sessions(limit, offset))

    async def list_sessions_async(self, limit: int = 20, offset: int = 0) -> ListSessionsResponse:
        return await on_loop(self._list_sessions(limit, offset))

    def _get_sampler(self, sampler_id: str) -> Coroutine[Any, Any, GetSamplerResponse]:
        return self._call("GET", f"api/v1/samplers/{_segment(sampler_id)}", GetSamplerResponse)

    def get_sampler(self, sampler_id: str) -> APIFuture[GetSamplerResponse]:
        return InternalFuture(submit(self._get_sampler(sampler_id)))

    async def get_sampler_async(self, sampler_id: str) -> GetSamplerResponse:
        return await on_loop(self._get_sampler(sampler_id))
