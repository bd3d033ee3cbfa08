"""Metadata tables (SQLAlchemy 2) and the database handle.

The same code runs on SQLite (the embedded default, a file under ``TINKER_HOME``)
and PostgreSQL: only the URL changes. Tables are created at startup, and columns
added since an older version are added to its existing tables (``add_missing_columns``).

Ids are the public ones: a training run's id is its model id
``<session_id>:train:<model_seq_id>``, a sampler's is
``<session_id>:sample:<sampling_session_seq_id>``, a checkpoint is keyed by
``(run_id, checkpoint_id)`` with ``checkpoint_id`` = ``weights/<name>``,
``sampler_weights/<name>`` or ``external_weights/<name>``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

log = logging.getLogger(__name__)

__all__ = [
    "ApiKeyRow",
    "Base",
    "add_missing_columns",
    "CheckpointRow",
    "Database",
    "RequestResultRow",
    "RequestRow",
    "RunMetricRow",
    "SamplerActivityRow",
    "SamplerRow",
    "SessionRow",
    "TrainingRunRow",
    "UsageRow",
    "as_utc",
    "utcnow",
]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands datetimes back without a zone; they were stored in UTC."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: sa.DateTime(timezone=True),
        dict[str, Any]: sa.JSON,
        list[str]: sa.JSON,
    }


class SessionRow(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(64), index=True)
    tags: Mapped[list[str]]
    user_metadata: Mapped[dict[str, Any] | None]
    sdk_version: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime]
    last_heartbeat: Mapped[dt.datetime]
    expired: Mapped[bool] = mapped_column(default=False)
    display_name: Mapped[str | None] = mapped_column(sa.Text, default=None)
    project_id: Mapped[str | None] = mapped_column(sa.String(256), default=None)
    # Set by POST /sessions/{id}/finish ("success", "errored", "interrupted"); later heartbeats get 410.
    finished_reason: Mapped[str | None] = mapped_column(sa.String(32), default=None)


class TrainingRunRow(Base):
    __tablename__ = "training_runs"

    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(64), index=True)
    session_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    model_seq_id: Mapped[int]
    base_model: Mapped[str] = mapped_column(sa.String(256))
    lora_rank: Mapped[int]
    lora_config: Mapped[dict[str, Any]]
    user_metadata: Mapped[dict[str, Any] | None]
    created_at: Mapped[dt.datetime]
    last_request_time: Mapped[dt.datetime]
    corrupted: Mapped[bool] = mapped_column(default=False)
    # {"type": "adamw"} unless the run was created with another optimizer family.
    optimizer_config: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Highest training seq_id accepted so far (0 = none).
    last_seq_id: Mapped[int] = mapped_column(default=0)
    # Why the adapter is no longer in memory (None while it is usable).
    unloaded_reason: Mapped[str | None] = mapped_column(sa.Text, default=None)


class SamplerRow(Base):
    __tablename__ = "samplers"

    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(64), index=True)
    session_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    base_model: Mapped[str] = mapped_column(sa.String(256))
    # tinker:// path the weights came from; None for base-model and ephemeral samplers.
    model_path: Mapped[str | None] = mapped_column(sa.Text, default=None)
    # True when an adapter is held in memory under this sampler's id.
    has_adapter: Mapped[bool] = mapped_column(default=False)
    source_run_id: Mapped[str | None] = mapped_column(sa.String(128), default=None)
    created_at: Mapped[dt.datetime]
    unloaded_reason: Mapped[str | None] = mapped_column(sa.Text, default=None)


class RequestRow(Base):
    """A future: one submitted training or sampling request and its outcome."""

    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(64))
    kind: Mapped[str] = mapped_column(sa.String(32))
    model_id: Mapped[str | None] = mapped_column(sa.String(128), index=True, default=None)
    # 64-bit: unpickled sampling clients number their requests from clone_id * 10**9.
    seq_id: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)
    # Identity of a retried submit: ``<model_id>#<seq_id>``, ``<run_id>#create`` ...
    dedup_key: Mapped[str | None] = mapped_column(sa.String(200), unique=True, default=None)
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")  # pending|done|failed
    result: Mapped[str | None] = mapped_column(sa.Text, default=None)  # JSON text of the result
    error: Mapped[str | None] = mapped_column(sa.Text, default=None)
    category: Mapped[str | None] = mapped_column(sa.String(16), default=None)
    created_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None, index=True)
    # Order in which requests finished (1, 2, ...): the cursor of POST /retrieve_futures.
    completion_seq: Mapped[int | None] = mapped_column(sa.BigInteger, default=None, index=True)


class RequestResultRow(Base):
    """A finished request's result in binary form (training and sampling results): the
    protobuf message ``message`` of ``wire/tinker_wire.proto``, serialized. Its request
    row then has no ``result`` text. A table of its own, so the small request rows stay
    small (dedup and purge read them) and an older database gains it at startup."""

    __tablename__ = "request_results"

    request_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("requests.id"), primary_key=True)
    message: Mapped[str] = mapped_column(sa.String(64))
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    # What the message does not hold: a sample's sequence ids, in sequence order.
    sequence_ids: Mapped[list[str] | None] = mapped_column(default=None)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (sa.UniqueConstraint("run_id", "checkpoint_id"),)

    pk: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    owner: Mapped[str] = mapped_column(sa.String(64), index=True)
    checkpoint_id: Mapped[str] = mapped_column(sa.String(300))
    checkpoint_type: Mapped[str] = mapped_column(sa.String(16))  # training|sampler|external
    time: Mapped[dt.datetime]
    tinker_path: Mapped[str] = mapped_column(sa.Text)
    size_bytes: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)
    public: Mapped[bool] = mapped_column(default=False)
    # From the save's ttl_seconds (or PUT .../ttl); None = kept until deleted. Past it the
    # checkpoint is gone for every reader, and the sweeper removes row and folder.
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None, index=True)
    # The save's user_metadata (0.27+ clients), shown in listings.
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class RunMetricRow(Base):
    """One metric of one finished ``forward_backward``, ``forward`` or ``optim_step``
    (``run_metrics.py`` writes them in the transaction that resolves the future).
    ``step``: the optimizer step the request belongs to (1 + optim_steps before it)."""

    __tablename__ = "run_metrics"
    __table_args__ = (
        sa.Index("ix_run_metrics_run_step", "run_id", "step"),
        # Covers the console's reads: a run's series in (kind, name, step) order from the index alone.
        sa.Index("ix_run_metrics_series", "run_id", "kind", "name", "step", "seq_id", "value"),
    )

    pk: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    run_id: Mapped[str] = mapped_column(sa.String(128))
    step: Mapped[int] = mapped_column(sa.BigInteger)
    seq_id: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)
    time: Mapped[dt.datetime]
    kind: Mapped[str] = mapped_column(sa.String(32))  # forward_backward|forward|optim_step
    name: Mapped[str] = mapped_column(sa.String(200))  # "loss:sum", "step:max", ...
    value: Mapped[float | None] = mapped_column(sa.Double, default=None)  # None: NaN


class SamplerActivityRow(Base):
    """Sampling done by one sampler: counters updated as its requests finish."""

    __tablename__ = "sampler_activity"

    sampler_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(64), index=True)
    # The run whose weights it samples (ephemeral samplers and checkpoints of a run); None for base models.
    run_id: Mapped[str | None] = mapped_column(sa.String(128), index=True, default=None)
    requests: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    sequences: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)  # sampled tokens
    first_time: Mapped[dt.datetime]
    last_time: Mapped[dt.datetime]


class ApiKeyRow(Base):
    """An API key issued by ``tinker-server admin key create`` (``auth.py``). The key itself
    is never stored, only its SHA-256; ``owner`` is the tenant id its requests act as
    (``key-<hex>``, never one an open-mode key maps to). Rows are never deleted: a revoked
    key keeps its row, so its tenant's data and usage stay attributed."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(128), index=True)  # unique among keys not revoked
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    owner: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # The key's limits (tenants.Quota); None: no limit.
    max_training_runs: Mapped[int | None] = mapped_column(default=None)
    max_lora_rank: Mapped[int | None] = mapped_column(default=None)
    base_models: Mapped[list[str] | None] = mapped_column(default=None)
    max_queued_requests: Mapped[int | None] = mapped_column(default=None)
    tokens_per_minute: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)
    max_checkpoint_bytes: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)
    weight: Mapped[float] = mapped_column(sa.Double, default=1.0)


