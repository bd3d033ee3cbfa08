"""The SDK's and CLI's environment variables: the only module that reads them.

One function per setting, read at call time (so a variable set after ``import tinker``
still counts, as in the official SDK). A test (tests/sdk/test_env.py) checks that no
other module under ``src/tinker/`` reads ``os.environ``; the one exception is
``COLUMNS`` in ``cli/_output.py``, the terminal's width, which belongs to the
terminal rather than to Tinker (rich reads it too).

==================================  ==========================  ===========================================
Variable                            Default                     Meaning
==================================  ==========================  ===========================================
``TINKER_API_KEY``                  unset                       API key (SDK: an empty value is a key;
                                                                CLI: an empty value counts as unset)
``TINKER_BASE_URL``                 unset                       server URL (empty counts as unset)
``TINKER_TAGS``                     unset                       comma-separated session tags
``TINKER_TELEMETRY``                on                          1/true/yes/on (any case) keeps it on;
                                                                any other value, even empty, turns it off
``TINKER_LOG``                      unset                       ``debug`` or ``info`` (any case) turns on
                                                                logging at that level; else ignored
``TINKER_FEATURE_GATES``            ``async_sampling``          comma-separated sampling feature gates
``TINKER_CACHE_DIR``                ``~/.cache/tinker``         tokenizer cache root (empty: the default)
``TINKER_DEBUG``                    off                         CLI: 1/true/yes/on shows tracebacks
``CLOUDFLARE_ACCESS_CLIENT_ID``     unset                       sent as the ``CF-Access-Client-Id`` header
``CLOUDFLARE_ACCESS_CLIENT_SECRET`` unset                       sent as ``CF-Access-Client-Secret``
==================================  ==========================  ===========================================
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = [
    "api_key",
    "base_url",
    "cache_dir",
    "cloudflare_access_client_id",
    "cloudflare_access_client_secret",
    "debug",
    "feature_gates",
    "log_level",
    "tags",
    "telemetry",
]

_TRUTHY = frozenset({"1", "true", "yes", "on"})
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}


def _flag(name: str, default: bool) -> bool:
    """A boolean: ``default`` when unset, else true only for 1/true/yes/on (stripped, any case)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in _TRUTHY


def api_key() -> str | None:
    """``TINKER_API_KEY`` as set (``""`` included), ``None`` when unset.

    The SDK sends an empty key as it is (and as the ``X-API-Key`` header, which wins
    over the ``api_key`` argument); the CLI treats an empty one as unset.
    """
    return os.environ.get("TINKER_API_KEY")


def base_url() -> str | None:
    """``TINKER_BASE_URL``; ``None`` when unset or empty (the caller's default applies)."""
    return os.environ.get("TINKER_BASE_URL") or None


def tags() -> list[str]:
    """``TINKER_TAGS``: comma-separated tags for a new session, deduplicated and sorted.

    Unset: ``[]``. A set value is split as it is, so an empty one gives ``[""]``.
    """
    raw = os.environ.get("TINKER_TAGS")
    if raw is None:
        return []
    return sorted(set(raw.split(",")))


def telemetry() -> bool:
    """``TINKER_TELEMETRY``: on when unset; any value but 1/true/yes/on turns it off."""
    return _flag("TINKER_TELEMETRY", True)


def log_level() -> int | None:
    """``TINKER_LOG``: ``logging.DEBUG`` for ``debug``, ``logging.INFO`` for ``info`` (any case), else ``None``."""
    return _LOG_LEVELS.get(os.environ.get("TINKER_LOG", "").lower())


def feature_gates() -> set[str]:
    """``TINKER_FEATURE_GATES``: comma-separated gates; ``{"async_sampling"}`` when unset."""
    return set(os.environ.get("TINKER_FEATURE_GATES", "async_sampling").split(","))


def cache_dir() -> Path:
    """``TINKER_CACHE_DIR``, else ``~/.cache/tinker`` (also when empty)."""
    return Path(os.environ.get("TINKER_CACHE_DIR") or Path.home() / ".cache" / "tinker")


def debug() -> bool:
    """``TINKER_DEBUG`` (CLI): tracebacks on errors for 1/true/yes/on; off when unset."""
    return _flag("TINKER_DEBUG", False)


def cloudflare_access_client_id() -> str | None:
    """``CLOUDFLARE_ACCESS_CLIENT_ID`` as set (``""`` included), ``None`` when unset."""
    return os.environ.get("CLOUDFLARE_ACCESS_CLIENT_ID")


def cloudflare_access_client_secret() -> str | None:
    """``CLOUDFLARE_ACCESS_CLIENT_SECRET`` as set (``""`` included), ``None`` when unset."""
    return os.environ.get("CLOUDFLARE_ACCESS_CLIENT_SECRET")
