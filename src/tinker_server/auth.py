"""Tenants: every API key maps to a stable owner id.

In this version any non-empty key is accepted; the owner is derived from the
key, so runs, sessions and checkpoints made with one key are invisible to
another. The key itself is never stored.
"""

from __future__ import annotations

import hashlib

from . import wire
from .errors import NotAuthenticated

__all__ = ["DEFAULT_API_KEY", "api_key_info", "owner_for_key"]

# The key the README and examples use. Official clients since 0.8 refuse keys that do not
# start with "tml-" (before sending anything), so every key we show has that prefix.
DEFAULT_API_KEY = "tml-local"


def owner_for_key(api_key: str | None) -> str:
    if api_key is None or not api_key.strip():
        raise NotAuthenticated("missing API key: send it in the X-API-Key header (set TINKER_API_KEY)")
    return "user-" + hashlib.sha256(api_key.strip().encode("utf-8")).hexdigest()[:16]


def api_key_info(owner: str) -> wire.ApiKeyInfo:
    """What ``GET /auth/apikey/me`` says of a key: keys are not issued in this mode, so the
    key is described by the tenant it maps to."""
    return wire.ApiKeyInfo(
        key_id=int(owner.removeprefix("user-"), 16),
        name=owner,
        note="any non-empty key is accepted by this server; each key is its own tenant",
        details={"org_details": {"name": "local"}, "user_details": {"email": ""}},
    )
