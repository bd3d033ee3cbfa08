"""oneDNN-packed base weights: used for no-grad forwards on CPU, never changing results
beyond float32 summation order, never on the gradient path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinker_server.engine import (
    TINY_MODEL,
    Engine,
    LoraSpec,
    SampleJob,
    SampleOutput,
    TrainDatum,
    load_engine,
)
from tinker_server.engine.packed import pack_weight, packed_linear, packing_available

from .conftest import adapter_grads, floats, randomize_adapter

PROMPTS = [[1, 87, 85, 269, 201, 426, 468, 264], [5, 6, 7], [300, 2, 44, 45, 46, 47]]

needs_packing = pytest.mark.skipif(
    not packing_available(torch.device("cpu"), torch.float32), reason="oneDNN packing unavailable in this torch build"
)


def _tuned(engine: Engine) -> Engine:
    engine.create_adapter("a", LoraSpec(rank=4, seed=1))
    randomize_adapter(engine, "a", seed=2, scale=0.2)
    return engine


@pytest.fixture
def pair(home) -> tuple[Engine, Engine]:
    """The same model and adapter, with and without packed weights."""
    return _tuned(load_engine(TINY_MODEL, home=home)), _tuned(load_engine(TINY_MODEL, home=home, packed_weights=False))


@needs_packing
def test_packed_linear_equals_f_linear() -> None:
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn((96, 64), generator=gen), torch.randn(96, generator=gen)
    packed = pack_weight(weight)
    assert packed is not None
    for shape in [(1, 64), (8, 64), (3, 7, 64)]:
        x = torch.randn(shape, generator=gen)
        want = torch.nn.functional.linear(x, weight, bias)
        torch.testing.assert_close(packed_linear(x, packed, bias), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed_linear(x, packed, None), want - bias, rtol=1e-5, atol=1e-5)


def test_packing_is_refused_off_float32_cpu() -> None:
    assert pack_weight(torch.zeros((4, 4), dtype=torch.float16)) is None
    assert not packing_available(torch.device("meta"), torch.float32)


@needs_packing
def test_engine_packs_every_wrapped_layer(pair: tuple[Engine, Engine]) -> None:
    packed, plain = pair
    assert packed.packed_layers == len(packed._layers) > 0
    assert plain.packed_layers == 0 and all(layer.packed is None for layer in plain._layers.values())


@needs_packing
def test_sampling_with_packed_weights_equals_plain(pair: tuple[Engine, Engine]) -> None:
    packed, plain = pair
    jobs = [
        SampleJob("a", PROMPTS[0], num_samples=2, max_tokens=10, seed=3, prompt_logprobs=True),
        SampleJob(None, PROMPTS[1], max_tokens=8, temperature=0.0, topk_prompt_logprobs=2),
        SampleJob("a", PROMPTS[2], max_tokens=6, temperature=0.7, top_k=20, seed=9),
    ]
    for x, y in zip(packed.sample(jobs), plain.sample(jobs), strict=False):
        assert isinstance(x, SampleOutput) and isinstance(y, SampleOutput)
        for sx, sy in zip(x.sequences, y.sequences, strict=False):
            assert sx.tokens == sy.tokens and sx.stop_reason == sy.stop_reason
            np.testing.assert_allclose(sx.logprobs, sy.logprobs, rtol=1e-5, atol=1e-5)
        if x.prompt_logprobs is not None:
            assert y.prompt_logprobs is not None
            np.testing.assert_allclose(
                floats(x.prompt_logprobs[1:]), floats(y.prompt_logprobs[1:]), rtol=1e-5, atol=1e-5
            )
        if x.topk_prompt_logprobs is not None:
            assert y.topk_prompt_logprobs is not None
            for px, py in zip(x.topk_prompt_logprobs[1:], y.topk_prompt_logprobs[1:], strict=False):
                assert px is not None and py is not None
                assert [t for t, _ in px] == [t for t, _ in py]


@needs_packing
def test_gradient_path_never_uses_packed_weights(pair: tuple[Engine, Engine]) -> None:
    """forward_backward is bit-identical with and without packing; forward-only agrees to rounding."""
    packed, plain = pair
    rng = np.random.default_rng(0)
    data = [
        TrainDatum(
            tokens=p[:-1],
            loss_fn_inputs={
                "target_tokens": np.array(p[1:]),
                "weights": rng.normal(size=len(p) - 1).astype(np.float32),
            },
        )
        for p in PROMPTS
    ]
    fb = [e.forward_backward("a", data, "cross_entropy", None, backward=True) for e in pair]
    assert fb[0].metrics == fb[1].metrics
    for x, y in zip(fb[0].loss_fn_outputs, fb[1].loss_fn_outputs, strict=False):
        np.testing.assert_array_equal(x["logprobs"], y["logprobs"])
    grads = adapter_grads(packed, "a"), adapter_grads(plain, "a")
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=0, atol=0)
    fwd = packed.forward_backward("a", data, "cross_entropy", None, backward=False)
    for x, y in zip(fwd.loss_fn_outputs, fb[1].loss_fn_outputs, strict=False):
        np.testing.assert_allclose(x["logprobs"], y["logprobs"], rtol=1e-5, atol=1e-5)


@needs_packing
def test_sampled_logprobs_match_the_training_forward(pair: tuple[Engine, Engine]) -> None:
    """The sampler (packed) against forward_backward (plain weights): the issue's 1e-4 bound."""
    packed, _ = pair
    out = packed.sample([SampleJob("a", PROMPTS[0], num_samples=2, max_tokens=12, seed=5)])[0]
    assert isinstance(out, SampleOutput)
    for seq in out.sequences:
        tokens = PROMPTS[0] + seq.tokens
        datum = TrainDatum(tokens=tokens[:-1], loss_fn_inputs={"target_tokens": np.array(tokens[1:])})
        lp = packed.forward_backward("a", [datum], "cross_entropy", None, backward=True).loss_fn_outputs[0]
        np.testing.assert_allclose(seq.logprobs, lp["logprobs"][len(PROMPTS[0]) - 1 :], atol=1e-4)


