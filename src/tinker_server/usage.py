"""Usage accounting per tenant: tokens trained, tokens sampled, checkpoint storage.

:meth:`UsageRecorder.record` is a :data:`~tinker_server.futures.ResolveHook`: inside the
transaction that stores a successful result, it adds the result's tokens to the owner's
:class:`~tinker_server.db.UsageRow` (one row update per finished request, in a savepoint
so a failure here never loses the result):

* ``forward_backward``: the input tokens of every datum (what the engine trained on);
  ``forward`` (no backward) is not training and is not counted;
* ``sample``: the tokens generated, over all sequences.

Checkpoint storage is not a counter: it is the sum of ``size_bytes`` over the owner's
checkpoint rows, read when asked, so saves, deletes and expiries are always reflected.
The counters are what the server did for the tenant since its first request; the
OpenAI-compatible endpoints' requests (no futures) are counted by :func:`add_sampled` as
each prompt's samples finish.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import wire
from .db import ApiKeyRow, CheckpointRow, Database, UsageRow, as_utc, utcnow
from .futures import Finished

__all__ = ["Usage", "UsageRecorder", "add_sampled", "read_usage", "storage_bytes", "trained_tokens"]

log = logging.getLogger(__name__)


def trained_tokens(result: wire.TrainResult) -> int:
    """Tokens of a training result: the length of each datum's per-token output."""
    total = 0
    for outputs in result.loss_fn_outputs:
        array = outputs.get("logprobs")
        if array is None and outputs:
            array = next(iter(outputs.values()))
        shape = getattr(array, "shape", None)
        total += int(shape[0]) if shape else 0
    return total


class UsageRecorder:
    """The resolve hook that keeps :class:`~tinker_server.db.UsageRow` counters."""

    def record(self, session: Session, finished: Finished, result: Any) -> None:
        if finished.kind == "forward_backward" and isinstance(result, wire.TrainResult):
            train, sampled, is_train = trained_tokens(result), 0, True
        elif finished.kind == "sample" and isinstance(result, wire.SampleResult):
            train, sampled, is_train = 0, sum(int(seq.tokens.shape[0]) for seq in result.sequences), False
        else:
            return
        with session.begin_nested():
            _add(session, finished.owner, train, sampled, is_train=is_train)


def add_sampled(db: Database, owner: str, tokens: int) -> None:
    """Count one sampling request that has no future (the OpenAI-compatible endpoints)."""
    with db.session() as session:
        _add(session, owner, 0, tokens, is_train=False)


def _add(session: Session, owner: str, train: int, sampled: int, *, is_train: bool) -> None:
    now = utcnow()
    values = {
        "train_requests": UsageRow.train_requests + int(is_train),
        "train_tokens": UsageRow.train_tokens + train,
        "sample_requests": UsageRow.sample_requests + int(not is_train),
        "sampled_tokens": UsageRow.sampled_tokens + sampled,
        "last_time": now,
    }
    update = sa.update(UsageRow).where(UsageRow.owner == owner).values(**values)
    if int(getattr(session.execute(update), "rowcount", 0) or 0):
        return
    try:
        with session.begin_nested():
            session.execute(
                sa.insert(UsageRow).values(
                    owner=owner,
                    train_requests=int(is_train),
                    train_tokens=train,
                    sample_requests=int(not is_train),
                    sampled_tokens=sampled,
                    first_time=now,
                    last_time=now,
                )
            )
    except sa.exc.IntegrityError:  # another process added the row first (PostgreSQL)
        session.execute(update)


def storage_bytes(session: Session, owner: str) -> int:
    """Bytes of the owner's checkpoints on disk, as their rows record them."""
    return int(
        session.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(CheckpointRow.size_bytes), 0)).where(CheckpointRow.owner == owner)
        )
        or 0
    )


@dataclass(frozen=True)
class Usage:
    """One tenant's usage; ``key_id`` and ``name`` when the owner is an issued key's."""

    owner: str
    key_id: int | None
    name: str | None
    revoked: bool
    train_requests: int
    train_tokens: int
    sample_requests: int
    sampled_tokens: int
    checkpoints: int
    checkpoint_bytes: int
    first_time: dt.datetime | None
    last_time: dt.datetime | None


def read_usage(db: Database, owners: list[str] | None = None) -> list[Usage]:
    """Usage of ``owners`` (every tenant with a key, counters or checkpoints when
    ``None``), issued keys first in id order, then open-mode owners by id."""
    with db.session() as s:
        keys = {row.owner: row for row in s.scalars(sa.select(ApiKeyRow))}
        counters = {row.owner: row for row in s.scalars(_where_owner(sa.select(UsageRow), UsageRow.owner, owners))}
        storage = {
            owner: (int(count), int(total or 0))
            for owner, count, total in s.execute(
                _where_owner(
                    sa.select(CheckpointRow.owner, sa.func.count(), sa.func.sum(CheckpointRow.size_bytes)),
                    CheckpointRow.owner,
                    owners,
                ).group_by(CheckpointRow.owner)
            )
        }
    every = owners if owners is not None else sorted({*keys, *counters, *storage})
    out: list[Usage] = []
    for owner in every:
        key, row = keys.get(owner), counters.get(owner)
        count, total = storage.get(owner, (0, 0))
        out.append(
            Usage(
                owner=owner,
                key_id=key.id if key is not None else None,
                name=key.name if key is not None else None,
                revoked=key is not None and key.revoked_at is not None,
                train_requests=row.train_requests if row is not None else 0,
                train_tokens=row.train_tokens if row is not None else 0,
                sample_requests=row.sample_requests if row is not None else 0,
                sampled_tokens=row.sampled_tokens if row is not None else 0,
                checkpoints=count,
                checkpoint_bytes=total,
                first_time=as_utc(row.first_time) if row is not None else None,
                last_time=as_utc(row.last_time) if row is not None else None,
            )
        )
    out.sort(key=lambda u: (u.key_id is None, u.key_id or 0, u.owner))
    return out


def _where_owner(query: Any, column: Any, owners: list[str] | None) -> Any:
    return query if owners is None else query.where(column.in_(owners))
