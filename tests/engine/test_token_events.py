"""Per-token events while decoding (``SampleJob.on_token``): they replay the result exactly
and leave it unchanged."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from tinker_server.engine import Engine, LoraSpec, SampleJob, SampleOutput, TokenEvent, sampling

from .conftest import randomize_adapter

PROMPT = [1, 87, 85, 269, 201, 426, 468, 264]


@pytest.fixture
def tuned(engine: Engine) -> Engine:
    engine.create_adapter("a", LoraSpec(rank=4, seed=1))
    randomize_adapter(engine, "a", seed=2, scale=0.2)
    return engine


class Recorder:
    """Collects events per sample and checks they come from one thread, in position order."""

    def __init__(self) -> None:
        self.events: dict[int, list[TokenEvent]] = {}
        self.threads: set[int] = set()

    def __call__(self, event: TokenEvent) -> None:
        self.threads.add(threading.get_ident())
        seen = self.events.setdefault(event.sample, [])
        assert event.position == len(seen)
        seen.append(event)


def _replayed(recorder: Recorder, output: SampleOutput) -> None:
    assert sorted(recorder.events) == list(range(len(output.sequences)))
    for index, seq in enumerate(output.sequences):
        events = recorder.events[index]
        assert [e.token for e in events] == seq.tokens
        assert [e.logprob for e in events] == seq.logprobs
        assert [e.stop_reason for e in events] == [None] * (len(seq.tokens) - 1) + [seq.stop_reason]
        if seq.topk_logprobs is not None:
            assert [e.topk for e in events] == seq.topk_logprobs
        else:
            assert all(e.topk is None for e in events)


def test_events_replay_the_result_and_change_nothing(tuned: Engine) -> None:
    plain = [
        SampleJob("a", PROMPT, num_samples=3, max_tokens=9, temperature=0.8, seed=4, topk_sample_logprobs=2),
        SampleJob(None, PROMPT[:5], num_samples=2, max_tokens=6, temperature=0.0),
    ]
    # A stop token drawn from the greedy run, so one job stops early while the other goes on.
    greedy = tuned.sample([plain[1]])[0]
    assert isinstance(greedy, SampleOutput)
    plain[1] = replace(plain[1], stop_token_ids=[greedy.sequences[0].tokens[2]])
    before = tuned.sample(plain)
    recorders = [Recorder(), Recorder()]
    streamed = tuned.sample([replace(job, on_token=rec) for job, rec in zip(plain, recorders, strict=False)])
    for rec, a, b in zip(recorders, before, streamed, strict=True):
        assert isinstance(a, SampleOutput) and isinstance(b, SampleOutput)
        assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
        assert [s.logprobs for s in a.sequences] == [s.logprobs for s in b.sequences]
        assert [s.stop_reason for s in a.sequences] == [s.stop_reason for s in b.sequences]
        _replayed(rec, b)
        assert len(rec.threads) == 1
    assert streamed[1].sequences[0].stop_reason == "stop"  # type: ignore[union-attr]
    assert len(streamed[1].sequences[0].tokens) == 3  # type: ignore[union-attr]


def test_sample_indices_survive_split_batches(tuned: Engine) -> None:
    rec = Recorder()
    job = SampleJob("a", PROMPT, num_samples=5, max_tokens=6, seed=1, on_token=rec)
    prepared = sampling.prepare_job(job, tuned._adapters["a"], vocab_size=512, max_context=2048)
    per_token = sampling.kv_bytes_per_token(tuned._parts)
    [output] = sampling.run_jobs(tuned._parts, tuned.tokenizer, [prepared], max_kv_bytes=per_token * 30)
    _replayed(rec, output)


def test_a_failing_sink_is_dropped_and_sampling_goes_on(tuned: Engine) -> None:
    calls = []

    def broken(event: TokenEvent) -> None:
        calls.append(event)
        raise RuntimeError("listener gone")

    job = SampleJob("a", PROMPT, num_samples=2, max_tokens=5, seed=3)
    expected = tuned.sample([job])[0]
    [out] = tuned.sample([replace(job, on_token=broken)])
    assert isinstance(out, SampleOutput) and isinstance(expected, SampleOutput)
    assert [s.tokens for s in out.sequences] == [s.tokens for s in expected.sequences]
    assert len(calls) == 1


def test_a_sink_that_is_not_callable_is_refused(tuned: Engine) -> None:
    [out] = tuned.sample([SampleJob("a", PROMPT, max_tokens=2, on_token=42)])  # type: ignore[arg-type]
    assert "on_token" in str(out)
