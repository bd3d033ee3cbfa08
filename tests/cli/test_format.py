"""Cell formats of the tables (spec §5.4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tinker.cli._format import format_bool, format_size, format_time

NOW = datetime(2025, 11, 20, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "N/A"),
        (-1, "N/A"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KB"),
        (1536, "1.5 KB"),
        (5 * 1024**2, "5.0 MB"),
        (int(2.25 * 1024**3), "2.2 GB"),
        (3 * 1024**4, "3.0 TB"),
        (7 * 1024**5, "7.0 PB"),
        (2048 * 1024**5, "2048.0 PB"),
    ],
)
def test_format_size(size: int | None, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (timedelta(seconds=0), "just now"),
        (timedelta(seconds=60), "just now"),
        (timedelta(seconds=61), "1 minute ago"),
        (timedelta(minutes=59), "59 minutes ago"),
        (timedelta(seconds=3601), "1 hour ago"),
        (timedelta(hours=23), "23 hours ago"),
        (timedelta(days=1), "1 day ago"),
        (timedelta(days=7), "7 days ago"),
        (timedelta(days=8), "1 week ago"),
        (timedelta(days=29), "4 weeks ago"),
        (timedelta(days=30, hours=1), "4 weeks ago"),
        (timedelta(days=31), "2025-10-20"),
    ],
)
def test_format_time(ago: timedelta, text: str) -> None:
    assert format_time(NOW - ago, now=NOW) == text


def test_format_time_missing_and_naive() -> None:
    assert format_time(None) == "N/A"
    naive = (NOW - timedelta(hours=2)).replace(tzinfo=None)
    assert format_time(naive, now=NOW) == "2 hours ago"


def test_format_bool() -> None:
    assert (format_bool(True), format_bool(False)) == ("Yes", "No")
