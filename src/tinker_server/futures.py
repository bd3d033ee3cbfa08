"""Durable futures: one database row per submitted request, plus in-process wake-ups.

A submit creates a ``pending`` row and returns its id at once. A worker thread
resolves it (``done`` with its result, or ``failed`` with a message and a
category) and wakes every ``retrieve_future`` long-poll waiting on it. Waiters
may live on any event loop; they are woken thread-safely.

Results are stored typed, not as answers: a training or sampling result
(:class:`~tinker_server.wire.TrainResult`, :class:`~tinker_server.wire.SampleResult`)
as its serialized protobuf message in ``request_results``, any other result
(a response model or a JSON-ready object) as JSON text in the request row. The
HTTP edge reads a :class:`StoredResult` and answers it in the encoding the
client accepts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic
import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import wire
from .db import Database, RequestResultRow, RequestRow, utcnow
from .notify import LocalNotifier, Notifier
from .wire import codec

__all__ = ["CLONE_SEQ_BLOCK", "Completion", "Finished", "FutureHub", "ResolveHook", "StoredResult", "render"]

T = TypeVar("T")
# Sampling clients restored from a pickle (0.12+) number their requests from
# clone_id * CLONE_SEQ_BLOCK, so a request's clone is seq_id // CLONE_SEQ_BLOCK.
CLONE_SEQ_BLOCK = 10**9

# The protobuf message a typed result is stored as.
TRAIN_MESSAGE = "ForwardBackwardOutput"
SAMPLE_MESSAGE = "SampleResponse"
QUEUE_STATE_REASON = "the request is queued or running; poll again"
# queue_state values the clients know (0.5.1 reports them to its queue-state observer on a
# 408; 0.7+ also log queue_state_reason).
QUEUE_STATES = ("active", "paused_rate_limit", "paused_capacity")


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A finished request's result as stored: JSON text (``message`` is ``None``), or
    the protobuf ``message`` of ``tinker_wire.proto`` (with a sample's ``sequence_ids``)."""

    body: bytes
    message: str | None = None
    sequence_ids: tuple[str, ...] = ()


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished request as ``retrieve_futures`` reports it."""

    request_id: str
    status: str  # "done" or "failed"
    cursor: int
    payload_size: int | None


@dataclass(frozen=True, slots=True)
class Finished:
    """The request a :data:`ResolveHook` is told about."""

    request_id: str
    owner: str
    kind: str
    model_id: str | None
    seq_id: int | None


# Runs inside the transaction that records a successful result, with that result as
# ``resolve`` got it (e.g. the per-run metrics of ``run_metrics.py``). It writes only its
# own rows; an exception it raises is logged and does not fail the request.
ResolveHook = Callable[[Session, Finished, Any], None]


def _completions_key(model_id: str) -> str:
    return f"completions:{model_id}"


class FutureHub:
    def __init__(self, db: Database, notifier: Notifier | None = None) -> None:
        self._db = db
        self.notifier: Notifier = notifier if notifier is not None else LocalNotifier()
        self.on_resolved: list[ResolveHook] = []
        # Pending requests that wait for a reason the client should hear (request id ->
        # (queue_state, queue_state_reason)); in memory, set by the services, cleared by
        # the worker when the request starts.
        self._queue_states: dict[str, tuple[str, str]] = {}
        self._queue_states_lock = threading.Lock()

    # -- why a pending request waits --------------------------------------------------------

    def set_queue_state(self, request_id: str, state: str, reason: str) -> None:
        if state not in QUEUE_STATES:
            raise ValueError(f"unknown queue_state {state!r}")
        with self._queue_states_lock:
            self._queue_states[request_id] = (state, reason)

    def clear_queue_state(self, request_id: str) -> None:
        with self._queue_states_lock:
            self._queue_states.pop(request_id, None)

    def queue_state(self, request_id: str) -> tuple[str, str] | None:
        """``(queue_state, queue_state_reason)`` of a pending request that waits for a
        reason other than its turn; ``None`` otherwise."""
        with self._queue_states_lock:
            return self._queue_states.get(request_id)

    # -- creation ---------------------------------------------------------------------------

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def add(
        self,
        session: Session,
        *,
        request_id: str,
        owner: str,
        kind: str,
        model_id: str | None,
        seq_id: int | None = None,
        dedup_key: str | None = None,
    ) -> None:
        """Record a pending request inside the caller's unit of work."""
        session.add(
            RequestRow(
                id=request_id,
                owner=owner,
                kind=kind,
                model_id=model_id,
                seq_id=seq_id,
                dedup_key=dedup_key,
                created_at=utcnow(),
            )
        )

    def find_by_dedup(self, session: Session, dedup_key: str) -> RequestRow | None:
        return session.scalars(sa.select(RequestRow).where(RequestRow.dedup_key == dedup_key)).first()

    # -- resolution (any thread) ------------------------------------------------------------

    def resolve(self, request_id: str, result: Any) -> None:
        """Record the result: a :class:`wire.TrainResult` or :class:`wire.SampleResult`
        (stored as protobuf), a response model or a JSON-ready object (stored as JSON)."""
        binary = _binary(result)
        text = None if binary is not None else _json_text(result)
        self._finish(request_id, status="done", result=text, error=None, category=None, binary=binary, value=result)

    def fail(self, request_id: str, message: str, category: str) -> None:
        self._finish(request_id, status="failed", result=None, error=message, category=category)

    def _finish(
        self,
        request_id: str,
        *,
        status: str,
        result: str | None,
        error: str | None,
        category: str | None,
        binary: RequestResultRow | None = None,
        value: Any = None,
    ) -> None:
        self.clear_queue_state(request_id)
        model_id = None
        try:
            with self._db.session() as session:
                # The first outcome wins (a cancelled request may still finish in the engine).
                next_seq = sa.select(sa.func.coalesce(sa.func.max(RequestRow.completion_seq), 0) + 1).scalar_subquery()
                updated = session.execute(
                    sa.update(RequestRow)
                    .where(RequestRow.id == request_id, RequestRow.status == "pending")
                    .values(
                        status=status,
                        result=result,
                        error=error,
                        category=category,
                        finished_at=utcnow(),
                        completion_seq=next_seq,
                    )
                )
                recorded = bool(int(getattr(updated, "rowcount", 0) or 0))
                if recorded and binary is not None:
                    binary.request_id = request_id
                    session.merge(binary)
                found = session.execute(
                    sa.select(RequestRow.owner, RequestRow.kind, RequestRow.model_id, RequestRow.seq_id).where(
                        RequestRow.id == request_id
                    )
                ).first()
                model_id = found.model_id if found is not None else None
                if recorded and status == "done" and found is not None and self.on_resolved:
                    self._run_hooks(
                        session, Finished(request_id, found.owner, found.kind, model_id, found.seq_id), value
                    )
        finally:
            self._wake(request_id)
            if model_id is not None:
                self._wake(_completions_key(model_id))

    def _run_hooks(self, session: Session, finished: Finished, value: Any) -> None:
        for hook in self.on_resolved:
            try:
                hook(session, finished, value)
            except Exception:  # a hook never fails the request it watches
                log.exception("resolve hook %r failed for %s", hook, finished.request_id)

    def _wake(self, key: str) -> None:
        self.notifier.notify(key)

    # -- waiting (event loop) ---------------------------------------------------------------

    def get(self, request_id: str) -> RequestRow | None:
        with self._db.session() as session:
            row: RequestRow | None = session.get(RequestRow, request_id)
            return row

    def stored_result(self, row: RequestRow) -> StoredResult:
        """The result of a finished (``done``) request, as stored."""
        if row.result is not None:
            return StoredResult(row.result.encode())
        with self._db.session() as session:
            binary = session.get(RequestResultRow, row.id)
            if binary is None:
                return StoredResult(b"{}")
            return StoredResult(binary.body, binary.message, tuple(binary.sequence_ids or ()))

    async def wait(self, request_id: str, timeout: float) -> RequestRow | None:
        """The request's row once it is finished, or ``None`` after ``timeout`` seconds.

        Also ``None`` if the request does not exist (the caller checks first).
        """

        def finished() -> RequestRow | None:
            row = self.get(request_id)
            return row if row is None or row.status != "pending" else None

        row = await self._wait_for(request_id, finished, timeout)
        return row if row is not None else None

    async def completions(
        self, owner: str, sampler_id: str, clone_id: int, after: int, timeout: float
    ) -> tuple[list[Completion], int]:
        """Sampling requests of ``sampler_id`` (its clone ``clone_id``: ``seq_id // 10**9``)
        finished after cursor ``after``, in finishing order, and the new cursor; waits up to
        ``timeout`` seconds for the first one."""

        def query() -> list[Completion] | None:
            lo, hi = clone_id * CLONE_SEQ_BLOCK, (clone_id + 1) * CLONE_SEQ_BLOCK
            with self._db.session() as session:
                rows = session.execute(
                    sa.select(RequestRow.id, RequestRow.status, RequestRow.completion_seq, RequestResultRow.body)
                    .outerjoin(RequestResultRow, RequestResultRow.request_id == RequestRow.id)
                    .where(
                        RequestRow.model_id == sampler_id,
                        RequestRow.owner == owner,
                        RequestRow.kind == "sample",
                        RequestRow.completion_seq > after,
                        RequestRow.seq_id >= lo,
                        RequestRow.seq_id < hi,
                    )
                    .order_by(RequestRow.completion_seq)
                ).all()
            found = [
                Completion(request_id, status, int(seq), None if body is None else len(body))
                for request_id, status, seq, body in rows
                if seq is not None  # never: the query asks for seq_id >= lo
            ]
            return found or None

        found = await self._wait_for(_completions_key(sampler_id), query, timeout)
        if not found:
            return [], after
        return found, found[-1].cursor

    async def _wait_for(self, key: str, check: Callable[[], T | None], timeout: float) -> T | None:
        """``check()`` (a database query, run off the event loop) once it returns something,
        re-run whenever ``key`` is notified; ``None`` after ``timeout`` seconds."""
        return await self.notifier.wait_for(key, lambda: asyncio.to_thread(check), timeout)

    # -- maintenance ------------------------------------------------------------------------

    def fail_pending_after_restart(self) -> int:
        """Pending rows left by a previous process can never finish: fail them."""
        with self._db.session() as session:
            result = session.execute(
                sa.update(RequestRow)
                .where(RequestRow.status == "pending")
                .values(
                    status="failed",
                    error="the server restarted before this request finished; submit it again",
                    category="server",
                    finished_at=utcnow(),
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def purge_finished_before(self, cutoff: Any) -> int:
        finished = sa.and_(RequestRow.status != "pending", RequestRow.finished_at < cutoff)
        with self._db.session() as session:
            purged = sa.select(RequestRow.id).where(finished)
            session.execute(sa.delete(RequestResultRow).where(RequestResultRow.request_id.in_(purged)))
            result = session.execute(sa.delete(RequestRow).where(finished))
            return int(getattr(result, "rowcount", 0) or 0)


def _binary(result: Any) -> RequestResultRow | None:
    """The stored form of a training or sampling result (``None`` for any other result)."""
    if isinstance(result, wire.TrainResult):
        return RequestResultRow(message=TRAIN_MESSAGE, body=codec.encode_train_result(result))
    if isinstance(result, wire.SampleResult):
        ids = [seq.sequence_id or "" for seq in result.sequences]
        return RequestResultRow(
            message=SAMPLE_MESSAGE,
            body=codec.encode_sample_result(result),
            sequence_ids=ids if any(ids) else None,
        )
    return None


def _json_text(result: Any) -> str:
    if isinstance(result, pydantic.BaseModel):
        return result.model_dump_json()
    return json.dumps(result, separators=(",", ":"))


def render(
    row: RequestRow | None, request_id: str, queue_state: tuple[str, str] | None = None
) -> tuple[int, dict[str, Any] | None]:
    """The ``retrieve_future`` answer for a request row: ``(status, body)``.

    Not finished yet → 408 with a ``TryAgainResponse`` (``queue_state`` ``active``, or
    the ``(state, reason)`` the request waits for, e.g. ``paused_rate_limit`` while its
    tenant is over its tokens per minute; every client re-polls a 408 at once); failed →
    200 with ``error`` and ``category`` (the only answer that carries an ``error`` key);
    done → 200 and ``None``: the result is read with :meth:`FutureHub.stored_result`.
    """
    if row is None or row.status == "pending":
        state, reason = queue_state if queue_state is not None else ("active", QUEUE_STATE_REASON)
        return 408, {
            "type": "try_again",
            "request_id": request_id,
            "queue_state": state,
            "queue_state_reason": reason,
        }
    if row.status == "done":
        return 200, None
    return 200, {"error": row.error or "the request failed", "category": row.category or "unknown"}
