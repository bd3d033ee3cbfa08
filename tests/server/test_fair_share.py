"""The fair-share policy alone (fairness.py): weighted deficit round robin, no threads."""

from __future__ import annotations

from collections import Counter

import pytest

from tinker_server.fairness import Candidate, FairShare


def _drain(
    share: FairShare[str], queues: dict[str, list[tuple[str, int]]], max_items: int | None = None
) -> list[list[str]]:
    """Run rounds until every queue is empty; each round offers every queued item
    (``queues``: tenant -> [(item, cost)], in queue order). Returns the rounds' picks."""
    rounds: list[list[str]] = []
    while any(queues.values()):
        offered = [Candidate(item, tenant, cost) for tenant, queue in queues.items() for item, cost in queue]
        picked = share.select(offered, max_items)
        assert picked, "a round with queued work picked nothing"
        for tenant, queue in queues.items():
            queues[tenant] = [(item, cost) for item, cost in queue if item not in picked]
        rounds.append(picked)
        assert len(rounds) < 10_000
    return rounds


def test_a_single_request_is_served_in_the_first_round_beside_a_flood() -> None:
    share: FairShare[str] = FairShare(quantum=1000)
    flood = [(f"a{i}", 128) for i in range(200)]
    rounds = _drain(share, {"A": flood, "B": [("b0", 128)]})
    assert "b0" in rounds[0]
    # A gets about a quantum of work per round (plus credit it kept: less than one item),
    # whatever its queue depth.
    assert all(sum(1 for item in r if item.startswith("a")) <= (1000 + 128) // 128 for r in rounds)


def test_each_tenant_keeps_its_own_order() -> None:
    share: FairShare[str] = FairShare(quantum=300)
    rounds = _drain(share, {"A": [(f"a{i}", 100) for i in range(10)], "B": [(f"b{i}", 50) for i in range(10)]})
    served = [item for r in rounds for item in r]
    assert [i for i in served if i[0] == "a"] == [f"a{i}" for i in range(10)]
    assert [i for i in served if i[0] == "b"] == [f"b{i}" for i in range(10)]


def test_weights_share_work_in_proportion() -> None:
    weights = {"A": 1.0, "B": 3.0}
    share: FairShare[str] = FairShare(quantum=100, weight=weights.__getitem__)
    # Both always have work: count what each gets over 20 rounds.
    queues = {"A": [(f"a{i}", 10) for i in range(1000)], "B": [(f"b{i}", 10) for i in range(1000)]}
    work: Counter[str] = Counter()
    for _ in range(20):
        offered = [Candidate(item, t, cost) for t, q in queues.items() for item, cost in q]
        picked = share.select(offered)
        for item in picked:
            work[item[0]] += 10
        for t in queues:
            queues[t] = [(i, c) for i, c in queues[t] if i not in picked]
    assert work["a"] == 20 * 100
    assert work["b"] == 20 * 300


def test_an_item_larger_than_the_quantum_runs_after_rounds_worth_its_cost() -> None:
    share: FairShare[str] = FairShare(quantum=100)
    # Alone, a big item is taken at once (no empty rounds).
    assert share.select([Candidate("big", "A", 10_000)]) == ["big"]
    # Beside another tenant, it waits while the other gets as much work as it costs.
    queues = {"A": [("big", 1000)], "B": [(f"b{i}", 100) for i in range(30)]}
    rounds = _drain(share, queues)
    big_round = next(n for n, r in enumerate(rounds) if "big" in r)
    b_before = sum(1 for r in rounds[: big_round + 1] for item in r if item.startswith("b"))
    assert 9 <= b_before <= 11


def test_max_items_caps_a_round_and_rotates_who_goes_first() -> None:
    share: FairShare[str] = FairShare(quantum=1000)
    queues = {t: [(f"{t}{i}", 1) for i in range(50)] for t in "ABCD"}
    rounds = _drain(share, queues, max_items=8)
    assert all(len(r) <= 8 for r in rounds)
    # Every tenant is in the first rounds: nobody waits for another's 50 items.
    firsts = {item[0] for r in rounds[:4] for item in r}
    assert firsts == set("ABCD")


def test_an_idle_tenant_keeps_no_credit() -> None:
    share: FairShare[str] = FairShare(quantum=100)
    assert share.select([Candidate("a0", "A", 10)]) == ["a0"]
    assert share.credit("A") == 0.0  # all it had went in
    assert share.select([Candidate("b0", "B", 500), Candidate("a1", "A", 10)]) == ["a1"]
    assert share.credit("B") == 100.0  # B's item did not fit yet: it keeps its credit
    share.select([Candidate("c0", "C", 10)])
    assert share.credit("A") == 0.0 and share.credit("B") == 0.0


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_odd_weights_still_serve(weight: float) -> None:
    share: FairShare[str] = FairShare(quantum=100, weight=lambda t: weight if t == "A" else 1.0)
    rounds = _drain(share, {"A": [("a0", 50)], "B": [("b0", 50)]})
    assert {i for r in rounds for i in r} == {"a0", "b0"}


def test_nothing_offered_picks_nothing() -> None:
    share: FairShare[str] = FairShare()
    assert share.select([]) == []
    assert share.select([Candidate("x", "A", 1)], max_items=0) == []
