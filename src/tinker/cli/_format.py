"""Cell formats for tables: sizes, relative times, booleans (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_bool", "format_size", "format_time", "plural"]

_UNITS = ("KB", "MB", "GB", "TB", "PB")


def format_size(size: int | None) -> str:
    """``512 B``, ``1.5 KB``, ... (base 1024); ``N/A`` when unknown or negative."""
    if size is None or size < 0:
        return "N/A"
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_time(when: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``when`` was: ``just now``, ``5 minutes ago``, ... or a date."""
    if when is None:
        return "N/A"
    now = now or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = now - when
    seconds = delta.total_seconds()
    if delta.days > 30:
        return when.strftime("%Y-%m-%d")
    if delta.days > 7:
        return f"{plural(delta.days // 7, 'week')} ago"
    if delta.days > 0:
        return f"{plural(delta.days, 'day')} ago"
    if seconds > 3600:
        return f"{plural(int(seconds // 3600), 'hour')} ago"
    if seconds > 60:
        return f"{plural(int(seconds // 60), 'minute')} ago"
    return "just now"


def format_bool(value: bool) -> str:
    return "Yes" if value else "No"