@needs_packing
def test_nothing_is_packed_when_memory_is_short(home, monkeypatch, caplog) -> None:
    from tinker_server.engine import packed

    monkeypatch.setattr(packed, "available_memory_bytes", lambda: 1024)  # 1 KiB free
    with caplog.at_level("WARNING", logger=packed.__name__):
        engine = _tuned(load_engine(TINY_MODEL, home=home))
    assert engine.packed_layers == 0 and all(layer.packed is None for layer in engine._layers.values())
    assert "not packing" in caplog.text
    out = engine.sample([SampleJob("a", PROMPTS[0], max_tokens=4, seed=1)])[0]  # the plain path still samples
    assert isinstance(out, SampleOutput) and len(out.sequences[0].tokens) == 4


def test_available_memory_is_read_on_linux() -> None:
    from tinker_server.engine.packed import available_memory_bytes

    free = available_memory_bytes()
    assert free is None or free > 0


@pytest.mark.skipif(not packing_available(torch.device("cpu"), torch.bfloat16), reason="no native bf16 on this CPU")
def test_bfloat16_packed_engine_agrees_with_plain(home) -> None:
    engines = [
        _tuned(load_engine(TINY_MODEL, home=home, dtype="bfloat16", packed_weights=flag)) for flag in (True, False)
    ]
    assert engines[0].packed_layers == len(engines[0]._layers) and engines[1].packed_layers == 0
    job = SampleJob("a", PROMPTS[0], max_tokens=1, prompt_logprobs=True)
    packed, plain = (e.sample([job])[0] for e in engines)
    assert isinstance(packed, SampleOutput) and isinstance(plain, SampleOutput)
    # bf16 carries about 3 significant digits; the two paths may round differently
    assert packed.prompt_logprobs is not None and plain.prompt_logprobs is not None
    np.testing.assert_allclose(
        floats(packed.prompt_logprobs[1:]), floats(plain.prompt_logprobs[1:]), rtol=0.02, atol=0.05
    )
