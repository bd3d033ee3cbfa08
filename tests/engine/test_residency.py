"""The residency policy alone (no engine, no threads): what stays, what goes, and why."""

from __future__ import annotations

import pytest

from tinker_server.engine.residency import Residency, ResidencyLimits


def test_training_adapters_are_pinned() -> None:
    policy = Residency(ResidencyLimits(max_samplers=1))
    for i in range(5):
        policy.added(f"run{i}", "train")
    assert policy.victims() == [] and len(policy) == 0


def test_samplers_leave_least_recently_used_first() -> None:
    policy = Residency(ResidencyLimits(max_samplers=2))
    policy.added("a", "sampler")
    policy.added("b", "sampler")
    policy.used("a")  # b is now the least recently used
    policy.added("c", "sampler")
    victims = policy.victims()
    assert [v for v, _ in victims] == ["b"]
    assert "least recently used of the 2 samplers" in victims[0][1]
    assert len(policy) == 2


def test_protected_samplers_stay_even_over_the_limit() -> None:
    policy = Residency(ResidencyLimits(max_samplers=1))
    policy.added("a", "sampler")
    policy.added("b", "sampler")
    assert policy.victims(protect={"a", "b"}) == []
    assert [v for v, _ in policy.victims(protect={"b"})] == ["a"]


def test_only_the_newest_snapshots_of_a_run_stay() -> None:
    policy = Residency(ResidencyLimits(max_samplers=64, snapshots_per_source=2))
    for i in range(3):
        policy.added(f"s{i}", "sampler", source="run")
        policy.used("s0")  # using the oldest does not make it newer
    victims = policy.victims()
    assert [v for v, _ in victims] == ["s0"]
    assert victims[0][1] == "a newer sampler of training run run replaced it (the 2 newest are kept)"
    policy.added("other", "sampler", source="run2")
    assert policy.victims() == []


def test_memory_budget() -> None:
    policy = Residency(ResidencyLimits(max_samplers=64, max_sampler_bytes=250))
    for name in ("a", "b", "c"):
        policy.added(name, "sampler", nbytes=100)
    victims = policy.victims(protect={"c"})
    assert [v for v, _ in victims] == ["a"] and "memory budget (250 bytes)" in victims[0][1]


def test_dropped_adapters_are_forgotten() -> None:
    policy = Residency(ResidencyLimits(max_samplers=1))
    policy.added("a", "sampler")
    policy.dropped("a")
    policy.added("b", "sampler")
    assert policy.victims() == []


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ResidencyLimits(max_samplers=0)
