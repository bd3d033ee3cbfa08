"""Tenants: every API key maps to a stable owner id.

In this version any non-empty key is accepted; the owner is derived from the
key, so runs, sessions and checkpoints made with one key are invisible to
another. The key itself is never stored.
"""

from __future__ import annotations

import hashlib

from .errors import NotAuthenticated

__all__ = ["owner_for_key"]


def owner_for_key(api_key: str | None) -> str:
    if api_key is None or not api_key.strip():
        raise NotAuthenticated("missing API key: send it in the X-API-Key header (set TINKER_API_KEY)")
    return "user-" + hashlib.sha256(api_key.strip().encode("utf-8")).hexdigest()[:16]
