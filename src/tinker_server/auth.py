"""API keys and the two modes of authentication.

**Open mode** (zero setup): the server listens on a loopback address and no key has been
issued. Any non-empty key is accepted; its owner (tenant id) is ``user-`` + the first 16
hex digits of its SHA-256, so what one key creates is invisible to another. The key is
never stored.

**Issued mode**: as soon as one key has been issued (``tinker-server admin key create``,
run on the server's host against its home), or whenever the server listens on any other
address, only issued keys that are not revoked are accepted (401 with a sentence
otherwise). An issued key's owner is the ``key-<hex>`` id stored with it, so it never
collides with an open-mode owner. A server asked to listen on a non-loopback address
with no key issued refuses to start (:func:`check_bind`).

Keys are ``tml-`` + 43 URL-safe characters (256 random bits from :mod:`secrets`); the
database keeps only their SHA-256 (see :func:`hash_key` for why that suffices). Every
request looks its key up again, so a revocation takes effect on the next request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from . import wire
from .db import ApiKeyRow, Database, as_utc, utcnow
from .errors import InvalidRequest, NotAuthenticated, NotFound
from .tenants import KEY_OWNER_PREFIX, Quota, quota_of_row

__all__ = [
    "DEFAULT_API_KEY",
    "KEY_PREFIX",
    "Authenticator",
    "CreatedKey",
    "Identity",
    "IssuedKey",
    "KeyStore",
    "api_key_info",
    "check_bind",
    "hash_key",
    "is_loopback",
    "owner_for_key",
]

# The key the README and examples use. Official clients since 0.8 refuse keys that do not
# start with "tml-" (before sending anything), so every key we show has that prefix.
DEFAULT_API_KEY = "tml-local"
KEY_PREFIX = "tml-"
OPEN_OWNER_PREFIX = "user-"
MAX_NAME_LENGTH = 128


def owner_for_key(api_key: str | None) -> str:
    """The open-mode owner of a key: ``user-`` + a SHA-256 prefix of it."""
    if api_key is None or not api_key.strip():
        raise NotAuthenticated("missing API key: send it in the X-API-Key header (set TINKER_API_KEY)")
    return OPEN_OWNER_PREFIX + hashlib.sha256(api_key.strip().encode("utf-8")).hexdigest()[:16]


def hash_key(api_key: str) -> str:
    """What the database stores of an issued key: its SHA-256, hex.

    A plain fast hash is enough here (no salt, no slow KDF): issued keys carry 256 random
    bits, so there is no dictionary to try and a stolen hash cannot be inverted by brute
    force; and a deterministic hash lets a request find its key with one indexed lookup.
    (A slow KDF protects low-entropy secrets such as passwords, which these are not.)
    """
    return hashlib.sha256(api_key.strip().encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address) is reachable only from this machine:
    ``localhost``, 127.0.0.0/8 or ``::1``. Any other name or address is not."""
    text = host.strip().strip("[]").lower()
    if text == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


# -- issued keys -------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedKey:
    """An issued key as the operator sees it (never the key itself)."""

    id: int
    name: str
    owner: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    quota: Quota

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @staticmethod
    def of(row: ApiKeyRow) -> IssuedKey:
        return IssuedKey(
            id=row.id,
            name=row.name,
            owner=row.owner,
            created_at=as_utc(row.created_at),
            revoked_at=as_utc(row.revoked_at) if row.revoked_at is not None else None,
            quota=quota_of_row(row),
        )


@dataclass(frozen=True)
class CreatedKey:
    """A key just issued: ``secret`` is the key, shown once and never stored."""

    key: IssuedKey
    secret: str


