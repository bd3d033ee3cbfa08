"""Pagination (spec §5.3), with a fake endpoint that records its requests."""

from __future__ import annotations

import pytest

from tinker.cli._paging import fetch


class Endpoint:
    def __init__(self, count: int, counted: bool = True) -> None:
        self.items = list(range(count))
        self.counted = counted
        self.requests: list[tuple[int, int]] = []

    def __call__(self, limit: int, offset: int) -> tuple[list[int], int | None]:
        self.requests.append((limit, offset))
        return self.items[offset : offset + limit], len(self.items) if self.counted else None


def test_limit_within_one_page() -> None:
    endpoint = Endpoint(50)
    page = fetch(endpoint, limit=20, page_size=100)
    assert page.items == list(range(20))
    assert endpoint.requests == [(20, 0)]
    assert (page.total, page.not_shown, page.more) == (50, 30, True)


def test_all_items_over_several_pages() -> None:
    endpoint = Endpoint(250)
    progress: list[tuple[int, int | None]] = []
    page = fetch(endpoint, limit=0, page_size=100, on_page=lambda r, t: progress.append((r, t)))
    assert page.items == list(range(250))
    assert endpoint.requests == [(100, 0), (100, 100), (50, 200)]
    assert progress == [(100, 250), (200, 250), (250, 250)]
    assert (page.not_shown, page.more) == (0, False)


def test_limit_across_pages_asks_only_for_the_rest() -> None:
    endpoint = Endpoint(250)
    page = fetch(endpoint, limit=130, page_size=100)
    assert endpoint.requests == [(100, 0), (30, 100)]
    assert len(page.items) == 130 and page.not_shown == 120


def test_limit_above_total() -> None:
    endpoint = Endpoint(7)
    page = fetch(endpoint, limit=20, page_size=5)
    assert page.items == list(range(7))
    assert endpoint.requests == [(5, 0), (2, 5)]
    assert not page.more


def test_stops_on_a_short_page_even_if_the_count_says_more() -> None:
    items = [0, 1, 2, 3]  # the count says 10: items vanished while paging
    page = fetch(lambda n, o: (items[o : o + n], 10), limit=0, page_size=3)
    assert page.items == [0, 1, 2, 3]


def test_empty() -> None:
    page = fetch(Endpoint(0), limit=20, page_size=100)
    assert (page.items, page.total, page.more) == ([], 0, False)


def test_uncounted_endpoint_asks_one_more_to_know_if_more_exist() -> None:
    endpoint = Endpoint(30, counted=False)
    page = fetch(endpoint, limit=20, page_size=100, counted=False)
    assert endpoint.requests == [(21, 0)]
    assert page.items == list(range(20))
    assert (page.total, page.not_shown, page.more) == (None, None, True)

    endpoint = Endpoint(20, counted=False)
    page = fetch(endpoint, limit=20, page_size=100, counted=False)
    assert page.items == list(range(20)) and not page.more


def test_uncounted_all_pages() -> None:
    endpoint = Endpoint(25, counted=False)
    page = fetch(endpoint, limit=0, page_size=10, counted=False)
    assert page.items == list(range(25))
    assert endpoint.requests == [(10, 0), (10, 10), (10, 20)]


@pytest.mark.parametrize(("limit", "page_size"), [(-1, 10), (5, 0)])
def test_rejects_bad_arguments(limit: int, page_size: int) -> None:
    with pytest.raises(ValueError):
        fetch(Endpoint(1), limit=limit, page_size=page_size)
