"""The admission policy alone (admission.py): quotas and the tokens-per-minute window, no threads."""

from __future__ import annotations

import pytest

from tinker_server.admission import Admission, QuotaExceeded, RateLimited, sample_estimate
from tinker_server.errors import AccessDenied, Overloaded
from tinker_server.tenants import Quota


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limits_that_waiting_does_not_clear_are_403_sentences() -> None:
    quota = Quota(max_training_runs=2, max_lora_rank=16, base_models=("m/a",), max_checkpoint_bytes=1000)
    Admission.check_base_model(quota, "m/a")
    Admission.check_lora_rank(quota, 16)
    Admission.check_training_runs(quota, 1)
    Admission.check_storage(quota, 999)
    with pytest.raises(QuotaExceeded, match=r"may not use base model 'm/b'; its quota allows: m/a"):
        Admission.check_base_model(quota, "m/b")
    with pytest.raises(QuotaExceeded, match="LoRA rank 32 is over this API key's limit of 16"):
        Admission.check_lora_rank(quota, 32)
    with pytest.raises(QuotaExceeded, match=r"already has 2 training run\(s\) loaded, its limit is 2"):
        Admission.check_training_runs(quota, 2)
    with pytest.raises(QuotaExceeded, match="take 1000 bytes, its storage limit is 1000 bytes"):
        Admission.check_storage(quota, 1000)
    assert issubclass(QuotaExceeded, AccessDenied)  # 403, never 409


def test_no_quota_no_limit() -> None:
    quota = Quota()
    Admission.check_base_model(quota, "anything")
    Admission.check_lora_rank(quota, 512)
    Admission.check_training_runs(quota, 10**6)
    Admission.check_storage(quota, 10**15)
    Admission.check_queued(quota, 10**6)
    admission = Admission()
    assert admission.admit("A", quota, 10**9) is None
    assert admission.used("A") == 0


def test_queued_requests_are_a_429_to_retry() -> None:
    quota = Quota(max_queued_requests=3)
    Admission.check_queued(quota, 2)
    with pytest.raises(RateLimited) as info:
        Admission.check_queued(quota, 3)
    assert isinstance(info.value, Overloaded)
    assert info.value.retry_after_header == "1"
    assert "3 request(s) queued or running, its limit is 3" in str(info.value)


def test_sampling_tokens_per_minute_refuses_with_the_wait_until_the_window_has_room() -> None:
    clock = Clock()
    admission = Admission(clock)
    quota = Quota(tokens_per_minute=100)
    first = admission.admit("A", quota, 60)
    clock.now += 10
    admission.admit("A", quota, 60)  # under the limit when it starts: admitted (120 now)
    clock.now += 5
    with pytest.raises(RateLimited) as info:
        admission.admit("A", quota, 1)
    # The first charge leaves the window 60 s after it: 45 s from now.
    assert info.value.retry_after == pytest.approx(45.0)
    assert info.value.retry_after_header == "45"
    assert "used 120 tokens in the last minute, its limit is 100 tokens per minute; retry in 45 s" in str(info.value)
    # Another tenant is not affected.
    admission.admit("B", quota, 60)
    # Settling the first to what it really generated frees room at once.
    admission.settle(first, 10)
    assert admission.used("A") == 70
    admission.admit("A", quota, 1)
    clock.now += 61
    assert admission.used("A") == 0


def test_retry_after_is_between_1_and_60() -> None:
    assert RateLimited("x", retry_after=0.01).retry_after_header == "1"
    assert RateLimited("x", retry_after=59.2).retry_after_header == "60"
    assert RateLimited("x", retry_after=600).retry_after_header == "60"


def test_training_is_scheduled_after_the_window_in_submit_order() -> None:
    clock = Clock()
    admission = Admission(clock)
    quota = Quota(tokens_per_minute=100)
    t0 = clock.now
    assert admission.schedule("A", quota, 80) == t0  # under the limit: now
    assert admission.schedule("A", quota, 80) == t0  # 80 < 100: still now (a burst of one request)
    third = admission.schedule("A", quota, 80)  # 160 in the window: once the first leaves it
    assert third == pytest.approx(t0 + 60)
    fourth = admission.schedule("A", quota, 10)  # never before the third (submit order)
    assert fourth >= third
    # A request larger than the limit is not refused: it starts once the window is empty enough.
    assert admission.schedule("B", quota, 10_000) == t0
    assert admission.schedule("B", quota, 1) == pytest.approx(t0 + 60)


def test_sample_estimate() -> None:
    assert sample_estimate(4, 16) == 64
    assert sample_estimate(2, None) == 2 * 1024
    assert sample_estimate(1, 0) == 0
