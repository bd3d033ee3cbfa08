"""Offset/limit pagination for the list commands (pure; the I/O is passed in).

``fetch_page(limit, offset)`` returns ``(items, total_count)``; ``total_count``
is ``None`` when the endpoint has no cursor (sessions).  ``limit=0`` means all.
The first request asks for ``min(page_size, limit)`` items; then pages continue
at ``offset = received`` until the target is reached or a page comes back short.
Progress is reported through ``on_page(received, target)`` (``target`` is
``None`` when unknown).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Page", "fetch"]


class Page:
    """The items fetched, and how many exist in total (``None``: unknown)."""

    def __init__(self, items: list[Any], total: int | None, more: bool) -> None:
        self.items = items
        self.total = total
        self.more = more  # whether items exist beyond those fetched

    @property
    def not_shown(self) -> int | None:
        if self.total is None:
            return None
        return max(self.total - len(self.items), 0)


def fetch(
    fetch_page: Callable[[int, int], tuple[Sequence[Any], int | None]],
    limit: int,
    page_size: int,
    on_page: Callable[[int, int | None], None] | None = None,
    counted: bool = True,
) -> Page:
    """Fetch up to ``limit`` items (all when 0), ``page_size`` per request.

    ``counted=False`` is for endpoints without a total count: one extra item is
    asked for, to learn whether more exist beyond ``limit``.
    """
    if limit < 0:
        raise ValueError("limit must be >= 0")
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    wanted: int | None = (limit if counted else limit + 1) if limit else None
    items: list[Any] = []
    total: int | None = None
    target: int | None = limit or None
    while wanted is None or len(items) < wanted:
        ask = page_size if wanted is None else min(page_size, wanted - len(items))
        page, page_total = fetch_page(ask, len(items))
        items.extend(page)
        if page_total is not None:
            total = page_total
            target = min(limit, total) if limit else total
            wanted = target
        if on_page is not None:
            on_page(min(len(items), target) if target else len(items), target)
        if len(page) < ask:
            break
    more = total > len(items) if total is not None else False
    if limit and len(items) > limit:
        items = items[:limit]
        more = True
    return Page(items, total, more)
