"""``tinker-server admin``: the operator's commands, run on the server's host against its
home (the database under ``--home``, or ``TINKER_DATABASE_URL``); no server needs to run.

    tinker-server admin key create NAME [--max-training-runs N] [--max-lora-rank N]
        [--base-model M ...] [--max-queued-requests N] [--tokens-per-minute N]
        [--max-checkpoint-bytes N] [--weight W]
    tinker-server admin key quota NAME_OR_ID [the same limits as create]
    tinker-server admin key list [--json]
    tinker-server admin key revoke NAME_OR_ID
    tinker-server admin usage [--key NAME_OR_ID] [--json]

A running server sees a new or revoked key on its next request, and new limits within a
few seconds.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .auth import IssuedKey, KeyStore
    from .db import Database
    from .tenants import Quota
    from .usage import Usage

__all__ = ["admin"]

_HOME = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=None,
    help="The server's home (default ~/.tinker; TINKER_HOME).",
)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


class ByteSize(click.ParamType):
    """A byte count: ``1000000``, ``500M``, ``10GB``, ``2GiB``."""

    name = "bytes"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _SIZE.match(str(value))
        if match is None:
            self.fail(f"{value!r} is not a size (e.g. 500000000, 500M, 10GB, 2GiB)", param, ctx)
        number, unit = float(match.group(1)), (match.group(2) or "").lower()
        power = "kmgt".index(unit[0]) + 1 if unit and unit[0] in "kmgt" else 0
        size = int(number * (1024 if "i" in unit else 1000) ** power)
        if size >= 2**63:
            self.fail(f"{value!r} is too large", param, ctx)
        return size


@contextmanager
def _database(home: pathlib.Path | None) -> Iterator[Database]:
    import pydantic

    from .db import Database
    from .settings import Settings

    try:
        overrides: dict[str, Any] = {"home": home} if home is not None else {}
        settings = Settings(**overrides)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"invalid settings: {problems}") from None
    if settings.database_url is None:
        settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    try:
        db.create_tables()  # a home no server has used yet, or one made by an older version
        yield db
    finally:
        db.dispose()


@contextmanager
def _keys(home: pathlib.Path | None) -> Iterator[KeyStore]:
    from .auth import KeyStore
    from .errors import ServiceError

    with _database(home) as db:
        try:
            yield KeyStore(db)
        except ServiceError as exc:
            raise click.ClickException(exc.message) from None


@click.group("admin", context_settings={"help_option_names": ["-h", "--help"]})
def admin() -> None:
    """Operator commands: API keys and usage (run on the server's host)."""


@admin.group("key")
def key() -> None:
    """Issue, list and revoke API keys."""


def _quota_options(command: Callable[..., None]) -> Callable[..., None]:
    """The limits of a key, as options (``key create`` and ``key quota``)."""
    options = [
        click.option("--max-training-runs", type=click.IntRange(min=1), help="Training runs loaded at once."),
        click.option("--max-lora-rank", type=click.IntRange(min=1), help="Largest LoRA rank."),
        click.option(
            "--base-model", "base_models", multiple=True, help="A base model the key may use; repeat for several."
        ),
        click.option("--max-queued-requests", type=click.IntRange(min=1), help="Requests queued or running at once."),
        click.option("--tokens-per-minute", type=click.IntRange(min=1), help="Trained plus sampled tokens per minute."),
        click.option("--max-checkpoint-bytes", type=ByteSize(), help="Storage of its checkpoints (e.g. 10GB)."),
        click.option(
            "--weight", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="Fair share."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _quota(
    max_training_runs: int | None,
    max_lora_rank: int | None,
    base_models: tuple[str, ...],
    max_queued_requests: int | None,
    tokens_per_minute: int | None,
    max_checkpoint_bytes: int | None,
    weight: float,
) -> Quota:
    from .tenants import Quota

    return Quota(
        max_training_runs=max_training_runs,
        max_lora_rank=max_lora_rank,
        base_models=tuple(base_models) if base_models else None,
        max_queued_requests=max_queued_requests,
        tokens_per_minute=tokens_per_minute,
        max_checkpoint_bytes=max_checkpoint_bytes,
        weight=weight,
    )


@key.command("create")
@click.argument("name")
@_quota_options
@_HOME
def create(name: str, home: pathlib.Path | None, **limits: Any) -> None:
    """Issue a key named NAME and print it (only this once)."""
    quota = _quota(**limits)
    with _keys(home) as keys:
        created = keys.create(name, quota)
    issued = created.key
    click.echo(f"Created key {issued.name!r} (id {issued.id}, tenant {issued.owner}; {_quota_text(quota)}).", err=True)
    click.echo(created.secret)
    click.echo(
        "This is the only time the key is shown: the server stores only its hash. Give it to its user "
        "(TINKER_API_KEY); a lost key cannot be recovered, only revoked and replaced.",
        err=True,
    )


@key.command("quota")
@click.argument("name_or_id")
@_quota_options
@_HOME
def set_quota(name_or_id: str, home: pathlib.Path | None, **limits: Any) -> None:
    """Replace the limits of a key (by name or id); options left out mean no limit. A running
    server applies them within a few seconds."""
    quota = _quota(**limits)
    with _keys(home) as keys:
        updated = keys.set_quota(name_or_id, quota)
    click.echo(f"Key {updated.name!r} (id {updated.id}): {_quota_text(updated.quota)}.")


@key.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key.")
@_HOME
def list_keys(as_json: bool, home: pathlib.Path | None) -> None:
    """The issued keys (never the keys themselves)."""
    with _keys(home) as keys:
        issued = keys.list()
    if as_json:
        for item in issued:
            click.echo(json.dumps(_key_json(item)))
        return
    if not issued:
        click.echo("No keys issued: the server accepts any key on a loopback address (open mode).")
        return
    rows = [
        [
            str(item.id),
            item.name,
            f"{item.created_at:%Y-%m-%d %H:%M}",
            f"{item.revoked_at:%Y-%m-%d %H:%M}" if item.revoked_at is not None else "-",
            item.owner,
            _quota_text(item.quota),
        ]
        for item in issued
    ]
    _table(["ID", "NAME", "CREATED (UTC)", "REVOKED", "TENANT", "QUOTA"], rows)


@key.command("revoke")
@click.argument("name_or_id")
@_HOME
def revoke(name_or_id: str, home: pathlib.Path | None) -> None:
    """Revoke a key by name or id; it fails on its next request."""
    with _keys(home) as keys:
        before = keys.get(name_or_id)
        after = keys.revoke(name_or_id)
    if before.revoked_at is not None:
        click.echo(f"Key {after.name!r} (id {after.id}) was already revoked on {after.revoked_at:%Y-%m-%d %H:%M} UTC.")
    else:
        click.echo(f"Revoked key {after.name!r} (id {after.id}); its next request gets 401.")


@admin.command("usage")
@click.option("--key", "key_ref", default=None, help="Only this key (name or id).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per tenant.")
@_HOME
def usage(key_ref: str | None, as_json: bool, home: pathlib.Path | None) -> None:
    """Tokens trained and sampled and checkpoint storage, per key (and per open-mode tenant)."""
    from .usage import read_usage

    with _keys(home) as keys:
        owners = [keys.get(key_ref).owner] if key_ref is not None else None
        found = read_usage(keys.db, owners)
    if as_json:
        for item in found:
            click.echo(json.dumps(_usage_json(item)))
        return
    if not found:
        click.echo("No usage recorded yet.")
        return
    rows = [
        [
            str(item.key_id) if item.key_id is not None else "-",
            (item.name or "(open mode)") + (" (revoked)" if item.revoked else ""),
            item.owner,
            f"{item.train_tokens:,}",
            f"{item.train_requests:,}",
            f"{item.sampled_tokens:,}",
            f"{item.sample_requests:,}",
            f"{item.checkpoint_bytes:,}",
            f"{item.checkpoints:,}",
            f"{item.last_time:%Y-%m-%d %H:%M}" if item.last_time is not None else "-",
        ]
        for item in found
    ]
    _table(
        [
            "ID",
            "NAME",
            "TENANT",
            "TRAINED TOKENS",
            "TRAIN REQS",
            "SAMPLED TOKENS",
            "SAMPLE REQS",
            "STORAGE BYTES",
            "CHECKPOINTS",
            "LAST (UTC)",
        ],
        rows,
    )


def _quota_text(quota: Quota) -> str:
    parts = []
    if quota.max_training_runs is not None:
        parts.append(f"runs<={quota.max_training_runs}")
    if quota.max_lora_rank is not None:
        parts.append(f"rank<={quota.max_lora_rank}")
    if quota.base_models is not None:
        parts.append("models=" + ",".join(quota.base_models))
    if quota.max_queued_requests is not None:
        parts.append(f"queued<={quota.max_queued_requests}")
    if quota.tokens_per_minute is not None:
        parts.append(f"tokens/min<={quota.tokens_per_minute}")
    if quota.max_checkpoint_bytes is not None:
        parts.append(f"storage<={quota.max_checkpoint_bytes}B")
    if quota.weight != 1.0:
        parts.append(f"weight={quota.weight:g}")
    return " ".join(parts) if parts else "no limits"


def _key_json(item: IssuedKey) -> dict[str, Any]:
    return {
        "id": item.id,
        "name": item.name,
        "tenant": item.owner,
        "created_at": item.created_at.isoformat(),
        "revoked_at": item.revoked_at.isoformat() if item.revoked_at is not None else None,
        "quota": item.quota.as_dict(),
    }


def _usage_json(item: Usage) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(item)
    for name in ("first_time", "last_time"):
        out[name] = out[name].isoformat() if out[name] is not None else None
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for line in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