class KeyStore:
    """The ``api_keys`` table: issue, list, revoke and look up keys."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, quota: Quota | None = None) -> CreatedKey:
        name = name.strip()
        if not name or len(name) > MAX_NAME_LENGTH or any(not ch.isprintable() for ch in name):
            raise InvalidRequest(f"a key's name must be 1 to {MAX_NAME_LENGTH} printable characters")
        if name.isdigit():
            raise InvalidRequest("a key's name must not be a number (numbers name keys by id)")
        quota = quota or Quota()
        _check_quota(quota)
        secret = new_key()
        with self.db.session() as s:
            taken = s.scalar(
                sa.select(ApiKeyRow.id).where(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None)).limit(1)
            )
            if taken is not None:
                raise InvalidRequest(f"a key named {name!r} exists (id {taken}); revoke it first or pick another name")
            row = ApiKeyRow(
                name=name,
                key_hash=hash_key(secret),
                owner=KEY_OWNER_PREFIX + secrets.token_hex(8),
                created_at=utcnow(),
                **quota.as_dict(),
            )
            s.add(row)
            s.flush()
            issued = IssuedKey.of(row)
        return CreatedKey(issued, secret)

    def list(self) -> list[IssuedKey]:
        with self.db.session() as s:
            return [IssuedKey.of(row) for row in s.scalars(sa.select(ApiKeyRow).order_by(ApiKeyRow.id))]

    def get(self, name_or_id: str) -> IssuedKey:
        """A key by id (digits) or by name (the key of that name not revoked, else the
        newest revoked one)."""
        with self.db.session() as s:
            return IssuedKey.of(self._find(s, name_or_id))

    def set_quota(self, name_or_id: str, quota: Quota) -> IssuedKey:
        """Replace a key's limits (the server applies them within its few-second cache)."""
        _check_quota(quota)
        with self.db.session() as s:
            row = self._find(s, name_or_id)
            for column, value in quota.as_dict().items():
                setattr(row, column, value)
            return IssuedKey.of(row)

    def revoke(self, name_or_id: str) -> IssuedKey:
        """Revoke a key (idempotent: a revoked key keeps its first revocation time)."""
        with self.db.session() as s:
            row = self._find(s, name_or_id)
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return IssuedKey.of(row)

    @staticmethod
    def _find(s: sa.orm.Session, name_or_id: str) -> ApiKeyRow:
        text = name_or_id.strip()
        row: ApiKeyRow | None = None
        if text.isdigit() and len(text) < 19:
            row = s.get(ApiKeyRow, int(text))
        else:
            row = s.scalars(
                sa.select(ApiKeyRow)
                .where(ApiKeyRow.name == text)
                .order_by(ApiKeyRow.revoked_at.is_not(None), ApiKeyRow.id.desc())
                .limit(1)
            ).first()
        if row is None:
            raise NotFound(f"no key named or numbered {text!r} (see: tinker-server admin key list)")
        return row

    def lookup(self, api_key: str) -> IssuedKey | None:
        """The issued key ``api_key`` is, revoked or not; ``None`` when it is none."""
        digest = hash_key(api_key)
        with self.db.session() as s:
            row = s.scalars(sa.select(ApiKeyRow).where(ApiKeyRow.key_hash == digest)).first()
            # The indexed lookup compares hashes of the key, which leak nothing usable about
            # it by timing; the constant-time comparison makes the match explicit anyway.
            if row is None or not hmac.compare_digest(row.key_hash, digest):
                return None
            return IssuedKey.of(row)

    def by_owner(self, owner: str) -> IssuedKey | None:
        with self.db.session() as s:
            row = s.scalars(sa.select(ApiKeyRow).where(ApiKeyRow.owner == owner)).first()
            return IssuedKey.of(row) if row is not None else None

    def any_issued(self, *, table_may_be_missing: bool = True) -> bool:
        """Whether any key was ever issued (revoked ones count: the server stays in issued
        mode). False when the table does not exist yet (a home no server has used); a
        running server, whose tables exist, skips that check (``table_may_be_missing``)
        and lets a failing query fail the request rather than fall back to open mode."""
        if table_may_be_missing and not sa.inspect(self.db.engine).has_table(ApiKeyRow.__tablename__):
            return False
        with self.db.session() as s:
            return s.scalar(sa.select(ApiKeyRow.id).limit(1)) is not None