class UsageRow(Base):
    """What one tenant (an issued key's owner, or an open-mode key's) has used: counters
    updated by ``usage.py`` in the transaction that stores each successful result.
    Checkpoint storage is not counted here; it is the sum of the tenant's checkpoint rows."""

    __tablename__ = "usage"

    owner: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    train_requests: Mapped[int] = mapped_column(sa.BigInteger, default=0)  # forward_backward results
    train_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    sample_requests: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    sampled_tokens: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    first_time: Mapped[dt.datetime]
    last_time: Mapped[dt.datetime]


class Database:
    """The SQLAlchemy engine and session factory for one database URL."""

    def __init__(self, url: str) -> None:
        kwargs: dict[str, Any] = {}
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = sa.create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_tables(self) -> None:
        """Create missing tables, then add columns that a database made by an older
        version lacks (see :func:`add_missing_columns`)."""
        Base.metadata.create_all(self.engine)
        added = add_missing_columns(self.engine, Base.metadata)
        if added:
            log.info("database upgraded: added column(s) %s", ", ".join(added))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def add_missing_columns(engine: sa.Engine, metadata: sa.MetaData) -> list[str]:
    """Bring existing tables up to the current models: ``ALTER TABLE … ADD COLUMN`` for
    every column a model has and its table lacks, plus the indexes on those columns.

    This is the whole migration story: new columns must be nullable or have a scalar
    default (existing rows get it). Returns the added ``table.column`` names.
    """
    added: list[str] = []
    inspector = sa.inspect(engine)
    tables = set(inspector.get_table_names())
    for table in metadata.sorted_tables:
        if table.name not in tables:
            continue
        present = {col["name"] for col in inspector.get_columns(table.name)}
        missing = [col for col in table.columns if col.name not in present]
        for column in missing:
            ddl = _add_column_sql(engine.dialect, table, column)
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(ddl)
            except sa.exc.DBAPIError:
                # Another server starting on the same database may have added it first.
                if column.name not in {col["name"] for col in sa.inspect(engine).get_columns(table.name)}:
                    raise
            added.append(f"{table.name}.{column.name}")
        names = {col.name for col in missing}
        for index in table.indexes:
            if names & {col.name for col in index.columns}:
                index.create(engine, checkfirst=True)
    return added


def _add_column_sql(dialect: sa.Dialect, table: sa.Table, column: sa.Column[Any]) -> str:
    quote = dialect.identifier_preparer
    column_type = column.type.compile(dialect=dialect)
    sql = f"ALTER TABLE {quote.format_table(table)} ADD COLUMN {quote.format_column(column)} {column_type}"
    default = column.default
    scalar = default is not None and getattr(default, "is_scalar", False) and getattr(default, "arg", None) is not None
    if scalar:
        literal = sa.literal(default.arg, type_=column.type)  # type: ignore[union-attr]
        sql += " DEFAULT " + str(literal.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    if not column.nullable:
        if not scalar:
            raise RuntimeError(
                f"cannot upgrade the database: new column {table.name}.{column.name} is NOT NULL without a "
                "default; give it a default or make it nullable"
            )
        sql += " NOT NULL"
    return sql


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
