"""Tenant independence in batched multi-LoRA (issue 11): adapters of different tenants with
different rank, seed and targets (attention / MLP / unembedding) go through the base model in
one pass (``Engine.forward_backward_many``, ``Engine.sample``, and ``EngineHost.run`` with
consecutive ``ForwardBackward`` / ``Sample`` commands, which is what the server's worker sends),
and each tenant's losses, logprobs, gradients and sampled tokens and logprobs equal those of
the same request run alone, in float32 to 1e-6. Each ``optim_step`` touches only its adapter.

Measured on CPU (tiny Llama, fp32, one torch thread): within 1e-6 (max |diff| 9.5e-7 on
logprobs of magnitude 4-8, i.e. at most 2 ULP) but **not bitwise** when the co-tenants' rows
are longer. The cause is padding, not sharing: rows are right-padded to the longest row of
their micro-batch, and a longer padded length changes the shapes of the attention products (the
reduction over key positions is blocked differently, the causally masked pads contribute exact
zeros), so a row padded to 30 tokens differs from the same row alone by a few ULP, whichever
adapter the other rows belong to; the same happens among one tenant's own rows of different
lengths. Co-tenant rows of the same length give **bitwise** identical logprobs and losses
(tested below). Gradients of a tenant whose rows share a backward pass with another training
tenant's rows differ by up to ~6e-7 of their scale even then (bitwise when the co-tenant's
request is forward-only, which runs in a separate no-grad pass): the backward products run over
the whole micro-batch's token count, so their blocking differs from the tenant's batch alone.
Bound asserted: ``|diff| <= 1e-6 * max(1, |value|)`` on logprobs and losses, and 1e-6 of the
tensor's largest entry on gradients (the same bound on another CPU's kernels).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from tinker_server.engine import Engine, LoraSpec, SampleJob, TrainDatum, TrainOutput
from tinker_server.engine.api import ForwardBackward, OptimStep, Sample
from tinker_server.engine.host import EngineHost
from tinker_server.engine.messages import AdamConfig

from .conftest import adapter_grads, adapter_tensors, ok, random_datums, randomize_adapter

TOL = 1e-6

TENANTS: dict[str, LoraSpec] = {
    "tenant-a": LoraSpec(rank=4, seed=1),  # everything
    "tenant-b": LoraSpec(rank=16, seed=2, train_mlp=False),  # attention + unembedding
    "tenant-c": LoraSpec(rank=8, seed=3, train_attn=False, train_mlp=False),  # unembedding only
    "tenant-d": LoraSpec(rank=32, seed=4, train_unembed=False, train_attn=False),  # MLP only
    "tenant-e": LoraSpec(rank=1, seed=None, train_unembed=False),  # attention + MLP, unseeded
}


def _requests() -> list[tuple[str, list[TrainDatum], str, dict[str, float | str] | None, bool]]:
    """One request per tenant: different lengths (rows get padded to each other's), losses,
    and a forward-only one among them."""
    return [
        ("tenant-a", random_datums(3, seed=10, lengths=(3, 9)), "cross_entropy", None, True),
        ("tenant-b", random_datums(2, seed=11, lengths=(20, 31)), "cross_entropy", None, True),
        (
            "tenant-c",
            random_datums(2, seed=12, lengths=(6, 14), keys=("logprobs", "advantages")),
            "importance_sampling",
            None,
            True,
        ),
        ("tenant-d", random_datums(4, seed=13, lengths=(2, 40)), "cross_entropy", None, True),
        ("tenant-e", random_datums(2, seed=14, lengths=(5, 17)), "cross_entropy", None, False),
    ]


@pytest.fixture
def engine(home: pathlib.Path) -> Engine:
    from tinker_server.engine import TINY_MODEL, load_engine

    eng = load_engine(TINY_MODEL, home=home)
    for i, (adapter_id, spec) in enumerate(TENANTS.items()):
        eng.create_adapter(adapter_id, spec)
        randomize_adapter(eng, adapter_id, seed=100 + i)
    return eng


def _clear_grads(engine: Engine) -> None:
    for adapter_id in TENANTS:
        for p in engine._adapters[adapter_id].parameters():
            p.grad = None


def _within(a: np.ndarray, b: np.ndarray) -> bool:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.all(np.abs(x - y) <= TOL * np.maximum(1.0, np.abs(x))))


def _max_diff(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    x = torch.as_tensor(np.asarray(a) if isinstance(a, np.ndarray) else a, dtype=torch.float64)
    y = torch.as_tensor(np.asarray(b) if isinstance(b, np.ndarray) else b, dtype=torch.float64)
    return float((x - y).abs().max()) if x.numel() else 0.0


def _compare_outputs(alone: TrainOutput, together: TrainOutput) -> tuple[float, bool]:
    assert alone.metrics.keys() == together.metrics.keys()
    worst, bitwise = 0.0, True
    for x, y in zip(alone.loss_fn_outputs, together.loss_fn_outputs, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype == np.float32
            assert _within(x[key], y[key]), (key, _max_diff(x[key], y[key]))
            worst = max(worst, _max_diff(x[key], y[key]))
            bitwise &= bool(np.array_equal(x[key], y[key]))
    for key, value in alone.metrics.items():
        assert together.metrics[key] == pytest.approx(value, rel=TOL, abs=TOL)
        bitwise &= together.metrics[key] == value
    return worst, bitwise


def _compare_grads(alone: dict[str, torch.Tensor], together: dict[str, torch.Tensor]) -> tuple[float, bool]:
    assert alone.keys() == together.keys()
    worst, bitwise = 0.0, True
    for key in alone:
        scale = max(float(alone[key].abs().max()), 1.0)
        diff = _max_diff(alone[key], together[key])
        assert diff <= TOL * scale, (key, diff)
        worst = max(worst, diff / scale)
        bitwise &= bool(torch.equal(alone[key], together[key]))
    return worst, bitwise


def test_forward_backward_with_co_tenants_equals_alone(engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    requests = _requests()
    alone_out: dict[str, TrainOutput] = {}
    alone_grads: dict[str, dict[str, torch.Tensor]] = {}
    for item in requests:
        _clear_grads(engine)
        alone_out[item[0]] = ok(engine.forward_backward_many([item])[0])
        alone_grads[item[0]] = adapter_grads(engine, item[0])
    _clear_grads(engine)
    weights_before = {a: adapter_tensors(engine, a) for a in TENANTS}
    together = engine.forward_backward_many(requests)
    worst, bitwise = 0.0, True
    for item, out in zip(requests, together, strict=True):
        w, b = _compare_outputs(alone_out[item[0]], ok(out))
        g, gb = _compare_grads(alone_grads[item[0]], adapter_grads(engine, item[0]))
        worst, bitwise = max(worst, w, g), bitwise and b and gb
    # forward_backward never changes weights; a forward-only request accumulates no gradient.
    for adapter_id in TENANTS:
        for key, value in adapter_tensors(engine, adapter_id).items():
            assert torch.equal(value, weights_before[adapter_id][key])
    assert all(p.grad is None for p in engine._adapters["tenant-e"].parameters())
    with capsys.disabled():
        print(f"\nforward_backward, 5 tenants in one pass vs alone: max |diff| {worst:.2e}, bitwise: {bitwise}")


def test_co_tenant_rows_of_the_same_length_give_bitwise_equal_outputs(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """No padding difference: sharing the pass with other tenants' adapters leaves every
    logprob and loss bitwise as alone; gradients stay within the bound."""
    lengths = (11, 11)
    requests = [
        ("tenant-a", random_datums(2, seed=20, lengths=lengths), "cross_entropy", None, True),
        ("tenant-b", random_datums(1, seed=21, lengths=lengths), "cross_entropy", None, True),
        ("tenant-c", random_datums(2, seed=22, lengths=lengths, keys=("logprobs", "advantages")), "ppo", None, True),
        ("tenant-d", random_datums(1, seed=23, lengths=lengths), "cross_entropy", None, False),
    ]
    alone = {}
    for item in requests:
        _clear_grads(engine)
        alone[item[0]] = (ok(engine.forward_backward_many([item])[0]), adapter_grads(engine, item[0]))
    _clear_grads(engine)
    together = engine.forward_backward_many(requests)
    worst, bitwise = 0.0, True
    for item, out in zip(requests, together, strict=True):
        expected, grads = alone[item[0]]
        assert _compare_outputs(expected, ok(out)) == (0.0, True), f"{item[0]}: outputs not bitwise"
        diff, same = _compare_grads(grads, adapter_grads(engine, item[0]))
        worst, bitwise = max(worst, diff), bitwise and same
    with capsys.disabled():
        print(f"\nequal lengths: outputs bitwise; gradients max rel diff {worst:.2e}, bitwise: {bitwise}")


def test_each_optim_step_touches_only_its_adapter(engine: Engine) -> None:
    requests = _requests()
    engine.forward_backward_many(requests)
    for adapter_id in ("tenant-a", "tenant-b", "tenant-c", "tenant-d"):
        others = {a: (adapter_tensors(engine, a), adapter_grads(engine, a)) for a in TENANTS if a != adapter_id}
        before = adapter_tensors(engine, adapter_id)
        engine.optim_step(adapter_id, AdamConfig(learning_rate=0.01))
        after = adapter_tensors(engine, adapter_id)
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{adapter_id} did not move"
        assert all(p.grad is None or not p.grad.any() for p in engine._adapters[adapter_id].parameters())
        for other, (weights, grads) in others.items():
            for key, value in adapter_tensors(engine, other).items():
                assert torch.equal(value, weights[key]), f"optim_step of {adapter_id} changed {other}"
            for key, value in adapter_grads(engine, other).items():
                assert torch.equal(value, grads[key]), f"optim_step of {adapter_id} changed {other}'s gradients"


def _jobs() -> list[SampleJob]:
    return [
        SampleJob(adapter_id="tenant-a", prompt=[5, 17, 42], num_samples=2, max_tokens=7, seed=1, prompt_logprobs=True),
        SampleJob(
            adapter_id="tenant-b", prompt=list(range(3, 30)), num_samples=1, max_tokens=4, temperature=0.7, seed=2
        ),
        SampleJob(adapter_id="tenant-c", prompt=[9, 8], num_samples=3, max_tokens=9, temperature=0.0),
        SampleJob(adapter_id=None, prompt=[1, 2, 3, 4], num_samples=1, max_tokens=5, seed=3, topk_sample_logprobs=2),
        SampleJob(adapter_id="tenant-d", prompt=[100, 200, 300], num_samples=2, max_tokens=6, top_k=5, seed=4),
    ]


def test_sampling_with_co_tenants_equals_alone(engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = _jobs()
    alone = [ok(engine.sample([job])[0]) for job in jobs]
    together = [ok(out) for out in engine.sample(jobs)]
    worst, bitwise = 0.0, True
    for x, y in zip(alone, together, strict=True):
        assert len(x.sequences) == len(y.sequences)
        for sx, sy in zip(x.sequences, y.sequences, strict=True):
            assert sx.tokens == sy.tokens and sx.stop_reason == sy.stop_reason
            assert _within(np.asarray(sx.logprobs), np.asarray(sy.logprobs))
            worst = max(worst, _max_diff(np.asarray(sx.logprobs), np.asarray(sy.logprobs)))
            bitwise &= sx.logprobs == sy.logprobs
            if sx.topk_logprobs is not None:
                assert sy.topk_logprobs is not None
                for kx, ky in zip(sx.topk_logprobs, sy.topk_logprobs, strict=True):
                    assert [t for t, _ in kx] == [t for t, _ in ky]
                    vx, vy = np.asarray([v for _, v in kx]), np.asarray([v for _, v in ky])
                    assert _within(vx, vy)
                    worst = max(worst, _max_diff(vx, vy))
        if x.prompt_logprobs is not None:
            assert y.prompt_logprobs is not None
            px = np.asarray([np.nan if v is None else v for v in x.prompt_logprobs])
            py = np.asarray([np.nan if v is None else v for v in y.prompt_logprobs])
            np.testing.assert_allclose(py, px, rtol=TOL, atol=TOL)
            bitwise &= bool(np.array_equal(px, py, equal_nan=True))
    with capsys.disabled():
        print(
            f"\nsampling, 5 jobs (4 adapters + base) in one batch vs alone: max |diff| {worst:.2e}, bitwise: {bitwise}"
        )


def test_engine_host_rounds_like_the_server_sends_them(engine: Engine) -> None:
    """``EngineHost.run`` with the commands of one scheduler round (consecutive
    ForwardBackward commands of different runs, then OptimSteps, then Samples) gives each
    tenant what it gets alone."""
    host = EngineHost(engine)
    requests = _requests()[:4]
    fbs = [ForwardBackward(a, data, loss, config, backward) for a, data, loss, config, backward in requests]
    adam = AdamConfig(learning_rate=0.02)
    alone: dict[str, tuple[TrainOutput, dict[str, torch.Tensor], dict[str, float]]] = {}
    originals = {a: adapter_tensors(engine, a) for a in TENANTS}
    for command in fbs:
        report = host.run([command])
        out = report.outcomes[0]
        assert isinstance(out, TrainOutput)
        metrics = host.run([OptimStep(command.adapter_id, adam)]).outcomes[0]
        assert isinstance(metrics, dict)
        alone[command.adapter_id] = (out, adapter_tensors(engine, command.adapter_id), metrics)
        _restore(engine, command.adapter_id, originals[command.adapter_id])
    report = host.run([*fbs, *(OptimStep(c.adapter_id, adam) for c in fbs), *(Sample(job) for job in _jobs())])
    for i, command in enumerate(fbs):
        out, weights, metrics = alone[command.adapter_id]
        together = report.outcomes[i]
        assert isinstance(together, TrainOutput)
        _compare_outputs(out, together)
        together_metrics = report.outcomes[len(fbs) + i]
        assert isinstance(together_metrics, dict)
        assert together_metrics.keys() == metrics.keys()
        for key, value in adapter_tensors(engine, command.adapter_id).items():
            torch.testing.assert_close(value, weights[key], rtol=0, atol=TOL)
    samples = report.outcomes[2 * len(fbs) :]
    assert all(not isinstance(s, Exception) for s in samples) and len(samples) == len(_jobs())


def _restore(engine: Engine, adapter_id: str, tensors: dict[str, torch.Tensor]) -> None:
    """Put back an adapter's weights, and a fresh optimizer state, as created."""
    adapter = engine._adapters[adapter_id]
    with torch.no_grad():
        for key, p in adapter.named_parameters():
            p.copy_(tensors[key])
            p.grad = None
    adapter.optim_state = {}
    adapter.optim_step = 0