def _check_quota(quota: Quota) -> None:
    for field in ("max_training_runs", "max_lora_rank", "max_queued_requests", "tokens_per_minute"):
        value = getattr(quota, field)
        if value is not None and not 1 <= value < 2**63:
            raise InvalidRequest(f"{field} must be a positive integer, got {value}")
    if quota.max_checkpoint_bytes is not None and not 0 <= quota.max_checkpoint_bytes < 2**63:
        raise InvalidRequest(f"max_checkpoint_bytes must be 0 or more, got {quota.max_checkpoint_bytes}")
    if quota.base_models is not None and not all(m.strip() for m in quota.base_models):
        raise InvalidRequest("base model names must be non-empty")
    if not (quota.weight > 0 and quota.weight < float("inf")):
        raise InvalidRequest(f"weight must be a positive number, got {quota.weight}")


# -- the modes ---------------------------------------------------------------------------


def check_bind(host: str, keys: KeyStore, home: object = None) -> None:
    """Refuse (``ValueError``, with a sentence) to serve on a non-loopback address while no
    key is issued: there, any key would otherwise open the server to anyone who reaches it."""
    if is_loopback(host):
        return
    try:
        if keys.any_issued():
            return
    except sa.exc.DBAPIError:  # no database yet (a home never used) or unreadable: no key to trust
        pass
    where = f" --home {home}" if home is not None else ""
    raise ValueError(
        f"refusing to listen on {host}: it is not a loopback address and no API key has been issued, so anyone "
        f"who can reach this machine could use the server. Create a key first with "
        f"`tinker-server admin key create NAME{where}` (it prints the key once), then start the server again; "
        "or listen on 127.0.0.1 for local use without keys."
    )


@dataclass(frozen=True)
class Identity:
    """Who a request is: its owner (tenant id), and the issued key when there is one."""

    owner: str
    key: IssuedKey | None = None


class Authenticator:
    """Maps a request's key to its :class:`Identity`, in the server's mode.

    ``issued_only``: the server listens on a non-loopback address, so only issued keys
    are ever accepted. Otherwise the mode is issued once any key exists in the database
    (checked on every request until one does; keys are never deleted, so from then on
    it stays issued without asking again).
    """

    def __init__(self, keys: KeyStore, *, issued_only: bool) -> None:
        self.keys = keys
        self._issued_only = issued_only
        self._seen_keys = False

    @property
    def issued_mode(self) -> bool:
        if self._issued_only or self._seen_keys:
            return True
        if self.keys.any_issued(table_may_be_missing=False):  # requests come after ensure_started
            self._seen_keys = True
            return True
        return False

    def identify(self, api_key: str | None) -> Identity:
        if api_key is None or not api_key.strip():
            raise NotAuthenticated("missing API key: send it in the X-API-Key header (set TINKER_API_KEY)")
        if not self.issued_mode:
            return Identity(owner_for_key(api_key))
        key = self.keys.lookup(api_key)
        if key is None:
            raise NotAuthenticated(
                "this API key is not one this server issued: ask the server's operator for a key "
                "(they create one with `tinker-server admin key create NAME` on the server's host)"
            )
        if key.revoked_at is not None:
            raise NotAuthenticated(
                f"this API key ({key.name!r}, id {key.id}) was revoked on {key.revoked_at:%Y-%m-%d %H:%M} UTC: "
                "ask the server's operator for a new one"
            )
        return Identity(key.owner, key)

    def owner(self, api_key: str | None) -> str:
        return self.identify(api_key).owner


def api_key_info(identity: Identity | str) -> wire.ApiKeyInfo:
    """What ``GET /auth/apikey/me`` says of a key: the issued key's name and id, or, in open
    mode (keys are not issued), the tenant the key maps to."""
    if isinstance(identity, str):
        identity = Identity(identity)
    key = identity.key
    if key is not None:
        return wire.ApiKeyInfo(
            key_id=key.id,
            name=key.name,
            note=f"issued by this server on {key.created_at:%Y-%m-%d}; tenant {key.owner}",
            details={"org_details": {"name": "local"}, "user_details": {"email": ""}, "tenant": key.owner},
        )
    owner = identity.owner
    return wire.ApiKeyInfo(
        key_id=int(owner.removeprefix(OPEN_OWNER_PREFIX), 16),
        name=owner,
        note="any non-empty key is accepted by this server; each key is its own tenant",
        details={"org_details": {"name": "local"}, "user_details": {"email": ""}},
    )
